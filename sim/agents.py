"""Real agent processes on this machine: create, join, start, kill, freeze, restart.

Used by the real-process tests, the benchmarks and ``python -m sim --real``. Each agent is
a genuine ``meshcloud up`` process with its own data dir, made with the genuine
``meshcloud init`` / ``invite`` / ``join`` commands, so these exercise exactly what a user
runs. Ports are picked free by the OS (listen on port 0; the agent writes the ports it got
to ``run/agent.json``) unless fixed ones are asked for.

Every process started here is tracked and killed by :meth:`LocalCluster.close`, also when
a test fails half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcloud.datadir import DataDir

START_TIMEOUT = 30.0


class AgentError(Exception):
    pass


def meshcloud_cmd(data_dir: Path, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 60, check: bool = True,
                  prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run one `meshcloud` command for a data dir, as a user would."""
    cmd = [*(prefix or []), sys.executable, "-m", "meshcloud", "--data-dir", str(data_dir), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AgentError(f"meshcloud {' '.join(args)} failed ({result.returncode}): "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return result


@dataclass
class Agent:
    name: str
    data_dir: Path
    listen: str = "127.0.0.1:0"
    api: str = "127.0.0.1:0"
    s3: str = "127.0.0.1:0"
    extra_args: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)
    """Command prefix, e.g. ``["ip", "netns", "exec", "ns1"]`` for network namespaces."""
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def datadir(self) -> DataDir:
        return DataDir(self.data_dir)

    @property
    def node_id(self) -> str:
        return self.info.get("node_id") or self.datadir.node_key().id.hex()

    @property
    def address(self) -> str:
        """The first address peers reach this agent on (needs it started once)."""
        return self.info["listen"][0]

    @property
    def api_url(self) -> str:
        return self.info["api"]

    def node_flags(self) -> list[str]:
        return ["--listen", self.listen, "--api", self.api, "--s3", self.s3, *self.extra_args]

    def cli(self, *args: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        return meshcloud_cmd(self.data_dir, *args, env=self.env, check=check, timeout=timeout,
                             prefix=self.prefix)

    # --- process control ------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> None:
        if self.running:
            raise AgentError(f"{self.name} is already running")
        self.datadir.clear_runtime_info()
        log = open(self.data_dir / "logs" / "console.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "meshcloud", "--data-dir", str(self.data_dir),
             "up"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.env},
        )
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AgentError(f"{self.name} exited with {self.process.returncode} while "
                                 f"starting:\n{self.console_tail()}")
            info = self.datadir.runtime_info()
            if info and info.get("api") and info.get("pid"):
                if not self.prefix and info["pid"] != self.process.pid:
                    time.sleep(0.05)
                    continue
                self.info = info
                return info
            time.sleep(0.05)
        raise AgentError(f"{self.name} not ready after {timeout:.0f} s:\n{self.console_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.info.get("pid") or self.process.pid

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """kill -9: no goodbye, sockets reset by the kernel."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        if self.process is None:
            return None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AgentError(f"{self.name} did not stop within {timeout} s") from None

    def console_tail(self, chars: int = 3000) -> str:
        try:
            return (self.data_dir / "logs" / "console.log").read_text()[-chars:]
        except FileNotFoundError:
            return ""

    # --- API ------------------------------------------------------------------------------

    def api_call(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.datadir.api_token()}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.api_call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.api_call("POST", path, body if body is not None else {})


class LocalCluster:
    """N real agents on this machine, each joined through a chosen existing member."""

    def __init__(self, root: Path, *, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra_args = extra_args or []
        self.env = env or {}
        self.agents: list[Agent] = []

    def new_agent(self, name: str | None = None, **kwargs: Any) -> Agent:
        name = name or f"node{len(self.agents) + 1}"
        kwargs.setdefault("extra_args", list(self.extra_args))
        kwargs.setdefault("env", dict(self.env))
        agent = Agent(name, self.root / name, **kwargs)
        self.agents.append(agent)
        return agent

    def init_first(self, name: str | None = None, **kwargs: Any) -> Agent:
        agent = self.new_agent(name, **kwargs)
        agent.cli("init", "--name", "test", *agent.node_flags())
        agent.start()
        return agent

    def invite(self, through: Agent, uses: int = 1, ttl: str = "10m") -> str:
        admin = self.agents[0]
        reply = admin.post("/v1/invites", {"ttl_s": _seconds(ttl), "uses": uses,
                                            "bootstrap": through.info["listen"]})
        return reply["token"]

    def join(self, through: Agent | None = None, name: str | None = None, *,
             start: bool = True, **kwargs: Any) -> Agent:
        through = through or self.agents[0]
        token = self.invite(through)
        agent = self.new_agent(name, **kwargs)
        agent.cli("join", token, *agent.node_flags())
        if start:
            agent.start()
        return agent

    @classmethod
    def create(cls, root: Path, n: int, *, chain: bool = True, **kwargs: Any) -> LocalCluster:
        """n agents; with ``chain`` each joins through the one before it."""
        cluster = cls(root, **kwargs)
        try:
            cluster.init_first()
            for i in range(1, n):
                cluster.join(through=cluster.agents[i - 1] if chain else cluster.agents[0])
        except BaseException:
            cluster.close()
            raise
        return cluster

    def close(self) -> None:
        for agent in self.agents:
            if agent.process is not None and agent.process.poll() is None:
                agent.thaw()
                agent.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    agent.process.wait(timeout=10)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def wait_until(predicate: Any, timeout: float, interval: float = 0.05,
               message: str = "condition") -> float:
    """Poll ``predicate`` (a real process is outside any virtual clock) until true; returns
    the seconds it took. Raises AgentError with ``message`` on timeout."""
    start = time.monotonic()
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except (OSError, urllib.error.URLError, KeyError, ValueError) as exc:
            last_error = exc
        if time.monotonic() - start > timeout:
            extra = f" (last error: {last_error})" if last_error else ""
            raise AgentError(f"{message} not reached within {timeout} s{extra}")
        time.sleep(interval)


@contextlib.contextmanager
def process_mesh(root: Path, addresses: list[str], *, http_port: int,
                 wait_alive: bool = True) -> Iterator[LocalCluster]:
    """Agents on the given loopback addresses (the first inits, the others join through
    it), local profile, process runtime, the HTTP ingress on ``http_port`` of each; with
    ``wait_alive``, until every agent lists them all alive. Closed on exit."""
    cluster = LocalCluster(root, extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process",
                                "MESHCLOUD_HTTP": f"mesh:{http_port}"})
    try:
        cluster.init_first(listen=f"{addresses[0]}:0")
        for address in addresses[1:]:  # joined one by one, started all at once
            cluster.join(through=cluster.agents[0], listen=f"{address}:0", start=False)
        for agent in cluster.agents[1:]:
            agent.start(wait=False)
        for agent in cluster.agents[1:]:
            agent.wait_ready()
        if wait_alive:
            wait_until(lambda: all(
                len([m for m in a.get("/v1/status")["members"] if m.get("state") == "alive"])
                >= len(addresses) for a in cluster.agents),
                60, interval=0.2, message="every member alive everywhere")
        yield cluster
    finally:
        cluster.close()
