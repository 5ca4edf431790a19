"""``vit``: Hugging Face ``ViTForImageClassification`` (ViT-B/16, ``google/vit-base-patch16-224-in21k``).

The forward of :class:`HFLogits` returns the (B, 1) logits tensor, like every other model here.
Normalisation and native size come from the checkpoint's ``preprocessor_config.json``. For Grad-CAM, the
registry entry names the last block's ``layernorm_before`` and reshapes its tokens to a patch grid.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.models.registry import register_model, weights_fixes
from cxr.models.weights import HubSnapshot, hf_cache_dir
from cxr.pretrained import WeightsUnavailableError

VIT_HUB_ID = "google/vit-base-patch16-224-in21k"
# The pinned commit of VIT_HUB_ID that the `weights` stage fetches (same name, same bytes, for good).
VIT_REVISION = "b4569560a39a0f1af58e3ddaf17facf20ab919b0"
# Architecture fields of a ViTConfig that a checkpoint must record to be rebuilt without the hub.
_VIT_ARCH_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "image_size",
    "num_channels",
    "qkv_bias",
    "layer_norm_eps",
    "hidden_act",
)


class HFLogits(nn.Module):
    """Wraps a ``ViTForImageClassification`` so forward(x) returns the (B, 1) logits tensor."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Position embeddings are interpolated when the run's image size differs from the checkpoint's.
        logits: torch.Tensor = self.hf(pixel_values=x, interpolate_pos_encoding=True).logits
        return logits


def _hf_cache_dir() -> str:
    return hf_cache_dir()


# ViTImageProcessor's defaults (IMAGENET_STANDARD_MEAN/STD, 224 px): the in21k checkpoint's values,
# used when no preprocessor_config.json is at hand (tests/models/test_registry.py checks them).
_VIT_PROCESSOR_DEFAULTS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "image_size": 224}


def _vit_spec(weights: str | None) -> dict[str, Any]:
    """Normalisation and native size from the checkpoint's ``preprocessor_config.json`` (a
    save_pretrained folder, else the hub cache's copy of VIT_HUB_ID), read as JSON: importing
    ``ViTImageProcessor`` costs every ViT stage seconds (it pulls in torchvision)."""
    config: Path | None
    if weights is not None:
        config = Path(weights) / "preprocessor_config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(VIT_HUB_ID, "preprocessor_config.json", cache_dir=_hf_cache_dir())
        config = Path(cached) if isinstance(cached, str) else None
    spec = dict(_VIT_PROCESSOR_DEFAULTS)
    if config is not None and config.is_file():
        proc = json.loads(config.read_text())
        size = proc.get("size", spec["image_size"])
        spec = {
            "mean": [float(v) for v in proc.get("image_mean", spec["mean"])],
            "std": [float(v) for v in proc.get("image_std", spec["std"])],
            "image_size": int(size["height"] if isinstance(size, dict) else size),
        }
    return spec


def _hf_vit(model: nn.Module) -> nn.Module:
    # The registry wraps ViTForImageClassification as ``model.hf``; accept the bare HF model too.
    hf = getattr(model, "hf", model)
    if not hasattr(hf, "vit"):
        raise ValueError(f"expected a Hugging Face ViTForImageClassification (with .vit), found {type(hf).__name__}")
    return hf


def _vit_layers(model: nn.Module) -> nn.ModuleList:
    vit: Any = _hf_vit(model).vit
    # transformers >= 5 keeps the blocks in ``vit.layers``; 4.x in ``vit.encoder.layer``.
    layers = getattr(vit, "layers", None)
    found = layers if layers is not None else vit.encoder.layer
    assert isinstance(found, nn.ModuleList)
    return found


def _cam_layer(model: nn.Module) -> nn.Module:
    norm = _vit_layers(model)[-1].get_submodule("layernorm_before")
    return norm


def vit_token_grid(model: nn.Module, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Grad-CAM reshape: (B, 1 + h*w, D) tokens -> (B, D, h, w), like a conv feature map."""
    hf: Any = _hf_vit(model)
    patch = int(hf.config.patch_size)
    gh, gw = height // patch, width // patch

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        b, t, d = tokens.shape
        if t - 1 != gh * gw:
            raise ValueError(
                f"ViT token count {t} does not match a {gh}x{gw} patch grid + CLS "
                f"for a {height}x{width} input with patch size {patch}"
            )
        grid = tokens[:, 1:, :].reshape(b, gh, gw, d)  # drop CLS; patches are row-major
        return grid.permute(0, 3, 1, 2)

    return reshape


@register_model(
    "vit",
    input_spec=_vit_spec,
    channels_last=False,
    cam_layer=_cam_layer,
    cam_reshape=vit_token_grid,
    requirements=("transformers",),
    pretrained_source=HubSnapshot(VIT_HUB_ID, VIT_REVISION),
    head=lambda m: _hf_vit(m).classifier,
    description=f"Hugging Face ViTForImageClassification, ViT-B/16 ({VIT_HUB_ID})",
)
def _build_vit(
    pretrained: bool, weights: str | None, image_size: int, config: dict[str, Any] | None = None
) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    if pretrained:
        source = weights if weights is not None else VIT_HUB_ID
        if weights is not None and not Path(weights).is_dir():
            raise WeightsUnavailableError(
                f"pretrained weights for model 'vit' not found: looked for a save_pretrained directory at {weights}. "
                + weights_fixes("vit")
            )
        try:
            # A fresh 1-logit classifier replaces whatever head the checkpoint has (in21k has none).
            hf = ViTForImageClassification.from_pretrained(
                source, num_labels=1, ignore_mismatched_sizes=True, local_files_only=True, cache_dir=_hf_cache_dir()
            )
        except (OSError, ValueError) as exc:
            where = weights if weights is not None else f"{VIT_HUB_ID} in the Hugging Face cache {_hf_cache_dir()}"
            raise WeightsUnavailableError(
                f"pretrained weights for model 'vit' could not be loaded offline: looked for {where} "
                f"({exc.__class__.__name__}). " + weights_fixes("vit")
            ) from exc
    else:
        # ViT-B/16 (the in21k checkpoint's architecture), randomly initialised at the run's image size.
        cfg: dict[str, Any] = {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "patch_size": 16,
            "image_size": image_size,
        }
        cfg.update(config or {})
        # PretrainedConfig takes num_labels through **kwargs, which ViTConfig's typed signature hides.
        hf = ViTForImageClassification(ViTConfig(num_labels=1, **cfg))  # type: ignore[call-arg]
    model = HFLogits(hf)
    model.arch_options = {"config": {k: getattr(hf.config, k) for k in _VIT_ARCH_KEYS}}  # type: ignore[assignment]
    return model
