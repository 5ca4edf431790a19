"""``resnet50`` and ``vgg16``: torchvision backbones (ImageNet weights) with the reference head.

The head: Linear(in, 128) -> ReLU -> Dropout(0.3) -> Linear(128, 1), replacing the 1000-way layer.
Normalisation and native size come from the torchvision weight enum's ``transforms()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.models.registry import classifier_head, last_conv, register_model, weights_fixes
from cxr.models.weights import TorchvisionWeights, load_state_dict_file
from cxr.pretrained import WeightsUnavailableError

# The published weights, as torchvision names them (URL, sha256 prefix, transforms).
_SOURCES = {
    "resnet50": TorchvisionWeights("ResNet50_Weights.IMAGENET1K_V2"),
    "vgg16": TorchvisionWeights("VGG16_Weights.IMAGENET1K_V1"),
}


def _torchvision_weights(name: str) -> Any:
    return _SOURCES[name].weights()


def _torchvision_spec(name: str) -> Callable[[str | None], dict[str, Any]]:
    def spec(weights: str | None) -> dict[str, Any]:
        t = _torchvision_weights(name).transforms()  # only metadata: builds no model, downloads nothing
        return {"mean": list(t.mean), "std": list(t.std), "image_size": int(t.crop_size[0])}

    return spec


def _hub_checkpoint(name: str) -> Path:
    """Where torchvision would have cached the ImageNet weights of ``name`` (never downloads)."""
    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(url))


def _torchvision_backbone(
    name: str, ctor: Callable[..., nn.Module], pretrained: bool, weights: str | None, head_prefix: str
) -> nn.Module:
    model = ctor(weights=None)  # never let torchvision download; weights are loaded from local files below
    if pretrained:
        path = Path(weights) if weights is not None else _hub_checkpoint(name)
        if weights is None and not path.is_file():
            raise WeightsUnavailableError(
                f"pretrained ImageNet weights for model '{name}' are not in the torch hub cache: looked for {path} "
                f"(TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}); nothing is downloaded. " + weights_fixes(name)
            )
        load_state_dict_file(model, name, path, head_prefix)
    return model


@register_model(
    "resnet50",
    input_spec=_torchvision_spec("resnet50"),
    channels_last=True,
    cam_layer=lambda m: m.layer4,
    pretrained_source=_SOURCES["resnet50"],
    head=lambda m: m.fc,
    description="torchvision ResNet-50 (ImageNet IMAGENET1K_V2) + reference head",
)
def _build_resnet50(pretrained: bool, weights: str | None, image_size: int) -> nn.Module:
    from torchvision.models import resnet50

    model = _torchvision_backbone("resnet50", resnet50, pretrained, weights, "fc.")
    fc = model.get_submodule("fc")
    assert isinstance(fc, nn.Linear)  # for the type checker: torchvision's ResNet head
    model.fc = classifier_head(fc.in_features)
    return model


@register_model(
    "vgg16",
    input_spec=_torchvision_spec("vgg16"),
    channels_last=True,
    min_image_size=32,
    cam_layer=lambda m: last_conv(m.features),
    pretrained_source=_SOURCES["vgg16"],
    head=lambda m: m.classifier[6],
    description="torchvision VGG16 (ImageNet IMAGENET1K_V1) + reference head",
)
def _build_vgg16(pretrained: bool, weights: str | None, image_size: int, batch_norm: bool = False) -> nn.Module:
    """``batch_norm``: torchvision's ``vgg16_bn`` (the same configuration with batch norm after every
    convolution), which learns from random weights in a few epochs where plain VGG16 needs a low lr
    and many; the default run uses it. Its ImageNet weights are not wired here: from scratch only."""
    from torchvision.models import vgg16, vgg16_bn

    if batch_norm and pretrained:
        raise WeightsUnavailableError(
            "vgg16 with options.batch_norm: true trains from random weights only (its ImageNet weights, "
            "VGG16_BN_Weights, are not wired into the weights stage). Fix: -S models.vgg16.pretrained=false, "
            "or -S models.vgg16.options.batch_norm=false for the pretrained plain VGG16"
        )
    model = _torchvision_backbone("vgg16", vgg16_bn if batch_norm else vgg16, pretrained, weights, "classifier.6.")
    # The 1000-way ImageNet layer is replaced; VGG's adaptive avgpool makes any size >= 32 px work.
    classifier = model.get_submodule("classifier")
    assert isinstance(classifier, nn.Sequential) and isinstance(classifier[6], nn.Linear)  # torchvision's VGG
    classifier[6] = classifier_head(classifier[6].in_features)
    if batch_norm:  # recorded in the model card's arch, so that a checkpoint rebuilds the same network
        model.arch_options = {"batch_norm": True}  # type: ignore[assignment]  # a record, not a tensor
    return model
