"""The CUDA path: pinned uint8 batches, GPU-side normalisation, channels_last + bf16 autocast, torch.compile.

These need a CUDA GPU, so the default run deselects them (``-m "not cuda"`` in pyproject.toml) rather
than skipping them. On a GPU machine::

    .venv/bin/python -m pytest -m cuda tests/test_cuda.py

where they fail, not skip, if no CUDA device is visible.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr.data.augment import Normalize, eval_resize
from cxr.device import amp_settings
from cxr.models import build_model, input_spec, list_models
from cxr.training.engine import evaluate_loader
from cxr.training.fit import fit
from cxr.training.loaders import make_loader, stage_on_device
from cxr.training.run_config import resolve_run_config
from toydata import toy

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    assert torch.cuda.is_available(), "these tests need a CUDA GPU (torch.cuda.is_available() is False)"
    return torch.device("cuda")


TRAIN, VAL = toy(96, 0, size=40, positive=0.6), toy(32, 1, size=40, positive=0.6)


@pytest.fixture
def params(params):
    params.update(image_size=32, batch_size=16, lr=1e-3)
    return params


@pytest.mark.parametrize("staged", [False, True])
def test_loader_yields_uint8_on_the_gpu_and_normalises_there(cuda, staged):
    images = stage_on_device(TRAIN[0], cuda) if staged else TRAIN[0]
    assert isinstance(images, torch.Tensor) == staged  # 96 small images always fit
    index = np.arange(len(TRAIN[0]))  # labels = row numbers, to check which image came
    batches = list(make_loader(images, index, batch_size=16, shuffle=True, device=cuda))
    assert len(batches) == 6
    for xb, yb in batches:  # pinned host buffers are reused: earlier batches must stay intact
        assert xb.is_cuda and yb.is_cuda and xb.dtype == torch.uint8 and xb.shape == (16, 1, 40, 40)
        assert torch.equal(xb[:, 0].cpu(), torch.from_numpy(TRAIN[0][yb.long().cpu().numpy()]))
    xb = batches[0][0]
    x01 = eval_resize(xb, 32)  # uint8 -> float on the GPU
    spec = input_spec("resnet50")
    out = Normalize(spec["mean"], spec["std"], channels_last=True)(x01)
    assert out.is_cuda and out.dtype == torch.float32 and out.shape == (16, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_pinned_buffers_are_not_refilled_while_a_copy_still_reads_them(cuda):
    # The GPU is kept busy first, so every host-to-device copy queues behind it: a loader that
    # refilled a pinned buffer before its copy ran would hand out another batch's pixels.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64 * 12, 256, 256), dtype=np.uint8)
    index = np.arange(len(images))
    loader = make_loader(images, index, batch_size=64, shuffle=True, seed=1, device=cuda)
    torch.cuda._sleep(int(2e8))
    batches = list(loader)
    torch.cuda.synchronize()
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].cpu(), torch.from_numpy(images[yb.long().cpu().numpy()]))


def test_fit_streams_from_the_host_when_the_split_is_not_staged(params, cuda, monkeypatch):
    import cxr.training.fit

    monkeypatch.setattr(cxr.training.fit, "stage_on_device", lambda images, device: images)  # as if too large
    result = fit(resolve_run_config(params, "cnn"), TRAIN, VAL, device=cuda, progress=False)
    assert result.best["val_auc"] > 0.9, result.best


@pytest.mark.parametrize("name", list_models())
def test_fit_on_cuda(params, cuda, name):
    cfg = resolve_run_config(params, name)
    result = fit(cfg, TRAIN, VAL, device=cuda, progress=False)
    assert next(result.model.parameters()).is_cuda
    assert len(result.history) == 2
    for row in result.history:
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]), row
    assert result.val_probs.shape == (len(VAL[1]),) and np.isfinite(result.val_probs).all()
    if name == "cnn":  # the toy task is easy: the small CNN must learn it even in 2 epochs
        assert result.best["val_auc"] > 0.9, result.best


def test_compiled_cnn_trains(params, cuda):
    params["train"]["compile"] = True
    cfg = resolve_run_config(params, "cnn")
    assert cfg.compile
    result = fit(cfg, TRAIN, VAL, device=cuda, progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    assert result.best["val_auc"] > 0.9, result.best


def test_gpu_bf16_eval_agrees_with_cpu_fp32(cuda):
    torch.manual_seed(0)
    model = build_model("cnn", image_size=32).eval()
    spec = input_spec("cnn")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    cpu = torch.device("cpu")
    ref = evaluate_loader(
        model,
        loss_fn,
        make_loader(*VAL, batch_size=16, shuffle=False),
        cpu,
        Normalize(spec["mean"], spec["std"]),
        resize=lambda x: eval_resize(x, 32),
    )
    model = model.to(cuda).to(memory_format=torch.channels_last)
    amp_dtype, _ = amp_settings(cuda, True)
    gpu = evaluate_loader(
        model,
        loss_fn,
        make_loader(*VAL, batch_size=16, shuffle=False, device=cuda),
        cuda,
        Normalize(spec["mean"], spec["std"], channels_last=True),
        resize=lambda x: eval_resize(x, 32),
        amp_dtype=amp_dtype,
    )
    np.testing.assert_array_equal(gpu["labels"], ref["labels"])
    assert np.abs(gpu["probs"] - ref["probs"]).max() < 0.02  # bf16 autocast vs fp32
