"""What the demo tells its user: addresses, S3, and which node died."""

from __future__ import annotations

import subprocess
from pathlib import Path

from meshcloud.demo import dead_message, demo_nodes, summary_lines


def test_summary_names_every_endpoint_and_how_to_get_an_s3_key(tmp_path: Path):
    nodes = demo_nodes(tmp_path, 3, 7100)
    for i, node in enumerate(nodes):
        node.info = {"node_id": f"{i}" * 64, "api": f"http://127.0.0.1:{7200 + i}"}
    text = "\n".join(summary_lines(nodes, "mc"))
    for i in range(3):
        assert f"node{i + 1}  {str(i) * 12}  peers 127.0.0.1:{7100 + i}" in text
        assert f"API http://127.0.0.1:{7200 + i}" in text
        assert f"S3 http://127.0.0.1:{7300 + i}" in text
    assert f"mc --data-dir {tmp_path / 'node1'} s3 key create" in text
    assert "--endpoint-url http://127.0.0.1:7300" in text


def test_dead_message_names_the_node_the_signal_and_what_to_do(tmp_path: Path):
    node = demo_nodes(tmp_path, 2, 7100)[1]
    node.info = {"node_id": "ab" * 32}
    node.process = subprocess.Popen(["sh", "-c", "kill -9 $$"])
    node.process.wait(timeout=30)
    text = dead_message(node, 1)
    assert text.startswith("node2 (abababababab) stopped (killed by SIGKILL)")
    assert "1 other node(s) keep serving" in text and "Enter" in text
