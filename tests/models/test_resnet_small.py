"""resnet_small: any side >= 32 px, a clear error below, residual blocks that start as their shortcut, and it learns."""

from __future__ import annotations

import pytest
import torch

from cxr.config import ConfigError
from cxr.models import build_model, check_image_size, get_entry
from cxr.models.resnet_small import BasicBlock


def test_forward_at_several_sizes_and_size_floor():
    model = build_model("resnet_small", image_size=128).eval()
    with torch.no_grad():
        for side in (32, 96, 150):
            assert model(torch.randn(2, 3, side, side)).shape == (2, 1)
    with pytest.raises(ConfigError, match="at least 32 px"):
        check_image_size("resnet_small", 16)


def test_size_and_registry_facts():
    model = build_model("resnet_small")
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n < 1_500_000
    entry = get_entry("resnet_small")
    assert entry.pretrained_source is None and entry.cam_layer(model) is model.features[-1]
    assert entry.head(model) is model.classifier


def test_a_fresh_block_is_its_shortcut():
    torch.manual_seed(0)
    block = BasicBlock(8, 8, stride=1).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))


def test_learns_a_toy_problem():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32)
    y = torch.arange(32) % 2
    x[y == 1, :, :16] += 1.5  # class 1: a brighter upper half
    model = build_model("resnet_small", image_size=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(model(x).squeeze(1), y.float())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
