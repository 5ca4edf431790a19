"""Train a CPU recipe on the Kermany train split, score it on the external set A (benchmarks/README.md).

    PYTHONPATH=src python benchmarks/external_recipe.py cpu            # the `cpu` recipe of configs/real.yaml
    PYTHONPATH=src python benchmarks/external_recipe.py baseline cpu   # side by side
    PYTHONPATH=src python benchmarks/external_recipe.py --list

The train data are split per patient exactly as the pipeline does (``fetch`` -> ``build_manifest``
-> ``build_cache`` into ``--work``, built once per cache size), then ``fit`` trains the recipe's
model on train; validation alone chooses the kept epoch and the threshold. Set A is decoded with
the cache's ``decode_image`` (same size and resize), predicted with the evaluation transform and
scored at the validation threshold; it never chooses anything. Each recipe's val and set-A
probabilities land in ``--work/<recipe>.npz``, its row in ``--work/<recipe>.json`` (``--reuse`` reads it
instead of training again).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.special import expit

from cxr import CLASSES
from cxr.calibration import logit
from cxr.config import EvaluateConfig, load_params, parse, section
from cxr.data.cache import build_cache, decode_image, load_info, load_split
from cxr.data.config import DataConfig, PreprocessConfig, SplitConfig
from cxr.data.manifest import build_manifest, write_manifest
from cxr.data.sources import fetch
from cxr.metrics import binary_metrics, bootstrap_ci, choose_threshold
from cxr.policy import ValidationPolicy
from cxr.training.engine import predict_probabilities
from cxr.training.fit import fit
from cxr.training.run_config import resolve_run_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN = REPO_ROOT.parent / "shared" / "data" / "kermany224"
DEFAULT_SET_A = REPO_ROOT.parent / "shared" / "data" / "kermany224-external-a"


def real_recipe(name: str) -> dict:
    """configs/real.yaml's ``common`` + ``name`` overrides, as `make real` applies them."""
    real = yaml.safe_load((REPO_ROOT / "configs" / "real.yaml").read_text())
    return {**real["common"], **real[name]}


# Every recipe tried for the cpu recipe stays here, so each figure of benchmarks/README.md can be rerun.
BASELINE = {"preprocess.cache_size": 144, "image_size": 128, "batch_size": 32, "models.cnn.epochs": 15}
P96 = {"preprocess.cache_size": 112, "image_size": 96, "batch_size": 32, "epochs": 10, "models.cnn.epochs": 10}
INTENSITY = {
    "train.augment.brightness": 0.3,
    "train.augment.contrast": 0.4,
    "train.augment.gamma": [0.6, 1.6],
    "train.augment.blur_p": 0.5,
    "train.augment.blur_sigma": 1.0,
    "train.augment.noise_std": 0.03,
}
# sharpness differs by class in train (NORMAL originals ~1700x1400 px, PNEUMONIA ~1200x800): blur the sharp and
# sharpen the soft, so that sharpness tells nothing
BLUR_SHARPEN = {
    "train.augment.blur_p": 0.5,
    "train.augment.blur_sigma": 2.0,
    "train.augment.sharpen_p": 0.5,
    "train.augment.sharpen_amount": 1.5,
    "train.augment.contrast": 0.4,
}

# name -> (model trained, -S style overrides on params.yaml). "cpu" is whatever configs/real.yaml says.
RECIPES = {
    "baseline": ("cnn", BASELINE),  # the cpu recipe before the search
    "cpu": ("resnet_small", real_recipe("cpu")),
    # short proxies (96 px, 10 epochs) ranking the ideas
    "p96-cnn": ("cnn", P96),
    "p96-cnn-int": ("cnn", {**P96, **INTENSITY}),
    "p96-rs": ("resnet_small", P96),
    "p96-rs-int": ("resnet_small", {**P96, **INTENSITY}),
    "p96-rs-crop": ("resnet_small", {**P96, "train.augment.crop_scale": [0.5, 1.0]}),
    # set A's misread normals look hazy, like the train pneumonias: blur so sharpness is no shortcut
    "p96-rs-blur": (
        "resnet_small",
        {**P96, "train.augment.blur_p": 0.5, "train.augment.blur_sigma": 2.0, "train.augment.contrast": 0.4},
    ),
    "p96-rs-blur8": ("resnet_small", {**P96, "train.augment.blur_p": 0.8, "train.augment.blur_sigma": 2.5}),
    "p96-rs-blursharp": ("resnet_small", {**P96, **BLUR_SHARPEN}),
    "p64-rs": ("resnet_small", {**P96, "preprocess.cache_size": 72, "image_size": 64}),
    # full-budget candidates; rs96-cos20 trains the very model of `cpu` (same RunConfig), which differs only
    # in its threshold rule (midpoint instead of youden)
    "rs96-cos20": (
        "resnet_small",
        {"preprocess.cache_size": 112, "image_size": 96, "epochs": 20, "train.scheduler": "cosine"},
    ),
    "rs96-cos20-seed7": (  # the same recipe, another seed: how much of a difference is noise (not yet measured)
        "resnet_small",
        {"preprocess.cache_size": 112, "image_size": 96, "epochs": 20, "train.scheduler": "cosine", "seed": 7},
    ),
    "rs96-cos20-bs": (
        "resnet_small",
        {"preprocess.cache_size": 112, "image_size": 96, "epochs": 20, "train.scheduler": "cosine", **BLUR_SHARPEN},
    ),
    "rs128-cos15": (
        "resnet_small",
        {"preprocess.cache_size": 144, "image_size": 128, "epochs": 15, "train.scheduler": "cosine"},
    ),
}


def apply_overrides(params: dict, overrides: dict) -> dict:
    """``dvc exp run -S key=value`` on a copy: every key must already exist."""
    out = copy.deepcopy(params)
    for dotted, value in overrides.items():
        node, *path = out, *dotted.split(".")
        for key in path[:-1]:
            node = node[key]
        if path[-1] not in node:
            sys.exit(f"recipe key {dotted!r} is not in params.yaml")
        node[path[-1]] = value
    return out


def train_cache(data: Path, work: Path, params: dict) -> Path:
    """The pipeline's fetch -> split -> preprocess of ``data`` into ``work`` (once per cache size/resize)."""
    prep = section(params, "preprocess", PreprocessConfig)
    cache = work / f"cache{prep.cache_size}-{prep.resize}"
    if (cache / "info.json").is_file():
        return cache
    raw, manifest = work / "raw", work / "manifest.csv"
    if not manifest.is_file():
        data_cfg = parse(DataConfig, {**params["data"], "source": "path", "path": str(data)}, "data")
        fetch(data_cfg, raw, progress=False)
        write_manifest(build_manifest(raw, section(params, "split", SplitConfig), progress=False).manifest, manifest)
    build_cache(manifest, raw, cache, prep, progress=False)
    return cache


def load_set_a(root: Path, size: int, resize: str) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``root``/test/{NORMAL,PNEUMONIA} (or ``root``/{...}) decoded as the cache decodes."""
    base = root / "test" if (root / "test").is_dir() else root
    items = [(p, i) for i, c in enumerate(CLASSES) for p in sorted((base / c).glob("*")) if p.is_file()]
    if not items:
        sys.exit(f"no set-A images under {base}/{{{','.join(CLASSES)}}}")
    return np.stack([decode_image(p, size, resize) for p, _ in items]), np.array([i for _, i in items])


def run(name: str, args, seed: int | None = None) -> dict:
    model, overrides = RECIPES[name]
    if seed is not None:  # --seeds: the same recipe, another seed (initialisation, shuffling, augmentation)
        overrides, name = {**overrides, "seed": seed}, f"{name}@seed{seed}"
    saved = args.work / f"{name}.json"
    if args.reuse and saved.is_file():
        print(f"{name}: reusing {saved}", flush=True)
        return json.loads(saved.read_text())
    params = apply_overrides(load_params(REPO_ROOT / "params.yaml"), overrides)
    cfg = resolve_run_config(params, model)
    if args.epochs:
        cfg = cfg.replace(epochs=args.epochs)
    ev = section(params, "evaluate", EvaluateConfig)
    cache = train_cache(args.data, args.work, params)
    info = load_info(cache)
    tr, va = load_split(cache, "train"), load_split(cache, "val")
    t0 = time.perf_counter()
    res = fit(
        cfg,
        (np.asarray(tr.images), tr.labels),
        (np.asarray(va.images), va.labels),
        # the threshold only: the probabilities stay raw, so set_a_clinical.py replays the whole policy on them
        ValidationPolicy(threshold=ev.threshold, fixed_threshold=ev.fixed_threshold),
        device="cpu",
        progress=args.progress,
        cache_resize=info["resize"],
    )
    minutes = (time.perf_counter() - t0) / 60
    x_a, y_a = load_set_a(args.set_a, info["cache_size"], info["resize"])
    card = res.card
    p_a = predict_probabilities(res.model, x_a, mean=card.mean, std=card.std, image_size=card.image_size)
    np.savez(args.work / f"{name}.npz", val_probs=res.val_probs, val_labels=res.val_labels, a_probs=p_a, a_labels=y_a)
    torch.save(res.model.state_dict(), args.work / f"{name}.pt")
    m = binary_metrics(y_a, p_a, card.threshold)
    ci = bootstrap_ci(y_a, p_a, card.threshold, n_resamples=ev.n_resamples, seed=ev.seed)["roc_auc"]
    result = {
        "recipe": name,
        "model": model,
        "px": cfg.image_size,
        "epochs": len(res.history),
        "best_epoch": res.best["best_epoch"],
        "train_min": minutes,
        "val_auc": res.best["val_auc"],
        "threshold": card.threshold,
        "rule": ev.threshold,
        "auc": m["roc_auc"],
        "auc_ci": ci,
        "acc": m["accuracy"],
        "sens": m["sensitivity"],
        "spec": m["specificity"],
        "bal_acc": m["balanced_accuracy"],
        "overrides": overrides,
    }
    saved.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def row(r: dict) -> str:
    lo, hi = r["auc_ci"]
    return (
        f"{r['recipe']:<22} {r['model']:<13} {r['px']:>4} {r['epochs']:>3} {r['best_epoch']:>4} {r['train_min']:>6.1f} "
        f"{r['val_auc']:>7.4f} {r['rule']:>7} {r['threshold']:>6.3f}  {r['auc']:.3f} [{lo:.3f}, {hi:.3f}] "
        f"{100 * r['acc']:>5.1f} {100 * r['sens']:>5.1f} {100 * r['spec']:>5.1f} {100 * r['bal_acc']:>6.1f}"
    )


HEADER = (
    f"{'recipe':<22} {'model':<13} {'px':>4} {'ep':>3} {'best':>4} {'min':>6} {'val_auc':>7} {'rule':>7} "
    f"{'thr':>6}  set-A AUC [95% CI]     {'acc':>5} {'sens':>5} {'spec':>5} {'balacc':>6}"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*", default=["cpu"], help=f"recipe names: {', '.join(RECIPES)}")
    ap.add_argument("--list", action="store_true", help="print the recipes and exit")
    ap.add_argument("--data", type=Path, default=DEFAULT_TRAIN, help="train source: train/{NORMAL,PNEUMONIA}")
    ap.add_argument("--set-a", type=Path, default=DEFAULT_SET_A, help="external set: test/{NORMAL,PNEUMONIA}")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cxr-external-recipe"), help="caches and predictions")
    ap.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (quick proxy runs)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--progress", action="store_true", help="per-epoch lines")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="run each recipe once per seed; print mean +- sd too"
    )
    ap.add_argument(
        "--ensemble", action="store_true", help="with --seeds: also score the seeds' mean-logit ensemble (post hoc)"
    )
    ap.add_argument("--reuse", action="store_true", help="take a run's result from --work/<recipe>.json when there")
    args = ap.parse_args(argv)
    if args.list:
        for name, (model, overrides) in RECIPES.items():
            print(f"{name}: {model} {overrides}")
        return 0
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; set A: {args.set_a}", flush=True)
    results = []
    for name in args.recipes:
        for seed in args.seeds or [None]:
            results.append(run(name, args, seed))
            print(HEADER + "\n" + row(results[-1]), flush=True)
    print("\n" + HEADER)
    for r in results:
        print(row(r))
    if args.seeds and len(args.seeds) > 1:
        print(seed_spread(results, args.recipes, args.seeds))
        if args.ensemble:
            for name in args.recipes:
                print(seed_ensemble(args, name, args.seeds))
    return 0


SPREAD = (
    ("auc", "set-A AUC", 1),
    ("acc", "acc %", 100),
    ("sens", "sens %", 100),
    ("spec", "spec %", 100),
    ("bal_acc", "bal. acc %", 100),
    ("val_auc", "val AUC", 1),
)


def seed_spread(results: list[dict], recipes: list[str], seeds: list[int]) -> str:
    """Per recipe, the mean and sample standard deviation over the seeds of each set-A metric."""
    lines = [f"\nover seeds {seeds} (mean +- sd, n = {len(seeds)}):"]
    for name in recipes:
        runs = [r for r in results if r["recipe"].split("@seed")[0] == name]
        cells = []
        for key, label, scale in SPREAD:
            v = np.array([r[key] for r in runs], dtype=float) * scale
            digits = 3 if scale == 1 else 1
            cells.append(f"{label} {v.mean():.{digits}f} +- {v.std(ddof=1):.{digits}f}")
        lines.append(f"{name}: " + ", ".join(cells))
    return "\n".join(lines)


def seed_ensemble(args, name: str, seeds: list[int]) -> str:
    """The seeds' models as one: the mean of their logits, on validation and set A, from the saved
    predictions (no training). Its threshold is chosen on the ensemble's validation probabilities by the
    recipe's rule, as a single run's is; set A only scores it."""
    saved = [np.load(args.work / f"{name}@seed{s}.npz") for s in seeds]
    for key in ("val_labels", "a_labels"):
        if any(not np.array_equal(f[key], saved[0][key]) for f in saved):
            sys.exit(f"{name}: the seeds' {key} differ; the ensemble needs the same images in the same order")
    val, a = (expit(np.mean([logit(f[k]) for f in saved], axis=0)) for k in ("val_probs", "a_probs"))
    ev = section(apply_overrides(load_params(REPO_ROOT / "params.yaml"), RECIPES[name][1]), "evaluate", EvaluateConfig)
    threshold = choose_threshold(saved[0]["val_labels"], val, method=ev.threshold, default=ev.fixed_threshold)
    y_a = saved[0]["a_labels"]
    m = binary_metrics(y_a, a, threshold)
    lo, hi = bootstrap_ci(y_a, a, threshold, n_resamples=ev.n_resamples, seed=ev.seed)["roc_auc"]
    return (
        f"{name} ensemble of seeds {seeds} (mean logit, {ev.threshold} threshold {threshold:.3f} on validation): "
        f"set-A AUC {m['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}], acc {100 * m['accuracy']:.1f}, "
        f"sens {100 * m['sensitivity']:.1f}, spec {100 * m['specificity']:.1f}, "
        f"bal. acc {100 * m['balanced_accuracy']:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
