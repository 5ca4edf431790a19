"""``dvc plots show`` and ``dvc plots diff`` render every plot with no network, in headless Chromium.

A tiny copy of the project runs ``dvc repro``, is committed, then runs one experiment with a
changed lr (conftest's pipeline_experiment, built once a session and shared with test_workflows; this
module works on a copy of it). In it the page template is built as ``make install`` builds it
(``python -m cxr.offline_plots``, from this checkout's node_modules, to the path .dvc/config
names), and plain ``dvc plots show`` and ``dvc plots diff`` (workspace vs HEAD) write their pages.
Chromium loads each with every host unresolvable and a proxy to nowhere; every Vega plot declared
in dvc.yaml must then hold a drawn canvas or SVG, and every image plot its <img>. DVC's default
page (Vega from a CDN), loaded the same way, must draw none: the network really is off, and the
template is what makes the difference.

    pytest tests/test_plots_offline.py           # about 3 min on 2 cores: the browser checks are slow-marked
    CXR_PLOTS_SCREENSHOT=/tmp/plots.png pytest tests/test_plots_offline.py   # also a PNG of the diff page

Chromium and the npm packages are prerequisites, installed by ``make system-packages`` and
``make install``; when either is missing the tests fail (not skip) and say so.
"""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from browser import browse, chromium, dump_dom
from cxr import offline_plots
from pipeline_repo import BIN, REPO_ROOT, copy_repo, run

NODE_MODULES = REPO_ROOT / "node_modules"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")


def vega_libraries() -> list[offline_plots.Library]:
    try:
        return offline_plots.read_libraries(NODE_MODULES)
    except FileNotFoundError as e:
        pytest.fail(f"the Vega JS is missing: {e}", pytrace=False)


def render(page: Path, workdir: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``page`` after Chromium has run its scripts, with no network at all."""
    # No name resolves and every connection goes to a closed local port: a CDN fetch fails at once.
    offline = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9"]
    if screenshot:
        return browse(
            page.resolve().as_uri(),
            workdir,
            *offline,
            "--hide-scrollbars",
            "--window-size=1000,5200",
            f"--screenshot={screenshot}",
        )
    return dump_dom(page.resolve().as_uri(), workdir, *offline)


class PlotElements(HTMLParser):
    """Every element below each element whose id is in ``ids``: {id: [(tag, attrs), ...]}."""

    VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    )

    def __init__(self, ids: set[str]):
        super().__init__(convert_charrefs=True)
        self.ids = ids
        self.found: dict[str, list[tuple[str, dict]]] = {}
        self.stack: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        owner = self.stack[-1][1] if self.stack else None
        if owner is not None:
            self.found[owner].append((tag, attrs))
        elif attrs.get("id") in self.ids:
            owner = attrs["id"]
            self.found.setdefault(owner, [])
        if tag not in self.VOID:
            self.stack.append((tag, owner))

    def handle_startendtag(self, tag, attrs):  # <path/> in SVG: opened and closed at once
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break


def drawn(elements: list[tuple[str, dict]]) -> bool:
    """Vega's renderer made its canvas (or SVG) and sized it: the view ran, marks were drawn.

    Only class "marks" counts: Vega-Embed's action menu holds small SVG icons of its own.
    """

    def size(attrs, key):
        m = re.match(r"\d+", attrs.get(key) or "")
        return int(m.group()) if m else 0

    return any(
        tag in ("canvas", "svg")
        and "marks" in (a.get("class") or "").split()
        and size(a, "width") > 0
        and size(a, "height") > 0
        for tag, a in elements
    )


def declared_plots(repo: Path) -> tuple[list[str], list[str]]:
    """dvc.yaml's top-level plots as DVC names them on the page: (Vega div ids, image paths)."""
    from dvc_render.base import Renderer

    plots = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    names = [next(iter(p)) if isinstance(p, dict) else p for p in plots]
    images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    vega = [Renderer.remove_special_chars(n) for n in names if n not in images]
    return vega, images


def check_page(page: Path, repo: Path, workdir: Path, revisions: list[str]) -> None:
    html = page.read_text(encoding="utf8")
    external = re.findall(r"<script[^>]*\bsrc\s*=[^>]*>", html)
    assert not external, f"{page} still loads scripts from elsewhere: {external}"
    vega_ids, images = declared_plots(repo)
    assert len(vega_ids) == 6 and len(images) == 4, (vega_ids, images)  # dvc.yaml's 10 plots
    parser = PlotElements(set(vega_ids))
    parser.feed(render(page, workdir))
    missing = [i for i in vega_ids if i not in parser.found]
    assert not missing, f"no element on the page for the plots {missing}"
    blank = [i for i in vega_ids if not drawn(parser.found[i])]
    assert not blank, f"{len(blank)} of {len(vega_ids)} Vega plots drew nothing offline: {blank}"
    for image in images:
        for rev in revisions:
            static = f"static/{rev}_{image.replace('/', '_')}"
            assert f'src="{static}"' in html, f"{image} ({rev}) is not on {page}"
            assert (page.parent / static).is_file(), f"{page.parent / static} missing"


@pytest.fixture(scope="module")
def repo(request, tmp_path_factory):
    """A fresh-clone copy after ``dvc repro`` (committed), then an experiment with lr=1e-4 (and batch_size=16)
    applied: conftest's pipeline_experiment, which test_workflows shares, copied (this module writes into it)."""
    chromium()  # fail now, not after minutes of pipeline, when a prerequisite is missing
    vega_libraries()
    # `dvc exp run` left the experiment's results in the workspace: `dvc plots diff` is it vs HEAD.
    shared = request.getfixturevalue("pipeline_experiment")["repo"]
    repo = copy_repo(shared, tmp_path_factory.mktemp("plots") / "repo")
    # What `make install` runs after `npm ci`; node_modules is this checkout's (a test does not download).
    # (No stage reads the page: building it after the pipeline ran is what building it before would be.)
    page = repo / ".dvc" / "offline_plots.html"
    page.unlink()  # make_repo's copy of this checkout's page: the one checked is the one built here
    run([str(BIN / "python"), "-m", "cxr.offline_plots", "--node-modules", str(NODE_MODULES)], repo)
    assert page.is_file()
    return repo


@pytest.mark.slow
@pytest.mark.timeout(2700)  # the first builds the shared repos
def test_plots_show_renders_offline(repo, tmp_path):
    out = run(["dvc", "plots", "show"], repo).stdout
    page = repo / "dvc_plots" / "index.html"
    assert page.as_uri() in out, out
    check_page(page, repo, tmp_path, ["workspace"])


@pytest.mark.slow
@pytest.mark.timeout(2700)  # the first builds the shared repos
def test_plots_diff_renders_offline(repo, tmp_path):
    run(["dvc", "plots", "diff"], repo)
    page = repo / "dvc_plots" / "index.html"
    html = page.read_text(encoding="utf8")
    for rev in ("HEAD", "workspace"):
        assert re.search(rf'"rev":\s*"{rev}"', html), f"no data of revision {rev} on the diff page"
    check_page(page, repo, tmp_path, ["HEAD", "workspace"])
    if shot := os.environ.get("CXR_PLOTS_SCREENSHOT"):
        render(page, tmp_path, screenshot=Path(shot).resolve())


@pytest.mark.slow
@pytest.mark.timeout(2700)  # the first builds the shared repos
def test_default_cdn_page_is_blank_offline(repo, tmp_path):
    """The control: DVC's own page, under the same browser flags, draws no Vega plot."""
    from dvc_render.html import PAGE_HTML

    default = tmp_path / "dvc_default.html"
    default.write_text(PAGE_HTML, encoding="utf8")
    run(["dvc", "plots", "show", "--html-template", str(default), "-o", str(tmp_path / "cdn")], repo)
    page = tmp_path / "cdn" / "index.html"
    assert "cdn.jsdelivr.net" in page.read_text(encoding="utf8")
    vega_ids, _ = declared_plots(repo)
    parser = PlotElements(set(vega_ids))
    parser.feed(render(page, tmp_path))
    assert set(parser.found) == set(vega_ids)
    assert not [i for i in vega_ids if drawn(parser.found[i])], "a CDN plot rendered: the browser was online"


def test_template_inlines_pinned_libraries_in_order():
    libraries = vega_libraries()
    page = offline_plots.render_template(libraries)
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # where DVC would put its CDN <script src> tags
    assert "<script src" not in page and "sourceMappingURL" not in page
    positions = [page.index(f"/* {lib.name} {lib.version} */") for lib in libraries]
    assert positions == sorted(positions) and [lib.name for lib in libraries] == ["vega", "vega-lite", "vega-embed"]
    # The versions are package-lock.json's: what npm ci installed is what goes into the page.
    lock = json.loads((REPO_ROOT / "package-lock.json").read_text())["packages"]
    assert {lib.name: lib.version for lib in libraries} == {
        n: lock[f"node_modules/{n}"]["version"] for n in ("vega", "vega-lite", "vega-embed")
    }


def test_template_path_and_errors(tmp_path):
    assert offline_plots.configured_template(REPO_ROOT) == REPO_ROOT / ".dvc" / "offline_plots.html"
    with pytest.raises(FileNotFoundError, match=r"npm ci"):
        offline_plots.read_libraries(tmp_path / "node_modules")
    bad = tmp_path / "node_modules" / "vega"
    (bad / "build").mkdir(parents=True)
    (bad / "package.json").write_text('{"version": "0.0.0"}')
    (bad / "build" / "vega.min.js").write_text('var s = "</script>";\n//# sourceMappingURL=vega.min.js.map\n')
    with pytest.raises(ValueError, match="cannot be inlined"):
        offline_plots.read_library(tmp_path / "node_modules", "vega", "build/vega.min.js")
