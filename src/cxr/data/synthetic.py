"""Seeded synthetic pediatric chest radiographs: the offline default of the ``fetch`` stage.

Runs as part of ``python src/fetch.py --params params.yaml --out data/raw`` when
``data.source: synthetic``; directly::

    from cxr.data.config import SyntheticConfig
    from cxr.data.synthetic import generate
    counts = generate(Path("data/raw"), SyntheticConfig(patients=40, seed=1))

The images imitate the Kermany et al. dataset closely enough that every later stage runs the same
code on them as on the real thing: the canonical tree ``{train,val,test}/{NORMAL,PNEUMONIA}/``,
the real file-name schemes (so patient ids can be parsed), several images per child, the class
imbalance, varied sizes and aspect ratios, a few RGB-stored files, a tiny ``val/`` and a ``test/``
whose person numbers restart. Each image is a frontal radiograph drawn from smooth shapes (body,
lungs, heart, mediastinum and spine, ribs, clavicles, vessel markings, lung texture) under a
random pose and exposure. PNEUMONIA images add patchy opacities inside the lung fields: lobar
clusters ("bacteria") or diffuse perihilar haze ("virus"), of variable size, number and density,
some faint. NORMAL images carry confounders (vessel markings, mottled texture, the odd faint
patch), so a small CNN learns the task well above chance but not perfectly.

Deterministic: the same config writes byte-identical files; every image has its own random stream
derived from (seed, patient, image), so one image does not depend on how many came before it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cxr import CLASSES, SPLITS
from cxr.data.config import SyntheticConfig

# Shapes are drawn on a small grid and resized to the output size: rendering cost stays flat
# however large min_size/max_size are, and the images only need detail at the training sizes.
_RENDER_SIDE = 160
_RGB_SHARE = 0.04  # the real archive stores a few grayscale radiographs as RGB JPEGs
_NORMAL2_SHARE = 0.15  # share of normal children named NORMAL2-IM-NNNN (a second real batch)
_VIRUS_SHARE = 0.35  # about 1/3 of the real pneumonia images are viral


@dataclass(frozen=True)
class _Patient:
    index: int  # position in the whole cohort: keys the random stream
    label: str  # NORMAL | PNEUMONIA
    split: str  # train | val | test
    n_images: int


def generate(out_dir: Path, cfg: SyntheticConfig) -> dict[str, dict[str, int]]:
    """Write the synthetic dataset under ``out_dir`` and return ``{split: {class: n_images}}``.

    ``out_dir`` is created; it must not already hold files (stale images from an earlier, larger
    run would silently join the dataset).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(p.is_file() for p in out_dir.rglob("*")):
        raise FileExistsError(
            f"{out_dir} already holds files; the synthetic generator writes into an empty folder "
            f"(remove it first, as the fetch stage does)"
        )
    for split in SPLITS:
        for label in CLASSES:
            (out_dir / split / label).mkdir(parents=True, exist_ok=True)

    counts = {split: {label: 0 for label in CLASSES} for split in SPLITS}
    for patient, name in _plan(cfg):
        for k, filename in enumerate(name):
            rng = np.random.default_rng([cfg.seed, patient.index, k])
            data = _encode(render(rng, patient.label, cfg, patient_seed=(cfg.seed, patient.index)), rng)
            (out_dir / patient.split / patient.label / filename).write_bytes(data)
            counts[patient.split][patient.label] += 1
    return counts


# --------------------------------------------------------------------------------------------
# Cohort: who is in which split, and what their files are called
# --------------------------------------------------------------------------------------------


def _plan(cfg: SyntheticConfig) -> list[tuple[_Patient, list[str]]]:
    """Every patient with the file names of their images, in a fixed order."""
    rng = np.random.default_rng([cfg.seed, 10_007])
    n_pneu = int(round(cfg.patients * cfg.pneumonia_ratio / (1.0 + cfg.pneumonia_ratio)))
    n_pneu = min(max(n_pneu, 2), cfg.patients - 2)  # both classes need a train and a test child
    n_norm = cfg.patients - n_pneu

    patients: list[_Patient] = []
    index = 0
    val_left = max(0, cfg.official_val_images)
    # The real val/ folder is half NORMAL, half PNEUMONIA: split the quota the same way.
    val_quota = {"NORMAL": val_left // 2, "PNEUMONIA": val_left - val_left // 2}
    for label, n in (("NORMAL", n_norm), ("PNEUMONIA", n_pneu)):
        # Stratified per class so the official test keeps the class ratio, as the real one does.
        n_test = int(round(n * cfg.official_test_fraction))
        n_test = min(n_test, n - 1)
        n_val = min(val_quota[label], n - n_test - 1)  # keep at least one train child
        splits = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        rng.shuffle(splits)
        for split in splits:
            # One image per val child: the quota counts images, and val children stay distinct.
            n_images = 1 if split == "val" else int(rng.integers(1, cfg.max_images_per_patient + 1))
            patients.append(_Patient(index, label, split, n_images))
            index += 1

    named: list[tuple[_Patient, list[str]]] = []
    # train and val share one numbering (they come from one real batch); test restarts, so its
    # person numbers collide with train ones, which downstream code must tolerate.
    for group in (("train", "val"), ("test",)):
        members = [p for p in patients if p.split in group]
        named.extend(_name_group(members, rng))
    return named


def _name_group(members: list[_Patient], rng: np.random.Generator) -> list[tuple[_Patient, list[str]]]:
    normals = [p for p in members if p.label == "NORMAL"]
    pneus = [p for p in members if p.label == "PNEUMONIA"]
    out = []

    ids = rng.choice(np.arange(1, 10_000), size=len(normals), replace=False)
    for p, pid in zip(normals, ids):
        prefix = "NORMAL2-IM" if rng.random() < _NORMAL2_SHARE else "IM"
        out.append((p, [f"{prefix}-{pid:04d}-{k + 1:04d}.jpeg" for k in range(p.n_images)]))

    # Person numbers are drawn from a small range so a restarted test numbering overlaps train's.
    ids = rng.choice(np.arange(1, max(2000, 2 * len(pneus))), size=len(pneus), replace=False)
    running = int(rng.integers(1, 500))  # the image counter M runs across all children of a batch
    for p, pid in zip(pneus, ids):
        kind = "virus" if rng.random() < _VIRUS_SHARE else "bacteria"
        names = []
        for _ in range(p.n_images):
            names.append(f"person{pid}_{kind}_{running}.jpeg")
            running += int(rng.integers(1, 4))
        out.append((p, names))
    return out


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _ellipse(u, v, cu, cv, au, av, edge=0.12):
    """Soft-edged ellipse mask in [0, 1]; ``edge`` is the blur as a fraction of the radius."""
    r = np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)
    return _smoothstep((1.0 - r) / edge)


def _blobs(u, v, centers, sigmas, amps):
    """Sum of isotropic Gaussian blobs (an opacity map)."""
    out = np.zeros_like(u)
    for (cu, cv), s, a in zip(centers, sigmas, amps):
        out += a * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2.0 * s * s))
    return out


def _points_in_lungs(rng, n, lungs, lower_bias):
    """``n`` points inside the lung ellipses; ``lower_bias`` pulls them towards the bases."""
    pts = []
    for _ in range(n):
        side = lungs[int(rng.integers(0, 2))]
        cu, cv, au, av = side
        r = np.sqrt(rng.random()) * 0.8
        t = rng.uniform(0, 2 * np.pi)
        dv = np.sin(t) * r * av
        dv = dv + lower_bias * (av * 0.8 - dv) * rng.random()
        pts.append((cu + np.cos(t) * r * au, cv + dv))
    return pts


def render(
    rng: np.random.Generator, label: str, cfg: SyntheticConfig, patient_seed: tuple[int, int] = (0, 0)
) -> Image.Image:
    """One radiograph as an 8-bit grayscale image of a size drawn from ``[min_size, max_size]``.

    Anatomy comes from the patient's own stream (``patient_seed``), so a child's images look
    alike; pose, exposure, noise and the exact opacities come from ``rng`` (this image). The steps
    below draw from those streams in a fixed order: reordering them changes every image.
    """
    prng = np.random.default_rng([*patient_seed, 99])
    width = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    height = int(rng.integers(cfg.min_size, cfg.max_size + 1))
    scale = min(_RENDER_SIDE, max(width, height)) / max(width, height)
    rw, rh = max(16, round(width * scale)), max(16, round(height * scale))
    u, v = _frame(rng, rw, rh)
    img = _body(u, v, prng)
    chest = _chest(u, v, prng)
    texture, vessels = _markings(u, v, chest.lung_cv, rng, (rh, rw))
    opacity = _opacity(u, v, chest, label, rng, patient_seed, (rh, rw))
    depth = prng.uniform(0.34, 0.44)  # how dark aerated lung is against soft tissue
    aerated = np.clip(1.0 - opacity, 0.15, 1.0)
    img = img - chest.lung * depth * aerated + chest.lung * (texture + vessels) * 0.3
    img = _bones(img, u, v, chest, rng, prng)
    # --- exposure: contrast, brightness, gamma vary by machine and by child
    img = (img - 0.4) * rng.uniform(0.85, 1.25) + 0.4 + rng.normal(0, 0.04)
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    return _film(img, width, height, rng)


def _frame(rng: np.random.Generator, rw: int, rh: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1] on both axes, under this image's rotation, shift, zoom: the
    thorax fills the frame whatever the aspect, as in the real (cropped) radiographs."""
    y, x = np.mgrid[0:rh, 0:rw]
    x = x / (rw - 1) * 2 - 1
    y = y / (rh - 1) * 2 - 1
    theta = float(np.deg2rad(rng.normal(0, 2.5)))
    zoom = rng.uniform(0.92, 1.1)
    u = ((np.cos(theta) * x - np.sin(theta) * y) * zoom + rng.normal(0, 0.04)).astype(np.float32)
    v = ((np.sin(theta) * x + np.cos(theta) * y) * zoom + rng.normal(0, 0.04)).astype(np.float32)
    return u, v


def _body(u: np.ndarray, v: np.ndarray, prng: np.random.Generator) -> np.ndarray:
    """Soft tissue brighter towards the abdomen, air outside, arms and shoulders."""
    body_w = prng.uniform(0.88, 1.0)
    body = _smoothstep((1.0 - ((np.abs(u) / body_w) ** 4 + ((v - 0.3) / 1.35) ** 4)) / 0.3)
    shoulders = _ellipse(u, v, 0, -1.0, prng.uniform(1.0, 1.15), 0.3, edge=0.4)
    tissue = np.maximum(body, shoulders * 0.9)
    return 0.05 + tissue * (0.5 + 0.25 * _smoothstep((v + 0.1) / 1.1))


@dataclass
class _Chest:
    lung: np.ndarray  # aerated lung fields (0..1), heart and mediastinum taken out
    lungs: list  # per lung (centre u, centre v, half width, half height): where lesions may sit
    ribcage: np.ndarray
    lung_cv: float
    lung_h: float


def _chest(u: np.ndarray, v: np.ndarray, prng: np.random.Generator) -> _Chest:
    """Dark lung fields filling most of the chest, narrower at the apex, domed bases; the heart over the
    left lung (image right), its size varying by child (a confounder)."""
    lung_w = prng.uniform(0.31, 0.36)
    lung_h = prng.uniform(0.6, 0.7)
    lung_cv = prng.uniform(-0.12, -0.04)
    lungs = []
    lung = np.zeros_like(u)
    for sgn in (-1, 1):
        cu = sgn * prng.uniform(0.43, 0.47)
        taper = 0.5 + 0.5 * _smoothstep((v - (lung_cv - lung_h)) / (lung_h * 0.8))
        # The medial border is straighter than the lateral one: squash the inner half.
        du = np.abs(u - cu) / (lung_w * taper) * np.where((u - cu) * sgn < 0, 1.15, 1.0)
        dv = np.abs(v - lung_cv) / lung_h
        # A flatter base (the diaphragm) than apex: a higher power below the centre.
        shape = np.where(v > lung_cv, du**3 + dv**3, du * du + dv * dv)
        lung += _smoothstep((1.0 - shape) / 0.25)
        lungs.append((cu, lung_cv, lung_w * 0.85, lung_h * 0.9))
    lung = np.clip(lung, 0, 1)
    ribcage = _ellipse(u, v, 0, lung_cv, 0.8, lung_h * 1.1, edge=0.15)
    heart = _ellipse(
        u,
        v,
        prng.uniform(0.1, 0.16),
        lung_cv + lung_h * 0.5,
        prng.uniform(0.28, 0.36),
        prng.uniform(0.26, 0.33),
        edge=0.3,
    )
    mediastinum = _smoothstep((0.12 - np.abs(u)) / 0.06)
    lung = lung * (1.0 - np.maximum(heart * 0.8, mediastinum))
    return _Chest(lung=lung, lungs=lungs, ribcage=ribcage, lung_cv=lung_cv, lung_h=lung_h)


def _markings(
    u: np.ndarray, v: np.ndarray, lung_cv: float, rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Lung texture and vessel markings: present in both classes, so brightness alone is no tell."""
    noise = rng.normal(0, 1, shape).astype(np.float32)
    texture = ndimage.gaussian_filter(noise, sigma=rng.uniform(0.8, 1.6))
    texture *= rng.uniform(0.04, 0.14) / (texture.std() + 1e-6)
    vessels = np.zeros_like(u)
    for sgn in (-1, 1):
        hu, hv = sgn * 0.16, lung_cv + 0.05
        du, dv = u - hu, v - hv
        for phi in rng.uniform(-1.1, 1.1, int(rng.integers(5, 9))) + (0.0 if sgn > 0 else np.pi):
            c, s = float(np.cos(phi)), float(np.sin(phi))
            t = np.maximum(du * c + dv * s, 0)
            perp = (dv * c - du * s) / (0.01 + 0.02 * np.exp(-t / 0.15))
            vessels += np.exp(-perp * perp - t / rng.uniform(0.2, 0.4))
    vessels *= rng.uniform(0.15, 0.3)
    return texture, vessels


def _opacity(
    u: np.ndarray,
    v: np.ndarray,
    chest: _Chest,
    label: str,
    rng: np.random.Generator,
    patient_seed: tuple[int, int],
    shape: tuple[int, int],
) -> np.ndarray:
    """The disease; a few normal children carry one faint patch as a confounder."""
    if label != "PNEUMONIA":
        if rng.random() < 0.2:
            n = int(rng.integers(1, 3))
            return _blobs(
                u, v, _points_in_lungs(rng, n, chest.lungs, 0.3), rng.uniform(0.03, 0.06, n), rng.uniform(0.08, 0.2, n)
            )
        return np.zeros_like(u)
    pattern = np.random.default_rng([*patient_seed, 7])
    # From moderate to severe: strong enough that every model of the demo (64 px, a few epochs
    # from scratch) learns it; fainter lesions made the from-scratch ResNet50, VGG16 and ViT guess.
    severity = pattern.uniform(1.1, 1.5)
    centers: list = []
    sigmas: list = []
    amps: list = []
    if pattern.random() < _VIRUS_SHARE:
        n = int(pattern.integers(6, 18))
        centers = list(_points_in_lungs(pattern, n, chest.lungs, lower_bias=0.2))
        sigmas = list(pattern.uniform(0.04, 0.09, n))
        amps = list(pattern.uniform(0.3, 0.6, n) * severity)
    else:
        for c in _points_in_lungs(pattern, int(pattern.integers(1, 4)), chest.lungs, lower_bias=0.5):
            k = int(pattern.integers(3, 8))
            spread = pattern.uniform(0.05, 0.12)
            centers += [(c[0] + pattern.normal(0, spread), c[1] + pattern.normal(0, spread)) for _ in range(k)]
            sigmas += list(pattern.uniform(0.05, 0.11, k))
            amps += list(pattern.uniform(0.4, 0.8, k) * severity)
    # Follow-up images of one child differ a little in where and how dense the patches are.
    centers = [(cu + rng.normal(0, 0.02), cv + rng.normal(0, 0.02)) for cu, cv in centers]
    opacity = _blobs(u, v, centers, sigmas, np.asarray(amps) * rng.uniform(0.8, 1.2))
    # Plus a diffuse haze over one or both lungs, denser towards the bases: the "whiter
    # lung" that is often the only sign at low resolution.
    side_weight = pattern.uniform(0.2, 1.0, 2)
    haze = np.where(u < 0, side_weight[0], side_weight[1]) * _smoothstep(
        (v - chest.lung_cv + chest.lung_h) / (2 * chest.lung_h)
    )
    opacity += haze * pattern.uniform(0.5, 0.8) * severity
    # Patchy rather than smooth: modulate by a coarse noise field.
    patch = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma=2.0)
    return opacity * np.clip(1.0 + 0.7 * patch / (patch.std() + 1e-6), 0.2, 1.8)


def _bones(
    img: np.ndarray, u: np.ndarray, v: np.ndarray, chest: _Chest, rng: np.random.Generator, prng: np.random.Generator
) -> np.ndarray:
    """Spine with vertebral texture, posterior ribs as arches, clavicles."""
    au_abs = np.abs(u)
    spine = _smoothstep((0.07 - au_abs) / 0.03)
    img = img + spine * (0.05 + 0.03 * np.cos((v + rng.uniform(0, 1)) * 2 * np.pi * 9))
    rib0 = chest.lung_cv - chest.lung_h * 1.05
    gap = chest.lung_h * 2 / prng.uniform(8.5, 10.0)
    rib = np.arange(10, dtype=np.float32)[:, None, None]
    arch = rib0 + rib * gap - 0.35 * au_abs[None] + 0.7 * au_abs[None] ** 2
    ribs = np.exp(-(((v[None] - arch) / (gap * 0.2)) ** 2)).sum(0)
    ribs *= chest.ribcage * _smoothstep((au_abs - 0.06) / 0.06)
    img += ribs * (0.3 + 0.7 * chest.lung) * prng.uniform(0.06, 0.1)
    clav_v = chest.lung_cv - chest.lung_h * 0.92 + 0.25 * (au_abs - 0.35) ** 2
    img += np.exp(-(((v - clav_v) / 0.035) ** 2)) * _smoothstep((0.75 - au_abs) / 0.2) * 0.12
    return img


def _film(img: np.ndarray, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """The rendering at the image's own size, quantum noise, and the lead marker "R" in an upper corner
    (as on most real films; both classes carry it)."""
    small = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8), mode="L")
    out = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    out += rng.normal(0, rng.uniform(2.0, 7.0), out.shape)  # quantum noise at full resolution
    picture = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")
    if rng.random() < 0.8:
        draw = ImageDraw.Draw(picture)
        side = max(6, width // 24)
        px = int(rng.uniform(0.03, 0.12) * width)
        py = int(rng.uniform(0.03, 0.12) * height)
        draw.text((px, py), "R", fill=235, font_size=side)
    return picture


def _encode(picture: Image.Image, rng: np.random.Generator) -> bytes:
    """JPEG bytes; a small share stored as RGB, qualities vary like a real archive's."""
    if rng.random() < _RGB_SHARE:
        picture = picture.convert("RGB")
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
    return buf.getvalue()
