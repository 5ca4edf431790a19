"""Model registry: every model builds, runs forward + backward, and loads weights only from local files."""

from __future__ import annotations

import os

import pytest
import torch

from cxr.models import WeightsUnavailableError, build_model, input_spec, list_models, rebuild
from toydata import TINY_VIT

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_options(name: str) -> dict:
    return TINY_VIT if name == "vit" else {}


def test_registry_lists_the_models():
    assert list_models() == ["cnn", "resnet50", "resnet_small", "vgg16", "vit"]


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as exc:
        build_model("resnet18")
    assert "resnet18" in str(exc.value) and "vgg16" in str(exc.value) and "cnn" in str(exc.value)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shape_and_finite_loss(name):
    torch.manual_seed(0)
    model = build_model(name, image_size=32, **tiny_options(name))
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), torch.tensor([0.0, 1.0]))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the architecture record rebuilds a model with the same state_dict layout
    assert set(rebuild(model.arch).state_dict()) == set(model.state_dict())


@pytest.mark.parametrize("name", list_models())
def test_input_spec_from_weights_metadata(name):
    spec = input_spec(name)
    assert len(spec["mean"]) == len(spec["std"]) == 3 and spec["image_size"] == 224
    if name in ("resnet50", "vgg16"):
        from torchvision.models import ResNet50_Weights

        assert spec["mean"] == list(ResNet50_Weights.IMAGENET1K_V2.transforms().mean)


def test_cnn_works_at_several_sizes():
    model = build_model("cnn").eval()
    for side in (16, 64, 100):
        assert model(torch.randn(1, 3, side, side)).shape == (1, 1)


def test_real_vit_base_forward_at_32px():
    model = build_model("vit", image_size=32).eval()
    cfg = model.hf.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (768, 12, 12, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1)
        # position embeddings are interpolated for another image size
        assert model(torch.randn(1, 3, 48, 48)).shape == (1, 1)


def test_resnet50_weights_from_local_state_dict(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    ref = resnet50(weights=None)  # ImageNet head (fc 2048 -> 1000) included, as in a torchvision download
    path = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("resnet50", weights=path, image_size=32)
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert torch.equal(model.layer4[2].bn3.running_var, ref.layer4[2].bn3.running_var)
    assert model.fc[-1].out_features == 1  # the reference head replaced the ImageNet one


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "cnn.pth"
    torch.save(build_model("cnn").state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="do not fit model 'vgg16'"):
        build_model("vgg16", weights=path)


def test_vit_weights_from_save_pretrained_directory(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(2)
    hf = ViTForImageClassification(ViTConfig(image_size=32, num_labels=2, **TINY_VIT["config"]))
    hf.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(
        image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2], size={"height": 32, "width": 32}
    ).save_pretrained(tmp_path / "vit")
    model = build_model("vit", weights=tmp_path / "vit", image_size=48)
    assert torch.equal(
        model.hf.vit.embeddings.patch_embeddings.projection.weight, hf.vit.embeddings.patch_embeddings.projection.weight
    )
    assert model.hf.classifier.out_features == 1  # 2-label head replaced by one logit
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 1)
    # the rebuild record carries the directory's architecture, not ViT-B
    assert model.arch["options"]["config"]["hidden_size"] == 32
    spec = input_spec("vit", tmp_path / "vit")
    assert spec == {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2], "image_size": 32}


def test_vit_spec_defaults_are_the_image_processors(tmp_path):
    from transformers import ViTImageProcessor

    proc = ViTImageProcessor()
    (tmp_path / "bare").mkdir()  # a weights folder without preprocessor_config.json
    assert input_spec("vit", tmp_path / "bare") == {
        "mean": list(proc.image_mean),
        "std": list(proc.image_std),
        "image_size": proc.size["height"],
    }


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "vit"])
def test_pretrained_without_cache_fails_with_both_fixes(name, empty_caches):
    with pytest.raises(WeightsUnavailableError) as exc:
        build_model(name, pretrained=True, image_size=32)
    msg = str(exc.value)
    assert f"'{name}'" in msg
    assert str(empty_caches) in msg  # where it looked
    assert f"models.{name}.weights" in msg
    assert "train.pretrained=false" in msg and f"models.{name}.pretrained=false" in msg


def test_missing_weights_path_names_it(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="nope.pth"):
        build_model("resnet50", weights=tmp_path / "nope.pth")


def test_builder_options_are_checked_and_recorded_for_the_rebuild():
    """models.<name>.options reach the builder; a checkpoint's arch rebuilds the same network."""
    from torch import nn

    from cxr.config import ConfigError
    from cxr.models import builder_options, check_options

    assert builder_options("vgg16") == ["batch_norm"] and builder_options("cnn") == []
    with pytest.raises(ConfigError, match=r"vgg16 has no option\(s\) \['bn'\]; its builder takes \['batch_norm'\]"):
        check_options("vgg16", {"bn": True}, "models.vgg16.options")
    bn = build_model("vgg16", image_size=32, batch_norm=True)
    assert bn.arch["options"] == {"batch_norm": True}
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.features)
    again = rebuild(bn.arch)
    assert [type(m) for m in again.modules()] == [type(m) for m in bn.modules()]
    plain = build_model("vgg16", image_size=32)
    assert plain.arch["options"] == {} and not any(isinstance(m, nn.BatchNorm2d) for m in plain.features)


def test_vgg16_batch_norm_refuses_pretrained_weights_it_cannot_load():
    with pytest.raises(WeightsUnavailableError, match="models.vgg16.pretrained=false"):
        build_model("vgg16", pretrained=True, image_size=32, batch_norm=True)
