"""Scenarios: what to simulate, as a TOML file or one of the built-ins.

A scenario file has these tables (every key optional; defaults in the dataclasses below)::

    [scenario]                 name, nodes, duration ("10m"), seed, profile ("lan")
    [network]                  latency_ms, jitter, loss, bandwidth ("10MB/s")
    [population]               phones (fraction that sleep/wake and roam), slow (fraction)
    [churn]                    join, leave, crash (per minute), restart_after ("30s"),
                               start ("1m"), stop ("9m")
    [nemesis]                  random = true to draw faults from the seed; rate (per minute)
    [[faults]]                 at ("2m"), action, plus the action's arguments
    [checks]                   convergence_bound ("30s"), detect_bound ("8s"), ...

Fault actions: ``crash`` / ``restart`` / ``leave`` / ``join`` / ``sleep`` / ``wake`` /
``roam`` / ``slow`` (``count`` or ``fraction`` of nodes, optional ``duration`` after which
it is undone), ``partition`` (``groups`` = fractions, e.g. ``[0.5, 0.5]``), ``one_way``
(``fraction`` cut off from hearing the rest), ``heal``, ``loss`` (``value``).

Every mistake — a typo in a key, a value of the wrong type, an impossible value — is one
:class:`ScenarioError` naming the file and line.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from meshcloud.errors import ConfigError


class ScenarioError(ConfigError):
    code = "scenario_error"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)/s\s*$")
_RATE_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}

ACTIONS = ("crash", "restart", "leave", "join", "sleep", "wake", "roam", "slow", "partition",
           "one_way", "heal", "loss")


def parse_duration(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration like 30s, 10m or 1h")


def parse_rate(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _RATE.match(value)
        if match:
            return float(match.group(1)) * _RATE_UNITS[match.group(2)]
    raise ValueError(f"{value!r} is not a rate like 10MB/s")


@dataclass
class ScenarioMeta:
    name: str = "custom"
    nodes: int = 100
    duration: float = 300.0
    seed: int = 1
    profile: str = "lan"
    description: str = ""
    models: list[str] = field(default_factory=lambda: ["blobs", "workloads"])
    """Service models run on top of membership: blobs, workloads, state (costlier)."""


@dataclass
class NetworkSpec:
    latency_ms: float = 2.0
    jitter: float = 0.3
    loss: float = 0.0
    bandwidth: float | None = None


@dataclass
class PopulationSpec:
    phones: float = 0.0
    slow: float = 0.0
    phone_sleep: float = 120.0
    """Mean seconds a phone stays asleep (exponential)."""
    phone_awake: float = 300.0
    """Mean seconds a phone stays awake between sleeps."""


@dataclass
class ChurnSpec:
    join: float = 0.0
    leave: float = 0.0
    crash: float = 0.0
    restart_after: float = 30.0
    start: float = 60.0
    stop: float | None = None


@dataclass
class NemesisSpec:
    random: bool = False
    rate: float = 1.0
    """Faults per minute when random."""


@dataclass
class Fault:
    at: float
    action: str
    count: int | None = None
    fraction: float | None = None
    duration: float | None = None
    groups: list[float] | None = None
    value: float | None = None


@dataclass
class CheckSpec:
    convergence_bound: float = 30.0
    """After a fault settles, every live view must match the truth within this many seconds."""
    detect_bound: float = 10.0
    """A crashed node must be declared dead by every live node within this bound (p99)."""
    max_false_deaths: int = 0
    dht_lookups: int = 200
    min_dht_success: float = 1.0
    state_convergence_bound: float = 120.0
    """After the last fault, every live node's cluster-state Merkle roots are equal within
    this many seconds."""
    workload_bound: float | None = None
    """A replica lost with its node runs again elsewhere within this many seconds; unset, it
    is ``detect_bound`` + 5 s (detection, then a replacement started)."""


@dataclass
class Scenario:
    scenario: ScenarioMeta = field(default_factory=ScenarioMeta)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    population: PopulationSpec = field(default_factory=PopulationSpec)
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    nemesis: NemesisSpec = field(default_factory=NemesisSpec)
    faults: list[Fault] = field(default_factory=list)
    checks: CheckSpec = field(default_factory=CheckSpec)
    source: str = "<built-in>"

    @property
    def name(self) -> str:
        return self.scenario.name


# --- loading ------------------------------------------------------------------------------


def builtin_names() -> list[str]:
    return sorted(p.name.removesuffix(".toml")
                  for p in resources.files("sim.scenarios").iterdir()
                  if p.name.endswith(".toml"))


def load(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise ScenarioError(f"{path}: no such scenario file")
        return parse(path.read_text(), str(path))
    if name_or_path in builtin_names():
        text = resources.files("sim.scenarios").joinpath(f"{name_or_path}.toml").read_text()
        return parse(text, f"<built-in {name_or_path}>")
    close = difflib.get_close_matches(name_or_path, builtin_names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ScenarioError(f"unknown scenario {name_or_path!r}{hint}; built-ins: "
                        f"{', '.join(builtin_names())}")


class _Lines:
    """Where each key sits in the file, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, int, str], int] = {}
        self.tables: dict[tuple[str, int], int] = {}
        counts: dict[str, int] = {}
        table, index = "", 0
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.split("#", 1)[0].strip()
            header = re.match(r"^\[\[\s*([\w.\-]+)\s*\]\]$", stripped)
            if header:
                table = header.group(1)
                index = counts.get(table, 0)
                counts[table] = index + 1
                self.tables[(table, index)] = number
                continue
            header = re.match(r"^\[\s*([\w.\-]+)\s*\]$", stripped)
            if header:
                table, index = header.group(1), 0
                self.tables[(table, 0)] = number
                continue
            key = re.match(r"^([\w\-]+)\s*=", stripped)
            if key:
                self.lines.setdefault((table, index, key.group(1)), number)

    def of(self, table: str, key: str | None = None, index: int = 0) -> int | None:
        if key is not None and (table, index, key) in self.lines:
            return self.lines[(table, index, key)]
        return self.tables.get((table, index))


SECTIONS: dict[str, type] = {"scenario": ScenarioMeta, "network": NetworkSpec,
                             "population": PopulationSpec, "churn": ChurnSpec,
                             "nemesis": NemesisSpec, "checks": CheckSpec}
DURATION_FIELDS = {"duration", "restart_after", "start", "stop", "at", "convergence_bound",
                   "detect_bound", "state_convergence_bound", "workload_bound", "phone_sleep",
                   "phone_awake"}
RATE_FIELDS = {"bandwidth"}


def parse(text: str, source: str) -> Scenario:
    lines = _Lines(text)

    def fail(message: str, table: str, key: str | None = None, index: int = 0) -> ScenarioError:
        line = lines.of(table, key, index)
        where = f"{source}:{line}" if line else source
        return ScenarioError(f"{where}: {message}")

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    scenario = Scenario(source=source)
    for table, value in raw.items():
        if table == "faults":
            if not isinstance(value, list):
                raise fail("faults must be written as [[faults]] tables", table)
            for index, item in enumerate(value):
                scenario.faults.append(_fault(item, index, fail))
            continue
        if table not in SECTIONS:
            raise fail(f"unknown table [{table}]{_suggest(table, [*SECTIONS, 'faults'])}",
                       table)
        if not isinstance(value, dict):
            raise fail(f"{table} must be a table", table)
        setattr(scenario, table, _section(SECTIONS[table], table, value, fail))
    _check(scenario, fail)
    scenario.faults.sort(key=lambda f: f.at)
    return scenario


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(key: str, value: Any, kind: Any) -> Any:
    if key in DURATION_FIELDS:
        return parse_duration(value)
    if key in RATE_FIELDS:
        return None if value is None else parse_rate(value)
    text = str(kind)
    if "float" in text and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if "int" in text and isinstance(value, int) and not isinstance(value, bool):
        return value
    if ("bool" in text and isinstance(value, bool)) or ("str" in text and isinstance(value, str)):
        return value
    if "list" in text and isinstance(value, list):
        return value
    raise ValueError(f"{value!r} is not a valid {text.replace(' | None', '')}")


def _section(cls: type, table: str, values: dict[str, Any], fail: Any, index: int = 0) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise fail(f"unknown key {key!r} in [{table}]{_suggest(key, list(fields))}",
                       table, key, index)
        try:
            kwargs[key] = _convert(key, value, fields[key].type)
        except ValueError as exc:
            raise fail(f"{key}: {exc}", table, key, index) from None
    return cls(**kwargs)


def _fault(item: Any, index: int, fail: Any) -> Fault:
    if not isinstance(item, dict):
        raise fail("each [[faults]] entry must be a table", "faults", None, index)
    if "at" not in item or "action" not in item:
        raise fail("a fault needs `at` and `action`", "faults", None, index)
    fault = _section(Fault, "faults", item, fail, index)
    if fault.action not in ACTIONS:
        raise fail(f"unknown action {fault.action!r}{_suggest(fault.action, list(ACTIONS))}",
                   "faults", "action", index)
    if fault.fraction is not None and not 0 < fault.fraction <= 1:
        raise fail(f"fraction must be in (0, 1], got {fault.fraction}", "faults", "fraction",
                   index)
    if fault.count is not None and fault.count < 1:
        raise fail(f"count must be at least 1, got {fault.count}", "faults", "count", index)
    bad_groups = not fault.groups or any(g <= 0 for g in fault.groups) or \
        abs(sum(fault.groups) - 1.0) > 1e-6
    if fault.action == "partition" and bad_groups:
        raise fail("partition needs groups = fractions that add up to 1, e.g. [0.5, 0.5]",
                   "faults", "groups", index)
    if fault.action == "loss" and (fault.value is None or not 0 <= fault.value < 1):
        raise fail("loss needs value in [0, 1)", "faults", "value", index)
    if fault.at < 0:
        raise fail("at must not be negative", "faults", "at", index)
    return fault


def _check(s: Scenario, fail: Any) -> None:
    meta = s.scenario
    if not 1 <= meta.nodes <= 100_000:
        raise fail(f"nodes must be between 1 and 100000, got {meta.nodes}", "scenario", "nodes")
    if meta.duration <= 0:
        raise fail("duration must be positive", "scenario", "duration")
    unknown = [m for m in meta.models if m not in ("blobs", "workloads", "state")]
    if unknown:
        raise fail(f"unknown model {unknown[0]!r} (models: blobs, workloads, state)",
                   "scenario", "models")
    if meta.profile not in ("lan", "wan", "local", "phone"):
        raise fail(f"profile {meta.profile!r} is not lan, wan, local or phone", "scenario",
                   "profile")
    net = s.network
    if not 0 <= net.loss < 1:
        raise fail(f"loss must be in [0, 1), got {net.loss}", "network", "loss")
    if net.latency_ms < 0:
        raise fail("latency_ms must not be negative", "network", "latency_ms")
    if net.jitter < 0:
        raise fail("jitter must not be negative", "network", "jitter")
    if net.bandwidth is not None and net.bandwidth <= 0:
        raise fail("bandwidth must be positive", "network", "bandwidth")
    pop = s.population
    for key in ("phones", "slow"):
        if not 0 <= getattr(pop, key) <= 1:
            raise fail(f"{key} must be a fraction in [0, 1]", "population", key)
    churn = s.churn
    for key in ("join", "leave", "crash"):
        if getattr(churn, key) < 0:
            raise fail(f"{key} rate must not be negative", "churn", key)
    if s.nemesis.rate < 0:
        raise fail("rate must not be negative", "nemesis", "rate")
    for index, fault in enumerate(s.faults):
        if fault.at > meta.duration:
            raise fail(f"fault at {fault.at:g}s is after the end of the run "
                       f"({meta.duration:g}s)", "faults", "at", index)
