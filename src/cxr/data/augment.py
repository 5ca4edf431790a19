"""Training augmentation (the reference table) as one batched warp, plus the per-image torchvision reference.

    aug = BatchAugment(AugmentConfig(), out_size=64)
    x01 = aug(uint8_batch_on_device, generator=torch.Generator().manual_seed(0))  # (B, 1, 64, 64) in [0, 1]
    x = to_model_input(x01, mean, std)                                            # (B, 3, 64, 64) normalised

The reference table (RandomResizedCrop, RandomHorizontalFlip, RandomRotation, RandomAffine with
translation) is a chain of affine maps. :class:`BatchAugment` draws every parameter per image, composes
the chain into one 2x3 matrix per image and applies the whole batch with a single ``affine_grid`` +
``grid_sample`` that also resizes to ``out_size``: one interpolation instead of four, on any device.
Brightness and contrast jitter follow as a per-image multiply-add (contrast around each image's
mean, as torchvision's ``adjust_contrast`` does), then the optional intensity augmentations beyond
the reference (gamma, Gaussian blur, sharpening, Gaussian noise; off by default), drawn per image.
``benchmarks/`` compares it with :func:`reference_transforms`, the same table as torchvision v2
transforms applied one image at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cxr.config import AugmentConfig

if TYPE_CHECKING:  # torchvision (1.6 s to import) only for the per-image references below
    from torchvision.transforms import v2


class BatchAugment:
    """Per-image random crop + flip + rotation + affine + brightness/contrast, for a uint8 (B, 1, H, W) batch."""

    def __init__(self, cfg: AugmentConfig, out_size: int):
        self.cfg = cfg
        self.out_size = int(out_size)

    def sample_matrices(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2, 3) matrices mapping output coordinates to input coordinates (normalised [-1, 1], x then y).

        The image pipeline is input -> crop -> flip -> rotation -> affine -> output; the sampling grid
        needs the inverse, so the inverses are composed in the opposite order. Drawn on the CPU with
        ``generator``, so a seed gives the same draws on every device.
        """
        cfg, g = self.cfg, generator

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

        eye = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)

        # RandomResizedCrop: area fraction s, aspect ratio r log-uniform in [3/4, 4/3] (torchvision's
        # default). torchvision rejects crops that do not fit and redraws; drawing log r uniformly over
        # the range that fits for this s (r in [s, 1/s]) is that rejection without the loop.
        s = uniform(*cfg.crop_scale)
        lo = torch.clamp(torch.log(s), min=math.log(3 / 4))
        hi = torch.clamp(-torch.log(s), max=math.log(4 / 3))
        r = torch.exp(lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
        cw = torch.sqrt(s * r).clamp(max=1.0)  # clamp: float round-off only
        ch = torch.sqrt(s / r).clamp(max=1.0)
        cx = uniform(-1, 1) * (1 - cw)  # crop centre, anywhere the crop stays inside the image
        cy = uniform(-1, 1) * (1 - ch)
        crop = eye.clone()
        crop[:, 0, 0], crop[:, 1, 1], crop[:, 0, 2], crop[:, 1, 2] = cw, ch, cx, cy

        flip = eye.clone()
        flip[:, 0, 0] = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < cfg.hflip_p, -1.0, 1.0)

        def rotation(deg: torch.Tensor) -> torch.Tensor:
            a = torch.deg2rad(deg)
            m = eye.clone()
            m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
            return m

        rot = rotation(uniform(-cfg.rotation_degrees, cfg.rotation_degrees))
        # RandomAffine: rotation, then translation by up to affine_translate of the side (= 2x in [-1, 1] units).
        aff_rot = rotation(uniform(-cfg.affine_degrees, cfg.affine_degrees))
        t = 2 * cfg.affine_translate
        shift = eye.clone()
        shift[:, 0, 2], shift[:, 1, 2] = uniform(-t, t), uniform(-t, t)
        # Inverse of (shift . aff_rot): rotations' inverses are their transposes.
        aff_inv = aff_rot.transpose(1, 2) @ _inverse_translation(shift)
        m = crop @ flip @ rot.transpose(1, 2) @ aff_inv
        return m[:, :2, :].float()

    def sample_jitter(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, c = self.cfg.brightness, self.cfg.contrast
        brightness = 1 - b + 2 * b * torch.rand(n, generator=generator)
        contrast = 1 - c + 2 * c * torch.rand(n, generator=generator)
        return brightness, contrast

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"BatchAugment expects a uint8 (B, 1, H, W) tensor, found {x.dtype} {tuple(x.shape)}")
        if not self.cfg.enabled:
            return eval_resize(x, self.out_size)
        n = x.shape[0]
        theta = self.sample_matrices(n, generator).to(x.device)
        brightness, contrast = (v.to(x.device).view(n, 1, 1, 1) for v in self.sample_jitter(n, generator))
        grid = affine_grid(theta, self.out_size)
        # Outside the source image is black, like torchvision's fill=0.
        out = F.grid_sample(self.prescale(x), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.mul_(brightness / 255.0).clamp_(0, 1)  # the uint8 -> [0, 1] scaling folded into brightness
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = out.mul_(contrast).add_((1 - contrast) * mean).clamp_(0, 1)
        return self.intensity(out, generator)

    def intensity(self, x01: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gamma, Gaussian blur, sharpening, Gaussian noise, in that order, each drawn per image, on (B, 1, S, S).

        Each is drawn only when its knob is on, after the reference draws: with the defaults the
        random stream, and so every output, is exactly the reference table's.
        """
        cfg, n, dev = self.cfg, x01.shape[0], x01.device
        g_lo, g_hi = cfg.gamma
        if (g_lo, g_hi) != (1.0, 1.0):
            log_g = math.log(g_lo) + (math.log(g_hi) - math.log(g_lo)) * torch.rand(n, generator=generator)
            x01 = x01.clamp_(min=1e-6).pow_(log_g.exp().to(dev).view(n, 1, 1, 1))
        if cfg.blur_p > 0:
            blurred = torch.rand(n, generator=generator) < cfg.blur_p
            sigma = torch.where(blurred, cfg.blur_sigma * (1 - torch.rand(n, generator=generator)), 0.0)
            x01 = gaussian_blur(x01, sigma.to(dev))
        if cfg.sharpen_p > 0:  # unsharp mask: x + amount * (x - blur(x)), blur sigma 1 pixel
            sharpened = torch.rand(n, generator=generator) < cfg.sharpen_p
            amount = torch.where(sharpened, cfg.sharpen_amount * torch.rand(n, generator=generator), 0.0)
            detail = x01 - gaussian_blur(x01, torch.ones(n, device=dev))
            x01 = x01.add_(detail.mul_(amount.to(dev).view(n, 1, 1, 1))).clamp_(0, 1)
        if cfg.noise_std > 0:
            std = cfg.noise_std * torch.rand(n, generator=generator)
            noise = torch.randn(x01.shape, generator=generator).mul_(std.view(n, 1, 1, 1))
            x01 = x01.add_(noise.to(dev))
        return x01.clamp_(0, 1)

    def prescale(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float (0..255), first shrunk with antialiasing when much larger than needed.

        ``grid_sample`` interpolates without a low-pass filter: from a source much larger than the
        output it would alias, while evaluation's ``eval_resize`` is antialiased, so the model
        would be trained on harsher images than it is evaluated on. The smallest crop shows
        sqrt(crop_scale_min) of the side, so this size keeps at least one source pixel per output
        pixel; the matrices are in normalised coordinates and do not change.
        """
        x = x.float()
        need = math.ceil(self.out_size / math.sqrt(self.cfg.crop_scale[0]))
        if x.shape[-1] > 1.25 * need or x.shape[-2] > 1.25 * need:
            x = F.interpolate(x, size=(need, need), mode="bilinear", align_corners=False, antialias=True)
        return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur of (B, 1, H, W) with ``sigma`` (B,) in pixels; 0 leaves an image as is.

    One grouped convolution per axis (each image its own group and kernel), reflect-padded so the
    borders keep their brightness.
    """
    n = x.shape[0]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    d = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x.dtype).clamp(min=1e-3).view(n, 1)
    k = torch.exp(-0.5 * (d.view(1, -1) / s) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).view(n, 1, 1, -1)  # sigma -> 0: a delta, the image unchanged
    y = x.view(1, n, *x.shape[-2:])
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k, groups=n)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.transpose(2, 3), groups=n)
    return y.view_as(x)


def affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, [n, C, size, size], align_corners=False)`` for (n, 2, 3) ``theta``.

    One broadcast add of a per-row and a per-column term: ``F.affine_grid`` builds a (n, H*W, 3)
    base grid and runs a batched matmul over it, about a third of the augmentation time on CPU.
    """
    base = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1  # pixel centres
    col = base.view(1, size, 1) * theta[:, None, :, 0]  # (n, S, 2): x_j * theta[:, :, 0]
    row = base.view(1, size, 1) * theta[:, None, :, 1] + theta[:, None, :, 2]  # (n, S, 2)
    return row[:, :, None, :] + col[:, None, :, :]  # grid[:, i, j] = theta @ (x_j, y_i, 1)


def _inverse_translation(shift: torch.Tensor) -> torch.Tensor:
    inv = shift.clone()
    inv[:, :2, 2] = -shift[:, :2, 2]
    return inv


def resize01(x: torch.Tensor, out_size: int, antialias: bool = False) -> torch.Tensor:
    """uint8 (B, 1, H, W) -> float (B, 1, out, out) in [0, 1], bilinear.

    Without antialias this is exactly what BatchAugment's grid does at zero magnitudes; evaluation
    uses antialias=True, as torchvision's Resize does.
    """
    x = x.float() / 255.0
    if x.shape[-2:] != (out_size, out_size):
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=antialias)
    return x.clamp_(0, 1)


def eval_resize(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """Deterministic batched evaluation transform: antialiased resize to ``out_size``, float [0, 1]."""
    return resize01(x, out_size, antialias=True)


def reference_transforms(cfg: AugmentConfig, out_size: int) -> v2.Compose:
    """The reference table as torchvision v2 transforms for one uint8 (1, H, W) tensor -> float [0, 1]."""
    if not cfg.enabled:
        return eval_transform(out_size)
    t = cfg.affine_translate
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(out_size, scale=tuple(cfg.crop_scale), antialias=True),
            v2.RandomHorizontalFlip(cfg.hflip_p),
            v2.RandomRotation(cfg.rotation_degrees),
            v2.RandomAffine(degrees=cfg.affine_degrees, translate=(t, t)),
            v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def eval_transform(out_size: int) -> v2.Compose:
    """Deterministic resize only, for one uint8 (1, H, W) tensor -> float [0, 1]."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize((out_size, out_size), antialias=True), v2.ToDtype(torch.float32, scale=True)])


def to_model_input(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, 3, H, W) normalised with the weights' mean/std (grayscale repeated)."""
    mean_t = torch.as_tensor(mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    return (x01.expand(-1, mean_t.shape[1], -1, -1) - mean_t) / std_t


class Normalize:
    """``to_model_input`` with fixed mean/std, optionally in channels_last (CNNs on CUDA)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        self.mean, self.std, self.channels_last = list(mean), list(std), channels_last

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        # One broadcasting addcmul, x * (1/std) + (-mean/std), writes the (B, 3, H, W) result directly.
        scale = torch.tensor([1 / s for s in self.std], dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], dtype=x01.dtype, device=x01.device).view(
            1, -1, 1, 1
        )
        x = torch.addcmul(shift, x01, scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
