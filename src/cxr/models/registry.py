"""The model registry: name -> :class:`ModelEntry`, every per-model fact in one place.

    from cxr.models import build_model, get_entry, list_models
    model = build_model("resnet50", pretrained=False, image_size=64)
    get_entry("resnet50").input_spec(None)   # {"mean": [...], "std": [...], "image_size": 224}

An entry carries the builder, the normalisation and native input size of its weights, whether
channels_last helps, the Grad-CAM target layer (and the token-to-grid reshape a transformer
needs), the smallest usable input and the extra packages a served copy needs. Code outside this
package asks the entry; it never tests a model's name.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cxr.config import ConfigError

# (model, input height, input width) -> a function of the target layer's output giving (B, C, h, w)
CamReshape = Callable[[nn.Module, int, int], Callable[..., Any]]
Builder = Callable[..., nn.Module]  # builder(pretrained, weights, image_size, **options) -> nn.Module


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]  # builder(pretrained, weights, image_size, **options) -> nn.Module
    input_spec: Callable[[str | None], dict[str, Any]]  # weights path or None -> {"mean", "std", "image_size"}
    cam_layer: Callable[[nn.Module], nn.Module]  # the layer Grad-CAM combines
    channels_last: bool  # convolutional: channels_last memory format helps on CUDA
    description: str = ""
    cam_reshape: CamReshape | None = None  # transformer tokens -> feature map, for Grad-CAM
    min_image_size: int = 16  # smallest input side the architecture accepts
    requirements: tuple[str, ...] = field(default=())  # extra pip packages a served copy needs
    # The published weights (weights.TorchvisionWeights / weights.HubSnapshot); None: none exist.
    pretrained_source: object | None = None
    # model -> the newly initialised head (trained at the full lr, never frozen); the rest is the backbone.
    head: Callable[[nn.Module], nn.Module] | None = None


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, **facts: Any) -> Callable[[Builder], Builder]:
    """Decorator: ``@register_model("cnn", input_spec=..., cam_layer=..., channels_last=True)`` on a builder."""

    def deco(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelEntry(name=name, builder=builder, **facts)
        return builder

    return deco


def list_models() -> list[str]:
    return sorted(MODELS)


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid names are {list_models()}") from None


def build_model(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    image_size: int = 224,
    **options: Any,
) -> nn.Module:
    """Build model ``name``; ``weights`` (a local file or directory) implies pretrained weights.

    ``options`` are builder-specific (``vit``: ``config={...}`` ViTConfig overrides, used by the
    tests' tiny ViT). The returned module carries ``arch = {"name", "image_size", "options"}``:
    everything :func:`build_model` needs to rebuild the same architecture for a checkpoint.
    """
    entry = get_entry(name)
    check_image_size(name, image_size)
    model = entry.builder(
        pretrained=pretrained or weights is not None,
        weights=None if weights is None else str(weights),
        image_size=int(image_size),
        **options,
    )
    # Builders may fill in options (e.g. the ViT's resolved config) so checkpoints are self-contained.
    arch_options = getattr(model, "arch_options", {})
    # nn.Module types its attributes as tensors or modules; a plain record is what this one is.
    model.arch = {"name": name, "image_size": int(image_size), "options": arch_options}  # type: ignore[assignment]
    return model


def model_arch(model: nn.Module) -> dict[str, Any]:
    """The ``arch`` record :func:`build_model` attached to ``model`` (what a checkpoint rebuilds it from)."""
    arch: dict[str, Any] = model.__dict__["arch"]
    return arch


def builder_options(name: str) -> list[str]:
    """The keyword arguments ``models.<name>.options`` may set: the builder's own, beyond the common three."""
    params = inspect.signature(get_entry(name).builder).parameters
    return [p for p in params if p not in ("pretrained", "weights", "image_size")]


def check_options(name: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(builder_options(name)))
    if unknown:
        raise ConfigError(
            f"{where}: {name} has no option(s) {unknown}; its builder takes {builder_options(name) or 'none'}. "
            f"Fix: remove them, e.g. -S '~{where}.{unknown[0]}'"
        )
    return dict(options)


def check_image_size(name: str, image_size: int, where: str = "image_size") -> None:
    """Fail early, with the fix, instead of deep inside torch ("input size too small")."""
    low = get_entry(name).min_image_size
    if int(image_size) < low:
        raise ConfigError(
            f"{where}: {name} needs images of at least {low} px (its pooling stages halve the "
            f"side {low.bit_length() - 1} times), found {image_size}; raise it, e.g. -S {where}={low}"
        )


def rebuild(arch: dict[str, Any]) -> nn.Module:
    """The architecture recorded in ``model.arch`` (a checkpoint's JSON), randomly initialised."""
    return build_model(arch["name"], pretrained=False, image_size=arch["image_size"], **arch.get("options", {}))


def input_spec(name: str, weights: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Normalisation and native input size of ``name``, read from its weights' metadata."""
    return get_entry(name).input_spec(None if weights is None else str(weights))


def last_conv(module: nn.Module) -> nn.Module:
    """The last Conv2d of ``module``: the usual Grad-CAM layer of a CNN."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no Conv2d layer found in {type(module).__name__}")
    return convs[-1]


def classifier_head(in_features: int) -> nn.Sequential:
    """The reference notebook's head for the transfer models."""
    return nn.Sequential(nn.Linear(in_features, 128), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(128, 1))


def weights_fixes(name: str) -> str:
    # `dvc exp run -S` refuses keys that params.yaml does not have yet, hence "in params.yaml" for the
    # per-model keys; train.pretrained always exists.
    return (
        f"Fix: set `models.{name}.weights: /path/to/local/weights` in params.yaml (a torchvision state_dict "
        f"file, or a save_pretrained directory for vit), or train from scratch: "
        f"`dvc exp run -S train.pretrained=false` (all models) or `models.{name}.pretrained=false` "
        f"(`{name}: {{pretrained: false}}` under models: in params.yaml). The pipeline's `weights` stage "
        f"downloads, verifies and caches them: `dvc repro weights`."
    )
