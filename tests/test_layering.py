"""The tree is the architecture: cv/ stays pure, tasks/ never reach into flows/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (ROOT / folder).rglob("*.py"):
        names: set[str] = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Attribute) and node.attr == "environ":
                names.add("os.environ")
        out[str(path.relative_to(ROOT))] = names
    return out


def test_cv_imports_no_orchestration_network_or_environment() -> None:
    banned = {
        "prefect",
        "boto3",
        "botocore",
        "httpx",
        "os.environ",
        "tasks",
        "flows",
        "deployments",
        "pydantic_settings",
    }
    offenders = {f: sorted(n & banned) for f, n in _imports("cv").items() if n & banned}
    assert not offenders, offenders


def test_tasks_do_not_import_flows_or_deployments() -> None:
    offenders = {
        f: sorted(n & {"flows", "deployments"})
        for f, n in _imports("tasks").items()
        if n & {"flows", "deployments"}
    }
    assert not offenders, offenders


def test_the_flow_reaches_the_decoder_without_torch() -> None:
    """Importing torch takes ~1 s of the ~1.5 s a model needs to load; the flow loads the
    model beside the decoder, which only pays if nothing the flow imports pulls torch in."""
    probe = (
        "import sys, flows.process_scan, flows.cli, tasks.frames, cv.streaming; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
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
        "from tasks.registry import DEFAULT_PACKAGE\n"
        "from tasks.models import classifier\n"
        "from cv.heads import classify_frames\n"
        "clf = classifier(DEFAULT_PACKAGE, tempfile.mkdtemp(), 'cpu')\n"
        "classify_frames(clf, [np.zeros((360, 640, 3), np.uint8)] * 2, 2)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sympy')[:5])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]
