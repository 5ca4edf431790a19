"""The model registry: name -> builder returning an ``nn.Module`` that maps (B, 3, H, W) floats to (B, 1) logits.

    from cxr.models import build_model, input_spec, list_models
    model = build_model("resnet50", pretrained=False, image_size=64)
    spec = input_spec("resnet50")   # {"mean": [...], "std": [...], "image_size": 224}

Models: ``cnn`` (the reference custom CNN), ``resnet50`` and ``vgg16`` (torchvision, reference head
Linear(in, 128) -> ReLU -> Dropout(0.3) -> Linear(128, 1)), ``vit`` (Hugging Face ViT-B/16, in21k).

Pretrained weights are only ever read from local files: the torch hub cache
(``$TORCH_HOME/hub/checkpoints``), the Hugging Face cache with ``local_files_only=True``, or a path
given as ``models.<name>.weights``. Nothing here downloads; a missing file raises
:class:`WeightsUnavailableError` with the two ways out, never a silent random initialisation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

VIT_HUB_ID = "google/vit-base-patch16-224-in21k"
# Architecture fields of a ViTConfig that a checkpoint must record to be rebuilt without the hub.
_VIT_ARCH_KEYS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size",
    "image_size", "num_channels", "qkv_bias", "layer_norm_eps", "hidden_act",
)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were requested but no local copy could be loaded."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]  # builder(pretrained, weights, image_size, **options) -> nn.Module
    input_spec: Callable[[str | None], dict]  # weights path or None -> {"mean", "std", "image_size"}
    is_cnn: bool  # convolutional: channels_last helps on CUDA
    description: str = ""
    head_prefix: str = ""  # state_dict prefix of the ImageNet head replaced by ours (torchvision)
    min_image_size: int = 16  # smallest input side the architecture accepts


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, input_spec: Callable[[str | None], dict], is_cnn: bool,
                   description: str = "", head_prefix: str = "", min_image_size: int = 16):
    def deco(builder):
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelEntry(name, builder, input_spec, is_cnn, description, head_prefix, min_image_size)
        return builder

    return deco


def list_models() -> list[str]:
    return sorted(MODELS)


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names are {list_models()}") from None


def build_model(name: str, *, pretrained: bool = False, weights: str | os.PathLike | None = None,
                image_size: int = 224, **options) -> nn.Module:
    """Build model ``name``; ``weights`` (a local file or directory) implies pretrained weights.

    ``options`` are builder-specific (``vit``: ``config={...}`` ViTConfig overrides, used by the
    tests' tiny ViT). The returned module carries ``arch = {"name", "image_size", "options"}``:
    everything :func:`build_model` needs to rebuild the same architecture for a checkpoint.
    """
    entry = get_entry(name)
    check_image_size(name, image_size)
    model = entry.builder(pretrained=pretrained or weights is not None,
                          weights=None if weights is None else str(weights),
                          image_size=int(image_size), **options)
    # Builders may fill in options (e.g. the ViT's resolved config) so checkpoints are self-contained.
    arch_options = getattr(model, "arch_options", {})
    model.arch = {"name": name, "image_size": int(image_size), "options": arch_options}
    return model


def check_image_size(name: str, image_size: int, where: str = "image_size") -> None:
    """Fail early, with the fix, instead of deep inside torch ("input size too small")."""
    from cxr.config import ConfigError

    low = get_entry(name).min_image_size
    if int(image_size) < low:
        raise ConfigError(f"{where}: {name} needs images of at least {low} px (its pooling stages halve the "
                          f"side {low.bit_length() - 1} times), found {image_size}; raise it, e.g. -S {where}={low}")


def rebuild(arch: dict) -> nn.Module:
    """The architecture recorded in ``model.arch`` (a checkpoint's JSON), randomly initialised."""
    return build_model(arch["name"], pretrained=False, image_size=arch["image_size"], **arch.get("options", {}))


def input_spec(name: str, weights: str | os.PathLike | None = None) -> dict:
    """Normalisation and native input size of ``name``, read from its weights' metadata."""
    return get_entry(name).input_spec(None if weights is None else str(weights))


def classifier_head(in_features: int) -> nn.Sequential:
    """The reference notebook's head for the transfer models."""
    return nn.Sequential(nn.Linear(in_features, 128), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(128, 1))


def _fixes(name: str) -> str:
    # `dvc exp run -S` refuses keys that params.yaml does not have yet, hence "in params.yaml" for the
    # per-model keys; train.pretrained always exists.
    return (f"Fix: set `models.{name}.weights: /path/to/local/weights` in params.yaml (a torchvision state_dict "
            f"file, or a save_pretrained directory for vit), or train from scratch: "
            f"`dvc exp run -S train.pretrained=false` (all models) or `models.{name}.pretrained=false` "
            f"(`{name}: {{pretrained: false}}` under models: in params.yaml).")


# --------------------------------------------------------------------------------------------
# cnn: the reference custom CNN
# --------------------------------------------------------------------------------------------

# The reference flattens the last feature map (28 x 28 x 128 at 224 px) into Linear(100352, 256):
# 25.7 M weights, and an architecture tied to one image size. We average-pool the last map to a
# fixed 4 x 4 grid first, so the same CNN (and checkpoint) works at any image size >= 8 px and the
# first FC layer is Linear(2048, 256); the conv stack and FC widths are the reference's.
CNN_POOL_GRID = 4


class ReferenceCNN(nn.Module):
    def __init__(self, in_channels: int = 3, dropout: float = 0.3):
        super().__init__()
        layers = []
        for c_in, c_out in ((in_channels, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(CNN_POOL_GRID)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * CNN_POOL_GRID**2, 256), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(256, 128), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def _cnn_spec(weights: str | None) -> dict:
    # No pretrained weights exist for it; [0, 1] is mapped to [-1, 1] (the same convention as the
    # in21k ViT) so the first layer sees zero-centred inputs.
    return {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "image_size": 224}


@register_model("cnn", input_spec=_cnn_spec, is_cnn=True,
                description="reference custom CNN: 3 conv blocks (32/64/128) + FC 256-128-1")
def _build_cnn(pretrained: bool, weights: str | None, image_size: int) -> nn.Module:
    model = ReferenceCNN()
    if pretrained:
        if weights is None:
            raise WeightsUnavailableError(
                "model 'cnn' has no published pretrained weights, and models.cnn.weights is not set. " + _fixes("cnn"))
        _load_state_dict_file(model, "cnn", weights, head_prefix="")
    return model


# --------------------------------------------------------------------------------------------
# torchvision: resnet50, vgg16
# --------------------------------------------------------------------------------------------


def _torchvision_weights(name: str):
    from torchvision.models import ResNet50_Weights, VGG16_Weights

    return {"resnet50": ResNet50_Weights.IMAGENET1K_V2, "vgg16": VGG16_Weights.IMAGENET1K_V1}[name]


def _torchvision_spec(name: str) -> Callable[[str | None], dict]:
    def spec(weights: str | None) -> dict:
        t = _torchvision_weights(name).transforms()  # only metadata: builds no model, downloads nothing
        return {"mean": list(t.mean), "std": list(t.std), "image_size": int(t.crop_size[0])}

    return spec


def _hub_checkpoint(name: str) -> Path:
    """Where torchvision would have cached the ImageNet weights of ``name`` (never downloads)."""
    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_state_dict_file(model: nn.Module, name: str, path: str | Path, head_prefix: str) -> None:
    """Load a backbone state_dict into ``model`` (before its head is replaced).

    Keys of the original ImageNet head (``head_prefix``) are dropped: that head is replaced anyway,
    and its 1000-class shape would not fit. Every other key of the model must be matched.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"pretrained weights for model '{name}' not found: looked for the file {path}. " + _fixes(name))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickled whole model (refused by weights_only)
        raise WeightsUnavailableError(
            f"could not read weights for model '{name}' from {path}: {exc}. Expected a state_dict saved with "
            f"torch.save(model.state_dict(), path). " + _fixes(name)) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if head_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    expected = {k: v for k, v in model.state_dict().items() if not (head_prefix and k.startswith(head_prefix))}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        raise WeightsUnavailableError(
            f"weights in {path} do not fit model '{name}': {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), {len(wrong_shape)} of another shape "
            f"(e.g. {wrong_shape[:3]}). Expected a torchvision-layout {name} state_dict. " + _fixes(name))
    model.load_state_dict(state, strict=False)  # strict=False only for the dropped head keys


def _torchvision_backbone(name: str, ctor, pretrained: bool, weights: str | None, head_prefix: str) -> nn.Module:
    model = ctor(weights=None)  # never let torchvision download; weights are loaded from local files below
    if pretrained:
        path = Path(weights) if weights is not None else _hub_checkpoint(name)
        if weights is None and not path.is_file():
            raise WeightsUnavailableError(
                f"pretrained ImageNet weights for model '{name}' are not in the torch hub cache: looked for {path} "
                f"(TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}); nothing is downloaded. " + _fixes(name))
        _load_state_dict_file(model, name, path, head_prefix)
    return model


@register_model("resnet50", input_spec=_torchvision_spec("resnet50"), is_cnn=True, head_prefix="fc.",
                description="torchvision ResNet-50 (ImageNet IMAGENET1K_V2) + reference head")
def _build_resnet50(pretrained: bool, weights: str | None, image_size: int) -> nn.Module:
    from torchvision.models import resnet50

    model = _torchvision_backbone("resnet50", resnet50, pretrained, weights, "fc.")
    model.fc = classifier_head(model.fc.in_features)
    return model


@register_model("vgg16", input_spec=_torchvision_spec("vgg16"), is_cnn=True, head_prefix="classifier.6.", min_image_size=32,
                description="torchvision VGG16 (ImageNet IMAGENET1K_V1) + reference head")
def _build_vgg16(pretrained: bool, weights: str | None, image_size: int) -> nn.Module:
    from torchvision.models import vgg16

    model = _torchvision_backbone("vgg16", vgg16, pretrained, weights, "classifier.6.")
    # The 1000-way ImageNet layer is replaced; VGG's adaptive avgpool makes any size >= 32 px work.
    model.classifier[6] = classifier_head(model.classifier[6].in_features)
    return model


# --------------------------------------------------------------------------------------------
# vit: Hugging Face ViT
# --------------------------------------------------------------------------------------------


class HFLogits(nn.Module):
    """Wraps a ``ViTForImageClassification`` so forward(x) returns the (B, 1) logits tensor."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Position embeddings are interpolated when the run's image size differs from the checkpoint's.
        return self.hf(pixel_values=x, interpolate_pos_encoding=True).logits


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def _vit_spec(weights: str | None) -> dict:
    from transformers import ViTImageProcessor

    proc = None
    if weights is not None and (Path(weights) / "preprocessor_config.json").is_file():
        proc = ViTImageProcessor.from_pretrained(weights, local_files_only=True)
    elif weights is None:
        try:
            proc = ViTImageProcessor.from_pretrained(VIT_HUB_ID, local_files_only=True, cache_dir=_hf_cache_dir())
        except Exception:
            proc = None  # not cached: the in21k processor's values are the ViTImageProcessor defaults
    proc = proc or ViTImageProcessor()
    return {"mean": [float(v) for v in proc.image_mean], "std": [float(v) for v in proc.image_std],
            "image_size": int(proc.size["height"])}


@register_model("vit", input_spec=_vit_spec, is_cnn=False,
                description=f"Hugging Face ViTForImageClassification, ViT-B/16 ({VIT_HUB_ID})")
def _build_vit(pretrained: bool, weights: str | None, image_size: int, config: dict | None = None) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    if pretrained:
        source = weights if weights is not None else VIT_HUB_ID
        if weights is not None and not Path(weights).is_dir():
            raise WeightsUnavailableError(
                f"pretrained weights for model 'vit' not found: looked for a save_pretrained directory at {weights}. "
                + _fixes("vit"))
        try:
            # A fresh 1-logit classifier replaces whatever head the checkpoint has (in21k has none).
            hf = ViTForImageClassification.from_pretrained(
                source, num_labels=1, ignore_mismatched_sizes=True, local_files_only=True, cache_dir=_hf_cache_dir())
        except (OSError, ValueError) as exc:
            where = weights if weights is not None else f"{VIT_HUB_ID} in the Hugging Face cache {_hf_cache_dir()}"
            raise WeightsUnavailableError(
                f"pretrained weights for model 'vit' could not be loaded offline: looked for {where} ({exc.__class__.__name__}). "
                + _fixes("vit")) from exc
    else:
        # ViT-B/16 (the in21k checkpoint's architecture), randomly initialised at the run's image size.
        cfg = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
               "intermediate_size": 3072, "patch_size": 16, "image_size": image_size}
        cfg.update(config or {})
        hf = ViTForImageClassification(ViTConfig(num_labels=1, **cfg))
    model = HFLogits(hf)
    model.arch_options = {"config": {k: getattr(hf.config, k) for k in _VIT_ARCH_KEYS}}
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe() -> str:
    return json.dumps({n: MODELS[n].description for n in list_models()}, indent=2)
