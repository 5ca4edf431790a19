"""How much of a result is the seed: the spread of the headline metrics over DVC experiments that differ
only in ``seed``.

    dvc exp run --queue -S 'seed=1,2,3' && dvc queue start -j 1 && dvc queue status   # DVC's own grid
    cxr seeds                                  # mean +- sd per model and metric, from `dvc exp show --json`
    cxr seeds --out reports/seeds.md --figure figures/seeds.png

Every experiment (and the baseline commit) is read from ``dvc exp show --json``: its ``params.yaml`` and
its ``metrics/headline.json`` (the compare stage's DVC metric: validation ROC-AUC, test ROC-AUC, accuracy,
balanced accuracy, sensitivity, specificity per model). Runs whose params are the same once ``seed`` is
set aside form a group; each group with two or more seeds is summarised per model and metric: mean,
sample standard deviation, range and the seeds. Runs with other changes (an lr experiment) form groups of
their own and are reported only when they too span several seeds.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HEADLINE = "metrics/headline.json"
PARAMS = "params.yaml"
# metrics/headline.json's keys, in the order of the table, with a reader's name.
METRICS = {
    "val_auc": "validation ROC-AUC",
    "auc": "test ROC-AUC",
    "bacc": "test balanced accuracy",
    "sens": "test sensitivity",
    "spec": "test specificity",
    "acc": "test accuracy",
}


class SeedsError(ValueError):
    """Nothing to summarise, or DVC could not list the experiments: the message says what to run."""


@dataclass
class Run:
    name: str  # the experiment's name, or the baseline's branch / short rev
    seed: int
    params: dict[str, Any]  # params.yaml without seed
    headline: dict[str, dict[str, float | None]]  # metric -> model -> value


@dataclass
class SeedGroup:
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    def table(self) -> pd.DataFrame:
        """One row per (model, metric): mean, sd (ddof 1), min, max, n."""
        rows = []
        models = sorted({m for r in self.runs for block in r.headline.values() for m in block})
        for model in models:
            for key, label in METRICS.items():
                values = [r.headline.get(key, {}).get(model) for r in self.runs]
                v = np.array([x for x in values if x is not None], dtype=float)
                if len(v) < 2:
                    continue
                rows.append(
                    {
                        "model": model,
                        "metric": label,
                        "mean": v.mean(),
                        "sd": v.std(ddof=1),
                        "min": v.min(),
                        "max": v.max(),
                        "n": len(v),
                    }
                )
        return pd.DataFrame(rows, columns=["model", "metric", "mean", "sd", "min", "max", "n"])


def exp_show(repo: str | Path = ".") -> list[dict]:
    """``dvc exp show --json`` in ``repo``, parsed."""
    p = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True)
    if p.returncode != 0:
        raise SeedsError(f"`dvc exp show --json` failed in {repo}: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout)


def runs_from_exp_show(entries: list[dict]) -> list[Run]:
    """Every committed result in ``dvc exp show --json``: the baseline commits and their experiments
    (the workspace is skipped: it is either HEAD or uncommitted work)."""
    out = []
    for entry in entries:
        if entry.get("rev") == "workspace":
            continue
        baseline = entry.get("name") or str(entry.get("rev", ""))[:7]
        run = _run(baseline, entry.get("data") or {})
        if run:
            out.append(run)
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                run = _run(rev.get("name") or exp.get("name") or str(rev.get("rev", ""))[:7], rev.get("data") or {})
                if run:
                    out.append(run)
    return out


def _run(name: str, data: dict) -> Run | None:
    params = ((data.get("params") or {}).get(PARAMS) or {}).get("data")
    headline = ((data.get("metrics") or {}).get(HEADLINE) or {}).get("data")
    if not params or not headline or "seed" not in params:
        return None
    rest = {k: v for k, v in params.items() if k != "seed"}
    return Run(name=name, seed=int(params["seed"]), params=rest, headline=headline)


def seed_groups(runs: Iterable[Run]) -> list[SeedGroup]:
    """Runs grouped by their params without seed; only groups that span two or more seeds; one run per seed
    (the first listed: DVC lists the newest first)."""
    groups: dict[str, SeedGroup] = {}
    for run in runs:
        key = json.dumps(run.params, sort_keys=True, default=str)
        group = groups.setdefault(key, SeedGroup())
        if run.seed not in {r.seed for r in group.runs}:
            group.runs.append(run)
    return [g for g in groups.values() if len(g.seeds) >= 2]


def markdown(groups: list[SeedGroup]) -> str:
    if not groups:
        raise SeedsError(
            "no two runs differ only in their seed. Run the grid first: "
            "`dvc exp run --queue -S 'seed=1,2,3' && dvc queue start -j 1`, then `cxr seeds` when "
            "`dvc queue status` shows them done"
        )
    lines = ["# Seed spread", ""]
    for k, g in enumerate(groups, start=1):
        lines += [
            f"**Group {k}**: {len(g.runs)} runs, seeds {', '.join(map(str, g.seeds))} "
            f"({', '.join(r.name for r in g.runs)}); mean +- sample standard deviation over the seeds.",
            "",
        ]
        t = g.table()
        t["mean +- sd"] = [f"{m:.3f} +- {s:.3f}" for m, s in zip(t["mean"], t["sd"])]
        t["range"] = [f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(t["min"], t["max"])]
        lines += [t[["model", "metric", "mean +- sd", "range", "n"]].to_markdown(index=False), ""]
    return "\n".join(lines)


def figure(groups: list[SeedGroup]):
    """Per model, each seed's test ROC-AUC (dots) and the mean +- sd (bar), one panel per group."""
    from cxr.plots import figure_grid, model_color

    fig, axes = figure_grid(6.5, 3.6 * len(groups), nrows=len(groups), layout="constrained")
    for ax, (k, g) in zip(axes[:, 0], enumerate(groups, start=1)):
        t = g.table()
        t = t[t["metric"] == METRICS["auc"]].reset_index(drop=True)
        for i, model in enumerate(t["model"]):
            values = [r.headline.get("auc", {}).get(model) for r in g.runs]
            ax.scatter([i] * len(values), values, color=model_color(model), alpha=0.6, zorder=3)
            ax.errorbar(i + 0.15, t["mean"][i], yerr=t["sd"][i], fmt="s", color="black", capsize=4)
        ax.set_xticks(range(len(t)))
        ax.set_xticklabels(t["model"])
        ax.set_ylabel("Test ROC-AUC")
        ax.set_title(f"Group {k}: seeds {', '.join(map(str, g.seeds))} (dots: one seed; square: mean +- sd)")
        ax.grid(alpha=0.3, axis="y")
    return fig


def main(args) -> int:
    """``cxr seeds``: print the markdown; with --out/--figure, write them too."""
    groups = seed_groups(runs_from_exp_show(exp_show(args.repo)))
    text = markdown(groups)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    if args.figure:
        from cxr.plots import save_figure

        save_figure(figure(groups), args.figure)
    return 0
