"""The package layering of ``scripts/`` (docs/architecture.md), read from the source with ``ast``.

Each package may import only the packages listed for it in ``ALLOWED`` (imports inside functions count too).
In words: ``common``, ``networks`` and ``synthetic`` import nothing else of ``scripts``; ``data`` only ``common``;
``inference`` never ``outputs`` (the writer is passed in by the config); no runtime package imports ``reports``
or ``synthetic``. ``scripts/__init__.py`` imports nothing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUNDLE_ROOT

RUNTIME = {"common", "data", "networks", "training", "evaluation", "inference", "outputs", "pruning", "partitioning"}
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "networks": set(),
    "synthetic": set(),
    "data": {"common"},
    "training": {"common", "data", "networks"},
    "evaluation": {"common", "data"},
    "inference": {"common", "data", "networks"},
    "outputs": {"common", "data"},
    "pruning": {"common", "data", "networks"},
    "partitioning": {"common", "data", "networks", "pruning"},
    # the console command, the Python API and the checked bundle front: the top of the runtime stack (issue 15)
    "cli": RUNTIME,
    # not runtime code: the docs generators and the demo may use everything
    "reports": RUNTIME | {"synthetic"},
    "demo": RUNTIME | {"reports", "synthetic"},
}


def _module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, package_root: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved), at any depth of the file."""
    module = _module_name(path, package_root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # "from . import x" imports x
    return found


def import_graph(package_root: Path) -> dict[str, set[str]]:
    """``{file (relative to the bundle root): {top-level parts of scripts it imports}}``."""
    name = package_root.name
    graph = {}
    for path in sorted(package_root.rglob("*.py")):
        parts = set()
        for target in _imported_modules(path, package_root):
            pieces = target.split(".")
            if pieces[0] == name and len(pieces) > 1:
                parts.add(pieces[1])
        graph[str(path.relative_to(package_root.parent))] = parts
    return graph


def _part_of(file: str) -> str:
    """``scripts/inference/streaming.py`` -> ``inference``; ``scripts/demo.py`` -> ``demo``."""
    return Path(file).with_suffix("").parts[1]


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per forbidden import: ``scripts/x/y.py (x) imports z``; unknown parts are violations too."""
    problems = []
    for file, imported in graph.items():
        if file.endswith("__init__.py") and len(Path(file).parts) == 2:
            continue  # scripts/__init__.py: checked on its own below
        part = _part_of(file)
        if part not in ALLOWED:
            problems.append(f"{file}: part {part!r} of scripts/ has no layering rule (add it to ALLOWED)")
            continue
        for other in sorted(imported - {part}):
            if other not in ALLOWED[part]:
                problems.append(f"{file} ({part}) imports scripts.{other}")
    return problems


def test_scripts_packages_import_one_way():
    graph = import_graph(BUNDLE_ROOT / "scripts")
    assert len(graph) > 40, "the scan found too few modules"
    assert layering_violations(graph) == []


def test_every_package_has_a_docstring_saying_what_it_is():
    for init in sorted((BUNDLE_ROOT / "scripts").glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring.splitlines()[0]) > 20, f"{init}: no one-line docstring"


def test_scripts_init_imports_nothing():
    tree = ast.parse((BUNDLE_ROOT / "scripts" / "__init__.py").read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, scripts; print(sorted(m for m in sys.modules if m.startswith('scripts.')))"],
        cwd=BUNDLE_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


# ---------------------------------------------------------------------------------------------------------------
# the check itself fails when it should


@pytest.mark.parametrize("part,line", [
    ("networks", "from ..common.errors import InputError"),
    ("common", "import scripts.data.layout"),
    ("data", "from ..inference.streaming import StreamingSegmenter"),
    ("data", "from ..evaluation import regions"),
    ("inference", "from ..outputs.writer import write_segmentation"),
    ("inference", "def f():\n    from ..outputs import writer  # a lazy import counts too\n"),
    ("training", "from ..reports.workflow import run_bundle"),
    ("pruning", "from ..synthetic.phantoms import generate_phantom"),
    ("evaluation", "from scripts.outputs import preview"),
])
def test_forbidden_import_in_a_temporary_module_is_reported(tmp_path, part, line):
    package = tmp_path / "scripts"
    (package / part).mkdir(parents=True)
    (package / "__init__.py").write_text('"""docstring"""\n')
    (package / part / "__init__.py").write_text('"""docstring"""\n')
    (package / part / "bad.py").write_text(line + "\n")
    problems = layering_violations(import_graph(package))
    assert len(problems) == 1 and problems[0].startswith(f"scripts/{part}/bad.py ({part}) imports scripts.")


def test_allowed_imports_in_a_temporary_module_pass(tmp_path):
    package = tmp_path / "scripts"
    (package / "inference").mkdir(parents=True)
    (package / "inference" / "ok.py").write_text(
        "from ..common.errors import InputError\nfrom ..data import layout\nfrom . import ok\nimport numpy\n")
    assert layering_violations(import_graph(package)) == []


def test_synthetic_graph_with_an_unknown_part_is_reported():
    graph = {"scripts/newpart/x.py": {"common"}, "scripts/outputs/w.py": {"common", "data"}}
    assert layering_violations(graph) == [
        "scripts/newpart/x.py: part 'newpart' of scripts/ has no layering rule (add it to ALLOWED)"]
