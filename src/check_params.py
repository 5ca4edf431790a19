"""Stage `params`: every key of params.yaml known and valid, before anything runs on it.

    python src/check_params.py --params params.yaml

DVC reruns a stage only when the params it declares change, so a new top-level key
(`dvc exp run -S +learning_rate=0.1`) or a typo in a section no stage has rerun for would be
ignored without a word. This stage declares the whole file (`params: - params.yaml:`), so any
change reruns it (it takes about a second) and a wrong key fails the experiment with the message.
"""

from __future__ import annotations

import argparse

from cxr import config as C
from cxr.schema import parse
from cxr.stage import run_stage


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
    args = ap.parse_args(argv)
    problems = check(_read(args.params))
    if problems:
        raise C.ConfigError(f"{len(problems)} problem(s) in {args.params}:\n  " + "\n  ".join(problems))
    print(f"params: {args.params} ok")
    return 0


def _read(path: str) -> dict:
    """params.yaml as a mapping, without load_params' top-level check (check() reports it with the rest)."""
    data = C.read_yaml(path) or {}
    if not isinstance(data, dict):
        raise C.ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


ERRORS = (C.ConfigError,)  # user-actionable (see cxr.stage)

if __name__ == "__main__":
    run_stage("params", main, ERRORS)
