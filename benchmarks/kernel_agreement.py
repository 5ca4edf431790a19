"""Do the default run's headline numbers depend on the CPU's kernels or its thread count?

    dvc repro preprocess                              # the default run's cache
    .venv/bin/python benchmarks/kernel_agreement.py   # about 10 minutes on 2 cores

PyTorch promises identical floats only for the same machine type and thread count: another
instruction set (AVX2, AVX-512, AMX) or another number of threads rounds differently, so a model
trained on another machine differs in its last bits, and a weakly learnt task amplifies that. This
trains every model of params.yaml exactly as `train@<model>` does (same params, same cache, same
seed) four times, each in its own process: as is (this CPU's fastest kernels, all cores), with
``ATEN_CPU_CAPABILITY=avx2`` (a CPU without AVX-512), with ``ATEN_CPU_CAPABILITY=default`` (no
vectorisation at all), and with one thread. It prints per model the kept epoch's validation
ROC-AUC and the test ROC-AUC under each variant, the model each variant selects, and the largest
difference from the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> (environment, threads; None = torch's default, all cores)
    "as is": ({}, None),
    "ATEN_CPU_CAPABILITY=avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, None),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, None),
    "1 thread": ({"OMP_NUM_THREADS": "1"}, 1),
}


def worker(params_path: str, cache: str, models: list[str], threads: int | None) -> dict:
    import torch
    from sklearn.metrics import roc_auc_score

    from cxr.config import load_params
    from cxr.data.cache import load_split
    from cxr.policy import ValidationPolicy
    from cxr.training.engine import predict_probabilities
    from cxr.training.fit import fit
    from cxr.training.run_config import resolve_run_config

    if threads:
        torch.set_num_threads(threads)
    params = load_params(params_path)
    train, val, test = (load_split(cache, s) for s in ("train", "val", "test"))
    out = {"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(), "models": {}}
    for name in models:
        cfg = resolve_run_config(params, name)
        evaluate = params.get("evaluate", {})
        result = fit(
            cfg,
            (train.images, train.labels),
            (val.images, val.labels),
            ValidationPolicy(
                threshold=evaluate.get("threshold", "youden"),
                fixed_threshold=float(evaluate.get("fixed_threshold", 0.5)),
            ),
            progress=False,
        )
        probs = predict_probabilities(
            result.model, test.images, mean=result.card.mean, std=result.card.std, image_size=cfg.image_size
        )
        out["models"][name] = {
            "val_auc": float(result.best["val_auc"]),
            "val_loss": float(result.best["val_loss"]),
            "test_auc": float(roc_auc_score(test.labels, probs)),
            "threshold": float(result.threshold),
        }
        print(f"  {name}: {out['models'][name]}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--cache", default=str(ROOT / "data" / "cache"))
    ap.add_argument("--models", nargs="+", help="default: every model of params.yaml")
    ap.add_argument("--data", help="unused (accepted like the other scripts' --data)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if not (Path(args.cache) / "info.json").is_file():
        print(f"kernel_agreement: no cache at {args.cache}; run `dvc repro preprocess` first", file=sys.stderr)
        return 2
    from cxr.config import load_params
    from cxr.evaluation.compare import select_best

    models = args.models or list(load_params(args.params)["models"])
    if args.worker:
        print(json.dumps(worker(args.params, args.cache, models, args.threads or None)))
        return 0

    results = {}
    for name, (env, threads) in VARIANTS.items():
        print(f"[{name}]", flush=True)
        cmd = [sys.executable, __file__, "--worker", "--params", args.params, "--cache", args.cache, "--models"]
        cmd += models + (["--threads", str(threads)] if threads else [])
        done = subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])

    names = list(results)
    print(
        "\nvariant: " + "; ".join(f"{n} = {results[n]['capability']}, {results[n]['threads']} thread(s)" for n in names)
    )
    header = (
        f"{'model':<14}" + "".join(f"{'val ' + n:>34}" for n in names) + "".join(f"{'test ' + n:>34}" for n in names)
    )
    print(header)
    worst = {"val_auc": 0.0, "test_auc": 0.0}
    for m in models:
        rows = [results[n]["models"][m] for n in names]
        for key in worst:
            worst[key] = max(worst[key], max(abs(r[key] - rows[0][key]) for r in rows))
        print(
            f"{m:<14}"
            + "".join(f"{r['val_auc']:>34.4f}" for r in rows)
            + "".join(f"{r['test_auc']:>34.4f}" for r in rows)
        )
    # As compare selects: on metrics/train/*.json, whose values are rounded to 6 decimals.
    selected = {
        n: select_best(
            {m: {k: round(results[n]["models"][m][k], 6) for k in ("val_auc", "val_loss")} for m in models},
            load_params(args.params)["train"]["select_metric"],
        )
        for n in names
    }
    print("selected on validation: " + ", ".join(f"{n}: {s}" for n, s in selected.items()))
    print(
        f"largest difference from '{names[0]}': validation ROC-AUC {worst['val_auc']:.4f}, "
        f"test ROC-AUC {worst['test_auc']:.4f} (target: <= 0.02); same selected model: "
        f"{'yes' if len(set(selected.values())) == 1 else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
