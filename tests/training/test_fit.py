"""Training core: effective params per model, fit from a fresh start, selection, early stopping, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr.checkpoint import DataSource
from cxr.config import ConfigError
from cxr.models import list_models
from cxr.policy import ValidationPolicy
from cxr.training.fit import fit, pos_weight
from cxr.training.run_config import RunConfig, resolve_run_config
from toydata import toy


@pytest.fixture
def params(params):
    params.update(epochs=3, lr=3e-3)
    return params


@pytest.fixture
def run_cfg(params) -> RunConfig:
    return resolve_run_config(params, "cnn")


TRAIN, VAL = toy(26, 0), toy(12, 1)


def test_same_keys_for_every_model_and_overrides(params):
    params["models"] = {"vit": {"lr": "1e-05", "epochs": 5, "scheduler": "cosine"}, "resnet50": {"weights": "w.pth"}}
    params["image_size"] = 32  # VGG16 needs 32 px
    cfgs = {m: resolve_run_config(params, m) for m in list_models()}
    assert len({tuple(c.as_params()) for c in cfgs.values()}) == 1  # identical key sets, same order
    assert cfgs["vit"].lr == 1e-5 and cfgs["vit"].epochs == 5  # '1e-05' as `dvc exp run -S` writes it
    assert cfgs["cnn"].lr == 3e-3 and cfgs["cnn"].epochs == 3
    assert cfgs["vit"].scheduler == "cosine" and cfgs["cnn"].scheduler == params["train"].get("scheduler", "steplr")
    assert cfgs["resnet50"].pretrained and cfgs["resnet50"].weights == "w.pth"  # weights imply pretrained
    assert not cfgs["vgg16"].pretrained and cfgs["vgg16"].weights is None
    params["models"]["resnet50"]["pretrained"] = False
    assert resolve_run_config(params, "resnet50").weights is None
    assert cfgs["cnn"].augment.crop_scale == (0.8, 1.0)


def test_bad_values_fail_with_the_key(params):
    with pytest.raises(ValueError, match="valid names"):
        resolve_run_config(params, "alexnet")
    params["models"] = {"cnn": {"batch_size": 0}}
    with pytest.raises(ConfigError, match="batch_size"):
        resolve_run_config(params, "cnn")
    params["models"] = {"cnn": {"scheduler": "cosin"}}
    with pytest.raises(
        ConfigError, match=r"models\.cnn\.scheduler: expected 'steplr', 'cosine' or 'none', found 'cosin'"
    ):
        resolve_run_config(params, "cnn")


def test_pos_weight_balanced():
    assert pos_weight([0, 1, 1, 1], "balanced") == pytest.approx(1 / 3)
    assert pos_weight([0, 1, 1, 1], "none") == 1.0


def test_fit_history_best_threshold_meta(run_cfg):
    result = fit(run_cfg, TRAIN, VAL, progress=False, data_source=DataSource("folder", "xrays/"))
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds"} <= set(result.history[0])
    # Highest val AUC; a tie goes to the lower val loss, then to the earlier epoch.
    best = min(result.history, key=lambda h: (-h["val_auc"], h["val_loss"], h["epoch"]))
    assert result.best["best_epoch"] == best["epoch"] and result.best["val_auc"] == best["val_auc"]
    assert 0.0 <= result.threshold <= 1.0
    m = result.card
    assert m.name == "cnn" and m.image_size == 16 and m.cache_size == 20
    assert m.classes == ("NORMAL", "PNEUMONIA") and m.train_params["lr"] == run_cfg.lr
    assert m.mean == (0.5, 0.5, 0.5)
    assert m.data_source == DataSource("folder", "xrays/")  # recorded as given
    assert not result.model.training
    metrics = result.metrics()
    assert {"val_auc", "val_loss", "best_epoch", "threshold", "val_sensitivity", "val_specificity"} <= set(metrics)


def test_fit_threshold_method(run_cfg):
    youden = fit(run_cfg, TRAIN, VAL, progress=False)
    from cxr.metrics import choose_threshold

    assert youden.threshold == choose_threshold(youden.val_labels, youden.val_probs, method="youden")
    assert youden.card.threshold_method == "youden"
    fixed = fit(run_cfg, TRAIN, VAL, ValidationPolicy(threshold="fixed", fixed_threshold=0.3), progress=False)
    assert fixed.threshold == 0.3 and fixed.card.threshold == 0.3 and fixed.card.threshold_method == "fixed"
    mid = fit(run_cfg, TRAIN, VAL, ValidationPolicy(threshold="midpoint"), progress=False)
    assert mid.threshold == choose_threshold(mid.val_labels, mid.val_probs, method="midpoint")
    assert mid.card.threshold == mid.threshold and mid.card.threshold_method == "midpoint"


def test_fit_calibrates_then_chooses_threshold_and_refer_band_on_calibrated_probabilities(run_cfg):
    from cxr.abstention import selective
    from cxr.calibration import apply_temperature
    from cxr.metrics import choose_threshold

    plain = fit(run_cfg, TRAIN, VAL, progress=False)
    assert plain.card.temperature == 1.0 and plain.card.refer_band is None and plain.card.calibration["mode"] == "false"
    cal = fit(run_cfg, TRAIN, VAL, ValidationPolicy(calibrate=True, refer_target=0.2, confidence=0.5), progress=False)
    t = cal.card.temperature
    assert cal.card.calibration["applied"] and t == cal.card.calibration["fitted_temperature"] != 1.0
    np.testing.assert_allclose(cal.val_probs, apply_temperature(plain.val_probs, t))  # same weights, scaled
    assert cal.threshold == choose_threshold(cal.val_labels, cal.val_probs, "youden")
    np.testing.assert_array_equal(plain.val_probs >= plain.threshold, cal.val_probs >= cal.threshold)
    assert cal.metrics()["temperature"] == t
    low, high = cal.card.refer_band
    assert low <= cal.threshold <= high and cal.card.refer["target_error"] == 0.2
    s = selective(cal.val_labels, cal.val_probs, cal.threshold, (low, high))
    assert s["coverage"] == cal.card.refer["val_coverage"]
    assert s["n_decided"] == 0 or s["error_among_decided"] <= 0.2


def test_midpoint_needs_both_classes_in_validation(run_cfg):
    with pytest.raises(ValueError, match="midpoint threshold needs both"):
        fit(run_cfg, TRAIN, (VAL[0][:5], np.ones(5, dtype=np.int64)), ValidationPolicy(threshold="midpoint"))


def test_intensity_augmentations_reach_the_run_config(params):
    params.setdefault("train", {})["augment"] = {
        "gamma": [0.7, 1.4],
        "blur_p": 0.5,
        "blur_sigma": 2.0,
        "sharpen_p": 0.3,
        "sharpen_amount": 1.5,
        "noise_std": 0.02,
    }
    aug = resolve_run_config(params, "cnn").augment
    assert aug.gamma == (0.7, 1.4) and aug.blur_p == 0.5 and aug.blur_sigma == 2.0
    assert aug.sharpen_p == 0.3 and aug.sharpen_amount == 1.5 and aug.noise_std == 0.02
    params["train"]["augment"]["blur_p"] = 2
    with pytest.raises(ConfigError, match="blur_p"):
        resolve_run_config(params, "cnn")


def test_youden_needs_both_classes_in_validation(run_cfg):
    with pytest.raises(ValueError, match="threshold=fixed"):
        fit(run_cfg, TRAIN, (VAL[0][:5], np.ones(5, dtype=np.int64)), progress=False)


def test_fit_is_reproducible_and_starts_fresh_each_call(run_cfg):
    a = fit(run_cfg, TRAIN, VAL, progress=False)
    b = fit(run_cfg, TRAIN, VAL, progress=False)  # a second call must not continue from the first
    for ha, hb in zip(a.history, b.history):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=1e-6)
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], abs=1e-6)


def test_progress_bars_do_not_change_the_model(run_cfg, tmp_path, on_a_terminal, capfd):
    # tqdm used to iterate the CPU DataLoader once more than a bare loop, shifting the shuffle:
    # the same params, data and seed gave another model with --no-progress (tracked outputs must not).
    from cxr import checkpoint

    with_bar = fit(run_cfg, TRAIN, VAL, progress=True)
    assert "\r" in capfd.readouterr().err  # the bar was drawn
    without = fit(run_cfg, TRAIN, VAL, progress=False)
    a, b = with_bar.model.state_dict(), without.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert with_bar.metrics() == without.metrics() and with_bar.threshold == without.threshold
    # ... and the checkpoint, a DVC output, is the same bytes (no run id, commit, timing or temp name)
    for name, result in (("bar", with_bar), ("plain", without)):
        checkpoint.save(tmp_path / name, result.model, result.card)
    for f in (checkpoint.WEIGHTS_FILE, checkpoint.META_FILE):
        assert (tmp_path / "bar" / f).read_bytes() == (tmp_path / "plain" / f).read_bytes(), f
    assert "seconds_per_epoch" not in without.metrics() and without.timings()["seconds_per_epoch"] > 0


def test_select_by_val_loss_and_steplr(run_cfg):
    cfg = run_cfg.replace(select_metric="val_loss", scheduler="steplr", step_size=1, gamma=0.1)
    result = fit(cfg, TRAIN, VAL, progress=False)
    assert result.best["val_loss"] == min(h["val_loss"] for h in result.history)
    assert [h["lr"] for h in result.history] == pytest.approx([cfg.lr, cfg.lr * 0.1, cfg.lr * 0.01])


def test_early_stopping(run_cfg):
    # one class in validation: AUC is NaN every epoch, so no epoch after the first ever improves
    val_one_class = (VAL[0], np.ones_like(VAL[1]))
    result = fit(
        run_cfg.replace(epochs=6, early_stopping_patience=2),
        TRAIN,
        val_one_class,
        ValidationPolicy(threshold="fixed"),
        progress=False,
    )
    assert len(result.history) == 3 and result.card.stopped_early
    assert result.best["best_epoch"] == 1 and math.isnan(result.best["val_auc"])


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(run_cfg, tmp_path, capsys):
    uninterrupted = fit(run_cfg, TRAIN, VAL, progress=False)
    resume = tmp_path / "resume" / "cnn.pt"

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(run_cfg, TRAIN, VAL, progress=False, resume_path=resume, data_version="v1", on_epoch_end=stop_after_first)
    assert resume.is_file()
    epochs_seen = []
    resumed = fit(
        run_cfg,
        TRAIN,
        VAL,
        resume_path=resume,
        data_version="v1",
        progress=False,
        on_epoch_end=lambda row: epochs_seen.append(row["epoch"]),
    )
    assert epochs_seen == [2, 3]  # continued at epoch 2
    assert "resuming" in capsys.readouterr().out
    assert not resume.exists()  # removed once fit completes
    for hu, hr in zip(uninterrupted.history, resumed.history, strict=True):
        for k in ("train_loss", "val_loss", "val_auc", "lr"):
            assert hr[k] == pytest.approx(hu[k], abs=1e-6), (hr["epoch"], k)
    assert resumed.best == pytest.approx(uninterrupted.best)
    for (k, v), v2 in zip(uninterrupted.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(v, v2, atol=1e-6, rtol=0, msg=k)


def test_resume_states_are_written_every_resume_every_seconds(run_cfg, tmp_path, monkeypatch):
    import cxr.training.fit as fit_module

    clock = iter(range(0, 10_000, 10))  # every reading of the clock is 10 s later
    monkeypatch.setattr(fit_module.time, "perf_counter", lambda: float(next(clock)))
    resume, saved = tmp_path / "cnn.pt", []

    def note(row):
        saved.append((row["epoch"], resume.is_file()))
        resume.unlink(missing_ok=True)

    fit(run_cfg.replace(epochs=4), TRAIN, VAL, progress=False, resume_path=resume, on_epoch_end=note, resume_every=25)
    # An epoch reads the clock at least three times (30 s > 25 s): a state after each, never after the last.
    assert [e for e, written in saved if written] == [1, 2, 3]
    saved.clear()
    fit(run_cfg.replace(epochs=4), TRAIN, VAL, progress=False, resume_path=resume, on_epoch_end=note, resume_every=1e9)
    assert saved == [(1, False), (2, False), (3, False), (4, False)]


def test_resume_file_from_other_params_is_ignored(run_cfg, tmp_path, capsys):
    resume = tmp_path / "cnn.pt"

    def stop(row):
        raise Interrupt

    with pytest.raises(Interrupt):
        fit(run_cfg, TRAIN, VAL, progress=False, resume_path=resume, data_version="v1", on_epoch_end=stop)
    seen = []
    fit(
        run_cfg.replace(lr=1e-3),
        TRAIN,
        VAL,
        progress=False,
        resume_path=resume,
        data_version="v1",
        on_epoch_end=lambda row: seen.append(row["epoch"]),
    )
    assert seen == [1, 2, 3] and "ignoring" in capsys.readouterr().out


def test_misspelt_model_section_and_too_small_vgg_are_refused(params):
    from cxr.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown model name\(s\) \['resnet'\].*valid names"):
        resolve_run_config({**params, "models": {**params["models"], "resnet": {"lr": 0.1}}}, "cnn")
    with pytest.raises(ConfigError, match="vgg16 needs images of at least 32 px"):
        resolve_run_config({**params, "image_size": 16}, "vgg16")
    assert resolve_run_config({**params, "image_size": 16}, "cnn").image_size == 16


def test_a_bad_validation_policy_is_refused_before_training():
    with pytest.raises(ValueError, match="threshold"):
        ValidationPolicy(threshold="Youden")
    with pytest.raises(ValueError, match="fixed_threshold"):
        ValidationPolicy(threshold="fixed", fixed_threshold=1.5)
