"""The GPU side of training: DDP over NCCL, the sweep over GPUs, the GPU claim on real devices, and
the ResNet50 throughput targets. Deselected by default (``-m "not cuda"``); on a GPU machine::

    .venv/bin/python -m pytest -m cuda tests/training/test_distributed_cuda.py

They fail, not skip, without CUDA; the 2-GPU test skips on a machine with a single GPU (NCCL allows
one rank per GPU), saying so.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from cxr import gpus
from cxr.config import load_params
from cxr.training import sweep as S
from cxr.training.fit import fit
from cxr.training.run_config import resolve_run_config
from ddp_workers import fit_worker, spawn
from toydata import toy

pytestmark = pytest.mark.cuda

TRAIN, VAL = toy(128, 0, size=40, positive=0.6), toy(64, 1, size=40, positive=0.6)


@pytest.fixture(scope="module")
def n_gpus() -> int:
    assert torch.cuda.is_available(), "these tests need a CUDA GPU (torch.cuda.is_available() is False)"
    return torch.cuda.device_count()


@pytest.fixture
def run_cfg(repo_root):
    p = load_params(repo_root / "params.yaml")
    p.update(epochs=2, image_size=32, batch_size=16, lr=1e-3)
    p["models"] = {}
    return resolve_run_config(p, "resnet50")  # BatchNorm: rank 0's buffers must reach every rank


def test_ddp_over_nccl_on_two_gpus(n_gpus, run_cfg, tmp_path):
    if n_gpus < 2:
        pytest.skip(f"NCCL DDP needs 2 GPUs, {n_gpus} visible (the CPU tests cover the same code over gloo)")
    out, resume = tmp_path / "ddp.pt", tmp_path / "resume.pt"
    spawn(fit_worker, 2, run_cfg, TRAIN, VAL, str(out), None, None, "cuda")
    ddp = torch.load(out, weights_only=False)
    (h0, b0, t0, s0), (h1, b1, t1, s1) = ddp["ranks"]
    assert b0 == b1 and t0 == t1
    for k in s0:
        torch.testing.assert_close(s0[k], s1[k], atol=0, rtol=0, msg=k)
    single = fit(run_cfg, TRAIN, VAL, device="cuda", progress=False)
    assert abs(single.best["val_auc"] - ddp["best"]["val_auc"]) <= 0.1  # the CPU test bounds this properly
    spawn(fit_worker, 2, run_cfg, TRAIN, VAL, str(out), str(resume), 1, "cuda")
    spawn(fit_worker, 2, run_cfg, TRAIN, VAL, str(out), str(resume), None, "cuda")
    resumed = torch.load(out, weights_only=False)
    for hu, hr in zip(ddp["history"], resumed["history"], strict=True):  # cuDNN is not bitwise deterministic
        assert hr["val_loss"] == pytest.approx(hu["val_loss"], abs=1e-3)


def test_sweep_over_gpu_workers_gives_the_one_gpu_table(n_gpus, run_cfg):
    base = run_cfg.replace(model="cnn", epochs=1)
    devices = [f"cuda:{i % n_gpus}" for i in range(2)]  # one GPU: two workers share it
    one = S.run_sweep(base, [16, 32], [1e-3], TRAIN, VAL, device="cuda").table()
    two = S.run_sweep(base, [16, 32], [1e-3], TRAIN, VAL, devices=devices)
    t = two.table()
    assert t[["batch_size", "lr"]].values.tolist() == [[16, 1e-3], [32, 1e-3]]
    assert len({r["worker"] for r in two.rows}) == 2
    pd.testing.assert_frame_equal(t[["val_auc", "val_loss"]], one[["val_auc", "val_loss"]], atol=2e-3, rtol=0)


def test_claims_on_the_real_gpus(n_gpus, tmp_path, monkeypatch):
    monkeypatch.setenv(gpus.ENV_DIR, str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(gpus.ENV_SWITCH, raising=False)
    assert gpus.visible_gpus() == [str(i) for i in range(n_gpus)]
    with gpus.claim_gpus(n_gpus) as claim:
        assert claim.ordinals == list(range(n_gpus))
        with pytest.raises(TimeoutError):
            gpus.claim_gpus(1, wait=False)
        code = "import torch; print(torch.cuda.device_count())"
        seen = subprocess.run([sys.executable, "-c", code], env=claim.env, capture_output=True, text=True, check=True)
        assert seen.stdout.strip() == str(n_gpus)


def test_train_stage_devices_auto_uses_every_gpu(n_gpus, tmp_path, repo_root, monkeypatch):
    from mlflow import MlflowClient

    from test_train_stage import check_outputs, run_stage, write_cache

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params.update(epochs=2, image_size=16, batch_size=8 * n_gpus)
    params["models"]["cnn"] = {}
    params["train"]["devices"] = "auto"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_cache(tmp_path / "data" / "cache")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_stage(tmp_path, repo_root, {"MLFLOW_TRACKING_URI": uri, gpus.ENV_DIR: str(tmp_path / "claims")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_outputs(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("chest-xray-pneumonia").experiment_id])
    assert run.data.tags["world_size"] == str(n_gpus) and run.data.tags["device"].startswith("cuda")


@pytest.mark.shared_data
def test_resnet50_throughput_targets(n_gpus, shared_data, repo_root):
    """At the best batch, >= 90 % of the model-step ceiling and >= 3,000 images/s on one H200."""
    sys.path.insert(0, str(repo_root / "benchmarks"))
    import gpu_training

    r = gpu_training.main(
        [
            "--data",
            str(shared_data / "kermany-fullres"),
            "--models",
            "resnet50",
            "--batch-sizes",
            "64",
            "128",
            "256",
            "--batches",
            "20",
            "--processes",
            "1",
        ]
    )["resnet50"]
    best = r["best"]
    print(json.dumps({k: v for k, v in best.items() if k != "by_batch"}))
    assert best["ours"] >= 0.9 * best["step_only"]
    if "H200" in torch.cuda.get_device_name(0) or "H100" in torch.cuda.get_device_name(0):
        assert best["ours"] >= 3000
