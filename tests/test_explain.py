"""Grad-CAM for every registered model name: shapes, ranges, target layers, the ViT token grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.explain import (
    NO_LOCALISATION,
    cam_figure,
    cam_to_image,
    gallery_figure,
    grad_cam,
    is_flat,
    overlay,
    save_cam_figure,
    target_layer,
)
from cxr.models import build_model, get_entry, list_models
from cxr.models.resnet_small import BasicBlock
from toydata import TINY_VIT

# Input sides at which the last feature map is at least 2x2 (a 1x1 map has no spatial information).
SIZES = {
    "cnn": 32,
    "resnet50": 64,
    "resnet_small": 64,
    "vgg16": 64,
    "vit": 40,
}  # vit: 40 px != its config, so positions are interpolated


@pytest.fixture(scope="module", params=list_models())
def model_and_name(request):
    name = request.param
    torch.manual_seed(0)
    model = build_model(name, image_size=SIZES[name], **(TINY_VIT if name == "vit" else {}))
    return model.eval(), name


def test_every_model_has_a_target_layer():
    assert set(list_models()) == set(SIZES), "a new model needs a Grad-CAM target layer and a size here"


def test_grad_cam_shapes_and_range(model_and_name):
    model, name = model_and_name
    s = SIZES[name]
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(1))
    for target in ("pneumonia", "predicted"):
        heat = grad_cam(model, name, x, target=target, batch_size=2)  # 2 batches
        assert heat.shape == (3, s, s) and heat.dtype == np.float32
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    # pytorch_grad_cam's hooks are released: the model still runs and returns one logit per image.
    assert model(x).shape == (3, 1)


def test_target_layers(model_and_name):
    model, name = model_and_name
    layer = target_layer(name, model)
    expected = {
        "cnn": torch.nn.Conv2d,
        "vgg16": torch.nn.Conv2d,
        "resnet50": torch.nn.Sequential,
        "resnet_small": BasicBlock,
        "vit": torch.nn.LayerNorm,
    }[name]
    assert isinstance(layer, expected)
    if name == "cnn":
        assert layer is [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    if name == "resnet50":
        assert layer is model.layer4


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ValueError, match="valid names are \\['cnn'"):
        target_layer("inception", torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="target"):
        grad_cam(torch.nn.Conv2d(3, 1, 1), "cnn", torch.zeros(1, 3, 8, 8), target="normal")


def test_vit_reshape_drops_cls_and_keeps_row_major_patch_order():
    torch.manual_seed(0)
    vit = build_model("vit", image_size=32, **TINY_VIT)
    reshape = get_entry("vit").cam_reshape(vit, 24, 32)  # 3 x 4 patches of 8 px: non-square works too
    tokens = torch.arange(1 + 12, dtype=torch.float32).view(1, 13, 1).expand(2, 13, 5)
    grid = reshape(tokens)
    assert grid.shape == (2, 5, 3, 4)
    assert grid[0, 0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]  # CLS (0) dropped
    with pytest.raises(ValueError, match="patch grid"):
        reshape(torch.zeros(1, 10, 5))


def test_grad_cam_localises_the_evidence():
    # Two feature channels: one sees a red blob (top right), one a green blob (bottom left). The
    # logit rises with the first and falls with the second, so the PNEUMONIA heatmap must light up
    # the red blob only, and the "predicted NORMAL" heatmap the green one.
    class TwoChannel(torch.nn.Module):
        def __init__(self, sign: float):
            super().__init__()
            self.sign = sign
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
            with torch.no_grad():
                self.features[0].weight.zero_()
                self.features[0].weight[0, 0] = 1.0
                self.features[0].weight[1, 1] = 1.0
                self.features[0].bias.zero_()

        def forward(self, x):
            f = self.features(x).mean(dim=(2, 3))
            return (self.sign * (f[:, 0] - f[:, 1]) + 0.01).unsqueeze(1)

    x = torch.zeros(2, 3, 16, 16)
    x[:, 0, :8, 8:] = 1.0
    x[:, 1, 8:, :8] = 1.0
    heat = grad_cam(TwoChannel(1.0), "cnn", x)
    assert heat[:, :8, 8:].min() > 0.9 and heat[:, 8:, :8].max() < 0.05
    # Logit < 0 (predicted NORMAL): "predicted" explains the NORMAL evidence, the green blob.
    heat = grad_cam(TwoChannel(-1.0), "cnn", x + 0.0, target="predicted")
    assert heat[:, 8:, :8].min() > 0.9 and heat[:, :8, 8:].max() < 0.05


def test_overlay_is_rgb_uint8_at_image_size():
    gray = np.full((40, 30), 128, dtype=np.uint8)
    heat = np.zeros((16, 16), dtype=np.float32)
    heat[:8] = 1.0
    out = overlay(gray, heat)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] > out[0, 0, 2]  # hot (top) is red in JET
    assert out[-1, 0, 2] > out[-1, 0, 0]  # cold (bottom) is blue
    with pytest.raises(ValueError, match="grayscale"):
        overlay(np.zeros((4, 4, 3), np.uint8), heat)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_gallery_figure_groups_by_outcome():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 16, 16), dtype=np.uint8)
    fig = gallery_figure(images, [1, 0, 0, 1], [0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0], threshold=0.5)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split(":")[0] for t in titles] == ["TP", "TN", "FP", "FN"]
    assert "P(pneu) = 0.800" in titles[2]
    overlays = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    fig = gallery_figure(images, [1, 1, 0, 1], [0.9, 0.7, 0.1, 0.2], [1, 1, 0, 0], overlays)
    assert "Grad-CAM" in fig._suptitle.get_text()
    assert "FP: none" in _texts(fig) and NO_LOCALISATION not in _texts(fig)


def test_flat_cam_says_no_localisation_instead_of_a_blue_wash():
    assert is_flat(np.zeros((7, 7))) and is_flat(np.full((7, 7), 0.4)) and not is_flat(np.eye(7))
    images = np.full((2, 16, 16), 90, dtype=np.uint8)
    heat = np.stack([np.zeros((8, 8)), np.eye(8)])  # ViT / VGG16 from scratch: an all-zero map
    overlays = [None if is_flat(h) else overlay(img, h) for img, h in zip(images, heat)]
    fig = gallery_figure(images, [1, 0], [0.9, 0.1], [1, 0], overlays)
    tiles = [ax for ax in fig.axes if ax.get_title()]
    assert [t.get_text() for t in tiles[0].texts] == [NO_LOCALISATION] and not tiles[1].texts
    assert tiles[0].images[0].get_array().ndim == 2  # the plain grey image, no JET overlay
    assert tiles[1].images[0].get_array().shape == (16, 16, 3)


def test_cam_figure_at_the_image_resolution_with_colour_bar_and_title(tmp_path):
    from PIL import Image

    sizes = []
    for h, w in ((120, 90), (360, 270)):
        gray = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
        heat = cam_to_image(np.eye(8, dtype=np.float32), gray.shape)
        assert heat.shape == (h, w)
        fig = cam_figure(gray, heat, 0.873, "PNEUMONIA", 0.5)
        assert "PNEUMONIA" in fig._suptitle.get_text() and "0.873" in fig._suptitle.get_text()
        assert any(ax.get_ylabel().startswith("Grad-CAM") for ax in fig.axes)  # the colour bar
        with Image.open(save_cam_figure(fig, tmp_path / f"{h}.png")) as im:
            sizes.append(im.size)
    assert sizes[1][0] - sizes[0][0] == 2 * (270 - 90)  # two panels, each at the image's own width
    assert sizes[1][1] - sizes[0][1] == 360 - 120
    flat = cam_figure(np.zeros((40, 40), np.uint8), np.zeros((40, 40)), 0.1, "NORMAL", 0.5)
    assert NO_LOCALISATION in _texts(flat)


def test_cam_figure_of_a_full_size_radiograph_has_a_title_to_scale_and_names_the_model():
    """A 2000 px radiograph's figure is about 4,000 px wide: an 11 pt title there was about 10 px high."""
    gray = np.zeros((1600, 2000), np.uint8)
    note = "model cxr-pneumonia version 3 (models:/cxr-pneumonia@champion); trained on the folder /data/chest_xray"
    small = cam_figure(gray[:200, :250], np.zeros((200, 250)), 0.9, "PNEUMONIA", 0.5, note)
    large = cam_figure(gray, np.zeros((1600, 2000)), 0.9, "PNEUMONIA", 0.5, note)
    assert large._suptitle.get_fontsize() == pytest.approx(small._suptitle.get_fontsize() * 2000 / 400)
    shown = [t.get_text().replace("\n", " ") for t in large.texts]
    assert note in shown and any(note in t.replace("\n", " ") for t in (x.get_text() for x in small.texts))


def test_cam_to_image_drops_the_letterbox_of_a_padded_cache():
    heat = np.zeros((16, 16), np.float32)
    heat[:4] = 1.0  # the black band above a wide image in a "pad" cache: the model saw nothing there
    heat[4:12, :8] = 0.5
    out = cam_to_image(heat, (50, 100), resize="pad")
    assert out.shape == (50, 100) and out.max() <= 0.5 + 1e-6 and out[25, 10] == pytest.approx(0.5)
