"""The data stages' sections of ``params.yaml``: ``data`` (fetch), ``split``, ``preprocess``, ``external``.

Reached through :mod:`cxr.config`, which holds the whole tree (``cfg = section(params, "split", SplitConfig)``).
"""

from __future__ import annotations

import re
import typing
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cxr.schema import NonNegative, Section

ResizeMode = Literal["stretch", "pad"]  # preprocess.resize, the model card's cache_resize
RESIZE_MODES: tuple[str, ...] = typing.get_args(ResizeMode)
Source = Literal["synthetic", "path", "url", "kaggle"]
SOURCES: tuple[str, ...] = typing.get_args(Source)


class SyntheticConfig(Section):
    patients: int = Field(240, ge=4)  # number of children; each has 1..max images
    max_images_per_patient: int = Field(3, ge=1)
    pneumonia_ratio: float = Field(2.9, gt=0)  # PNEUMONIA : NORMAL patients, as in the real train split
    min_size: int = 160  # image side lengths are drawn in [min_size, max_size]
    max_size: int = 320
    official_test_fraction: float = Field(0.2, ge=0, lt=1)  # share of patients written to raw/test
    official_val_images: int = Field(8, ge=0)  # a tiny val/ folder, like the real 16-image one
    seed: int = 0

    @model_validator(mode="after")
    def _sizes(self) -> SyntheticConfig:
        if not 16 <= self.min_size <= self.max_size:
            raise ValueError(f"need 16 <= min_size <= max_size, found {self.min_size}, {self.max_size}")
        return self


class ArchiveLimits(Section):
    """``data.archive``: what extracting an archive may write (a 2 MB zip can hold terabytes of zeros);
    ``max_total_bytes`` also caps a ``data.source: url`` download (a server may stream without end)."""

    max_total_bytes: int = Field(50_000_000_000, gt=0)  # all members together (the Kaggle copy: 1.2 GB)
    max_member_bytes: int = Field(1_000_000_000, gt=0)  # one member (a full-size X-ray is a few MB)
    max_ratio: float = Field(100.0, ge=1)  # uncompressed total / archive size (JPEGs barely compress: ~1)


class DataConfig(Section):
    source: Source = "synthetic"
    path: str | None = None  # folder or .zip/.tar.gz archive (source=path)
    url: str | None = None  # HTTP(S) archive (source=url)
    sha256: str | None = None  # expected sha256 of the downloaded archive (optional)
    download_dir: str = "data/download"  # where url/kaggle archives are kept for resumption
    kaggle_dataset: str = "paultimothymooney/chest-xray-pneumonia"
    link: bool = True  # path/kaggle: hardlink images into data/raw when possible (copy otherwise)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    archive: ArchiveLimits = Field(default_factory=ArchiveLimits)
    timeout: float = Field(60.0, gt=0, allow_inf_nan=False)  # url: seconds to connect; the min_rate window
    min_rate: int = Field(1024, ge=0)  # url: bytes/s averaged over `timeout` seconds, else abandoned (0: none)

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source == "path" and not self.path:
            raise ValueError("source=path needs data.path (a folder or .zip/.tar.gz)")
        if self.source == "url" and not self.url:
            raise ValueError("source=url needs data.url (an http(s) link to an archive)")
        return self


class Plausibility(Section):
    """``split.plausibility``: what a chest radiograph cannot be. Quarantined at split, a warning at predict."""

    min_side: int = Field(32, ge=1)  # shorter side, pixels (the Kaggle images: 127 px and more)
    max_aspect: float = Field(4.0, ge=1)  # longer side / shorter side (chest films: about 0.5 to 2)
    min_range: int = Field(8, ge=0, le=255)  # grey levels between the 1st and 99th percentile (blank: 0)
    min_smoothness: float = Field(0.5, ge=-1, le=1)  # neighbouring-pixel correlation (radiographs >= 0.88)


class SplitConfig(Section):
    val_fraction: float = Field(0.15, gt=0, lt=1)  # of train patients, per class
    test_fraction: float = Field(0.15, ge=0, lt=1)  # of train patients, only when the source has no test split
    # The official 16-image val/ joins train before the draw; false: it stays val, added to the drawn val.
    merge_official_val: bool = True
    # The one pixel limit: split quarantines larger images, cxr predict and the served model refuse them.
    max_pixels: int = Field(50_000_000, gt=0)
    seed: int = 42
    workers: NonNegative = 0  # verification processes (hash + full decode); 0 = all cores
    plausibility: Plausibility = Field(default_factory=Plausibility)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self


class PreprocessConfig(Section):
    cache_size: int = Field(96, ge=16, le=1024)  # side of the square cache images, pixels
    # How the aspect ratio is handled: "stretch" resizes to cache_size x cache_size (as the
    # reference notebook's Resize((224, 224)) does); "pad" keeps it and pads with black.
    resize: ResizeMode = "stretch"
    workers: NonNegative = 0  # decoding processes; 0 = all cores


EXTERNAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # a column name in dvc exp show and the results table
SYNTHETIC_SET = "synthetic"  # an external set given as this draws a synthetic cohort (external.synthetic)


class ExternalSynthetic(Section):
    """``external.synthetic``: what a set given as ``synthetic`` draws: another cohort of data.synthetic's generator."""

    patients: int = Field(60, ge=4)
    pneumonia_ratio: float = Field(1.67, gt=0)  # PNEUMONIA : NORMAL, the official test split's balance (train: 2.9)
    seed: int = 1  # another seed than data.synthetic's: other children


class ExternalConfig(Section):
    """``external``: named external validation sets, evaluated for every model and never used for a choice."""

    sets: dict[str, str] = Field(default_factory=dict)  # name -> folder or .zip/.tar.gz, or "synthetic"
    synthetic: ExternalSynthetic = Field(default_factory=ExternalSynthetic)
    link: bool = True  # folders: hardlink the images into data/external when on one filesystem (else copy)
    # An external image whose 32x32 thumbnail correlates this much with one of the run's images is the
    # same picture (re-encoded or resized): refused. Kermany test vs train: at most 0.976; copies: 0.9998.
    max_similarity: float = Field(0.995, gt=0, le=1)

    @field_validator("sets", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("sets")
    @classmethod
    def _set_names(cls, sets: dict[str, str]) -> dict[str, str]:
        for name, spec in sets.items():
            if not EXTERNAL_NAME.match(name):
                raise ValueError(
                    f"name {name!r} must be lower-case letters, digits and _ (a letter first, at most 40 "
                    "characters): it becomes a column name. E.g. kermany_a"
                )
            if not spec:
                raise ValueError(f"{name}: give a folder or .zip/.tar.gz, or {SYNTHETIC_SET!r}")
        return sets
