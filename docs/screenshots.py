"""The screenshots in docs/images of MLflow's pages and DVC's plots page, from a repository where the pipeline ran.

    make screenshots      # = python docs/screenshots.py --repo . --out docs/images

Run it after `make repro` (and `dvc repro -f -s compare` if compare was skipped: the registry page needs the
registered model). It starts `mlflow server` on a free loopback port over the repository's MLflow store (one
worker; stopped at the end), renders each page in headless Chromium (`make system-packages` installs it) and
saves it with a 256-colour palette (Pillow), so each PNG stays near 100 kB:

- mlflow_runs.png: the README's link, the runs table's saved view "Models: params beside test results"
  (cxr.metric_names.RUNS_VIEW; the pipeline tags each experiment it makes, and this script a store made before)
- mlflow_run_metrics.png: the selected model's training run, its model-metrics tab (the curves first)
- mlflow_compare.png: the compare view of each model's newest training run: params, then metrics (the test
  results among them), one column a run
- mlflow_registry.png: the registered model, its versions and the champion alias
- dvc_plots.png: `dvc plots show`'s page (offline: the template `make install` writes), its first charts

Run by name, not by CI: the pages are MLflow's, so their look follows the pinned MLflow version.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ML_VIEW = "workflowType=machine_learning"  # MLflow 3's model-training pages, not its GenAI ones
SERVER_START_S = 180  # about 20 s on 2 cores; the limit only bounds a server that never answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(store: str, log: Path) -> Iterator[str]:
    """``mlflow server`` over ``store`` on a free loopback port: its URL, until the block ends."""
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "server", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:
        proc = subprocess.Popen([*cmd, "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mlflow server did not start on {url}: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def shoot(url: str, png: Path, size: tuple[int, int], profile: Path) -> None:
    """Chromium's screenshot of ``url`` at ``size`` once its scripts and requests have settled, as a palette PNG."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("Chromium not found: `make system-packages` installs it (apt-get install chromium)")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
    cmd += [f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=60000"]
    subprocess.run([*cmd, f"--screenshot={png}", url], check=True, capture_output=True, timeout=180)
    with Image.open(png) as img:
        page = without_side_panel(img.convert("RGB"))
    page.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    print(f"{png} ({png.stat().st_size // 1000} kB): {url}")


def without_side_panel(img: Image.Image) -> Image.Image:
    """``img`` up to the page's right-hand panel (MLflow 3.17 opens its Assistant beside every page): cut at the
    strip of background between the two, the rightmost one in the right half; unchanged where there is none."""
    px = np.asarray(img).astype(int)[20:-20:2]  # (rows, columns, RGB), the rounded corners left out
    background = (np.abs(px - px[0, 2]).max(axis=2) <= 3).all(axis=0)  # per column: background all the way down
    w = img.size[0]
    strip = [x for x in range(w // 2, w - 50) if background[x]]
    return img.crop((0, 0, strip[-1] + 1, img.size[1])) if strip else img


def mlflow_pages(url: str, store: str, experiment: str, registered: str, selected: str) -> dict[str, tuple]:
    """{file name: (page URL, window size)} of the MLflow pages, found in ``store``."""
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from cxr.metric_names import RUNS_VIEW
    from cxr.tracking import make_tracker

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} in {store}: run `make repro` first")
    make_tracker(experiment, store)  # the experiment's tags as the pipeline sets them: the saved view among them
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'train'", order_by=["attributes.start_time DESC"])
    latest: dict[str, Run] = {}
    for run in runs:  # the newest training run of each model
        latest.setdefault(run.data.tags.get("model", ""), run)
    if not latest:
        raise SystemExit(f"no training run in experiment {experiment!r}: run `make repro` first")
    run = latest.get(selected) or latest.get(selected.removesuffix("-tuned")) or next(iter(latest.values()))
    ids = json.dumps([r.info.run_id for r in latest.values()])
    base = f"{url}/#/experiments/{exp.experiment_id}"
    pages = {
        "mlflow_runs.png": (f"{base}/runs?viewStateShareKey={RUNS_VIEW['id']}&{ML_VIEW}", (2100, 540)),
        "mlflow_run_metrics.png": (f"{base}/runs/{run.info.run_id}/model-metrics?{ML_VIEW}", (1400, 1500)),
        "mlflow_compare.png": (
            f"{url}/#/compare-runs?runs={ids}&experiments={json.dumps([exp.experiment_id])}&{ML_VIEW}",
            (1400, 2300),  # below the plots: the params, then the metrics, one column a run
        ),
    }
    if client.search_registered_models(f"name = '{registered}'"):
        pages["mlflow_registry.png"] = (f"{url}/#/models/{registered}?{ML_VIEW}", (1400, 520))
    else:
        print(f"no registered model {registered!r}: `dvc repro -f -s compare` registers it", file=sys.stderr)
    return pages


def dvc_plots_page(repo: Path, out_dir: Path) -> str:
    """``dvc plots show``'s page (the repository's offline template), written into ``out_dir``."""
    if not (repo / ".dvc" / "offline_plots.html").is_file():
        raise SystemExit("no offline plots template: `make install` writes it (python -m cxr.offline_plots)")
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "plots", "show", "-o", str(out_dir)], cwd=repo, check=True, capture_output=True)
    return (out_dir / "index.html").as_uri()


def selected_model(repo: Path) -> str:
    """compare's selected model (reports/results.csv, the row marked selected; the first row is it)."""
    rows = (repo / "reports" / "results.csv").read_text().splitlines()
    return rows[1].split(",", 1)[0] if len(rows) > 1 else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=Path("."), help="a repository where the pipeline ran")
    p.add_argument("--out", type=Path, default=Path("docs/images"))
    args = p.parse_args(argv)
    repo = args.repo.resolve()
    mlflow_cfg = yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]
    store = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo / 'mlflow.db'}"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        work = Path(tmp)
        with mlflow_server(store, work / "mlflow-server.log") as url:
            pages = mlflow_pages(
                url, store, mlflow_cfg["experiment"], mlflow_cfg["registered_model"], selected_model(repo)
            )
            for i, (name, (page, size)) in enumerate(pages.items()):
                shoot(page, args.out / name, size, work / f"profile-{i}")
        shoot(dvc_plots_page(repo, work / "plots"), args.out / "dvc_plots.png", (1200, 1500), work / "profile-dvc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
