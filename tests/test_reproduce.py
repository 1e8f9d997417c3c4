"""scripts/reproduce.py: bad configs stop before any training; a failed run is reported and the others finish;
finished runs are skipped on a rerun. Run as a subprocess (nothing imports a script)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, minilm_path, subprocess_env, tiny_bi_encoder


def reproduce(*args):
    return subprocess.run([sys.executable, "-m", "scripts.reproduce", "--no-readme", *map(str, args)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True)


def write_grid(folder, model, rows: dict, eval_file):
    folder.mkdir()
    (folder / "defaults.yaml").write_text(yaml.safe_dump({
        "seeds": [0], "model": str(model),
        "eval": {"korsts_test": str(eval_file), "kornli_dev": str(eval_file.with_name("nli.tsv")),
                 "stsb_test": str(eval_file), "pairs": 0, "max_len": 16},
        "train": {"group_size": 2, "batch_size": 4, "max_steps": 2, "lr": 1e-3, "log_steps": 1, "report_to": "none",
                  "query_max_len": 16, "passage_max_len": 16}}))
    for name, row in rows.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(row))


def eval_files(tmp_path):
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"a cat number {i}\ta dog number {i % 3}\t{i % 5}\n" for i in range(8)), encoding="utf-8")
    (tmp_path / "nli.tsv").write_text("sentence1\tsentence2\tgold_label\n" + "".join(
        f"a man {i}\ta person {i}\t{('entailment', 'neutral', 'contradiction')[i % 3]}\n" for i in range(9)))
    return sts


@pytest.mark.parametrize("train, message", [
    ({"loss": "triplet", "train_data": ["sample_data/train.jsonl"]},
     r"row\.yaml: train\.loss: unknown loss 'triplet'"),
    ({"loss": "infonce", "train_data": ["sample_data/missing.jsonl"]},
     r"row\.yaml: train\.train_data\[0\]: sample_data/missing\.jsonl does not exist"),
    ({"loss": "infonce", "train_data": ["sample_data/train.jsonl"], "temprature": 0.1},
     r"row\.yaml: train\.temprature: not a train\.py option"),
])
def test_bad_config_stops_before_training_naming_file_and_key(tmp_path, train, message):
    import re

    write_grid(tmp_path / "grid", "unused", {"row": {"step": 1, "label": "x", "train": train}}, eval_files(tmp_path))
    done = reproduce("--experiments", tmp_path / "grid", "--outputs", tmp_path / "out")
    assert done.returncode != 0 and re.search(message, done.stderr), done.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


def test_failed_run_is_reported_others_finish_and_reruns_skip(tmp_path):
    model = tmp_path / "tiny"
    tiny_bi_encoder(minilm_path()).save(str(model))
    good = {"step": 1, "label": "good", "train": {"loss": "infonce", "train_data": ["sample_data/train.jsonl"]}}
    bad = {"step": 1, "label": "bad", "train": {"loss": "infonce", "train_data": ["sample_data/train.jsonl"],
                                                 "grad_cache_chunk": 100000}}  # train.py refuses it at start-up
    write_grid(tmp_path / "grid", model, {"1-bad": bad, "1-good": good}, eval_files(tmp_path))
    args = ("--experiments", tmp_path / "grid", "--outputs", tmp_path / "out", "--table-dir", tmp_path / "table")
    done = reproduce(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = tmp_path / "out" / "default"
    bad_result = json.loads((runs / "1-bad" / "seed0" / "result.json").read_text())
    good_result = json.loads((runs / "1-good" / "seed0" / "result.json").read_text())
    assert not bad_result["ok"] and "--grad-cache-chunk 100000" in open(bad_result["log"]).read()
    assert good_result["ok"] and set(good_result["scores"]) == {"korsts_test", "kornli_dev", "stsb_test"}
    table = (tmp_path / "table" / "reproduce.md").read_text()
    assert "| 1 | bad (failed: `" in table and "| 1 | good | 1 |" in table
    assert (tmp_path / "table" / "reproduce.png").stat().st_size > 0

    # mark both results: a run that is skipped keeps the mark, a run tried again writes a new result without it
    for name, result in (("1-good", good_result), ("1-bad", bad_result)):
        (runs / name / "seed0" / "result.json").write_text(json.dumps({**result, "mark": 1}))
    again = reproduce(*args)  # the good run is skipped, the failed one is tried again
    assert again.returncode == 0
    assert json.loads((runs / "1-good" / "seed0" / "result.json").read_text()) == {**good_result, "mark": 1}
    rerun = json.loads((runs / "1-bad" / "seed0" / "result.json").read_text())
    assert "mark" not in rerun and not rerun["ok"] and rerun["error"] == bad_result["error"]


def test_table_says_which_rows_beat_the_base_by_more_than_their_seed_spread():
    from scripts.reproduce import markdown, versus_base

    def row(label, korsts, n="3"):
        return {"step": "1", "label": label, "n": n, "failed": [], "korsts_test": korsts,
                "kornli_dev": (0.3, 0.01), "stsb_test": (0.8, 0.01)}

    base = {**row("base", (0.40, None), "–"), "step": "0"}
    assert versus_base(row("a", (0.50, 0.04)), 0.40) == "+0.1000: beats base"
    assert versus_base(row("b", (0.43, 0.033)), 0.40) == "+0.0300: within spread"
    assert versus_base(row("c", (0.39, 0.087)), 0.40) == "−0.0100: within spread"
    assert versus_base(row("d", (0.30, 0.02)), 0.40) == "−0.1000: worse than base"
    assert versus_base(row("e", (0.45, None), "1"), 0.40) == "+0.0500 (1 seed: no spread)"
    assert versus_base(row("f", (None, None), "0"), 0.40) == "failed"
    table = markdown([base, row("good", (0.50, 0.04)), row("softmax", (0.35, 0.02))], "a CPU", "sizes")
    assert "| 0 | base | – | 0.4000 | 0.3000 ± 0.0100 | 0.8000 ± 0.0100 | – |" in table
    assert "| 1 | good | 3 | 0.5000 ± 0.0400 | 0.3000 ± 0.0100 | 0.8000 ± 0.0100 | +0.1000: beats base |" in table
    assert "| softmax | 3 | 0.3500 ± 0.0200 |" in table and "−0.0500: worse than base |" in table


def test_readme_results_come_from_the_script():
    """README.md's result figures are written by `python -m scripts.readme_results` (issue 22: they had gone stale),
    never typed in: the block between its markers is the script's output."""
    from scripts.readme_results import MARKS

    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split(MARKS[0], 1)[1].split(MARKS[1], 1)[0]
    assert block.startswith("\nMeasured by `python -m scripts.readme_results` on 20"), block[:200]
    assert "`make quickstart` (" in block and "KorSTS test Spearman" in block
