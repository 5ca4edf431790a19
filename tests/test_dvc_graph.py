"""dvc.yaml cannot drift from the code: every module a stage runs is one of its deps, one model list.

DVC reruns a stage only when a declared dep changes, so a module a stage script imports but does not
declare (directly, or through a folder it declares) leaves `dvc status` clean after a change to it.
The stages are read through DVC itself (foreach expanded, ``${...}`` resolved), the imports with
``ast`` (function-local imports included), transitively inside ``src/cxr``.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from dvc.repo import Repo

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _package_of(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    return parts if parts[-1] == "__init__" and parts.pop() is not None else parts[:-1]


def _imported_names(path: Path) -> set[str]:
    """Every ``cxr...`` name an import statement anywhere in ``path`` may load (module or attribute)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                package = _package_of(path)
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from cxr.data import cache` loads a module
    if "pkgutil.iter_modules(__path__)" in path.read_text():  # cxr.models: imports every module of its folder
        names.update(f"{_package_name(path)}.{p.stem}" for p in path.parent.glob("*.py") if p.name != "__init__.py")
    return {n for n in names if n == "cxr" or n.startswith("cxr.")}


def _package_name(init: Path) -> str:
    return ".".join(init.parent.relative_to(SRC).parts)


def imported_files(script: Path) -> set[Path]:
    """The files of src/cxr that running ``script`` can execute: transitive imports, parent packages included."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in _imported_names(todo.pop()):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return seen


def _stages():
    with Repo(str(ROOT)) as repo:
        return [(s.addressing, s.cmd, [d.def_path for d in s.deps]) for s in repo.index.stages]


STAGES = _stages()


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name,cmd,deps", STAGES, ids=[s[0] for s in STAGES])
def test_every_imported_module_is_a_dep(name, cmd, deps):
    scripts = re.findall(r"\bpython3?\s+(src/\S+\.py)", cmd)
    assert scripts, f"{name}: no `python src/<script>.py` in its cmd {cmd!r}"
    script = ROOT / scripts[0]
    needed = {script} | imported_files(script)
    missing = sorted(p.relative_to(ROOT).as_posix() for p in needed if not _covered(p, deps))
    assert not missing, (
        f"stage {name} runs {missing} but dvc.yaml does not declare them as deps: a change there would leave "
        f"`dvc status` clean. Add them (or their folder) to the stage's deps."
    )


def test_the_import_reader_sees_function_local_and_transitive_imports(tmp_path):
    # The checker itself must be able to fail: split.py imports cxr.data.manifest, which imports limits.
    found = {p.relative_to(SRC).as_posix() for p in imported_files(SRC / "split.py")}
    assert {"cxr/__init__.py", "cxr/data/__init__.py", "cxr/data/manifest.py", "cxr/data/limits.py"} <= found
    assert not _covered(SRC / "cxr/data/limits.py", ["src/cxr/data/manifest.py", "src/cxr/datasets"])
    assert _covered(SRC / "cxr/data/limits.py", ["src/cxr/data"])


def _models() -> list[str]:
    return list(yaml.safe_load((ROOT / "params.yaml").read_text())["models"])


def test_one_model_list_drives_train_evaluate_compare_and_plots():
    """params.yaml's `models:` section is the list: train/evaluate foreach over it, compare and plots read it."""
    from cxr.models import list_models

    models = _models()
    assert sorted(models) == list_models(), "params.yaml models: and the registry name the same models"
    names = {s[0] for s in STAGES}
    for stage in ("train", "evaluate"):
        assert {n.split("@", 1)[1] for n in names if n.startswith(stage + "@")} == set(models)
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for stage in ("train", "evaluate"):
        assert dvc_yaml["stages"][stage]["foreach"] == "${models}", "foreach over params.yaml's models:"
    assert "--models" not in dvc_yaml["stages"]["compare"]["cmd"], "compare reads the list from params.yaml"
    # No stage, param list or plot names a model: adding one is params.yaml and its module. The plots read the
    # long-form files of stage plots (a model column); the weights stage follows the list through resolved/.
    content = json.dumps(dvc_yaml)  # keys and values, not the comments
    named = [m for m in models if re.search(rf"(?<![\w-]){re.escape(m)}(?![\w-])", content)]
    assert not named, f"dvc.yaml names {named}: a new model would need a line there"
    for plot in dvc_yaml["plots"]:
        ((plot_id, props),) = plot.items() if isinstance(plot, dict) else [(plot, None)]
        if isinstance(props, dict) and isinstance(props.get("y"), dict):
            assert all(f.startswith("plots/models/") for f in props["y"]), (plot_id, props["y"])
    assert dvc_yaml["stages"]["plots"]["outs"] == [{"plots/models": {"cache": False}}]
    assert (
        "params" not in dvc_yaml["stages"]["weights"]
        and "resolved/weights.json" in dvc_yaml["stages"]["weights"]["deps"]
    )


def test_folder_deps_hash_the_same_with_or_without_bytecode():
    """Every run writes src/cxr/**/__pycache__/*.pyc: DVC must not hash them into a folder dep such as
    src/cxr/data, or dvc.lock differs from clone to clone and `dvc status` flips after an import."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        ignore = repo.dvcignore
        for path in ("src/cxr/data/__pycache__/cache.cpython-311.pyc", "src/cxr/models/__pycache__/cnn.pyc"):
            assert ignore.is_ignored_file(str(ROOT / path)), f"{path} is hashed into its folder dep"
        assert not ignore.is_ignored_file(str(ROOT / "src/cxr/data/cache.py"))


def test_the_model_folder_counts_as_importing_every_module():
    """cxr.models imports its modules by walking the folder (a new model is one file): the import reader
    must follow that, or the modules the model files import would escape the check."""
    found = {p.relative_to(SRC).as_posix() for p in imported_files(SRC / "train.py")}
    assert {"cxr/models/cnn.py", "cxr/models/vit.py", "cxr/models/torchvision_backbones.py"} <= found
