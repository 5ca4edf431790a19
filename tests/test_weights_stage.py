"""The `weights` DVC stage end to end, in a throwaway copy of the project, against a fake Hub on 127.0.0.1:
`dvc exp run -S models.vit.pretrained=true train@vit` downloads the (tiny, fake) ViT once, records its hashes
in dvc.lock and trains from it; a rerun touches no network; a DVC remote carries the weights to a machine
without a cache; offline it fails fast with the commands.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import yaml

from cxr.models.vit import VIT_HUB_ID, VIT_REVISION
from fake_hub import FakeHub, closed_port_url
from models.test_weights import tiny_vit_files
from pipeline_repo import BIN, copy_repo, env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]  # may build the shared repo


def dvc(repo, *args, extra_env=None, check=True):
    e = env()
    e.update(extra_env or {})
    p = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=repo, env=e, capture_output=True, text=True, timeout=900, check=False
    )
    if check and p.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({p.returncode})\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def test_weights_stage_downloads_once_tracks_and_trains(pipeline_baseline, tmp_path):
    repo = copy_repo(pipeline_baseline["repo"], tmp_path / "repo")  # its tiny sizes; only weights, train@vit run
    files = tiny_vit_files(tmp_path)
    base_env = {"HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    with FakeHub() as hub:
        hub.add_hf_repo(VIT_HUB_ID, VIT_REVISION, files)
        args = ["-n", "vit-pretrained", "-S", "models.vit.pretrained=true", "train@vit"]
        out = dvc(repo, "exp", "run", *args, extra_env={**base_env, "HF_ENDPOINT": hub.url})
        ran = set(re.findall(r"Running stage '([^']+)'", out.stdout))
        assert ran == {"params", "weights", "train@vit"}, out.stdout
        assert hub.count("GET", under="/resolve/") == 3, hub.requests
    assert f"vit: Hugging Face {VIT_HUB_ID}@{VIT_REVISION[:12]} downloaded from" in out.stdout
    assert "pretrained=True" in out.stdout

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    (w_out,) = lock["weights"]["outs"]
    assert w_out["path"] == "models/pretrained" and w_out["md5"].endswith(".dir") and w_out["nfiles"] == 4
    # its dependency: the params stage's list of the models that train from pretrained weights
    assert json.loads((repo / "resolved/weights.json").read_text()) == {"pretrained": {"vit": None}}
    assert [d["path"] for d in lock["weights"]["deps"] if d["path"].startswith("resolved")] == ["resolved/weights.json"]
    assert any(d["path"] == "models/pretrained" and d["md5"] == w_out["md5"] for d in lock["train@vit"]["deps"])
    manifest = json.loads((repo / "models/pretrained/manifest.json").read_text())
    assert manifest["models"]["vit"]["revision"] == VIT_REVISION
    card = json.loads((repo / "models/vit/model.json").read_text())
    assert card["train_params"]["pretrained"] is True
    assert card["train_params"]["weights"] == "models/pretrained/vit"
    assert card["arch"]["options"]["config"]["hidden_size"] == 16  # the served (tiny) weights' architecture

    # The server is gone: nothing to rerun, and a forced rerun finds the files and their hashes.
    offline = {**base_env, "HF_ENDPOINT": closed_port_url()}
    assert "didn't change" in dvc(repo, "repro", "train@vit", extra_env=offline).stdout
    forced = dvc(repo, "repro", "-f", "--single-item", "weights", extra_env=offline).stdout
    assert f"vit: Hugging Face {VIT_HUB_ID}@{VIT_REVISION[:12]} present" in forced
    assert dvc(repo, "status", "weights").stdout.strip().endswith("up to date.")

    # A DVC remote carries them to a machine whose cache does not have them.
    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    dvc(repo, "push", "weights")
    subprocess.run(["rm", "-rf", str(repo / ".dvc/cache"), str(repo / "models/pretrained")], check=True)
    dvc(repo, "pull", "weights")
    assert (repo / "models/pretrained/vit/model.safetensors").read_bytes() == files["model.safetensors"]

    # Offline with nothing anywhere: the stage fails within seconds and says how to fetch them.
    subprocess.run(["rm", "-rf", str(repo / ".dvc/cache"), str(repo / "models/pretrained")], check=True)
    t0 = time.monotonic()
    p = dvc(repo, "repro", "--single-item", "weights", extra_env=offline, check=False)
    assert p.returncode != 0
    assert time.monotonic() - t0 < 60  # interpreter start + imports dominate; the network part takes < 1 s
    err = p.stdout + p.stderr
    assert "could not be fetched; tried:" in err and f"hf download {VIT_HUB_ID}" in err and "dvc pull weights" in err
