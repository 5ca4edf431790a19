"""pipeline_repo.copy_repo: the copies of the shared pipeline repos that tests change are independent of them."""

from __future__ import annotations

import json
import sqlite3

from pipeline_repo import copy_repo


def test_copy_repo_links_only_immutable_trees_and_repoints_absolute_paths(tmp_path):
    src = tmp_path / "repo"
    cached = src / ".dvc" / "cache" / "files" / "md5" / "ab" / "cdef"
    artifact = src / "mlartifacts" / "run1" / "artifacts" / "model.pt"
    model = src / "models" / "cnn" / "model.pt"
    for f in (cached, artifact, model):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"weights")
    info = src / ".dvc" / "tmp" / "exps" / "run" / "x" / "x.run"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"git_url": src.as_uri(), "root_dir": str(src), "other": f"{src}-other/x"}))
    with sqlite3.connect(src / "mlflow.db") as con:
        con.execute("CREATE TABLE runs (run_uuid VARCHAR(32), artifact_uri VARCHAR(200), n INTEGER)")
        con.execute("INSERT INTO runs VALUES ('r1', ?, 1)", ((src / "mlartifacts" / "run1").as_uri(),))
    con.close()

    dest = copy_repo(src, tmp_path / "copy" / "repo")

    assert (dest / cached.relative_to(src)).stat().st_ino == cached.stat().st_ino
    assert (dest / artifact.relative_to(src)).stat().st_ino == artifact.stat().st_ino
    assert (dest / model.relative_to(src)).stat().st_ino != model.stat().st_ino  # a workspace file: copied
    assert (dest / "models" / "cnn" / "model.pt").read_bytes() == b"weights"
    assert json.loads((dest / info.relative_to(src)).read_text()) == {
        "git_url": dest.as_uri(),
        "root_dir": str(dest),
        "other": f"{src}-other/x",  # another folder whose name starts with src's: left alone
    }
    assert str(src) in info.read_text()  # the original untouched
    with sqlite3.connect(dest / "mlflow.db") as con:
        assert con.execute("SELECT artifact_uri, n FROM runs").fetchall() == [
            ((dest / "mlartifacts" / "run1").as_uri(), 1)
        ]
    con.close()
    with sqlite3.connect(src / "mlflow.db") as con:
        assert con.execute("SELECT artifact_uri FROM runs").fetchall() == [((src / "mlartifacts" / "run1").as_uri(),)]
    con.close()


def test_the_end_to_end_copy_is_what_ships_and_a_rewrite_is_caught(tmp_path):
    """make_repo copies the shipped files byte for byte (no params of its own); assert_changed_only_by, which the
    end-to-end fixtures call after their runs, accepts params.yaml as DVC's writer leaves it after `-S` and
    fails on a file re-dumped by a fixture (comments and layout gone) or on a touched dvc.yaml."""
    import inspect

    import pytest
    import yaml
    from dvc.utils.hydra import apply_overrides

    from pipeline_repo import REPO_ROOT, assert_changed_only_by, make_repo, shipped_files

    assert list(inspect.signature(make_repo).parameters) == ["dest"]
    repo = make_repo(tmp_path / "repo")
    for rel in shipped_files():
        assert (repo / rel).read_bytes() == (REPO_ROOT / rel).read_bytes(), rel
    assert_changed_only_by(repo, [])

    args = ["-S", "lr=0.0001", "-S", "models.cnn.epochs=1"]
    apply_overrides(repo / "params.yaml", ["lr=0.0001", "models.cnn.epochs=1"])  # what `dvc exp run` does
    assert_changed_only_by(repo, args)
    with pytest.raises(AssertionError, match="not the shipped file"):
        assert_changed_only_by(repo, args[:2])  # an override the run did not get

    redumped = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(redumped, sort_keys=False))  # the old fixture's way
    with pytest.raises(AssertionError, match="not the shipped file"):
        assert_changed_only_by(repo, args)

    (repo / "params.yaml").write_bytes((REPO_ROOT / "params.yaml").read_bytes())
    (repo / "dvc.yaml").write_text((repo / "dvc.yaml").read_text() + "\n")
    with pytest.raises(AssertionError, match=r"rewritten .*dvc\.yaml"):
        assert_changed_only_by(repo, [])
