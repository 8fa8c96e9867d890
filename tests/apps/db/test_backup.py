"""Pure parts of the database backups and users: repository settings, ``pgbackrest info``,
the schedule, restore-time checks, user SQL, and the standby that takes the lease."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.db.backup import (
    BUCKET,
    DAY_S,
    FULL_EVERY_S,
    Backup,
    access_key_id,
    archive_command,
    check_restore_time,
    parse_info,
    parse_time,
    repo_conf,
    scheduled_kind,
    stanza,
    target_text,
)
from apps.db.core import KEEP, STANDBY, DbError, Local, decide, group_of, user_sql
from apps.db.messages import DbBackups, DbCall, DbCallReply, DbMember, DbSpec
from meshcloud.codec.messages import decode_message, encode_message

INFO = json.dumps([{"name": "shop-1", "backup": [
    {"label": "20261207-050000F_20261207-060000I", "type": "incr",
     "timestamp": {"start": 2000, "stop": 2010},
     "info": {"size": 300, "repository": {"delta": 30}}},
    {"label": "20261207-050000F", "type": "full", "timestamp": {"start": 1000, "stop": 1100},
     "info": {"size": 300, "repository": {"delta": 100}}},
    {"label": "broken"}]}])


def test_parse_info_oldest_first_and_skips_broken_entries():
    backups = parse_info(INFO)
    assert [b.kind for b in backups] == ["full", "incr"]
    assert backups[0] == Backup("20261207-050000F", "full", 1000, 1100, 300, 100)
    assert parse_info("[]") == [] and parse_info('[{"name": "x"}]') == []
    with pytest.raises(DbError):
        parse_info("not json")


def test_schedule_daily_full_weekly():
    full = Backup("f", "full", 0, 100, 1, 1)
    assert scheduled_kind([], 0) == "full"
    assert scheduled_kind([full], 100 + DAY_S - 1) is None
    assert scheduled_kind([full], 100 + DAY_S) == "incr"
    incr = Backup("i", "incr", 0, 100 + 6 * DAY_S, 1, 1)
    assert scheduled_kind([full, incr], 100 + 7 * DAY_S - 1) is None
    assert scheduled_kind([full, incr], 100 + FULL_EVERY_S + DAY_S) == "full"
    assert scheduled_kind([full, incr], 100 + 6 * DAY_S + DAY_S) == "full"
    assert scheduled_kind([full], 200, every_s=50) == "incr"


@given(st.lists(st.tuples(st.sampled_from(["full", "incr", "diff"]),
                          st.integers(0, 10**9)), max_size=6), st.integers(0, 2 * 10**9))
def test_schedule_never_incremental_without_a_full(rows, now):
    backups = sorted((Backup(str(i), k, t, t, 1, 1) for i, (k, t) in enumerate(rows)),
                     key=lambda b: b.stop)
    kind = scheduled_kind(backups, now)
    if kind == "incr":
        assert any(b.kind == "full" for b in backups)
    if not backups:
        assert kind == "full"


def test_parse_time_forms():
    utc = dt.datetime(2026, 12, 7, 5, 10, tzinfo=dt.UTC)
    assert parse_time("2026-12-07T05:10:00Z") == utc
    assert parse_time("2026-12-07T06:10:00+01:00") == utc
    assert parse_time("2026-12-07 05:10:00") == utc
    assert parse_time(str(utc.timestamp())) == utc
    for bad in ("yesterday", "", "2026-13-01", "nan-ish"):
        with pytest.raises(DbError) as info:
            parse_time(bad)
        assert info.value.code == "bad_time"
    assert target_text(utc) == "2026-12-07 05:10:00.000000+00"


def test_restore_time_checks():
    backups = [Backup("f", "full", 1000, 1100, 1, 1)]
    at = dt.datetime.fromtimestamp(1500, dt.UTC)
    check_restore_time(at, backups, now_s=2000)
    with pytest.raises(DbError) as info:
        check_restore_time(at, [], now_s=2000)
    assert info.value.code == "no_backup"
    with pytest.raises(DbError) as info:
        check_restore_time(dt.datetime.fromtimestamp(1099, dt.UTC), backups, now_s=2000)
    assert info.value.code == "too_early" and "before the first backup" in str(info.value)
    with pytest.raises(DbError) as info:
        check_restore_time(dt.datetime.fromtimestamp(3000, dt.UTC), backups, now_s=2000)
    assert info.value.code == "bad_time"


def test_repo_conf_and_archive_command():
    text = repo_conf(key="MCKEY", secret="s3cr3t", port=4443, ca_file="/t/ca.pem",
                     log_path="/l", lock_path="/k", spool_path="/s")
    lines = set(text.splitlines())
    assert {"repo1-type=s3", f"repo1-s3-bucket={BUCKET}", "repo1-s3-uri-style=path",
            "repo1-storage-port=4443", "repo1-storage-verify-tls=y",
            "repo1-storage-ca-file=/t/ca.pem", "repo1-s3-key=MCKEY"} <= lines
    with pytest.raises(DbError):
        repo_conf(key="K\nrepo1-path=/x", secret="s", port=1, ca_file="c", log_path="l",
                  lock_path="k", spool_path="s")
    cmd = archive_command("/usr/bin/pgbackrest", "/c.conf", "shop-5", "/d")
    assert cmd.endswith("archive-push %p") and "--stanza=shop-5" in cmd
    assert stanza("shop", 5) == "shop-5"


def test_access_key_id_is_per_mesh_and_key_shaped():
    a, b = access_key_id(b"a" * 32), access_key_id(b"b" * 32)
    assert a != b and a == access_key_id(b"a" * 32)
    assert len(a) == 20 and a.startswith("MC") and a.isalnum() and a.upper() == a


def test_user_sql():
    sql = user_sql("shop", "reader", "readonly", "A" * 32)
    assert sql.startswith('CREATE ROLE "reader" LOGIN PASSWORD \'' + "A" * 32 + "'")
    assert "pg_read_all_data" in sql and "pg_write_all_data" not in sql
    assert "pg_write_all_data" in user_sql("shop", "app", "readwrite", "b" * 24)
    for user, role, pw, code in (("shop", "readonly", "a" * 20, "conflict"),
                                 ("Bad", "readonly", "a" * 20, "bad_name"),
                                 ("ok", "root", "a" * 20, "bad_request"),
                                 ("ok", "readonly", "x'; DROP", "bad_request")):
        with pytest.raises(DbError) as info:
            user_sql("shop", user, role, pw)
        assert info.value.code == code


NODES = [bytes([i]) * 32 for i in range(1, 6)]


def test_the_most_advanced_or_named_standby_takes_the_lease():
    spec = DbSpec(port=1, password="p", home=NODES[0], standbys=2)
    group = group_of("shop", spec, NODES[:3])
    a, b = group[1], group[2]
    alive = [a, b]
    running = Local(has_data=True, standby_data=True, running=True)
    rows = {a: DbMember(role=STANDBY, port=2, healthy=True, lsn=100),
            b: DbMember(role=STANDBY, port=3, healthy=True, lsn=90)}
    assert decide(a, "shop", spec, known=NODES[:3], alive=alive, rows=rows, local=running,
                  lease_term=None).want_lease
    behind = decide(b, "shop", spec, known=NODES[:3], alive=alive, rows=rows,
                    local=running, lease_term=None)
    assert behind.action == KEEP and not behind.want_lease
    # the behind one is alone: it takes over
    assert decide(b, "shop", spec, known=NODES[:3], alive=[b], rows=rows, local=running,
                  lease_term=None).want_lease
    # a switchover names b: a leaves it the lease although it is ahead
    rows[NODES[0]] = DbMember(role=STANDBY, port=1, healthy=False, handover=b)
    alive3 = [NODES[0], a, b]
    assert not decide(a, "shop", spec, known=NODES[:3], alive=alive3, rows=rows,
                      local=running, lease_term=None).want_lease
    assert decide(b, "shop", spec, known=NODES[:3], alive=alive3, rows=rows,
                  local=running, lease_term=None).want_lease


def test_new_rows_round_trip():
    for value in (DbBackups(stanza="s-1", backups="[]", updated_ms=3),
                  DbCall(name="shop", op="backup", args={"type": "full"}, incarnation=4),
                  DbCallReply(ok=False, code="x", message="m"),
                  DbMember(role=STANDBY, port=1, healthy=True, incarnation=5, lsn=6,
                           handover=b"n" * 32),
                  DbSpec(port=1, password="p", home=b"h", restore_from="s-1",
                         restore_at="2026-12-07T05:00:00+00:00", ro_port=2)):
        assert decode_message(encode_message(value), type(value)) == value


@given(st.sets(st.sampled_from(NODES), min_size=1), st.sets(st.sampled_from(NODES)),
       st.integers(0, 3))
def test_group_skips_gone_nodes(known, gone, standbys):
    spec = DbSpec(port=1, password="", home=NODES[0], standbys=standbys)
    group = group_of("shop", spec, known | {NODES[0]}, gone)
    assert not set(group) & gone
    assert len(group) == len(set(group)) == min(1 + standbys, len((known | {NODES[0]}) - gone))
    if NODES[0] not in gone:
        assert group[0] == NODES[0]
    # the survivors keep their places: only the gone ones are replaced
    full = group_of("shop", spec, known | {NODES[0]})
    assert [n for n in full if n not in gone] == group[:len([n for n in full
                                                             if n not in gone])]


def test_excluded_nodes_come_from_the_live_primary_and_stick():
    from apps.db.core import PRIMARY, excluded_nodes

    spec = DbSpec(port=1, password="p", home=NODES[0], standbys=1)
    known = NODES[:3]
    group = group_of("shop", spec, known)
    primary, standby = group
    third = next(n for n in known if n not in group)
    rows = {primary: DbMember(role=PRIMARY, port=1, healthy=True, term=2),
            standby: DbMember(role=STANDBY, port=2, healthy=True)}
    alive = [primary, third]
    # the holder counts the lost standby out; others follow its row, not their own view
    out = excluded_nodes(primary, "shop", spec, known=known, rows=rows, alive=alive,
                         gone=[standby], holding=True)
    assert out == {standby}
    assert group_of("shop", spec, known, out) == [primary, third]
    assert excluded_nodes(third, "shop", spec, known=known, rows=rows, alive=alive,
                          gone=[standby], holding=False) == frozenset()
    rows[primary] = DbMember(role=PRIMARY, port=1, healthy=True, term=2, excluded=(standby,))
    # the standby is back and sees itself alive: still out (the primary's row says so)
    everyone = known
    assert excluded_nodes(standby, "shop", spec, known=known, rows=rows, alive=everyone,
                          gone=[], holding=False) == {standby}
    assert decide(standby, "shop", spec, known=known, alive=everyone, rows=rows,
                  local=Local(has_data=True, standby_data=True), lease_term=None,
                  gone={standby}).action == "drop"
    # the holder never drops a node it named, even once it is alive again
    assert excluded_nodes(primary, "shop", spec, known=known, rows=rows, alive=everyone,
                          gone=[], holding=True) == {standby}
    # a node outside the group that is down is not named
    group5 = group_of("shop", spec, NODES, {standby})
    outside = next(n for n in NODES if n not in group5 and n != standby)
    assert excluded_nodes(primary, "shop", spec, known=NODES, rows=rows, alive=[primary],
                          gone=[outside], holding=True) == {standby}


def test_check_size():
    from apps.db.core import check_size

    free = {NODES[0]: 5 << 30, NODES[1]: 20 << 30, NODES[2]: 1 << 30}
    assert check_size(4 << 30, free, 2) == sorted([NODES[0], NODES[1]])
    with pytest.raises(DbError) as info:
        check_size(10 << 30, free, 2)
    assert info.value.code == "bad_size" and "20.0 GiB" in str(info.value)
    with pytest.raises(DbError):
        check_size(-1, free, 1)
