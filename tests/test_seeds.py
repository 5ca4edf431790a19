"""`cxr seeds` reads real DVC experiments (`dvc exp show --json`) and summarises those differing only in seed.

The pipeline here is a one-stage stand-in (its "training" writes metrics/headline.json from the seed), so
the real `dvc exp run -S seed=N` runs in seconds; the figures are the command's own.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import yaml

from cxr import seeds
from pipeline_repo import BIN, run

STAND_IN = """
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
s, lr = p["seed"], p["lr"]
auc = {"cnn": 0.90 + 0.01 * s, "vit": 0.80 + 0.02 * s + lr}
pathlib.Path("metrics").mkdir(exist_ok=True)
json.dump({"val_auc": auc, "auc": auc, "acc": {"cnn": 0.8, "vit": None}}, open("metrics/headline.json", "w"))
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("seeds")
    (repo / "train.py").write_text(STAND_IN)
    (repo / "params.yaml").write_text(yaml.safe_dump({"seed": 42, "lr": 0.0}))
    stage = {"cmd": f"{sys.executable} train.py", "deps": ["train.py"], "params": ["seed", "lr"]}
    stage["metrics"] = [{"metrics/headline.json": {"cache": False}}]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    run(["git", "init", "-q", "-b", "main"], repo)
    run([str(BIN / "dvc"), "init", "-q"], repo)
    run([str(BIN / "dvc"), "repro", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline"], repo)
    for s in (1, 2, 3):
        run([str(BIN / "dvc"), "exp", "run", "-q", "-n", f"seed-{s}", "-S", f"seed={s}"], repo)
    run([str(BIN / "dvc"), "exp", "run", "-q", "-n", "lr-up", "-S", "lr=0.05"], repo)  # another change: not grouped
    return repo


def test_experiments_differing_only_in_seed_are_one_group(repo):
    runs = seeds.runs_from_exp_show(seeds.exp_show(repo))
    assert {r.name for r in runs} >= {"main", "seed-1", "seed-2", "seed-3", "lr-up"}
    (group,) = seeds.seed_groups(runs)
    assert group.seeds == [1, 2, 3, 42]  # the baseline is seed 42 with the same params
    t = group.table().set_index(["model", "metric"])
    cnn = t.loc[("cnn", "test ROC-AUC")]
    values = [0.91, 0.92, 0.93, 1.32]
    assert cnn["mean"] == pytest.approx(sum(values) / 4) and cnn["n"] == 4
    assert cnn["sd"] == pytest.approx(float(np.std(values, ddof=1)))
    assert ("vit", "test accuracy") not in t.index  # a metric with no values is not a row


def test_cxr_seeds_prints_and_writes_the_table_and_figure(repo, tmp_path):
    out = run(
        [
            str(BIN / "cxr"),
            "seeds",
            "--repo",
            str(repo),
            "--out",
            str(tmp_path / "seeds.md"),
            "--figure",
            str(tmp_path / "s.png"),
        ],
        repo,
    ).stdout
    assert "seeds 1, 2, 3, 42" in out
    assert re.search(r"\| cnn +\| test ROC-AUC +\| 1\.020 \+- 0\.\d{3} \| 0\.910-1\.320 \| +4 \|", out), out
    assert (tmp_path / "seeds.md").read_text().startswith("# Seed spread")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_no_seed_grid_is_a_clear_error(tmp_path):
    entries = [{"rev": "abc1234", "name": "main", "data": {}, "experiments": None}]
    with pytest.raises(seeds.SeedsError, match=r"dvc exp run --queue -S 'seed=1,2,3'"):
        seeds.markdown(seeds.seed_groups(seeds.runs_from_exp_show(entries)))
    # A broken repository: DVC's own message, in one error.
    with pytest.raises(seeds.SeedsError, match="dvc exp show --json` failed"):
        seeds.exp_show(tmp_path)
