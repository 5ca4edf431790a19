"""What a model's training data was, as the model card records it: :class:`DataSource`, and the warning a model
trained on the synthetic demo data gives when it is asked about images.

    DataSource.from_config(data_config, path_is_dir=True)   # the train stage's record (params.yaml's data:)
    source.describe()                                       # "the synthetic demo data (generator seed 0, ...)"
    synthetic_data_warning(source)                          # what cxr predict and the served model say, or None

Re-exported by :mod:`cxr.checkpoint`, whose card holds it (``ModelCard.data_source``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cxr.data.config import DataConfig

# DataSource.kind: params.yaml's data.source, with `path` told apart as a folder or an archive.
# path: data.path was not there when train ran (moved after fetch): a folder or an archive, no telling.
# unknown: not recorded (a card older than format 4, or one not written by the train stage).
DATA_KINDS = ("synthetic", "folder", "archive", "path", "url", "kaggle", "unknown")


@dataclass(frozen=True)
class DataSource:
    """Where the model's training data came from, as params.yaml's ``data:`` section named it.

    ``kind``: one of :data:`DATA_KINDS`. ``location``: ``data.path`` as the user wrote it (not
    resolved), the URL without credentials, query or fragment (a signed link's token must not travel
    with the model), the Kaggle dataset; None for synthetic and unknown. ``settings``: what else pins
    the data down: the generator's settings (``data.synthetic``: seed, patients, ...) for synthetic,
    ``sha256`` for a URL given one; empty otherwise.

    The train stage fills it from the ``data`` keys it declares as params in dvc.yaml; under
    ``dvc repro`` they are what fetch brought in (the cache it trains on hangs off them). The external
    sets are not here: train neither reads nor depends on them (adding one must not retrain every
    model); evaluate scores each, and ``metrics/eval/<model>.json`` and ``reports/results.md`` name them.
    """

    kind: str = "unknown"
    location: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    @classmethod
    def from_config(cls, data: DataConfig, path_is_dir: bool | None = None) -> DataSource:
        """The source ``data`` describes; ``path_is_dir``: whether ``data.path`` is a folder (None: not found)."""
        if data.source == "synthetic":
            return cls("synthetic", None, data.synthetic.model_dump(mode="json"))
        if data.source == "path":
            kind = "path" if path_is_dir is None else "folder" if path_is_dir else "archive"
            return cls(kind, data.path)
        if data.source == "url":
            return cls("url", public_url(data.url or ""), {"sha256": data.sha256} if data.sha256 else {})
        return cls("kaggle", data.kaggle_dataset)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSource:
        location = d.get("location")
        return cls(
            kind=str(d.get("kind", "unknown")),
            location=None if location is None else str(location),
            settings=dict(d.get("settings") or {}),
        )

    def describe(self) -> str:
        """One phrase for people: ``the synthetic demo data (generator seed 0, 240 patients)``, ``the folder x``."""
        s = self.settings
        if self.kind == "synthetic":
            return f"the synthetic demo data (generator seed {s.get('seed', '?')}, {s.get('patients', '?')} patients)"
        if self.kind == "unknown":
            return "data this model card does not record (a card older than format 4, or not written by train)"
        what = {
            "folder": "the folder",
            "archive": "the archive",
            "path": "data.path",
            "url": "the archive downloaded from",
            "kaggle": "the Kaggle dataset",
        }.get(self.kind, self.kind)
        note = " (a folder or an archive, gone when the model was trained)" if self.kind == "path" else ""
        checksum = f" (sha256 {str(s['sha256'])[:12]}...)" if s.get("sha256") else ""
        return f"{what} {self.location}{note}{checksum}"


class SyntheticDataWarning(UserWarning):
    """A model trained on the synthetic demo data is asked about images: its answers mean nothing for X-rays."""


def synthetic_data_warning(source: DataSource) -> str | None:
    """What ``cxr predict`` and the served model say, once, about a model trained on synthetic data (else None)."""
    if not source.synthetic:
        return None
    return (
        f"this model was trained on {source.describe()}, not on radiographs: its outputs on real chest "
        "X-rays mean nothing. Fix: train on real data, `make real DATA=<folder or archive>` (docs/real-data.md)"
    )


def public_url(url: str) -> str:
    """``url`` without user, password, query and fragment: what identifies a download, no token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
