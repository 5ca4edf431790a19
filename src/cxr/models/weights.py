"""Pretrained weights: fetched the way torchvision and Hugging Face do it, kept where DVC tracks them.

    python src/weights.py --params params.yaml --out models/pretrained     # the `weights` DVC stage

Each model's registry entry names its published weights (``pretrained_source``):

- :class:`TorchvisionWeights`: a torchvision weight enum (``ResNet50_Weights.IMAGENET1K_V2``). Its
  URL is downloaded with ``torch.hub.download_url_to_file`` (progress bar, and the sha256 prefix
  torchvision embeds in the file name checked, as ``check_hash=True`` does).
- :class:`HubSnapshot`: a Hugging Face repository at a pinned commit, fetched with
  ``huggingface_hub.hf_hub_download`` (only the files a ``from_pretrained`` needs); each LFS file's
  sha256 is checked against the ETag the Hub reports for it.

:func:`materialise` puts them under ``<out>/<model>/`` and :func:`write_manifest` records what is
there (source, URL or revision, sha256 of every file) in ``<out>/manifest.json``: the stage output
DVC hashes, caches and can push to a remote. A file already there with the right hash, or in the
torch hub / Hugging Face cache, is used without touching the network. A download that cannot
happen fails within seconds (``CXR_WEIGHTS_TIMEOUT``, default 15 s, no retry loop) with what was
tried, the commands that fetch the files on a connected machine and where to put them: never a
silent random initialisation.

Test hooks (the tests serve fake weights on 127.0.0.1): ``CXR_TORCHVISION_BASE_URL`` replaces
``https://download.pytorch.org/models/``; ``HF_ENDPOINT`` is read at call time.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxr.files import sha256_file
from cxr.models.registry import get_entry, weights_fixes
from cxr.models.state_file import read_state_dict
from cxr.pretrained import MANIFEST, WeightsUnavailableError, read_manifest

TORCHVISION_BASE_URL = "https://download.pytorch.org/models/"
_HASH_RE = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's HASH_REGEX: resnet50-11ad3fa6.pth -> 11ad3fa6


def timeout_s() -> float:
    return float(os.environ.get("CXR_WEIGHTS_TIMEOUT", "15"))


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchvisionWeights:
    """A torchvision weight enum member, e.g. ``ResNet50_Weights.IMAGENET1K_V2``."""

    enum: str

    def weights(self) -> Any:  # a torchvision WeightsEnum member
        import torchvision.models as tvm

        cls, member = self.enum.split(".")
        return getattr(getattr(tvm, cls), member)

    @property
    def official_url(self) -> str:
        return str(self.weights().url)

    def url(self) -> str:
        base = os.environ.get("CXR_TORCHVISION_BASE_URL")
        official = self.official_url
        if base and official.startswith(TORCHVISION_BASE_URL):
            return base.rstrip("/") + "/" + official[len(TORCHVISION_BASE_URL) :]
        return official

    @property
    def filename(self) -> str:
        return os.path.basename(self.official_url)

    @property
    def hash_prefix(self) -> str | None:
        m = _HASH_RE.search(self.filename)
        return m.group(1) if m and m.group(1) else None

    def describe(self) -> str:
        return f"torchvision {self.enum}"

    def fetch_commands(self, dest: Path) -> list[str]:
        hub = Path(torch.hub.get_dir()) / "checkpoints" / self.filename
        return [
            (
                f'python -c "import torchvision; torchvision.models.{self.enum}.get_state_dict(progress=True)"  '
                f"# saves {hub} (TORCH_HOME decides where)"
            ),
            f"or: curl -L -o {self.filename} {self.official_url}",
            f"then copy {self.filename} to {dest / self.filename} here (or to {hub})",
        ]


@dataclass(frozen=True)
class HubSnapshot:
    """A Hugging Face model repository at a pinned commit, and the files ``from_pretrained`` needs."""

    repo_id: str
    revision: str  # a commit sha: the bytes cannot change under the same name
    files: tuple[str, ...] = ("config.json", "preprocessor_config.json", "model.safetensors")

    def describe(self) -> str:
        return f"Hugging Face {self.repo_id}@{self.revision[:12]}"

    def fetch_commands(self, dest: Path) -> list[str]:
        return [
            (
                f"hf download {self.repo_id} {' '.join(self.files)} --revision {self.revision} "
                f"--local-dir {self.repo_id.split('/')[-1]}  # or huggingface-cli download, same arguments"
            ),
            f"then copy that folder to {dest} here (its files directly inside it)",
        ]


# --------------------------------------------------------------------------------------------
# Materialising one model's weights
# --------------------------------------------------------------------------------------------


def _unavailable(
    name: str, source: TorchvisionWeights | HubSnapshot, dest: Path, tried: list[str], cause: BaseException | None
) -> WeightsUnavailableError:
    lines = [f"pretrained weights for model '{name}' ({source.describe()}) could not be fetched; tried:"]
    lines += [f"  - {t}" for t in tried]
    if cause is not None:
        lines.append(f"  failed with {type(cause).__name__}: {cause}")
    lines.append("On a machine with internet access, fetch them:")
    lines += [f"  {c}" for c in source.fetch_commands(dest)]
    lines.append(
        "or `dvc repro weights && dvc push` there and `dvc pull weights` here (a DVC remote carries them). "
        + weights_fixes(name)
    )
    return WeightsUnavailableError("\n".join(lines))


def _copy(src: str | Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _fetch_torchvision(name: str, src: TorchvisionWeights, dest: Path, progress: bool) -> dict[str, Any]:
    target = dest / src.filename
    prefix = src.hash_prefix

    def ok(path: Path) -> bool:
        return path.is_file() and (prefix is None or sha256_file(path).startswith(prefix))

    tried = []
    how = "present"
    if not ok(target):
        hub = Path(torch.hub.get_dir()) / "checkpoints" / src.filename
        tried.append(f"{target}: {'wrong hash' if target.is_file() else 'absent'}")
        tried.append(f"the torch hub cache {hub}: {'wrong hash' if hub.is_file() else 'absent'}")
        if ok(hub):
            _copy(hub, target)
            how = f"copied from {hub}"
        else:
            url = src.url()
            tried.append(f"download {url} (timeout {timeout_s():.0f} s, sha256 prefix {prefix})")
            target.parent.mkdir(parents=True, exist_ok=True)
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(timeout_s())  # urllib in torch.hub has no timeout of its own
            try:
                # Writes a temporary file beside target and moves it into place only when the hash matches.
                torch.hub.download_url_to_file(url, str(target), hash_prefix=prefix, progress=progress)
            except Exception as exc:  # URLError, timeout, RuntimeError("invalid hash value"), IncompleteRead
                target.unlink(missing_ok=True)
                if not any(dest.iterdir()):
                    dest.rmdir()
                raise _unavailable(name, src, dest, tried, exc) from exc
            finally:
                socket.setdefaulttimeout(old)
            how = f"downloaded from {url}"
    if how != "present":  # a file already recorded was checked when it arrived
        _check_state_dict(name, target)
    return {
        "source": "torchvision",
        "weights": src.enum,
        "url": src.official_url,
        "path": src.filename,
        "files": {src.filename: sha256_file(target)},
        "how": how,
    }


def _check_state_dict(name: str, path: Path) -> None:
    try:
        read_state_dict(path, "removed, fetch them again", WeightsUnavailableError)
    except WeightsUnavailableError as exc:
        path.unlink(missing_ok=True)
        raise WeightsUnavailableError(f"weights for model '{name}': {exc}") from None


def _snapshot_record(src: HubSnapshot, dest: Path) -> dict[str, Any]:
    return {
        "source": "huggingface",
        "repo_id": src.repo_id,
        "revision": src.revision,
        "path": ".",
        "files": {f: sha256_file(dest / f) for f in src.files},
    }


def _fetch_snapshot(
    name: str, src: HubSnapshot, dest: Path, progress: bool, known: dict[str, Any] | None
) -> dict[str, Any]:
    # Present and recorded with the same hashes (a rerun): no network at all.
    if (
        known
        and known.get("revision") == src.revision
        and all((dest / f).is_file() for f in src.files)
        and all(sha256_file(dest / f) == known["files"].get(f) for f in src.files)
    ):
        return {**_snapshot_record(src, dest), "how": "present"}
    from huggingface_hub import try_to_load_from_cache

    tried = [f"{dest}: {'incomplete or unrecorded' if dest.exists() else 'absent'}"]
    cached = [
        try_to_load_from_cache(src.repo_id, f, revision=src.revision, cache_dir=hf_cache_dir()) for f in src.files
    ]
    found = [c for c in cached if isinstance(c, str)]
    if len(found) == len(cached):
        for f, c in zip(src.files, found):
            _copy(c, dest / f)
        return {**_snapshot_record(src, dest), "how": "copied from the Hugging Face cache"}
    tried.append(f"the Hugging Face cache (HF_HOME / HF_HUB_CACHE) at revision {src.revision}: absent")
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    tried.append(f"download from {endpoint}/{src.repo_id}/resolve/{src.revision}/ (timeout {timeout_s():.0f} s)")
    try:
        _download_snapshot(src, dest, endpoint, progress)
    except WeightsUnavailableError as exc:
        raise _unavailable(name, src, dest, tried, exc) from None
    except Exception as exc:  # httpx errors, HfHubHTTPError, OfflineModeIsEnabled, LocalEntryNotFoundError
        raise _unavailable(name, src, dest, tried, exc) from exc
    return {**_snapshot_record(src, dest), "how": f"downloaded from {endpoint}"}


def _download_snapshot(src: HubSnapshot, dest: Path, endpoint: str, progress: bool) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not progress:
        disable_progress_bars()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded beside dest, moved in when every file is verified: huggingface_hub's own bookkeeping
    # (.cache/ with timestamps) stays out of the DVC output, whose bytes must not depend on the day.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        for f in src.files:
            url = hf_hub_url(src.repo_id, f, revision=src.revision, endpoint=endpoint)
            meta = get_hf_file_metadata(url, timeout=timeout_s(), endpoint=endpoint)
            path = hf_hub_download(
                src.repo_id, f, revision=src.revision, local_dir=tmp, endpoint=endpoint, etag_timeout=timeout_s()
            )
            etag = (meta.etag or "").strip('"')
            if re.fullmatch(r"[0-9a-f]{64}", etag):  # LFS files: the ETag is the sha256 of the content
                got = sha256_file(path)
                if got != etag:
                    raise WeightsUnavailableError(
                        f"{f}: sha256 {got} does not match the {etag} the Hub reports; "
                        "the download is corrupt (nothing was kept)"
                    )
            if meta.commit_hash and meta.commit_hash != src.revision:
                raise WeightsUnavailableError(
                    f"{f}: the Hub served commit {meta.commit_hash}, not the pinned {src.revision}"
                )
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.files:
            os.replace(Path(tmp) / f, dest / f)
    if not progress:
        enable_progress_bars()


def materialise(
    name: str, out_dir: str | Path, *, progress: bool = True, known: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Make the published weights of model ``name`` present under ``out_dir/<name>/``; return their record.

    ``known``: this model's record from an earlier manifest (lets a present snapshot skip the network).
    """
    src = get_entry(name).pretrained_source
    if src is None:
        raise WeightsUnavailableError(f"model '{name}' has no published pretrained weights. " + weights_fixes(name))
    dest = Path(out_dir) / name
    if isinstance(src, TorchvisionWeights):
        rec = _fetch_torchvision(name, src, dest, progress)
    elif isinstance(src, HubSnapshot):
        rec = _fetch_snapshot(name, src, dest, progress, known)
    else:
        raise TypeError(f"unknown pretrained_source {src!r} for model '{name}'")
    return rec


def materialised_weights(out_dir: str | Path, name: str) -> str:
    """The path to pass as ``weights`` for ``name``, from the manifest the ``weights`` stage wrote."""
    rec = read_manifest(out_dir)["models"].get(name)
    if rec is None:
        raise WeightsUnavailableError(
            f"pretrained weights for model '{name}' are not in {Path(out_dir) / MANIFEST}: the `weights` stage did "
            f"not materialise them for these params. Run `dvc repro weights` (or "
            f"`python src/weights.py --params params.yaml --out {out_dir}`). " + weights_fixes(name)
        )
    if rec.get("source") == "local":
        return str(rec["path"])
    return str(Path(out_dir) / name / rec["path"])


# --------------------------------------------------------------------------------------------
# Local files into a model
# --------------------------------------------------------------------------------------------


def load_state_dict_file(model: nn.Module, name: str, path: str | Path, head_prefix: str) -> None:
    """Load a backbone state_dict into ``model`` (before its head is replaced).

    Keys of the original ImageNet head (``head_prefix``) are dropped: that head is replaced anyway,
    and its 1000-class shape would not fit. Every other key of the model must be matched.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"pretrained weights for model '{name}' not found: looked for the file {path}. " + weights_fixes(name)
        )
    # A corrupt file, or a pickled whole model (refused unread): one line, torch's unsafe advice not passed on.
    fix = "save one with torch.save(model.state_dict(), path). " + weights_fixes(name)
    state = read_state_dict(path, fix, WeightsUnavailableError)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if head_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    expected = {k: v for k, v in model.state_dict().items() if not (head_prefix and k.startswith(head_prefix))}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        raise WeightsUnavailableError(
            f"weights in {path} do not fit model '{name}': {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), {len(wrong_shape)} of another shape "
            f"(e.g. {wrong_shape[:3]}). Expected a torchvision-layout {name} state_dict. " + weights_fixes(name)
        )
    model.load_state_dict(state, strict=False)  # strict=False only for the dropped head keys


# --------------------------------------------------------------------------------------------
# Fine-tuning: which parameters are the backbone
# --------------------------------------------------------------------------------------------


def split_parameters(model: nn.Module, name: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters of ``model``; the head is the entry's ``head(model)`` (newly initialised layers)."""
    head_fn = get_entry(name).head
    head = list(head_fn(model).parameters()) if head_fn is not None else []
    ids = {id(p) for p in head}
    return [p for p in model.parameters() if id(p) not in ids], head
