"""Outputs of a run: ``metrics.json`` (byte-identical for a seed), ``summary.md``, plots.

``metrics.json`` holds only what the simulation computed — no wall-clock time, no paths —
with sorted keys and rounded floats, so two runs with the same seed give the same bytes.
Plots (PNG, matplotlib): alive count over time per view, detection-time CDF, messages per
second per node, and the timeline of faults drawn on each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sim.checkers import CheckResult, detection_times
from sim.scenario import Scenario
from sim.trace import Trace


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return round(value, 6)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def metrics_document(scenario: Scenario, figures: dict[str, Any],
                     results: list[CheckResult]) -> dict[str, Any]:
    return _clean({
        "scenario": scenario.name,
        "seed": scenario.scenario.seed,
        "nodes": scenario.scenario.nodes,
        "duration_s": scenario.scenario.duration,
        "passed": all(r.passed for r in results),
        "checks": {r.name: {"passed": r.passed, "summary": r.summary, **r.figures,
                            "examples": r.examples} for r in results},
        "figures": figures,
    })


def write_metrics(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


def write_summary(path: Path, scenario: Scenario, document: dict[str, Any],
                  results: list[CheckResult], plots: list[str], wall_s: float) -> None:
    meta = scenario.scenario
    verdict = "PASSED" if document["passed"] else "FAILED"
    lines = [
        f"# {meta.name}: {verdict}",
        "",
        f"{meta.description}" if meta.description else "",
        "",
        f"- nodes: {meta.nodes}, simulated time: {meta.duration:g} s, seed: {meta.seed}",
        f"- network: {scenario.network.latency_ms:g} ms latency, "
        f"{scenario.network.loss:.0%} loss",
        f"- wall time: {wall_s:.1f} s",
        "",
        "| check | result | summary |",
        "|---|---|---|",
    ]
    for result in results:
        lines.append(f"| {result.name} | {'pass' if result.passed else '**FAIL**'} | "
                     f"{result.summary} |")
    failures = [r for r in results if not r.passed and r.examples]
    if failures:
        lines += ["", "## Why it failed", ""]
        for result in failures:
            lines.append(f"**{result.name}**")
            lines += [f"- {example}" for example in result.examples]
            lines.append("")
    figures = document.get("figures", {})
    if figures:
        lines += ["", "## Figures", "", "| figure | value |", "|---|---|"]
        for key, value in sorted(figures.items()):
            if not isinstance(value, dict | list):
                lines.append(f"| {key} | {value} |")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in plots]
    path.write_text("\n".join(lines) + "\n")


# --- plots -------------------------------------------------------------------------------------


def _fault_marks(ax: Any, trace: Trace) -> None:
    spans_start = None
    for t, groups in trace.partitions:
        if groups and spans_start is None:
            spans_start = t
        elif not groups and spans_start is not None:
            ax.axvspan(spans_start, t, color="#f2c94c", alpha=0.18, lw=0)
            spans_start = None
    if spans_start is not None:
        ax.axvspan(spans_start, trace.end, color="#f2c94c", alpha=0.18, lw=0)
    colours = {"crash": "#d1363b", "restart": "#1a9b55", "leave": "#4465c4",
               "join": "#1a9b55", "partition": "#d99a06", "heal": "#d99a06"}
    seen: set[str] = set()
    for t, action, _ in trace.faults:
        label = action if action not in seen else None
        seen.add(action)
        ax.axvline(t, color=colours.get(action, "#888"), lw=0.8, alpha=0.6, label=label)


def write_plots(out: Path, scenario: Scenario, trace: Trace) -> list[str]:
    from meshcloud.extras import require

    matplotlib = require("matplotlib", "plots of the simulator")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    title = f"{scenario.name} · {scenario.scenario.nodes} nodes · seed {scenario.scenario.seed}"

    samples = trace.series.get("truth_alive", [])
    per_view = trace.records.get("view_alive_counts", [])
    if samples:
        fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
        if per_view:
            times = [row["t"] for row in per_view]
            columns = list(zip(*[row["counts"] for row in per_view], strict=True))
            for column in columns[:80]:
                ax.plot(times, column, lw=0.6, alpha=0.35, color="#2f6fde")
            ax.plot([], [], lw=0.8, color="#2f6fde", label="alive, as each node sees it")
        ax.plot([t for t, _ in samples], [v for _, v in samples], lw=2, color="#111",
                label="alive, truth")
        _fault_marks(ax, trace)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("alive nodes")
        ax.set_title(title)
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "alive.png")
        plt.close(fig)
        written.append("alive.png")

    times, _ = detection_times(trace)
    if times:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        ordered = sorted(times)
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], color="#d1363b")
        ax.set_xlabel("seconds from crash to 'dead' (per observer)")
        ax.set_ylabel("fraction of observations")
        ax.set_title(f"detection time CDF · {len(ordered)} observations")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "detection_cdf.png")
        plt.close(fig)
        written.append("detection_cdf.png")

    rate = trace.series.get("msgs_per_node_s", [])
    if rate:
        fig, ax = plt.subplots(figsize=(9, 3.5), dpi=110)
        ax.plot([t for t, _ in rate], [v for _, v in rate], color="#2f6fde", label="mean")
        p99 = trace.series.get("msgs_per_node_s_p99", [])
        if p99:
            ax.plot([t for t, _ in p99], [v for _, v in p99], color="#d99a06", lw=0.8,
                    label="p99 node")
        _fault_marks(ax, trace)
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("messages sent / node / s")
        ax.set_title(title)
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "messages.png")
        plt.close(fig)
        written.append("messages.png")

    if trace.faults:
        fig, ax = plt.subplots(figsize=(9, 2.6), dpi=110)
        actions = sorted({a for _, a, _ in trace.faults})
        for t, action, detail in trace.faults:
            y = actions.index(action)
            ax.scatter([t], [y], s=12 + 3 * min(30, detail.get("count", 1)), alpha=0.7)
        ax.set_yticks(range(len(actions)), actions)
        ax.set_xlim(0, trace.end)
        ax.set_xlabel("simulated time (s)")
        ax.set_title("faults")
        fig.tight_layout()
        fig.savefig(out / "faults.png")
        plt.close(fig)
        written.append("faults.png")
    return written
