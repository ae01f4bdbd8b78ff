"""The package's shape, read from its source: no import cycles, rq at two edges, provider libraries in
channels/ only, no private names of other libraries, short modules, and a light `alert-worker status`."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "alert_worker"
ROOT = PACKAGE.parent

# Enqueueing; running workers (the process, the thread-pooled worker class it runs by default, and the
# stop, scheduler and child-process guards every worker class it runs gets).
RQ_EDGES = {"alert_worker.rq_jobs", "alert_worker.worker", "alert_worker.threaded_worker", "alert_worker.rq_guard"}
PROVIDER_LIBRARIES = {"smtplib", "requests", "twilio"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """Every (module, names) imported at run time, at any depth; ``if TYPE_CHECKING`` blocks are skipped."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _sources() -> dict[str, tuple[Path, list[tuple[str, list[str]]]]]:
    result = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        result[name] = (path, _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"))
    return result


SOURCES = _sources()


def _internal_edges() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from alert_worker import x`` counts as importing x)."""
    edges: dict[str, set[str]] = {name: set() for name in SOURCES}
    for name, (_, imports) in SOURCES.items():
        for target, names in imports:
            candidates = [f"{target}.{n}" for n in names if f"{target}.{n}" in SOURCES] or [target]
            for candidate in candidates:
                if candidate in SOURCES and candidate != name and candidate != "alert_worker":
                    edges[name].add(candidate)
    return edges


def test_no_package_module_imports_another_in_a_circle() -> None:
    """Imports inside functions count too: a lazy import still ties the modules together."""
    edges = _internal_edges()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            walk(start, [start])
    assert cycles == []


def test_only_the_two_rq_edges_import_rq() -> None:
    """rq_jobs enqueues, worker (its threaded worker class, its guards) runs workers; nothing else imports rq."""
    importers = {
        name for name, (_, imports) in SOURCES.items() for target, _ in imports if target.split(".")[0] == "rq"
    }
    assert importers == RQ_EDGES


def test_only_the_channels_import_provider_libraries() -> None:
    """smtplib, requests and twilio errors are mapped once, at the channel boundary."""
    offenders = {
        name
        for name, (_, imports) in SOURCES.items()
        for target, _ in imports
        if target.split(".")[0] in PROVIDER_LIBRARIES and not name.startswith("alert_worker.channels")
    }
    assert offenders == set()


# namedtuple's public API is underscored so it cannot clash with field names.
_PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make"}


def test_nothing_reaches_a_private_attribute_of_an_imported_module() -> None:
    """No ``argparse._SubParsersAction`` or ``os._exit``-style use of another module's private names in code."""
    offenders = []
    for name, (path, _) in SOURCES.items():
        tree = ast.parse(path.read_text())
        modules = {
            alias.asname or alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if not alias.name.startswith("alert_worker")
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in _PUBLIC_UNDERSCORED
            ):
                offenders.append((name, f"{node.value.id}.{node.attr}"))
    assert offenders == []


def test_nothing_imports_a_private_name_of_another_library() -> None:
    """No ``from lib import _x`` and no private module path (psycopg_pool's internals pinned us once)."""
    offenders = [
        (name, target, names)
        for name, (_, imports) in SOURCES.items()
        for target, names in imports
        if not target.startswith("alert_worker")
        and (
            any(n.startswith("_") and n != "__future__" for n in names)
            or any(p.startswith("_") for p in target.split("."))
        )
        and target != "__future__"
    ]
    assert offenders == []


def test_alert_worker_status_loads_neither_rq_nor_a_provider_library_nor_the_executor() -> None:
    """The operator command runs in a fresh interpreter; afterwards sys.modules shows what it imported."""
    script = (
        "import sys\n"
        "from alert_worker.cli import main\n"
        "code = main(['status', 'some-id'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('rq', 'smtplib', 'requests', 'twilio') "
        "or m in ('alert_worker.executor', 'alert_worker.worker', 'alert_worker.rq_jobs'))\n"
        "print('LOADED', code, ','.join(heavy))\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere",  # a closed port: fails fast, after imports
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "ALERT_SEND_TIMEOUT_SECONDS": "0.5",
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    [line] = [line for line in done.stdout.splitlines() if line.startswith("LOADED")]
    assert line == "LOADED 1 ", done.stderr


def test_tests_are_marked_by_their_directory(request: pytest.FixtureRequest) -> None:
    """conftest adds ``unit`` here, so ``pytest -m unit`` runs this file without any pytestmark line."""
    assert request.node.get_closest_marker("unit") is not None


SHARED_TEST_HELPERS = ("WorkerProcess", "wait_until", "free_port", "scrubbed_environ", "child_env")


def test_shared_test_helpers_are_defined_once_in_tests_support() -> None:
    """One copy of each helper (issue 10); a crash-only ``WorkerProcess`` must subclass the shared one."""
    defined: dict[str, list[str]] = {name: [] for name in SHARED_TEST_HELPERS}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in defined:
                bases = [ast.unparse(b) for b in node.bases] if isinstance(node, ast.ClassDef) else []
                if any(base.endswith("WorkerProcess") for base in bases):
                    continue  # reuses the shared class
                defined[node.name].append(str(path.relative_to(ROOT)))
    assert defined == {name: ["tests/support/processes.py"] for name in SHARED_TEST_HELPERS}
