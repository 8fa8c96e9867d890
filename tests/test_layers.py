"""The layer rules (docs/architecture.md "Layers"), checked on the import graph of the code.

Every production module (`meshcloud/`, `gossip/`, `dht/`, `blobstore/`, `apps/`, `vnet/`,
`sim/`, `bench/`) is parsed with `ast`; every `import` counts, wherever it is written:
at the top, inside a function (lazy), and under `if TYPE_CHECKING:` (a type-only arrow is
still an arrow: the next service would follow it). Three checks:

* each module belongs to exactly one layer of `LAYERS` (the longest matching entry), and
  imports only the layers its own layer lists (plus the few `EXCEPTIONS`);
* no import cycle crosses a package (directory) boundary;
* every entry of the tables names a file or directory that exists.

Run `python tests/test_layers.py` to print the whole report.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP_PACKAGES = ("meshcloud", "gossip", "dht", "blobstore", "apps", "vnet", "sim", "bench")

# The layers, bottom to top: (name, paths, layers it may import besides itself).
# A path ending in "/" is a directory (everything under it); otherwise one file. A module
# takes the layer of its longest matching path.
BELOW_DOMAINS = ["foundation", "wire", "protocols", "core"]
LAYERS: list[tuple[str, list[str], list[str]]] = [
    ("foundation", ["meshcloud/__init__.py", "meshcloud/errors.py", "meshcloud/clock.py",
                    "meshcloud/bulk.py", "meshcloud/extras.py", "meshcloud/priority.py",
                    "meshcloud/rtguard.py"],
     []),
    # Identity, admission (join, redemption, revocation) and the membership records travel
    # with the wire; so does TestMesh, the real keys and certificates wire tests use.
    ("wire", ["meshcloud/codec/", "meshcloud/identity/", "meshcloud/transport/",
              "meshcloud/auth.py", "meshcloud/membership.py", "meshcloud/redemption.py",
              "meshcloud/revocation.py", "meshcloud/join.py", "meshcloud/testing.py"],
     ["foundation"]),
    ("protocols", ["gossip/", "dht/"], ["foundation", "wire"]),
    # Core services, and the small kits domains build on (meshcloud/kit/: the Service and
    # NodeContext contract, JSON API helpers, UI and CLI kits, the HTTP serving guard).
    ("core", ["meshcloud/kit/", "meshcloud/state/", "meshcloud/placement.py",
              "meshcloud/workers.py",
              "meshcloud/events.py", "meshcloud/config.py", "meshcloud/datadir.py",
              "meshcloud/logs.py", "meshcloud/ui_text.py", "meshcloud/client.py"],
     ["foundation", "wire", "protocols"]),
    # Each domain with its own api.py / ui.py / cli.py, on the kits.
    ("domains", ["blobstore/", "apps/", "vnet/"], BELOW_DOMAINS),
    # The agent's HTTP server and web UI shell: they serve what the services hand them.
    ("http", ["meshcloud/api/", "meshcloud/web/"], BELOW_DOMAINS),
    # The composition root: node wiring, daemon, peers, discovery, join, members. Only its
    # composition module reaches up to the domains and the HTTP server (EXCEPTIONS).
    ("agent", ["meshcloud/agent/"], BELOW_DOMAINS),
    # The command line: talks to the agent, starts it (`up`), runs the demo.
    ("faces", ["meshcloud/cli.py", "meshcloud/__main__.py",
               "meshcloud/demo.py"],
     [*BELOW_DOMAINS, "agent"]),
    # Harnesses: they may import everything; nothing but a harness imports them.
    ("tools", ["sim/", "bench/"],
     ["foundation", "wire", "protocols", "core", "domains", "http", "agent", "faces"]),
]

# The one module allowed to import the domains and the HTTP server: the agent's
# composition module. Format: (importer path, imported layer).
EXCEPTIONS: list[tuple[str, str]] = [
    ("meshcloud/agent/compose.py", "domains"),
    ("meshcloud/agent/compose.py", "http"),
]

# Domains stand side by side: one imports another only if listed here (a service keeps
# its images in a bucket: apps/ uses the blobstore's CLI upload), and never back.
DOMAIN_PACKAGES: dict[str, list[str]] = {
    "blobstore/": [],
    "apps/": ["blobstore/"],
    "vnet/": ["apps/", "blobstore/"],
}

# Arrows and cycles present in the code that are not fixed yet. This list may only shrink:
# an entry no longer found fails the test as surely as a new violation does.
# Format: "importer -> imported" (module names) or "cycle: m1, m2, ..." (sorted).
KNOWN_VIOLATIONS: list[str] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def production_files() -> list[Path]:
    files: list[Path] = []
    for top in TOP_PACKAGES:
        files.extend(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)
    return sorted(files)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that `path` imports, anywhere in the file."""
    rel = path.relative_to(ROOT)
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(rel))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub; `from m import f`, m.
                sub = f"{module}.{alias.name}"
                names.append(sub if sub in modules else module)
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module_name(path):
                found.add(target)
    return found


def import_graph() -> tuple[dict[str, Path], dict[str, set[str]]]:
    modules = {module_name(p): p for p in production_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = imports_of(path, modules)
    return modules, graph


def layer_of(path: Path) -> str | None:
    rel = path.relative_to(ROOT).as_posix()
    best: tuple[int, str] | None = None
    for layer, entries, _ in LAYERS:
        for entry in entries:
            hit = rel.startswith(entry) if entry.endswith("/") else rel == entry
            if hit and (best is None or len(entry) > best[0]):
                best = (len(entry), layer)
    return best[1] if best else None


def _domain_of(path: Path) -> str | None:
    rel = path.relative_to(ROOT).as_posix()
    return next((d for d in DOMAIN_PACKAGES if rel.startswith(d)), None)


def arrow_violations(modules: dict[str, Path], graph: dict[str, set[str]]) -> list[str]:
    allowed = {layer: set(below) | {layer} for layer, _, below in LAYERS}
    exceptions = set(EXCEPTIONS)
    out: list[str] = []
    for name, targets in sorted(graph.items()):
        src = modules[name]
        src_layer = layer_of(src)
        src_rel = src.relative_to(ROOT).as_posix()
        for target in sorted(targets):
            dst = modules[target]
            dst_layer = layer_of(dst)
            if src_layer is None or dst_layer is None:
                continue  # reported by test_every_module_has_a_layer
            forbidden = (dst_layer not in allowed[src_layer]
                         and (src_rel, dst_layer) not in exceptions)
            src_domain, dst_domain = _domain_of(src), _domain_of(dst)
            across_domains = (src_layer == dst_layer == "domains" and src_domain != dst_domain
                              and dst_domain not in DOMAIN_PACKAGES.get(src_domain or "", []))
            if forbidden or across_domains:
                out.append(f"{name} -> {target}")
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def cycle_violations(modules: dict[str, Path], graph: dict[str, set[str]]) -> list[str]:
    out = []
    for component in strongly_connected(graph):
        directories = {modules[m].parent for m in component}
        if len(directories) > 1:
            out.append("cycle: " + ", ".join(component))
    return out


def all_violations() -> list[str]:
    modules, graph = import_graph()
    return arrow_violations(modules, graph) + cycle_violations(modules, graph)


# -- the tests ------------------------------------------------------------------------


def test_every_table_entry_exists():
    entries = [e for _, paths, _ in LAYERS for e in paths]
    entries += [path for path, _ in EXCEPTIONS] + list(DOMAIN_PACKAGES)
    entries += [d for allowed in DOMAIN_PACKAGES.values() for d in allowed]
    missing = [e for e in entries if not (ROOT / e).exists()
               or (e.endswith("/") != (ROOT / e).is_dir())]
    assert not missing, f"layer table names what does not exist: {missing}"
    names = [name for name, _, _ in LAYERS]
    unknown = [b for _, _, below in LAYERS for b in below if b not in names]
    unknown += [layer for _, layer in EXCEPTIONS if layer not in names]
    assert not unknown, f"layer table names unknown layers: {unknown}"


def test_every_module_has_a_layer():
    orphans = [str(p.relative_to(ROOT)) for p in production_files() if layer_of(p) is None]
    assert not orphans, f"modules in no layer (add them to LAYERS): {orphans}"


def test_no_forbidden_arrow_and_no_cycle_across_packages():
    found = set(all_violations())
    new = sorted(found - set(KNOWN_VIOLATIONS))
    fixed = sorted(set(KNOWN_VIOLATIONS) - found)
    assert not new, "layer violations:\n  " + "\n  ".join(new)
    assert not fixed, ("fixed, so remove from KNOWN_VIOLATIONS:\n  " + "\n  ".join(fixed))


def test_the_node_module_only_wires():
    """The composition root stays small: helpers live in their own agent modules."""
    lines = (ROOT / "meshcloud" / "agent" / "node.py").read_text().count("\n")
    assert lines <= 200, f"meshcloud/agent/node.py has {lines} lines (at most 200)"


def test_the_checker_sees_lazy_and_type_only_imports(tmp_path):
    """The graph builder itself: a lazy and a TYPE_CHECKING import both count."""
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from meshcloud.agent.node import Node\n"
              "def f():\n    from blobstore import api\n    import dht.core\n")
    fake = ROOT / "gossip" / "__layers_probe__.py"
    modules = {module_name(p): p for p in production_files()}
    modules["gossip.__layers_probe__"] = fake
    original = Path.read_text
    try:
        Path.read_text = lambda self, *a, **k: (source if self == fake  # type: ignore[method-assign]
                                                else original(self, *a, **k))
        found = imports_of(fake, modules)
    finally:
        Path.read_text = original  # type: ignore[method-assign]
    assert {"meshcloud.agent.node", "blobstore.api", "dht.core"} <= found
    graph = {"gossip.__layers_probe__": found, "meshcloud.agent.node": set(),
             "blobstore.api": set(), "dht.core": set()}
    violations = arrow_violations(modules, graph)
    assert "gossip.__layers_probe__ -> meshcloud.agent.node" in violations
    assert "gossip.__layers_probe__ -> blobstore.api" in violations
    assert "gossip.__layers_probe__ -> dht.core" not in violations


def test_cycles_across_directories_are_found_and_within_one_are_not():
    modules = {"a.x": ROOT / "a" / "x.py", "a.y": ROOT / "a" / "y.py",
               "b.z": ROOT / "b" / "z.py"}
    inside = {"a.x": {"a.y"}, "a.y": {"a.x"}, "b.z": set()}
    across = {"a.x": {"b.z"}, "b.z": {"a.y"}, "a.y": {"a.x"}}
    assert cycle_violations(modules, inside) == []
    assert cycle_violations(modules, across) == ["cycle: a.x, a.y, b.z"]


if __name__ == "__main__":
    report = all_violations()
    orphans = [str(p.relative_to(ROOT)) for p in production_files() if layer_of(p) is None]
    for line in report:
        print(line)
    if orphans:
        print("no layer:", ", ".join(orphans))
    arrows = sum(1 for v in report if not v.startswith("cycle"))
    print(f"{arrows} forbidden arrows, {len(report) - arrows} cycles across packages",
          file=sys.stderr)
    sys.exit(1 if report or orphans else 0)
