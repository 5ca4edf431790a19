"""Careless params and broken training runs: one test per case.

    PYTHONPATH=src .venv/bin/python -m pytest tests/hostile/test_hostile_params_training.py -q

Still holding, tested elsewhere: the messages for bad params (tests/test_training.py::
test_bad_values_fail_with_the_key, test_misspelt_model_section_and_too_small_vgg_are_refused),
resume after an interruption with identical weights (test_resume_after_interruption_matches_
uninterrupted_run), an unreachable MLflow server costing one warning (tests/test_train_stage.py::
test_train_stage_with_unreachable_mlflow_server).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
import yaml

from cxr.config import ConfigError, load_params
from cxr.runlock import ResumeLockedError, lock_path, resume_lock
from cxr.training.engine import TrainingDivergedError
from cxr.training.fit import fit
from cxr.training.run_config import resolve_run_config
from pipeline_repo import run_stage_script, train_stage_cmd
from toydata import toy

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def params_file(tmp_path, repo_root):
    def write(**changes):
        params = yaml.safe_load((repo_root / "params.yaml").read_text())
        params.update(changes)
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        return path

    return write


def test_unknown_top_level_param_is_refused(params_file):
    path = params_file(learning_rate=0.1)  # what `dvc exp run -S +learning_rate=0.1` writes
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert "learning_rate" in str(err.value) and "'lr'" in str(err.value)


def test_unknown_top_level_param_is_refused_by_the_run_config_too(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_run_config(params, "cnn")


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 1e6, "1e6", -0.1])  # lr=.inf as YAML reads it: a float
def test_an_infinite_or_absurd_lr_is_refused_before_training(params_file, lr):
    params = load_params(params_file(lr=lr))
    with pytest.raises(ConfigError) as err:
        resolve_run_config(params, "cnn")
    assert "lr must be a finite number" in str(err.value)


def test_a_non_finite_loss_stops_training_at_once_naming_lr(repo_root):
    params = load_params(repo_root / "params.yaml")
    params.update(epochs=3, image_size=16, batch_size=8)
    params["models"]["cnn"] = {}
    cfg = resolve_run_config(params, "cnn").replace(lr=float("inf"))  # past the config check, as a core caller could
    t0 = time.perf_counter()
    with pytest.raises(TrainingDivergedError) as err:
        fit(cfg, toy(26, 0), toy(12, 1), device="cpu", progress=False)
    msg = str(err.value)
    assert "[cnn] epoch 1" in msg and "lr inf" in msg and "Lower the learning rate" in msg
    assert "Input contains NaN" not in msg and time.perf_counter() - t0 < 60


def test_a_second_trainer_refuses_while_the_first_holds_the_resume_state(tmp_path):
    resume = tmp_path / "data" / "resume" / "cnn.pt"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[2]); from cxr.runlock import resume_lock\n"
            "with resume_lock(sys.argv[1], 'cnn'):\n    print('held', flush=True); time.sleep(60)",
            str(resume),
            str(__import__("cxr").__path__[0].rsplit("/cxr", 1)[0]),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ResumeLockedError) as err:
            with resume_lock(resume, "cnn"):
                pass
        assert f"pid {holder.pid}" in str(err.value) and f"kill {holder.pid}" in str(err.value)
    finally:
        holder.kill()  # as kill -9 of the orphan would: the kernel drops its lock
        holder.wait(timeout=10)
    with resume_lock(resume, "cnn") as path:  # now free; a stale lock file blocks nobody
        assert path == lock_path(resume) and path.read_text().strip().isdigit()


def test_the_train_stage_refuses_while_another_trainer_holds_the_lock(tmp_path, repo_root):
    from toydata import toy, write_cache

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_cache(
        tmp_path / "data" / "cache",
        {s: toy(n, i, balanced=True) for i, (s, n) in enumerate((("train", 24), ("val", 10), ("test", 6)))},
    )
    resume = tmp_path / "data" / "resume" / "cnn.pt"
    cmd = train_stage_cmd(metrics="m.json", history="h.csv")
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri()}
    with resume_lock(resume, "cnn"):  # the orphaned trainer, still running
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode == 1 and "another trainer" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "models" / "cnn").exists()


def test_the_params_stage_fails_an_experiment_that_adds_an_unknown_key(params_file, repo_root, capsys):
    """DVC reruns only stages whose declared params changed, so `-S +learning_rate=0.1` reran nothing;
    the `params` stage declares the whole file, reruns on any change and fails with the message."""
    assert run_stage_script("check_params", "--params", str(params_file())).returncode == 0
    proc = run_stage_script("check_params", "--params", str(params_file(learning_rate=0.1)))
    err = proc.stderr
    assert proc.returncode == 1
    assert "params: error: " in err and "learning_rate" in err and "Traceback" not in err
    dvc_yaml = yaml.safe_load((repo_root / "dvc.yaml").read_text())
    assert dvc_yaml["stages"]["params"]["params"] == [{"params.yaml": None}]  # the whole file


def test_the_params_stage_reports_every_bad_key_at_once(params_file, repo_root, capsys):
    path = params_file(learning_rate=0.1, lr=float("inf"), split={"val_fraction": 0.15, "max_pixel": 10})
    proc = run_stage_script("check_params", "--params", str(path))
    assert proc.returncode == 1
    err = proc.stderr
    assert "learning_rate" in err and "lr must be a finite number" in err and "max_pixel" in err


def test_a_value_outside_a_union_names_every_alternative_once(params_file):
    """train.calibrate is true, false or auto (bool | Literal): pydantic reports one error per member, tagged
    in its loc; the message is one line for the key (the member tags used to crash the message with an
    IndexError)."""
    from cxr.config import Params
    from cxr.schema import parse

    with pytest.raises(ConfigError) as info:
        parse(Params, load_params(params_file(train={"calibrate": "maybe"})))
    assert info.value.problems == ["train.calibrate: expected true or false or 'auto', found 'maybe'"]


# Four levels of four aliases here (the report's nine levels of nine expand to 387 M items in DVC).
ALIAS_BOMB = "seed: 42\nmodels:\n  cnn:\n    options:\n      l0: &l0 [x, x, x, x]\n" + "".join(
    f"      l{n}: &l{n} [*l{n - 1}, *l{n - 1}, *l{n - 1}, *l{n - 1}]\n" for n in range(1, 5)
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("seed: 42\ntrain:\n\tpretrained: false\n", "line 3, column 1: not valid YAML: found character '\\t'"),
        ("seed: 42\nlr: 0.1\nbatch_size: 8\nlr: 0.001\n", "line 4, column 1: not valid YAML: key 'lr' appears twice"),
        (ALIAS_BOMB, "line 5, column 11: not valid YAML: found the YAML anchor &l0"),
        ("seed: " + "[" * 5000 + "]" * 5000 + "\n", "line 1, column 38: not valid YAML: found nesting over 32 levels"),
        ("seed: 42\nlr: 0.1\x00\n", "line 2, column 8: not valid YAML: the character #x0000"),
    ],
    ids=["tab_indentation", "duplicate_key", "alias_bomb", "nesting_5000_deep", "nul_byte"],
)
def test_a_params_file_dvc_would_refuse_is_one_line_from_a_stage_script(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)):  # a duplicate key used to win silently
        load_params(path)
    proc = run_stage_script("fetch", "--params", str(path), "--out", str(tmp_path / "raw"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr  # used to: yaml.scanner.ScannerError
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fetch: error: {path} ") and expected in last and "Fix:" in last


def test_the_params_stage_refuses_an_alias_bomb_in_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(ALIAS_BOMB)  # used to pass ("params.yaml ok"); DVC then died at 3.9 GB
    proc = run_stage_script("check_params", "--params", str(path))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "anchor &l0" in proc.stderr


def test_make_real_preflight_refuses_an_alias_bomb_before_dvc_reads_it(tmp_path):
    from real import preflight

    path = tmp_path / "params.yaml"
    path.write_text(ALIAS_BOMB)
    problem = preflight(path, ["-S", "seed=1"])  # used to hand the file to DVC's writer, which expands it
    assert problem is not None and "anchor &l0" in problem and "\n" not in problem


def test_thousands_of_unknown_keys_are_one_short_line_with_the_first_few_and_a_count(params_file):
    from check_params import check

    junk = {f"key{i:05d}": 1 for i in range(10_000)}
    params = load_params(params_file(split={"val_fraction": 0.15, **junk}))
    problems = check({**params, **junk})
    assert len(problems) == 2 and all(len(p) < 1000 for p in problems)  # used to be one line of 199,273 bytes
    assert all("['key00000', 'key00001', 'key00002', 'key00003', 'key00004'] and 9,995 more" in p for p in problems)


def test_a_huge_value_is_quoted_short(params_file):
    from check_params import check

    problems = check(load_params(params_file(seed="x" * 1_000_000)))
    assert len(problems) == 1 and "seed" in problems[0] and len(problems[0]) < 300
