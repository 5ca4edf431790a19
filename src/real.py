"""The real-data configuration as one command: ``make real DATA=<folder or archive>``.

    python src/real.py --data /data/chest-xray-pneumonia.zip            # what `make real` runs
    python src/real.py --data /data/chest_xray --recipe cpu -- -S epochs=1   # extra -S overrides last

Reads configs/real.yaml (the overrides, kept there and nowhere else), picks the ``gpu`` recipe when
torch sees a CUDA GPU and the ``cpu`` one otherwise, runs ``dvc exp run`` with ``-S`` for each,
prints each stage's wall time and where the results are. Not a pipeline stage: a driver around one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

USAGE = (
    "make real: pass the dataset, e.g.\n"
    "  make real DATA=/path/to/chest-xray-pneumonia.zip   # the Kaggle archive (or .tar.gz)\n"
    "  make real DATA=/path/to/chest_xray                 # an extracted folder (train/ test/ [val/], "
    "NORMAL/ PNEUMONIA/ inside)\n"
    "Optional: EXTERNAL='[name=]folder ...' (external validation sets, e.g. "
    "EXTERNAL=../shared/data/kermany224-external-a), RECIPE=cpu|gpu (default: gpu when torch sees CUDA), "
    "REAL_ARGS='-S epochs=1' (extra overrides; '-S ~models.vgg16' leaves a model out)."
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="", help="dataset folder or archive (Kaggle / Mendeley layout)")
    p.add_argument("--config", default="configs/real.yaml")
    p.add_argument("--recipe", default="auto", choices=["auto", "gpu", "cpu"])
    p.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="an external validation set (folder or archive with NORMAL/ and PNEUMONIA/), repeatable; "
        "replaces params.yaml's external.sets; NAME defaults to the folder's name",
    )
    p.add_argument("--dry-run", action="store_true", help="print the dvc command and exit")
    p.add_argument("extra", nargs="*", help="more dvc exp run arguments (after --), e.g. -S epochs=1")
    return p.parse_args(argv)


def choose_recipe(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def overrides(config: dict, recipe: str, data: str) -> list[str]:
    """``-S key=value`` arguments: data first, then ``common``, then the recipe (later wins)."""
    if recipe not in config:
        raise SystemExit(f"real: recipe {recipe!r} is not in the config (found {sorted(config)})")
    pairs = {"data.source": "path", "data.path": str(Path(data).expanduser().resolve())}
    pairs.update(config.get("common") or {})
    pairs.update(config[recipe] or {})
    args = []
    for k, v in pairs.items():
        args += ["-S", f"{k}={_value(v)}"]
    return args


def _present(tree: object, dotted: str) -> bool:
    for key in dotted.split(".") if dotted else []:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _pairs(args: list[str]) -> list[tuple[str, str]]:
    return [(args[i], args[i + 1]) for i in range(0, len(args) - 1, 2)]


def applicable(recipe: list[str], extra: list[str], params: dict) -> tuple[list[str], list[str]]:
    """The recipe's ``-S`` pairs and the user's extra arguments that apply to ``params`` (the workspace's
    params.yaml). A model can be left out of a run (``-S ~models.vgg16``): the recipe's settings under a key
    that ``extra`` removes, or that params.yaml no longer has (an earlier run left the model out), are dropped,
    and so is a removal of a key already gone. DVC refuses each of those."""
    removed = [v[1:] for flag, v in _pairs(extra) if flag in ("-S", "--set-param") and v.startswith("~")]
    kept = []
    for flag, value in _pairs(recipe):
        key = value.split("=", 1)[0].lstrip("+")
        parent = key.rpartition(".")[0]
        if _present(params, parent) and not any(key == r or key.startswith(r + ".") for r in removed):
            kept += [flag, value]
    user: list[str] = []
    i = 0
    while i < len(extra):
        if extra[i] in ("-S", "--set-param") and i + 1 < len(extra):
            value = extra[i + 1]
            if not (value.startswith("~") and not _present(params, value[1:].split("=", 1)[0])):
                user += extra[i : i + 2]
            i += 2
        else:
            user.append(extra[i])
            i += 1
    return kept, user


def external_overrides(specs: list[str], current: dict) -> list[str]:
    """``-S`` arguments replacing ``external.sets`` (``current``: params.yaml's) by ``specs`` ([NAME=]PATH).

    Without ``specs`` the folder and archive sets stay, and the synthetic ones go: a model trained on
    real radiographs scored on drawings would read as an external failure (the external stage refuses
    that pairing too).
    """
    from cxr.data.config import SYNTHETIC_SET  # here: the usage message needs no installed package

    args = []
    for name, spec in current.items():
        if specs or str(spec).strip().lower() == SYNTHETIC_SET:
            args += ["-S", f"~external.sets.{name}"]
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = re.sub(r"[^a-z0-9_]+", "_", Path(spec).name.split(".")[0].lower()).strip("_")
            name = name if name[:1].isalpha() else f"set_{name}"
        args += ["-S", f"++external.sets.{name}={Path(path).expanduser().resolve()}"]
    return args


def preflight(params: str | Path, dvc_args: list[str]) -> str | None:
    """What ``dvc exp run`` would make of params.yaml with the ``-S`` overrides in ``dvc_args``, tried on a
    scratch copy with DVC's own writer: None when the result is valid, else the one-line reason. A failed
    ``dvc exp run -S`` leaves the workspace's params.yaml rewritten (once, unparsable); this never touches it."""
    import shutil
    import tempfile

    from dvc.utils.hydra import apply_overrides

    from check_params import check  # the `params` stage's own check, beside this script in src/
    from cxr.config import ConfigError, read_yaml

    try:  # the file as it is, first: DVC's writer below would expand an alias bomb
        read_yaml(params)
    except ConfigError as exc:
        return f"{exc} ({params} was not changed)"
    sets = [dvc_args[i + 1] for i, a in enumerate(dvc_args[:-1]) if a in ("-S", "--set-param")]
    with tempfile.TemporaryDirectory(prefix="cxr-real-") as tmp:
        trial = Path(tmp) / "params.yaml"
        shutil.copyfile(params, trial)
        try:
            apply_overrides(trial, sets)
        except Exception as exc:  # DVC's own refusal (an unknown key, a bad value); hydra's reason is the cause
            reason = " ".join(str(exc.__cause__ or exc).split())
            return f"dvc exp run would refuse these overrides: {reason} ({params} was not changed)"
        try:
            data = read_yaml(trial)
        except ConfigError as exc:
            return (
                f"with these overrides DVC would write {params} as invalid YAML ({exc}; seen in a scratch copy); "
                f"{params} was not changed. A comment on the line of a mapping that an override empties does it"
            )
    problems = check(data) if isinstance(data, dict) else [f"not a mapping at the top level: {data!r:.80}"]
    return f"the overrides would make {params} invalid: " + "; ".join(problems) if problems else None


def run_timed(cmd: list[str]) -> tuple[int, list[tuple[str, float]]]:
    """Run ``cmd``, echoing its output; return its exit code and (stage, seconds) per stage it ran."""
    stages: list[tuple[str, float]] = []
    current, t_stage = None, time.monotonic()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None  # stdout=PIPE: typeshed types every Popen stream Optional
        for line in proc.stdout:
            sys.stdout.write(line)
            m = re.match(r"\s*Running stage '([^']+)'", line)
            if m:
                now = time.monotonic()
                if current:
                    stages.append((current, now - t_stage))
                current, t_stage = m.group(1), now
        code = proc.wait()
    if current:
        stages.append((current, time.monotonic() - t_stage))
    return code, stages


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data:
        print(USAGE, file=sys.stderr)
        return 2
    if not Path(args.data).expanduser().exists():
        print(f"make real: DATA={args.data} does not exist.\n{USAGE}", file=sys.stderr)
        return 2
    from cxr.config import ConfigError, read_yaml  # here, so that the usage message needs no third-party package

    try:
        config = read_yaml(args.config)
        params = read_yaml("params.yaml") or {}
    except ConfigError as exc:
        print(f"make real: error: {exc}", file=sys.stderr)
        return 2
    recipe = choose_recipe(args.recipe)
    ext = external_overrides(args.external, (params.get("external") or {}).get("sets") or {})
    recipe_args, extra = applicable(overrides(config, recipe, args.data), args.extra, params)
    cmd = ["dvc", "exp", "run", *recipe_args, *ext, *extra]
    print(f"[real] recipe {recipe} ({args.config}); running:\n  {' '.join(cmd)}", flush=True)
    problem = preflight("params.yaml", cmd[3:])
    if problem:
        print(f"make real: error: {problem}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    t0, started = time.monotonic(), time.time()
    code, stages = run_timed(cmd)
    total = time.monotonic() - t0
    print("\n[real] wall time per stage (s):")
    for name, sec in stages:
        print(f"  {name:<20} {sec:8.1f}")
    print(f"  {'total':<20} {total:8.1f}")
    if code != 0:
        print(f"[real] dvc exp run failed (exit code {code}); the output above says which stage and why.")
        return code
    print(
        "[real] results:\n"
        "  reports/results.md        the results tables (test split, external sets; chosen model in bold)\n"
        "  metrics/eval/<model>.json test metrics with 95 % CIs; metrics/data.json: images per split, duplicates\n"
        "  figures/eval/, figures/compare/   confusion matrices, ROC, gallery with Grad-CAM\n"
        "  dvc exp show --only-changed       this experiment beside the others\n"
        "  mlflow ui --backend-store-uri sqlite:///mlflow.db   every training run"
    )
    report = Path("reports/results.md")
    if report.is_file() and report.stat().st_mtime >= started:  # a run with a stage target may not reach compare
        print("\n" + "\n".join(result_tables(report.read_text())))
    return 0


def result_tables(markdown: str) -> list[str]:
    """The report's tables before the sweep: the internal test, then each external set (with its heading)."""
    out = []
    for line in markdown.split("## Batch size")[0].splitlines():
        if line.startswith("## External validation"):
            out += ["", line]
        elif line.startswith("|"):
            out.append(line)
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
