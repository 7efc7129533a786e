"""The tree is the architecture: what may import what (docs/design.md, "Layout").

    cv                    pure algorithms: no Prefect, no AWS, no network, no environment
    scanflow (core)       settings, storage and access, contracts, notifications, models,
                          the local stack: cv and third parties only
    tasks                 Prefect tasks: cv and scanflow
    flows                 Prefect flows: tasks, scanflow (and cv's reason codes)
    deployments           how it runs in production: scanflow (and cv, whose synthetic scans
                          the rehearsals upload)
    scanflow.cli          the command line, on top: anything
    the Lambda trigger    the standard library only (it ships alone)

Every import that runs counts: at the top of a module, inside a function, and a module
named as a string to importlib.import_module (not those only the type checker reads). The
module graph has no cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cv", "scanflow", "tasks", "flows", "deployments")
TRIGGER = "deployments.trigger.scanflow_trigger"


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, by any means (absolute names)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):  # ``if TYPE_CHECKING:`` imports are for the type checker
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
        elif isinstance(node, ast.Attribute) and node.attr == "environ":
            found.add("os.environ")
    return found


GRAPH = {name: _imports(name, path) for name, path in _modules()}


def _ours(imported: set[str]) -> set[str]:
    """The project modules among ``imported``: ``from pkg import module`` names a module,
    ``from module import name`` its module."""
    out = set()
    for m in imported:
        while m and m not in GRAPH:
            m = m.rpartition(".")[0]
        if m:
            out.add(m)
    return out


def _layer(module: str) -> str:
    if module == TRIGGER or module.startswith(TRIGGER + "."):
        return "trigger"
    if module == "scanflow.cli" or module.startswith("scanflow.cli."):
        return "cli"
    return module.split(".")[0]


ALLOWED = {
    "cv": {"cv"},
    "scanflow": {"cv", "scanflow"},
    "tasks": {"cv", "scanflow", "tasks"},
    "flows": {"cv.errors", "scanflow", "tasks", "flows"},
    "deployments": {"cv", "scanflow", "deployments"},
    "cli": {"cv", "scanflow", "tasks", "flows", "deployments", "cli"},
    "trigger": {"trigger"},
}


def _allowed(importer: str, imported: str) -> bool:
    target = _layer(imported)
    rules = ALLOWED[_layer(importer)]
    return target in rules or any(imported == r or imported.startswith(r + ".") for r in rules)


def test_each_layer_imports_only_what_it_may() -> None:
    offenders = {
        name: sorted(m for m in _ours(found) if not _allowed(name, m))
        for name, found in GRAPH.items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders


def test_the_module_graph_has_no_cycle() -> None:
    edges = {name: _ours(found) - {name} for name, found in GRAPH.items()}
    # a package's __init__ is not an edge to its modules (it holds no code here)
    for name in edges:
        edges[name] = {m for m in edges[name] if not name.startswith(m + ".")}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = visiting[visiting.index(node) :] + [node]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        visiting.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for name in sorted(edges):
        visit(name)


def test_cv_imports_no_orchestration_network_or_environment() -> None:
    banned = ("prefect", "boto3", "botocore", "httpx", "os.environ", "pydantic_settings")
    offenders = {
        name: sorted(m for m in found if m.split(".")[0] in banned or m == "os.environ")
        for name, found in GRAPH.items()
        if _layer(name) == "cv"
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_trigger_needs_nothing_but_the_standard_library() -> None:
    stdlib = sys.stdlib_module_names
    offenders = {
        name: sorted(m for m in found if m.split(".")[0] not in stdlib and not _ours({m}))
        for name, found in GRAPH.items()
        if _layer(name) == "trigger"
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_command_line_parses_without_prefect() -> None:
    """Prefect reads its settings when imported: the command line points PREFECT_* at the
    right API after parsing, so what parses must not import it (scanflow.cli.main)."""
    probe = (
        "import sys, scanflow.cli.main; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'torch')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_the_flow_reaches_the_decoder_without_torch() -> None:
    """Importing torch takes ~1 s of the ~1.5 s a model needs to load; the flow loads the
    model beside the decoder, which only pays if nothing the flow imports pulls torch in."""
    probe = (
        "import sys, flows.process_scan, scanflow.cli.local, tasks.frames, cv.model.streaming; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_the_flow_process_holds_no_database_driver_or_worker() -> None:
    """`scanflow process` runs the flow in the process that starts the local stack; the
    stack's PostgreSQL set-up (asyncpg, SQLAlchemy) and process worker cost that flow ~15 MiB
    of peak RSS (measured: 527 vs 509 MiB on the 1080p bench scan) unless imported lazily."""
    heavy = ("asyncpg", "sqlalchemy", "prefect.workers.process", "prefect.server")
    probe = (
        "import sys, flows.process_scan, scanflow.cli.local, scanflow.local.stack; "
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_loading_and_running_the_model_does_not_import_sympy() -> None:
    """torch imports sympy (~0.4 s, in the model's load beside the decoder) only for
    symbolic shapes, which a module built on the meta device pulls in; ours are not."""
    probe = (
        "import sys, tempfile, numpy as np\n"
        "from scanflow.models.registry import DEFAULT_PACKAGE\n"
        "from scanflow.models.cache import classifier\n"
        "from cv.model.heads import classify_frames\n"
        "clf = classifier(DEFAULT_PACKAGE, tempfile.mkdtemp(), 'cpu')\n"
        "classify_frames(clf, [np.zeros((360, 640, 3), np.uint8)] * 2, 2)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sympy')[:5])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]
