"""The fast paths compute what the slow ones do: cache vs full decode, batched augmentation drawn per image.

    .venv/bin/pytest tests/test_speed_equivalence.py

The benchmarks (``benchmarks/``) compare speeds; these tests check that the speed is not bought with
a different picture: the cache (JPEG draft decode) agrees with a full decode + resize within
interpolation tolerance, on real full-resolution X-rays and on synthetic images; the batched
augmentation draws per image and per batch; at zero magnitudes training input equals evaluation input.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxr.config import AugmentConfig
from cxr.data import cache as C
from cxr.data.augment import BatchAugment, Normalize, eval_resize
from cxr.data.config import PreprocessConfig
from cxr.data.manifest import MANIFEST_COLUMNS
from cxr.training.loaders import make_loader

ZERO = AugmentConfig(
    affine_degrees=0, affine_translate=0, crop_scale=(1.0, 1.0), hflip_p=0, rotation_degrees=0, brightness=0, contrast=0
)
# Grey levels of 255 between two bilinear resizes whose antialiasing kernels differ (draft decode).
# Grey levels of 255. JPEG draft mode downscales in the DCT domain, a bilinear resize differently:
# measured mean |diff| 0.6 (worst image 2.1) at 256 px on the real full-resolution X-rays.
MEAN_TOL, MAX_PIXEL_TOL_SHARE = 2.5, 0.01


def full_decode(path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)


def manifest(paths: list[str]) -> pd.DataFrame:
    rows = [
        {
            "path": p,
            "label": "NORMAL" if i % 2 else "PNEUMONIA",
            "patient_id": f"t/{i}",
            "source_split": "train",
            "split": "train",
            "sha256": "",
            "width": 0,
            "height": 0,
            "mode": "L",
        }
        for i, p in enumerate(paths)
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def assert_close_to_full_decode(cached: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(cached.astype(np.float64) - ref)
    assert diff.mean() < MEAN_TOL, diff.mean()
    assert (diff > 16).mean() < MAX_PIXEL_TOL_SHARE, (diff > 16).mean()  # no structural change, only edges differ


def test_cache_matches_full_decode_real_fullres(shared_data, tmp_path):
    root = shared_data / "kermany-fullres" / "train"
    paths = [f"{c}/{p.name}" for c in ("NORMAL", "PNEUMONIA") for p in sorted((root / c).glob("*.jpeg"))[:3]]
    assert len(paths) == 6
    C.build_cache(
        manifest(paths), root, tmp_path / "cache", PreprocessConfig(cache_size=256), progress=False, workers=1
    )
    split = C.load_split(tmp_path / "cache", "train")
    for i, p in enumerate(paths):
        assert_close_to_full_decode(split.images[i], full_decode(root / p, 256))


def test_cache_matches_full_decode_synthetic(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1100, 0:1400]
    paths = []
    for k, (h, w) in enumerate([(1100, 1400), (800, 1200), (640, 640)]):
        # smooth anatomy-like shading plus texture, saved as a full-size grayscale JPEG
        img = 128 + 60 * np.sin(xx[:h, :w] / (40 + 10 * k)) * np.cos(yy[:h, :w] / 55) + rng.normal(0, 8, (h, w))
        name = f"img{k}.jpeg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(tmp_path / name, quality=90)
        paths.append(name)
    C.build_cache(
        manifest(paths), tmp_path, tmp_path / "cache", PreprocessConfig(cache_size=128), progress=False, workers=1
    )
    split = C.load_split(tmp_path / "cache", "train")
    for i, p in enumerate(paths):
        assert_close_to_full_decode(split.images[i], full_decode(tmp_path / p, 128))
        np.testing.assert_array_equal(split.images[i], C.decode_image(tmp_path / p, 128))


def _identical_batch(n: int = 8, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 1, size, size), dtype=torch.uint8, generator=g)
    x[..., 8:30, 6:20] = 255  # asymmetric patch: flips, shifts and rotations all show
    return x.repeat(n, 1, 1, 1)


def test_augmentation_is_drawn_per_image_and_per_batch():
    aug = BatchAugment(AugmentConfig(), 48)
    x = _identical_batch()
    gen = torch.Generator().manual_seed(0)
    first, second = aug(x, gen), aug(x, gen)  # one generator, as an epoch draws successive batches
    flat = first.flatten(1)
    pair_diffs = [(flat[i] - flat[j]).abs().max().item() for i in range(len(x)) for j in range(i + 1, len(x))]
    assert min(pair_diffs) > 1e-3  # identical images, different draws
    assert (first - second).flatten(1).abs().amax(1).min() > 1e-3  # the next batch is a new draw for every slot


def test_augmentation_draws_differ_between_loader_batches(tmp_path):
    # Through the engine's loader: the same image in two batches of an epoch gets two draws.
    images = _identical_batch(16)[:, 0].numpy()
    loader = make_loader(images, np.zeros(16), batch_size=8, shuffle=True, seed=0)
    aug, gen = BatchAugment(AugmentConfig(), 48), torch.Generator().manual_seed(0)
    outs = [aug(xb, gen) for xb, _ in loader]
    assert len(outs) == 2 and not torch.allclose(outs[0], outs[1])


def test_zero_magnitudes_training_input_equals_eval_input():
    # Real-sized case: cache 256 -> model 224, both normalised to 3 channels as the engine does.
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 1, 256, 256), dtype=torch.uint8, generator=g)
    x = torch.nn.functional.avg_pool2d(x.float(), 5, 1, 2).to(torch.uint8)  # image-like: no pixel-level noise
    norm = Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_in = norm(BatchAugment(ZERO, 224)(x, torch.Generator().manual_seed(0)))
    eval_in = norm(eval_resize(x, 224))
    assert train_in.shape == eval_in.shape == (4, 3, 224, 224)
    # Bilinear with vs without antialias at a 256 -> 224 step: interpolation differences only.
    torch.testing.assert_close(train_in, eval_in, atol=0.05 / 0.224, rtol=0)  # 0.05 of the [0, 1] range
    assert (train_in - eval_in).abs().mean() < 0.01 / 0.224


def test_zero_magnitudes_disabled_and_zero_agree():
    x = _identical_batch(4, 96)
    off = BatchAugment(ZERO.replace(enabled=False), 64)(x)
    zero = BatchAugment(ZERO, 64)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(zero, off, atol=1e-5, rtol=0)


def test_fast_affine_grid_and_normalize_match_torch():
    """augment.affine_grid equals F.affine_grid; Normalize equals the plain (x - mean) / std on 3 channels."""
    import torch.nn.functional as F

    from cxr.data.augment import Normalize, affine_grid

    gen = torch.Generator().manual_seed(0)
    theta = BatchAugment(AugmentConfig(), 48).sample_matrices(6, gen)
    torch.testing.assert_close(
        affine_grid(theta, 48), F.affine_grid(theta, [6, 1, 48, 48], align_corners=False), atol=1e-5, rtol=0
    )
    x01 = torch.rand(3, 1, 20, 20, generator=gen)
    m, s = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = (x01.expand(-1, 3, -1, -1) - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalize(m, s)(x01), expected, atol=1e-5, rtol=0)
