"""Issue 25: no tool deletes or overwrites what it did not write, a full disk is said in those words, an inexact
resume or a run that trained nothing never reports success, and bad options stop before anything loads.

Each data-loss case is run against a folder holding a file the tool must not touch, and checks that file after.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from data.prepared import PreparedCorpus, prepare
from storage.folders import OutputError, check_output_folder, staged_folder
from tests.helpers import REPO, make_tiny_run_files, minilm_path, subprocess_env

QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, train.jsonl) of the tiny run."""
    return make_tiny_run_files(str(tmp_path_factory.mktemp("tiny")), minilm_path(), rows=24)


def tree(folder) -> dict[str, bytes]:
    """Every file under folder with its bytes."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def prepare_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.prepare_data", "--num-proc", "1", *args], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- 1, 2: prepare_data never deletes a folder
def test_prepare_refuses_a_folder_it_did_not_write_and_deletes_nothing(tiny, tmp_path):
    """The issue's case: --output x where x holds precious.txt and the input itself (x/sub/a.jsonl)."""
    model, data = tiny
    x = tmp_path / "x"
    (x / "sub").mkdir(parents=True)
    (x / "precious.txt").write_text("keep")
    (x / "sub" / "a.jsonl").write_bytes(open(data, "rb").read())
    before = tree(x)
    res = prepare_cli("--input", str(x / "sub" / "a.jsonl"), "--tokenizer", model, "--output", str(x))
    assert res.returncode != 0
    assert "did not write" in res.stderr or "holds the input" in res.stderr, res.stderr
    assert tree(x) == before
    assert sorted(os.listdir(tmp_path)) == ["x"]  # no staging folder, no x.old
    # precondition: the same command into a new folder works
    res = prepare_cli("--input", str(x / "sub" / "a.jsonl"), "--tokenizer", model, "--output", str(tmp_path / "y"))
    assert res.returncode == 0, res.stderr
    assert len(PreparedCorpus(str(tmp_path / "y"))) == 24


def test_prepare_leaves_an_existing_old_folder_and_an_output_file_alone(tiny, tmp_path):
    model, data = tiny
    old = tmp_path / "c.old"
    old.mkdir()
    (old / "mine.txt").write_text("not the tool's")
    file = tmp_path / "f"
    file.write_text("a file of the user's")
    res = prepare_cli("--input", data, "--tokenizer", model, "--output", str(file))
    assert res.returncode != 0 and "is a file, not a folder" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert file.read_text() == "a file of the user's"
    # a corpus replaced with --overwrite: c.old is not the tool's and stays
    prepare([data], model, str(tmp_path / "c"), **QUIET)
    prepare([data], model, str(tmp_path / "c"), passage_prompt="p: ", overwrite=True, **QUIET)
    assert (old / "mine.txt").read_text() == "not the tool's"
    assert sorted(os.listdir(tmp_path)) == ["c", "c.old", "f"]


def test_a_corpus_the_user_added_a_file_to_is_not_replaced(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "c"
    prepare([data], model, str(out), **QUIET)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write \(5 entries: .*notes.txt"):
        prepare([data], model, str(out), passage_prompt="p: ", overwrite=True, **QUIET)
    assert (out / "notes.txt").read_text() == "mine"
    os.remove(out / "notes.txt")  # precondition: without it the same call replaces the corpus
    prepare([data], model, str(out), passage_prompt="p: ", overwrite=True, **QUIET)
    assert PreparedCorpus(str(out)).manifest["settings"]["passage_prompt"] == "p: "


def test_the_output_may_not_be_or_lie_inside_an_input(tiny, tmp_path):
    model, data = tiny
    folder_input = tmp_path / "rows"
    folder_input.mkdir()
    (folder_input / "a.jsonl").write_bytes(open(data, "rb").read())
    for output in (folder_input, folder_input / "corpus", os.path.join(model, "corpus")):
        with pytest.raises(OutputError, match="(is|lies inside) the (input|tokenizer folder)"):
            prepare([str(folder_input)], model, str(output), **QUIET)
    assert sorted(os.listdir(folder_input)) == ["a.jsonl"]


def test_staged_folder_removes_its_own_work_on_error_and_keeps_the_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(OutputError):  # someone else's folder: refused before the block runs
        with staged_folder(str(target), "tool", overwrite=True):
            pass
    with pytest.raises(RuntimeError):
        with staged_folder(str(tmp_path / "new"), "tool", overwrite=False) as staging:
            open(os.path.join(staging, "half"), "w").close()
            raise RuntimeError("killed mid-write")
    assert sorted(os.listdir(tmp_path)) == ["out"]
    with staged_folder(str(tmp_path / "new"), "tool", overwrite=False) as staging:
        open(os.path.join(staging, "done"), "w").close()
    assert json.load(open(tmp_path / "new" / ".written_by.json"))["entries"] == ["done"]
    assert check_output_folder(str(tmp_path / "new"), "tool", overwrite=True) is True
    with pytest.raises(OutputError, match="written by|did not write"):
        check_output_folder(str(tmp_path / "new"), "another tool", overwrite=True)
