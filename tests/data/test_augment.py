"""BatchAugment: per-image draws, seeded, identity at zero magnitudes, the flip flips; reference transforms run."""

from __future__ import annotations

import pytest
import torch

from cxr.config import AugmentConfig, ConfigError, parse
from cxr.data.augment import (
    BatchAugment,
    Normalize,
    eval_resize,
    eval_transform,
    gaussian_blur,
    reference_transforms,
    resize01,
    to_model_input,
)

ZERO = AugmentConfig(
    affine_degrees=0, affine_translate=0, crop_scale=(1.0, 1.0), hflip_p=0, rotation_degrees=0, brightness=0, contrast=0
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (1, 1, 24, 24), dtype=torch.uint8)
    x[..., 4:12, 2:8] = 255  # an asymmetric bright patch, so flips and shifts show
    return x.repeat(6, 1, 1, 1)  # identical images


def test_output_shape_dtype_range(batch):
    out = BatchAugment(AugmentConfig(), 16)(batch, gen(0))
    assert out.shape == (6, 1, 16, 16) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_rejects_float_input(batch):
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(AugmentConfig(), 16)(batch.float(), gen(0))


def test_draws_are_per_image(batch):
    out = BatchAugment(AugmentConfig(), 16)(batch, gen(0))
    flat = out.flatten(1)
    diffs = [(flat[i] - flat[j]).abs().max().item() for i in range(6) for j in range(i + 1, 6)]
    assert min(diffs) > 1e-3  # no two identical inputs got the same augmentation


def test_same_seed_same_output_other_seed_differs(batch):
    aug = BatchAugment(AugmentConfig(), 16)
    assert torch.equal(aug(batch, gen(3)), aug(batch, gen(3)))
    assert not torch.allclose(aug(batch, gen(3)), aug(batch, gen(4)))


def test_zero_magnitudes_are_the_eval_resize(batch):
    # Training and evaluation must see equally smooth images: both antialias when shrinking.
    out = BatchAugment(ZERO, 16)(batch, gen(0))
    torch.testing.assert_close(out, eval_resize(batch, 16), atol=1e-5, rtol=0)


def test_large_shrink_is_antialiased_like_eval():
    """96 -> 32 px (the sweep default): with zero magnitudes the training input is eval's, not an aliased one."""
    torch.manual_seed(1)
    x = torch.randint(0, 256, (4, 1, 96, 96), dtype=torch.uint8)  # high-frequency content aliases most
    out = BatchAugment(ZERO, 32)(x, gen(0))
    ref = eval_resize(x, 32)
    assert (out - ref).abs().mean() < 1e-4
    assert (resize01(x, 32) - ref).abs().mean() > 0.02  # the unfiltered resize really differs here


def test_disabled_is_the_eval_resize(batch):
    out = BatchAugment(AugmentConfig().replace(enabled=False), 16)(batch, gen(0))
    torch.testing.assert_close(out, eval_resize(batch, 16))


def test_flip_flips(batch):
    out = BatchAugment(ZERO.replace(hflip_p=1.0), 24)(batch, gen(0))
    torch.testing.assert_close(out, resize01(batch, 24).flip(-1), atol=1e-5, rtol=0)


def test_translation_moves_content():
    x = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    x[..., 14:18, 14:18] = 255
    cfg = ZERO.replace(affine_translate=0.2)
    out = BatchAugment(cfg, 32)(x.repeat(8, 1, 1, 1), gen(1))
    centroids = [(o[0] * torch.arange(32.0)).sum() / o[0].sum() for o in out]  # x-centroid per image
    assert max(abs(c - 15.5) for c in centroids) > 1.0


def test_brightness_contrast_change_intensity_only(batch):
    cfg = ZERO.replace(brightness=0.5, contrast=0.5)
    out = BatchAugment(cfg, 24)(batch, gen(0))
    plain = resize01(batch, 24)
    means = out.mean(dim=(1, 2, 3))
    assert (means - plain.mean()).abs().max() > 0.01
    # geometry untouched: the ranking of pixel intensities is preserved
    corr = torch.corrcoef(torch.stack([out[0].flatten(), plain[0].flatten()]))[0, 1]
    assert corr > 0.99


def test_reference_transforms_single_image():
    x = torch.randint(0, 256, (1, 40, 40), dtype=torch.uint8)
    out = reference_transforms(AugmentConfig(), 32)(x)
    assert out.shape == (1, 32, 32) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    ev = eval_transform(32)
    assert torch.equal(ev(x), ev(x))
    # the batched evaluation resize is the same antialiased bilinear resize
    torch.testing.assert_close(eval_resize(x[None], 32)[0], ev(x), atol=2 / 255, rtol=0)


def test_to_model_input_repeats_and_normalises():
    x01 = torch.rand(2, 1, 8, 8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = to_model_input(x01, mean, std)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out[:, 1], (x01[:, 0] - 0.456) / 0.224)
    cl = Normalize(mean, std, channels_last=True)(x01)
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_gamma_is_a_power_per_image(batch):
    plain = resize01(batch, 24)
    fixed = BatchAugment(ZERO.replace(gamma=(2.0, 2.0)), 24)(batch, gen(0))
    torch.testing.assert_close(fixed, plain.clamp(min=1e-6) ** 2, atol=1e-5, rtol=0)
    drawn = BatchAugment(ZERO.replace(gamma=(0.5, 2.0)), 24)(batch, gen(0))
    means = drawn.mean(dim=(1, 2, 3))
    assert means.max() - means.min() > 0.02  # each identical input got its own gamma
    floor = plain.clamp(min=1e-6)  # as the augmentation clamps before the power
    assert ((drawn >= floor**2 - 1e-5) & (drawn <= floor.sqrt() + 1e-5)).all()  # gamma within [0.5, 2]


def test_blur_smooths_each_image_by_its_own_sigma(batch):
    plain = resize01(batch, 24)
    out = BatchAugment(ZERO.replace(blur_p=1.0, blur_sigma=2.0), 24)(batch, gen(0))
    roughness = (out[..., 1:] - out[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert (roughness < (plain[..., 1:] - plain[..., :-1]).abs().mean()).all()
    assert roughness.max() - roughness.min() > 1e-3  # sigmas differ per image
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), plain.mean(dim=(1, 2, 3)).expand(6), atol=0.02, rtol=0)


def test_blur_probability_zero_sigma_leaves_images(batch):
    plain = resize01(batch, 24)
    torch.testing.assert_close(gaussian_blur(plain, torch.zeros(6)), plain, atol=1e-6, rtol=0)
    out = BatchAugment(ZERO.replace(blur_p=0.5, blur_sigma=2.0), 24)(batch, gen(0))
    untouched = [(o - plain[0]).abs().max().item() < 1e-6 for o in out]
    assert 0 < sum(untouched) < 6  # some images blurred, some not


def test_sharpen_adds_detail_per_image(batch):
    plain = resize01(batch, 24)
    out = BatchAugment(ZERO.replace(sharpen_p=1.0, sharpen_amount=2.0), 24)(batch, gen(0))
    roughness = (out[..., 1:] - out[..., :-1]).abs().mean(dim=(1, 2, 3))
    assert (roughness >= (plain[..., 1:] - plain[..., :-1]).abs().mean() - 1e-6).all()
    assert roughness.max() - roughness.min() > 1e-3  # amounts differ per image


def test_noise_is_seeded_per_image_and_zero_mean(batch):
    aug = BatchAugment(ZERO.replace(noise_std=0.1), 24)
    out = aug(batch, gen(0))
    assert torch.equal(out, aug(batch, gen(0))) and not torch.equal(out, aug(batch, gen(1)))
    resid = (out - resize01(batch, 24)).flatten(1)
    assert resid.std(dim=1).max() - resid.std(dim=1).min() > 0.01  # std drawn per image
    assert resid.mean().abs() < 0.02


def test_intensity_knobs_off_keep_the_reference_draws(batch):
    # the intensity draws come after the reference ones: enabling them changes nothing geometric
    ref = BatchAugment(AugmentConfig(), 16)(batch, gen(0))
    gamma = BatchAugment(AugmentConfig().replace(gamma=(2.0, 2.0)), 16)(batch, gen(0))
    torch.testing.assert_close(gamma, ref.clamp(min=1e-6) ** 2, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"gamma": (0.0, 1.0)}, "gamma"),
        ({"gamma": (1.5, 1.0)}, "gamma"),
        ({"blur_p": 1.5}, "blur_p"),
        ({"blur_sigma": 0.0}, "blur_sigma"),
        ({"sharpen_p": -0.1}, "sharpen_p"),
        ({"sharpen_amount": 0.0}, "sharpen_amount"),
        ({"noise_std": -0.1}, "noise_std"),
    ],
)
def test_intensity_knobs_are_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        parse(AugmentConfig, changes, "train.augment")
