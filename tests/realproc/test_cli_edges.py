"""Rough edges of the CLI against a real agent: one clear line, nothing half made."""

from __future__ import annotations

from sim.agents import meshcloud_cmd


def _one_line(result) -> str:
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("meshcloud: ") and result.stderr.count("\n") == 1, \
        result.stderr
    return result.stderr


def test_storage_verbs_refuse_a_missing_bucket_in_one_line(cluster_factory, tmp_path):
    (a,) = cluster_factory(1).agents
    big = tmp_path / "big"
    big.write_bytes(b"x" * (8 << 20))
    err = _one_line(a.cli("cp", str(big), "s3://nosuch/x", check=False))
    assert "no bucket named 'nosuch'" in err and "bucket create nosuch" in err
    err = _one_line(a.cli("s3", "key", "create", "k2", "--bucket", "nosuch", check=False))
    assert "no bucket named 'nosuch'" in err
    assert "k2" not in a.cli("s3", "key", "ls").stdout
    a.cli("bucket", "create", "photos", "--data-dir", str(a.data_dir))  # flag after the verb
    assert "photos: read,write" in a.cli("s3", "key", "create", "k3", "--bucket",
                                          "photos").stdout


def test_missing_data_dir_says_init_or_join(tmp_path):
    err = _one_line(meshcloud_cmd(tmp_path / "nothing", "status", check=False))
    assert "meshcloud init" in err and "meshcloud join" in err and "meshcloud up" not in err


def test_refused_join_leaves_no_half_made_data_dir(cluster_factory, tmp_path):
    cluster = cluster_factory(1)
    (a,) = cluster.agents
    token = a.cli("invite", "--uses", "1").stdout.strip().splitlines()[-1]
    first = tmp_path / "first"
    meshcloud_cmd(first, "join", token, "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0",
                  "--s3", "127.0.0.1:0")
    second = tmp_path / "second"
    result = meshcloud_cmd(second, "join", token, "--listen", "127.0.0.1:0", check=False)
    _one_line(result)
    assert not second.exists()
    assert (first / "node.key").exists()
