"""The pretrained-weights path against a fake download.pytorch.org / Hugging Face Hub on 127.0.0.1:
first download, cached rerun, wrong hash, dropped connection, offline and blocked; fine-tuning options.

The production table (torchvision enums, the pinned ViT commit) is used as it is for the ViT; the
torchvision path is exercised with a tiny registered model whose fake URL embeds the sha256
prefix of its fake file, exactly as torchvision names resnet50-11ad3fa6.pth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time

import pytest
import torch
from torch import nn

from cxr.files import sha256_file
from cxr.models import WeightsUnavailableError, build_model, get_entry, registry
from cxr.models.registry import ModelEntry
from cxr.models.vit import VIT_HUB_ID, VIT_REVISION
from cxr.models.weights import (
    TorchvisionWeights,
    load_state_dict_file,
    materialise,
    materialised_weights,
    split_parameters,
)
from cxr.pretrained import read_manifest, write_manifest
from fake_hub import Blackhole, FakeHub, closed_port_url

# --------------------------------------------------------------------------------------------
# A tiny torchvision-style model and its fake published weights
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FakeTorchvisionWeights(TorchvisionWeights):
    fake_url: str = ""

    @property
    def official_url(self) -> str:
        return self.fake_url


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def _tiny_bytes(seed=0) -> bytes:
    torch.manual_seed(seed)
    buf = io.BytesIO()
    # The legacy (pre-zip) format, as vgg16-397923af.pth still is: it must load too.
    torch.save(Tiny().state_dict(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


@pytest.fixture
def tiny_tv(monkeypatch, tmp_path):
    """Model 'tinytv' registered with fake torchvision weights served by a FakeHub; yields (hub, data, filename)."""
    data = _tiny_bytes()
    filename = f"tinytv-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    src = FakeTorchvisionWeights("TinyTV_Weights.FAKE", fake_url=f"https://download.pytorch.org/models/{filename}")

    def build(pretrained, weights, image_size):
        m = Tiny()
        if pretrained:
            load_state_dict_file(m, "tinytv", weights, head_prefix="fc.")
        return m

    monkeypatch.setitem(
        registry.MODELS,
        "tinytv",
        ModelEntry(
            name="tinytv",
            builder=build,
            input_spec=lambda w: {"mean": [0.5] * 3, "std": [0.5] * 3, "image_size": 16},
            cam_layer=lambda m: m.conv,
            channels_last=False,
            pretrained_source=src,
            head=lambda m: m.fc,
        ),
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch hub cache
    with FakeHub() as hub:
        hub.files[f"/models/{filename}"] = data
        monkeypatch.setenv("CXR_TORCHVISION_BASE_URL", hub.url + "/models/")
        yield hub, data, filename


def test_production_table_is_torchvisions():
    for name, enum in (("resnet50", "ResNet50_Weights.IMAGENET1K_V2"), ("vgg16", "VGG16_Weights.IMAGENET1K_V1")):
        src = get_entry(name).pretrained_source
        assert src.enum == enum
        assert src.official_url.startswith("https://download.pytorch.org/models/")
        assert src.filename.split("-")[-1].startswith(src.hash_prefix)  # the prefix check_hash uses
    assert get_entry("vit").pretrained_source.revision == VIT_REVISION and len(VIT_REVISION) == 40
    assert get_entry("cnn").pretrained_source is None


def test_torchvision_download_once_verify_cache(tiny_tv, tmp_path, monkeypatch):
    hub, data, filename = tiny_tv
    out = tmp_path / "pretrained"
    rec = materialise("tinytv", out, progress=False)
    assert rec["how"].startswith("downloaded from " + hub.url)
    assert (out / "tinytv" / filename).read_bytes() == data
    assert rec["files"] == {filename: hashlib.sha256(data).hexdigest()}
    assert hub.count("GET") == 1

    hub.stop()  # a rerun needs no network at all
    assert materialise("tinytv", out, progress=False)["how"] == "present"

    # The manifest is what DVC hashes: deterministic bytes, and it tells train where the file is.
    write_manifest(out, {"tinytv": rec})
    first = (out / "manifest.json").read_bytes()
    write_manifest(out, {"tinytv": materialise("tinytv", out, progress=False)})
    assert (out / "manifest.json").read_bytes() == first
    assert materialised_weights(out, "tinytv") == str(out / "tinytv" / filename)
    model = build_model("tinytv", weights=materialised_weights(out, "tinytv"))
    ref = Tiny()
    ref.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    assert torch.equal(model.conv.weight, ref.conv.weight)


def test_torch_hub_cache_is_used_without_network(tiny_tv, tmp_path):
    hub, data, filename = tiny_tv
    cached = tmp_path / "torch" / "hub" / "checkpoints" / filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    rec = materialise("tinytv", tmp_path / "out", progress=False)
    assert rec["how"] == f"copied from {cached}" and hub.count("GET") == 0


def test_wrong_hash_is_refused_and_nothing_kept(tiny_tv, tmp_path):
    hub, _data, filename = tiny_tv
    hub.files[f"/models/{filename}"] = _tiny_bytes(seed=1)  # other bytes under the same name
    with pytest.raises(WeightsUnavailableError, match="invalid hash value") as exc:
        materialise("tinytv", tmp_path / "out", progress=False)
    assert filename[:-4].split("-")[1] in str(exc.value)
    assert not (tmp_path / "out" / "tinytv").exists()


def test_dropped_connection_fails_fast_and_keeps_nothing(tiny_tv, tmp_path):
    hub, _data, filename = tiny_tv
    hub.drop.add(f"/models/{filename}")
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="could not be fetched"):
        materialise("tinytv", tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "out" / "tinytv").exists()
    hub.drop.clear()  # the connection is back: the next run succeeds
    assert materialise("tinytv", tmp_path / "out", progress=False)["how"].startswith("downloaded")


def _assert_actionable(msg: str, name: str, dest: str):
    assert "tried:" in msg and dest in msg
    assert f"models.{name}.weights" in msg and "dvc pull weights" in msg and "train.pretrained=false" in msg


def test_offline_fails_within_seconds_with_the_commands(tiny_tv, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_TORCHVISION_BASE_URL", closed_port_url() + "/models/")
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as exc:
        materialise("tinytv", tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < 5
    msg = str(exc.value)
    _assert_actionable(msg, "tinytv", str(tmp_path / "out" / "tinytv"))
    assert "torchvision.models.TinyTV_Weights.FAKE.get_state_dict(progress=True)" in msg
    assert "curl -L -o" in msg and "https://download.pytorch.org/models/tinytv-" in msg
    assert "Connection refused" in msg or "URLError" in msg


def test_blocked_network_times_out(tiny_tv, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_WEIGHTS_TIMEOUT", "1")
    with Blackhole() as hole:
        monkeypatch.setenv("CXR_TORCHVISION_BASE_URL", hole.url + "/models/")
        t0 = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="timed out"):
            materialise("tinytv", tmp_path / "out", progress=False)
        assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------------------------
# The ViT from a fake Hugging Face Hub (HF_ENDPOINT), at the production repo id and pinned revision
# --------------------------------------------------------------------------------------------


def tiny_vit_files(tmp_path) -> dict[str, bytes]:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8
    )
    d = tmp_path / "tiny-vit-src"
    ViTForImageClassification(cfg).save_pretrained(d)  # model.safetensors + config.json
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return {f: (d / f).read_bytes() for f in ("config.json", "preprocessor_config.json", "model.safetensors")}


@pytest.fixture
def fake_hf(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    files = tiny_vit_files(tmp_path)
    with FakeHub() as hub:
        hub.add_hf_repo(VIT_HUB_ID, VIT_REVISION, files)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub, files


def test_vit_snapshot_download_once_verify_cache(fake_hf, tmp_path):
    hub, files = fake_hf
    out = tmp_path / "pretrained"
    rec = materialise("vit", out, progress=False)
    assert rec["how"] == f"downloaded from {hub.url}"
    assert rec["revision"] == VIT_REVISION and rec["repo_id"] == VIT_HUB_ID
    assert {f: (out / "vit" / f).read_bytes() for f in files} == files
    assert sorted(p.name for p in (out / "vit").iterdir()) == sorted(files)  # no .cache bookkeeping
    assert rec["files"]["model.safetensors"] == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert hub.count("GET", under="/resolve/") == 3
    hub.stop()
    assert materialise("vit", out, progress=False, known=rec)["how"] == "present"
    model = build_model("vit", weights=out / "vit", image_size=32)
    assert model.hf.config.hidden_size == 16 and model(torch.randn(1, 3, 32, 32)).shape == (1, 1)


def test_vit_wrong_hash_is_refused(fake_hf, tmp_path):
    hub, _files = fake_hf
    path = f"/{VIT_HUB_ID}/resolve/{VIT_REVISION}/model.safetensors"
    hub.headers[path]["ETag"] = '"' + "0" * 64 + '"'
    with pytest.raises(WeightsUnavailableError, match="does not match"):
        materialise("vit", tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "vit" / "model.safetensors").exists()


def test_vit_dropped_connection_resumes_and_is_verified(fake_hf, tmp_path):
    hub, files = fake_hf
    path = f"/{VIT_HUB_ID}/resolve/{VIT_REVISION}/model.safetensors"
    hub.drop_once.add(path)  # huggingface_hub retries once with a Range request; the sha256 check still holds
    t0 = time.monotonic()
    rec = materialise("vit", tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < 10
    assert (tmp_path / "out" / "vit" / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert rec["files"]["model.safetensors"] == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert [m for m, p in hub.requests if p == path].count("GET") == 2


def test_vit_offline_fails_fast_with_the_commands(fake_hf, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as exc:
        materialise("vit", tmp_path / "out", progress=False)
    assert time.monotonic() - t0 < 10
    msg = str(exc.value)
    _assert_actionable(msg, "vit", str(tmp_path / "out" / "vit"))
    assert (
        f"hf download {VIT_HUB_ID} config.json preprocessor_config.json model.safetensors --revision {VIT_REVISION}"
        in msg
    )


def test_hf_offline_mode_fails_fast(fake_hf, tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match="(?i)offline"):
        materialise("vit", tmp_path / "out", progress=False)
    assert fake_hf[0].count("GET") == 0


def test_stage_writes_manifest_and_only_what_is_needed(tmp_path, repo_root, fake_hf):
    import sys

    sys.path.insert(0, str(repo_root / "src"))
    try:
        import weights as stage
    finally:
        sys.path.pop(0)
    import yaml

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    out = tmp_path / "pretrained"
    assert stage.main(["--params", str(p), "--out", str(out), "--no-progress"]) == 0
    assert read_manifest(out) == {"format": 1, "models": {}}  # the synthetic default fetches nothing
    params["models"]["vit"]["pretrained"] = True
    p.write_text(yaml.safe_dump(params))
    assert stage.main(["--params", str(p), "--out", str(out), "--no-progress"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert list(man["models"]) == ["vit"] and "how" not in man["models"]["vit"]
    assert man["models"]["vit"]["files"]["config.json"] == sha256_file(out / "vit" / "config.json")

    # Local weights are used in place, their hashes recorded (so DVC notices when they change).
    params["models"]["vit"] = {**params["models"]["vit"], "pretrained": None, "weights": str(out / "vit")}
    params["models"]["cnn"]["weights"] = str(tmp_path / "nope.pth")
    p.write_text(yaml.safe_dump(params))
    with pytest.raises(WeightsUnavailableError, match="nope.pth does not exist"):
        stage.main(["--params", str(p), "--out", str(tmp_path / "o2"), "--no-progress"])
    params["models"]["cnn"]["weights"] = None
    p.write_text(yaml.safe_dump(params))
    assert stage.main(["--params", str(p), "--out", str(tmp_path / "o2"), "--no-progress"]) == 0
    local = read_manifest(tmp_path / "o2")["models"]["vit"]
    assert (
        local["source"] == "local"
        and local["files"]["model.safetensors"] == man["models"]["vit"]["files"]["model.safetensors"]
    )


# --------------------------------------------------------------------------------------------
# Fine-tuning: frozen backbone for the first epochs, a lower backbone lr
# --------------------------------------------------------------------------------------------


@pytest.fixture
def vit_dir(tmp_path):
    d = tmp_path / "vit-weights"
    d.mkdir()
    for f, data in tiny_vit_files(tmp_path).items():
        (d / f).write_bytes(data)
    return d


def test_global_pretrained_skips_models_without_published_weights(repo_root):
    from cxr.config import load_params
    from cxr.training.run_config import resolve_run_config

    params = load_params(repo_root / "params.yaml")
    params["train"]["pretrained"] = True
    assert not resolve_run_config(params, "cnn").pretrained  # no silent failure, no fake "pretrained" CNN
    assert resolve_run_config(params, "resnet50").pretrained
    params["models"]["cnn"]["pretrained"] = True  # asked for explicitly: the builder says there are none
    with pytest.raises(WeightsUnavailableError, match="no published pretrained weights"):
        build_model("cnn", pretrained=resolve_run_config(params, "cnn").pretrained)


def test_frozen_backbone_does_not_move_then_does(repo_root, vit_dir, monkeypatch):
    from cxr.config import load_params
    from cxr.training import fit as F
    from cxr.training.run_config import resolve_run_config
    from toydata import toy

    params = load_params(repo_root / "params.yaml")
    params.update(epochs=2, image_size=32, batch_size=8, lr=1e-2)
    params["models"]["vit"] = {"weights": str(vit_dir)}
    params["train"].update(freeze_backbone_epochs=1, backbone_lr_factor=0.5)
    cfg = resolve_run_config(params, "vit")
    assert cfg.pretrained and cfg.freeze_backbone_epochs == 1 and cfg.backbone_lr_factor == 0.5

    built = {}
    real_build = F.build_model
    monkeypatch.setattr(F, "build_model", lambda *a, **k: built.setdefault("m", real_build(*a, **k)))
    snaps = []

    def snap(row):
        backbone, head = split_parameters(built["m"], "vit")
        snaps.append(([p.detach().clone() for p in backbone], [p.detach().clone() for p in head]))

    initial = build_model("vit", weights=vit_dir, image_size=32)
    init_backbone, _ = split_parameters(initial, "vit")
    F.fit(cfg, toy(24, 0, size=32), toy(12, 1, size=32), device="cpu", progress=False, on_epoch_end=snap)
    (bb1, head1), (bb2, head2) = snaps
    assert all(torch.equal(a, b) for a, b in zip(bb1, init_backbone))  # epoch 1: backbone untouched
    assert any(not torch.equal(a, b) for a, b in zip(head1, head2))  # the head trains throughout
    assert any(not torch.equal(a, b) for a, b in zip(bb1, bb2))  # epoch 2: it trains


def test_backbone_lr_factor_makes_two_param_groups(repo_root, vit_dir):
    from cxr.config import load_params
    from cxr.training.optim import finetune_param_groups, make_optimizer
    from cxr.training.run_config import resolve_run_config

    params = load_params(repo_root / "params.yaml")
    params.update(image_size=32, lr=1e-3)
    params["models"]["vit"] = {"weights": str(vit_dir)}
    params["train"]["backbone_lr_factor"] = 0.1
    cfg = resolve_run_config(params, "vit")
    model = build_model("vit", weights=vit_dir, image_size=32)
    opt = make_optimizer(cfg, finetune_param_groups(cfg, model))
    head, backbone = opt.param_groups
    assert head["lr"] == pytest.approx(1e-3) and backbone["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.hf.classifier.parameters()}
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    # From scratch the options do nothing: there is no pretrained backbone to protect.
    params["models"]["vit"] = {}
    assert resolve_run_config(params, "vit").backbone_lr_factor == 1.0


@pytest.mark.parametrize("name", ["cnn", "resnet50", "vgg16", "vit"])
def test_every_model_names_its_head(name):
    model = build_model(
        name,
        image_size=32,
        **(
            {
                "config": {
                    "hidden_size": 16,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                    "patch_size": 8,
                }
            }
            if name == "vit"
            else {}
        ),
    )
    backbone, head = split_parameters(model, name)
    assert head and backbone and len(head) + len(backbone) == len(list(model.parameters()))
