"""The layout's promises, checked on the source: the import graph of `qchan` has no
circle, the kernel's workers never import the queue, and adapters import only the
contract side of the core."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
FOLDERS = {"channels": "qchan", "adapters": "qchan.adapters"}


def _modules() -> dict[str, pathlib.Path]:
    """Every module of both folders by the name it installs as."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The qchan modules `name` imports anywhere (module level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod
            targets = [
                f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin
                for a in node.names
            ]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_circle() -> None:
    graph = _graph()
    assert len(graph) > 40, "the walk found the modules"
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_kernel_workers_never_see_the_queue() -> None:
    graph = _graph()
    for worker in ("emitter", "consumer", "listener", "stats", "routes", "context"):
        assert "qchan.kernel.queue" not in graph[f"qchan.kernel.{worker}"], worker


def test_the_core_below_the_kernel_imports_no_kernel_nor_application_module() -> None:
    """Channels, messages, codecs and the adapter contract stand on their own."""
    graph = _graph()
    base = [
        "chan",
        "select",
        "errors",
        "message",
        "event",
        "envelopes",
        "transfer",
        "codec",
        "msgspec_codec",
        "retry",
        "adapter",
        "urls",
        "options",
        "logs",
        "tracing",
    ]
    above = (
        "qchan.kernel",
        "qchan.cli",
        "qchan.testing",
        "qchan.pytest_plugin",
        "qchan.endpoints",
        "qchan.worker",
        "qchan.aws",
    )
    for name in base:
        bad = {m for m in graph[f"qchan.{name}"] if m.startswith(above)}
        assert not bad, f"qchan.{name} imports {bad}"


def test_adapters_import_the_contract_not_the_kernel() -> None:
    graph = _graph()
    for name, imports in graph.items():
        if name.startswith("qchan.adapters"):
            bad = {
                m
                for m in imports
                if m.startswith(
                    ("qchan.kernel", "qchan.cli", "qchan.endpoints", "qchan.worker", "qchan.aws")
                )
            }
            assert not bad, f"{name} imports {bad}"


def test_aws_sits_beside_the_worker_and_nothing_imports_it() -> None:
    """qchan.aws (Lambda handlers) imports the core up to the worker level, never an adapter
    (so never boto3), the CLI or the testing kit; no other module imports it."""
    graph = _graph()
    aws = {name for name in graph if name == "qchan.aws" or name.startswith("qchan.aws.")}
    assert {"qchan.aws", "qchan.aws._handler", "qchan.aws._sources"} <= aws
    for name in aws:
        bad = {
            m for m in graph[name] if m.startswith(("qchan.adapters", "qchan.cli", "qchan.testing"))
        }
        assert not bad, f"{name} imports {bad}"
    for name, imports in graph.items():
        if name not in aws:
            assert not imports & aws, f"{name} imports {imports & aws}"


def test_nothing_imports_the_pytest_plugin() -> None:
    """Only pytest loads qchan.pytest_plugin (it imports pytest): `import qchan` never does."""
    graph = _graph()
    assert "qchan.pytest_plugin" in graph
    for name, imports in graph.items():
        assert "qchan.pytest_plugin" not in imports, name


def test_outbox_and_idempotency_sit_beside_the_worker() -> None:
    """qchan.outbox (publish on commit) imports the base, the endpoints and the postgres
    adapter, never the kernel's threads; only the CLI (`qchan relay`) imports it.
    qchan.idempotency imports only the base (its stores' clients lazily)."""
    graph = _graph()
    outbox = {n for n in graph if n == "qchan.outbox" or n.startswith("qchan.outbox.")}
    assert {"qchan.outbox", "qchan.outbox._relay", "qchan.outbox._names"} <= outbox
    for name in outbox:
        bad = {
            m
            for m in graph[name]
            if m.startswith(("qchan.kernel.", "qchan.worker", "qchan.cli", "qchan.aws"))
            or (m.startswith("qchan.adapters") and not m.startswith("qchan.adapters.postgres"))
        }
        assert not bad, f"{name} imports {bad}"
    for name, imports in graph.items():
        if name not in outbox and not name.startswith("qchan.cli"):
            assert not imports & outbox, f"{name} imports {imports & outbox}"
    bad = {
        m
        for m in graph["qchan.idempotency"]
        if m.startswith(("qchan.kernel", "qchan.cli", "qchan.adapters", "qchan.endpoints"))
    }
    assert not bad, f"qchan.idempotency imports {bad}"
