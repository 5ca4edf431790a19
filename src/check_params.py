"""Stage `params`: every key of params.yaml known and valid, before anything runs on it.

    python src/check_params.py --params params.yaml --resolved resolved

DVC reruns a stage only when the params it declares change, so a new top-level key
(`dvc exp run -S +learning_rate=0.1`) or a typo in a section no stage has rerun for would be
ignored without a word. This stage declares the whole file (`params: - params.yaml:`), so any
change reruns it (it takes a few seconds) and a wrong key fails the experiment with the message.

It then writes what each later stage uses, resolved (cxr.training.run_config): --resolved/train/<model>.json,
everything that decides that model's checkpoint (its overrides of the top-level knobs applied), and
--resolved/weights.json, the models that train from pretrained weights. train@<model> and weights depend on
these files, not on params.yaml's keys: their bytes change only when what the stage uses does.
"""

from __future__ import annotations

from cxr.stage import run_stage  # first: the stage says what it does before torch loads

# isort: split
import argparse
import json
from pathlib import Path

from cxr import config as C
from cxr.schema import parse
from cxr.training.run_config import TrainSettings, pretrained_weights


def check(params: dict) -> list[str]:
    """Every problem found (empty: all good); each message names the key and the fix."""
    problems = []
    try:
        C.check_top_level(params)
    except C.ConfigError as exc:
        problems += exc.problems
    known = {k: v for k, v in params.items() if k in C.Params.model_fields}
    try:
        parse(C.Params, known)
    except C.ConfigError as exc:
        problems += exc.problems
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--resolved", default=None, help="folder for each stage's resolved settings (train/, weights.json)")
    args = ap.parse_args(argv)
    params = _read(args.params)
    problems = check(params)
    if problems:
        raise C.ConfigError(f"{len(problems)} problem(s) in {args.params}:\n  " + "\n  ".join(problems))
    if args.resolved:
        write_resolved(params, Path(args.resolved))
    print(f"params: {args.params} ok")
    return 0


def write_resolved(params: dict, out: Path) -> None:
    """out/train/<model>.json for every model of params.yaml's list and out/weights.json (see the docstring)."""
    folder = out / "train"
    folder.mkdir(parents=True, exist_ok=True)
    models = list(params.get("models") or {})
    for stale in folder.glob("*.json"):  # a model taken off the list
        if stale.stem not in models:
            stale.unlink()
    for model in models:
        (folder / f"{model}.json").write_text(TrainSettings.from_params(params, model).to_json(), encoding="utf8")
    needed = json.dumps({"pretrained": pretrained_weights(params)}, indent=2, sort_keys=True) + "\n"
    (out / "weights.json").write_text(needed, encoding="utf8")


def _read(path: str) -> dict:
    """params.yaml as a mapping, without load_params' top-level check (check() reports it with the rest)."""
    data = C.read_yaml(path) or {}
    if not isinstance(data, dict):
        raise C.ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


ERRORS = (C.ConfigError,)  # user-actionable (see cxr.stage)

if __name__ == "__main__":
    run_stage("params", main, ERRORS)
