"""The database service's pure decisions: names, ports, placement, configuration and the
controller's per-round decision (property-tested for the fencing rules)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.db.core import (
    CLONE,
    DROP,
    FENCE,
    INITDB,
    KEEP,
    PORT_BASE,
    PRIMARY,
    PROMOTE,
    STANDBY,
    START_PRIMARY,
    DbError,
    Local,
    check_create,
    check_name,
    conf_text,
    decide,
    free_port,
    group_of,
    primary_of,
)
from apps.db.messages import DbMember, DbSpec
from apps.db.tables import DATABASES, DB_MEMBERS

NODES = [bytes([i]) * 32 for i in range(1, 6)]
SPEC = DbSpec(port=15432, password="pw", home=NODES[0], standbys=1)
STARTS_PRIMARY = {INITDB, START_PRIMARY, PROMOTE, KEEP}


@pytest.mark.parametrize("name", ["shop", "a", "orders_2024", "x" * 31])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Shop", "2shop", "sh-op", "x" * 32, "postgres",
                                  "template1", "a b", "a'b", 'a"b', "é"])
def test_bad_names_are_one_typed_error(name):
    with pytest.raises(DbError) as info:
        check_name(name)
    assert info.value.code == "bad_name"


def test_create_checks():
    check_create("shop", 1, 15, {})
    with pytest.raises(DbError) as info:
        check_create("shop", 0, 15, {"shop": SPEC})
    assert info.value.code == "conflict"
    for standbys in (-1, 5, True):
        with pytest.raises(DbError):
            check_create("other", standbys, 15, {})
    with pytest.raises(DbError):
        check_create("other", 0, 14, {})


def test_free_port_is_the_lowest_unused():
    assert free_port([]) == PORT_BASE
    assert free_port([PORT_BASE, PORT_BASE + 1, PORT_BASE + 3]) == PORT_BASE + 2
    with pytest.raises(DbError):
        free_port(range(PORT_BASE, 70000))


@given(st.sets(st.sampled_from(NODES), min_size=1), st.integers(0, 4))
def test_group_home_first_distinct(known, standbys):
    spec = DbSpec(port=1, password="", home=NODES[0], standbys=standbys)
    group = group_of("shop", spec, known)
    assert group[0] == NODES[0]
    assert len(group) == len(set(group)) == min(1 + standbys, len(known | {NODES[0]}))
    assert group == group_of("shop", spec, sorted(known, reverse=True))  # order-free


def test_primary_of_highest_live_healthy_term():
    rows = {NODES[0]: DbMember(role=PRIMARY, port=5000, healthy=True, term=1),
            NODES[1]: DbMember(role=PRIMARY, port=5001, healthy=True, term=3),
            NODES[2]: DbMember(role=STANDBY, port=5002, healthy=True)}
    assert primary_of("shop", rows, NODES)[0] == NODES[1]
    assert primary_of("shop", rows, [NODES[0], NODES[2]])[0] == NODES[0]
    rows[NODES[0]] = DbMember(role=PRIMARY, port=5000, healthy=False, term=1)
    assert primary_of("shop", rows, [NODES[0], NODES[2]]) is None


def test_conf_text():
    alone = conf_text(port=5000, socket_dir="/s", standbys=0)
    assert "synchronous_standby_names = ''" in alone and "port = 5000" in alone
    assert "primary_conninfo" not in alone
    sync = conf_text(port=5000, socket_dir="/s", standbys=1, standby_of="host=h pw='x")
    assert "synchronous_standby_names = 'ANY 1 (*)'" in sync
    assert "primary_conninfo = 'host=h pw=''x'" in sync
    assert "listen_addresses = '127.0.0.1'" in sync


def test_bootstrap_failover_and_rejoin():
    home, other = NODES[0], NODES[1]
    known = NODES[:3]
    # fresh: the home asks for the lease, then makes the database
    assert decide(home, "shop", SPEC, known=known, alive=known, rows={}, local=Local(),
                  lease_term=None).want_lease
    assert decide(home, "shop", SPEC, known=known, alive=known, rows={}, local=Local(),
                  lease_term=1).action == INITDB
    primary_row = {home: DbMember(role=PRIMARY, port=5000, healthy=True, term=1)}
    group = group_of("shop", SPEC, known)
    standby = group[1]
    d = decide(standby, "shop", SPEC, known=known, alive=known, rows=primary_row,
               local=Local(), lease_term=None)
    assert d == type(d)(False, CLONE)
    # the home dies before it saw the standby stream synchronously: the standby may lack
    # commits the home acknowledged, so it waits for the home rather than take over
    rows = {**primary_row, standby: DbMember(role=STANDBY, port=5001, healthy=True)}
    running_standby = Local(has_data=True, standby_data=True, running=True)
    alive = [n for n in known if n != home]
    assert decide(standby, "shop", SPEC, known=known, alive=alive, rows=rows,
                  local=running_standby, lease_term=None) == type(d)(False, KEEP)
    assert decide(standby, "shop", SPEC, known=known, alive=alive, rows=rows,
                  local=running_standby, lease_term=2) == type(d)(False, KEEP)
    # once the home listed it as synchronous, the home's death makes it primary
    rows[home] = DbMember(role=PRIMARY, port=5000, healthy=True, term=1, synced=(standby,))
    assert decide(standby, "shop", SPEC, known=known, alive=alive, rows=rows,
                  local=running_standby, lease_term=None) == type(d)(True, KEEP)
    assert decide(standby, "shop", SPEC, known=known, alive=alive, rows=rows,
                  local=running_standby, lease_term=2).action == PROMOTE
    # the old primary comes back with its term-1 copy: cloned again, never started
    rows2 = {home: DbMember(role=PRIMARY, port=5000, healthy=True, term=1),
             standby: DbMember(role=PRIMARY, port=5001, healthy=True, term=2)}
    old = Local(has_data=True, standby_data=False, running=False, term=1)
    assert decide(home, "shop", SPEC, known=known, alive=known, rows=rows2, local=old,
                  lease_term=None) == type(d)(False, CLONE)
    # a node out of the group drops its copy
    outsider = next(n for n in known if n not in group)
    assert decide(outsider, "shop", SPEC, known=known, alive=known, rows=rows2,
                  local=old, lease_term=None).action == DROP
    del other


members = st.builds(DbMember, role=st.sampled_from([PRIMARY, STANDBY, "stopped"]),
                    port=st.sampled_from([0, 5000, 70000]), healthy=st.booleans(),
                    term=st.integers(0, 5))
locals_ = st.builds(Local, has_data=st.booleans(), standby_data=st.booleans(),
                    running=st.booleans(), term=st.integers(0, 5))


@settings(max_examples=400)
@given(me=st.sampled_from(NODES[:4]), known=st.sets(st.sampled_from(NODES[:4]), min_size=1),
       alive=st.sets(st.sampled_from(NODES[:4])),
       rows=st.dictionaries(st.sampled_from(NODES[:4]), members, max_size=4),
       local=locals_, lease=st.one_of(st.none(), st.integers(1, 9)))
def test_fencing_rules(me, known, alive, rows, local, lease):
    d = decide(me, "shop", SPEC, known=known, alive=alive, rows=rows, local=local,
               lease_term=lease)
    if lease is None:
        # never a primary without the lease; a running primary copy is stopped at once
        assert d.action not in {INITDB, START_PRIMARY, PROMOTE}
        if local.has_data and not local.standby_data and local.running and \
                d.action != DROP:
            assert d.action == FENCE
    if d.action == INITDB:  # only ever on an empty node, for a database never run
        assert not local.has_data and all(m.term == 0 for m in rows.values())
    if lease is not None and d.action in STARTS_PRIMARY and local.has_data and \
            not local.standby_data:
        # an old copy is not reused once another node was primary on a later term
        assert not any(m.term > local.term and m.role == PRIMARY
                       for n, m in rows.items() if n != me)
    if d.action == PROMOTE:
        assert lease is not None and local.standby_data


@given(st.builds(DbSpec, port=st.integers(1, 65535), password=st.text(max_size=40),
                 home=st.binary(min_size=32, max_size=32), standbys=st.integers(0, 4),
                 version=st.just(15), created_ms=st.integers(0, 2**62)),
       members)
def test_rows_round_trip(spec, member):
    assert DATABASES.decode(DATABASES.encode(spec)) == spec
    assert DB_MEMBERS.decode(DB_MEMBERS.encode(member)) == member


def test_only_a_standby_the_last_primary_listed_synchronous_may_promote():
    from apps.db.core import may_promote

    a, b, c, d = NODES[:4]
    # no primary ever ran (or its rows are gone): nothing acknowledged to lose
    assert may_promote(b, {b: DbMember(role=STANDBY, port=1, healthy=True)})
    rows = {a: DbMember(role=PRIMARY, port=1, healthy=False, term=1, synced=(b,)),
            c: DbMember(role=PRIMARY, port=1, healthy=False, term=3, synced=(d,)),
            b: DbMember(role=STANDBY, port=1, healthy=True),
            d: DbMember(role=STANDBY, port=1, healthy=True)}
    assert may_promote(d, rows) and not may_promote(b, rows)  # the latest term counts
    rows[c] = DbMember(role=PRIMARY, port=1, healthy=False, term=3)  # ran alone at the end
    assert not may_promote(d, rows) and not may_promote(b, rows)
    # a switchover names its target: the old primary handed over cleanly
    rows[a] = DbMember(role=STANDBY, port=1, healthy=True, handover=b)
    assert may_promote(b, rows) and not may_promote(d, rows)


synced_members = st.builds(
    DbMember, role=st.sampled_from([PRIMARY, STANDBY]), port=st.sampled_from([0, 5000]),
    healthy=st.booleans(), term=st.integers(0, 5),
    synced=st.lists(st.sampled_from(NODES[:4]), max_size=2, unique=True).map(tuple),
    handover=st.sampled_from([b"", *NODES[:4]]))


@given(me=st.sampled_from(NODES[:4]), alive=st.sets(st.sampled_from(NODES[:4])),
       rows=st.dictionaries(st.sampled_from(NODES[:4]), synced_members, max_size=4),
       running=st.booleans(), lease=st.one_of(st.none(), st.integers(1, 9)))
def test_a_standby_never_promotes_or_asks_unless_it_may(me, alive, rows, running, lease):
    from apps.db.core import may_promote

    local = Local(has_data=True, standby_data=True, running=running)
    d = decide(me, "shop", SPEC, known=NODES[:4], alive=alive, rows=rows, local=local,
               lease_term=lease)
    if not may_promote(me, rows):
        assert d.action != PROMOTE and not d.want_lease


def test_params_are_checked_against_the_servers_own_list():
    import pytest

    from apps.db.core import DbError, check_params
    from apps.db.pg import describe_config

    known = describe_config()  # the installed PostgreSQL's settings
    assert known["work_mem"][1] == "INTEGER" and known["jit"][1] == "BOOLEAN"
    assert check_params(["work_mem=16MB", "jit = off", "Search_Path=x y'z"],
                        known) == ("work_mem=16MB", "jit=off", "search_path=x y'z")
    conf = conf_text(port=5000, socket_dir="/s", standbys=1,
                     params=("work_mem=16MB", "search_path=x y'z"))
    assert conf.index("work_mem = '16MB'") < conf.index("port = 5000")  # ours come last
    assert "search_path = 'x y''z'" in conf
    for bad, says in (("work_mem", "NAME=VALUE"), ("no_such_thing=1", "no such setting"),
                      ("port=6000", "set by meshcloud"),
                      ("synchronous_commit=off", "set by meshcloud"),
                      ("ssl_cert_file=/etc/shadow", "set by meshcloud"),
                      ("archive_command=rm -rf /", "set by meshcloud"),
                      ("jit=maybe", "on or off"), ("work_mem=lots", "a number"),
                      ("max_connections=-5", "to"), ("work_mem=", "characters"),
                      ("block_size=8192", "no such setting")):  # internal: read-only
        with pytest.raises(DbError, match=says) as info:
            check_params([bad], known)
        assert info.value.code == "bad_param"
    with pytest.raises(DbError, match="twice"):
        check_params(["jit=on", "JIT=off"], known)
    with pytest.raises(DbError, match="at most"):
        check_params([f"work_mem={i}MB" for i in range(65)], known)
