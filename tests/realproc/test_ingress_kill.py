"""Issue 15 acceptance: an app with 2 replicas on distinct nodes, a load generator through
the third node's ingress while the node of one replica is ``kill -9``'d.

GET error rate ≤ 1 % over the run and 0 % from the detection of the death + 5 s on;
``meshcloud routes`` shows the change. Three agents on their own loopback addresses
(127.0.0.61 … .63), the process runtime, Python HTTP replicas.
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import pytest

from apps.ingress.ports import ephemeral_port
from sim.agents import LocalCluster, wait_until
from tests.realproc.test_ingress import endpoints, healthy, kill_replicas
from tests.workload_python import inline_script_line

ADDRESSES = [f"127.0.0.{61 + i}" for i in range(3)]
SCRIPT = Path(__file__).parents[1] / "apps/ingress/echo_server.py"
HTTP_PORT = ephemeral_port()
CLIENTS = 4
CALM = 5.0
"""Seconds after detection from which no GET may fail."""

pytestmark = [pytest.mark.real, pytest.mark.slow]


class Load:
    """``CLIENTS`` threads, each GETting in a loop on a kept-alive connection (a new one
    after an error); every outcome is recorded with its start time."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.stop = threading.Event()
        self.results: list[tuple[float, bool, str]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True)
                        for _ in range(CLIENTS)]

    def _run(self) -> None:
        conn = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, HTTP_PORT, timeout=30)
            started = time.monotonic()
            try:
                conn.request("GET", "/", headers={"Host": "app.home"})
                response = conn.getresponse()
                body = response.read()
                ok, note = response.status == 200, f"{response.status} {body[:80]!r}"
            except (OSError, http.client.HTTPException) as exc:
                ok, note = False, repr(exc)
                conn.close()
                conn = None
            with self.lock:
                self.results.append((started, ok, note))
        if conn is not None:
            conn.close()

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_kill_9_of_a_replica_node_under_load(tmp_path):
    cluster = LocalCluster(tmp_path, extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process",
                                "MESHCLOUD_HTTP": f"mesh:{HTTP_PORT}"})
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        cluster.start_all(cluster.join_many([{"listen": f"{ADDRESSES[i]}:0"}
                                             for i in range(1, 3)]))
        a = cluster.agents[0]
        wait_until(lambda: sum(m["state"] == "alive" for m in a.get("/v1/members")) == 3
                   and len(a.get("/v1/images")["mesh"]) == 3, 60,
                   message="three nodes alive, their offers known")
        a.cli("run", "app", "--command", inline_script_line(SCRIPT, "http"), "--replicas", "2",
              "--http", "--domain", "app.home")
        wait_until(lambda: all(healthy(x, "app", 2) for x in cluster.agents), 90,
                   message="2 healthy replicas known everywhere")
        holders = {e["node"] for e in endpoints(a, "app")}
        assert len(holders) == 2
        third = next(x for x in cluster.agents if x.node_id not in holders)
        victim = next(x for x in cluster.agents if x.node_id in holders)
        host = third.address.rsplit(":", 1)[0]
        with Load(host) as load:
            wait_until(lambda: load.count() >= 200, 30, message="load running")
            killed_at = time.monotonic()
            victim.kill()
            kill_replicas(victim)

            def detected() -> bool:
                states = {m["id"]: m["state"] for m in third.get("/v1/members")}
                return states.get(victim.node_id) != "alive"

            wait_until(detected, 30, interval=0.02, message="the third node sees the death")
            detection = time.monotonic()
            wait_until(lambda: all(x["node"] != victim.node_id for r in third.get(
                "/v1/ingress/routes")["routes"] if r["host"] == "app.home" for x in r["live"]),
                       10, message="routes no longer list the dead node's replica")
            routes = third.cli("routes").stdout
            calm_from = detection + CALM
            wait_until(lambda: load.results[-1][0] > calm_from + 5 if load.results else False,
                       60, message="5 s of load after the calm point")
        results = list(load.results)
        failed = [r for r in results if not r[1]]
        late = [r for r in failed if r[0] >= calm_from]
        rate = len(failed) / len(results)
        print(f"\n{len(results)} GETs, {len(failed)} failed ({rate:.2%}); detection "
              f"{detection - killed_at:.2f} s after the kill; failures after detection + "
              f"{CALM:g} s: {len(late)}")
        for started, _, note in failed[:5]:
            print(f"  failed {started - killed_at:+.2f} s from the kill: {note}")
        assert rate <= 0.01, failed[:5]
        assert late == [], late[:5]
        assert sum(r[0] >= calm_from for r in results) > 50  # the calm window was loaded
        assert "app.home" in routes and "-> app:http" in routes
        assert victim.node_id[:12] not in routes.split("app:http", 1)[1].splitlines()[0]
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_replicas(agent)
