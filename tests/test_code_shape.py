"""Pieces small enough to hold in one's head: no module of src/ over 450 lines, no function over 80; MLflow
behind one door (cxr.tracking, and the served model's pyfunc module).

(Complexity over 15 is ruff's C901, run by `make test` before pytest.)
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
# The only code that imports mlflow: the tracking package, and the pyfunc module the served model runs.
MLFLOW_DOOR = ("cxr/tracking/", "cxr/serving/pyfunc.py")


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if ".egg-info" not in p.as_posix())


def test_no_module_over_450_lines():
    sizes = {p.relative_to(SRC).as_posix(): len(p.read_text().splitlines()) for p in _modules()}
    large = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not large, f"split these modules by concern: {large}"


def test_no_function_over_80_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"name the steps of these functions: {long}"


def _imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_mlflow_is_imported_behind_one_door():
    """Function-local imports included: a stage script or module that needs a run query or the registry asks
    cxr.tracking for it."""
    outside = [
        p.relative_to(SRC).as_posix()
        for p in _modules()
        if not p.relative_to(SRC).as_posix().startswith(MLFLOW_DOOR)
        and any(n == "mlflow" or n.startswith("mlflow.") for n in _imports_of(p))
    ]
    assert not outside, f"these import mlflow: move what they ask of it into cxr.tracking: {outside}"
    inside = [p for p in _modules() if p.relative_to(SRC).as_posix().startswith(MLFLOW_DOOR)]
    assert any("mlflow" in _imports_of(p) for p in inside)  # the door is where the imports are
