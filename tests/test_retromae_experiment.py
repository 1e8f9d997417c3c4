"""benchmarks/retromae_experiment.py's pure parts: the leakage check (an evaluation string planted in the pretraining
text is refused), the table's mean ± std and the success rule from fake result files, the resume logic (a recorded
finished step is not run again), and one fine-tune command for every arm."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import retromae_experiment as rx
from benchmarks.recorded_runs import claim_output_dir, run_once
from tests.helpers import needs_data

EVALUATION = {"queries": {"a claim about cells"}, "sts test": {"한 남자가 먹고 있다."}}


# ---------------------------------------------------------------- leakage
def test_a_planted_evaluation_string_is_refused_and_a_clean_text_passes(tmp_path):
    clean = ["cells divide", "a claim about", "남자가 노래한다."]
    path = tmp_path / "texts.txt"
    path.write_text("".join(t + "\n" for t in clean), encoding="utf-8")
    assert rx.check_no_leaks(path, EVALUATION) == 3
    path.write_text("".join(t + "\n" for t in clean + ["we state a claim about cells here"]), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"1 evaluation strings .*line 4 holds queries 'a claim about cells'"):
        rx.check_no_leaks(path, EVALUATION)


def test_build_texts_drops_texts_containing_an_evaluation_string_and_counts_them():
    sources = {"docs": ["x a claim about cells y", "cells divide", "", "cells divide"],
               "ko": ["그리고 한 남자가 먹고 있다.", "남자가 노래한다.", "cells divide"]}
    texts, counts = rx.build_texts(sources, EVALUATION)
    assert texts == ["cells divide", "남자가 노래한다."]
    assert counts == {"docs": {"read": 4, "empty": 1, "duplicates": 1, "dropped": 1, "kept": 1},
                      "ko": {"read": 3, "empty": 0, "duplicates": 1, "dropped": 1, "kept": 1}}
    assert rx.find_leaks(texts, EVALUATION) == []
    # the negative control: each evaluation string is found, at its line, when it is there
    assert rx.find_leaks(["z", "y a claim about cells", "한 남자가 먹고 있다."], EVALUATION) == [
        (1, "queries", "a claim about cells"), (2, "sts test", "한 남자가 먹고 있다.")]


@needs_data
def test_the_real_evaluation_strings_include_every_scifact_query_and_a_planted_one_is_refused(tmp_path):
    evaluation = rx.evaluation_strings()
    queries = rx.EVALUATION_SOURCES["SciFact queries"].read_text(encoding="utf-8").splitlines()
    assert len(evaluation["SciFact queries"]) == len({rx.one_line(json.loads(q)["text"]) for q in queries}) > 1000
    assert len(evaluation["KorSTS test"]) > 2000 and len(evaluation["KorSTS dev"]) > 2000
    path = tmp_path / "texts.txt"
    query = sorted(evaluation["SciFact queries"])[0]
    path.write_text(f"some text\nbefore {query} after\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="line 2 holds SciFact queries"):
        rx.check_no_leaks(path, evaluation)


# ---------------------------------------------------------------- the table and the success rule
def fake_run(out, arm, seed, zeroshot, finetuned, seconds=10.0):
    """A finished run's files as the runner leaves them: two evaluate.py summaries, the pretraining record."""
    folder = out / f"{arm}-seed{seed}"
    for stage, (scifact, korsts) in (("zeroshot", zeroshot), ("finetuned", finetuned)):
        (folder / f"eval-{stage}").mkdir(parents=True)
        (folder / f"eval-{stage}" / "summary.json").write_text(json.dumps({
            "scifact-400docs": {"main_score": scifact}, "korsts-test": {"main_score": korsts}}))
        (folder / f"eval-{stage}.done.json").write_text(json.dumps({"command": [], "seconds": 1.0, "load_start": 1.0,
                                                                    "load_end": 2.0}))
    (folder / "pretrain.done.json").write_text(json.dumps({"command": [], "seconds": seconds, "load_start": 1.0,
                                                           "load_end": 2.0}))


def test_the_table_gives_mean_and_sample_std_over_seeds_and_applies_the_rule(tmp_path):
    finetuned = {"mlm": [0.30, 0.32, 0.31], "retromae": [0.40, 0.41, 0.45], "none": [0.20, 0.20, 0.23]}
    for arm, values in finetuned.items():
        for seed, v in enumerate(values):
            fake_run(tmp_path, arm, seed, (v / 2, 0.4), (v, 0.5 + seed / 100), seconds=100 * (seed + 1))
    runs = rx.collect(tmp_path)
    assert sorted(runs) == ["mlm", "none", "retromae"] and sorted(runs["mlm"]) == [0, 1, 2]
    lines = rx.report_lines(runs, 400)
    row = next(line for line in lines if line.startswith("| RetroMAE | 3 |"))
    v = np.array(finetuned["retromae"])
    assert f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" in row  # fine-tuned SciFact: sample std, ddof 1
    assert "| 200 ± 100 |" in row  # pretraining wall time, seconds 100, 200, 300
    verdict = next(line for line in lines if line.startswith("- Verdict"))
    assert "**RetroMAE beats MLM**" in verdict and "+0.1100" in verdict  # 0.42 - 0.31; margin: retromae's std
    assert f"margin {v.std(ddof=1):.4f}" in verdict
    assert "400-document corpus" in lines[0]


@pytest.mark.parametrize("a, b, outcome", [
    ([0.5, 0.6, 0.7], [0.3, 0.31, 0.32], "beats"),      # difference 0.29 > std 0.1
    ([0.5, 0.6, 0.7], [0.52, 0.53, 0.54], "tie"),       # difference 0.07: not more than the larger std, 0.1
    ([0.1, 0.1, 0.1], [0.3, 0.31, 0.32], "loses"),
    ([0.5, 0.6], [0.3, 0.31, 0.32], "too few seeds"),   # the rule needs ≥ 3 seeds in both arms
])
def test_the_success_rule_compares_the_difference_with_the_larger_std(a, b, outcome):
    assert rx.compare(a, b)[2] == outcome


# ---------------------------------------------------------------- resume
def test_a_recorded_finished_step_is_skipped_and_a_changed_command_runs_again(tmp_path):
    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    first = run_once(command, tmp_path / "run", "step")
    assert marker.read_text() == "x" and (tmp_path / "run" / "step.done.json").is_file()
    assert run_once(command, tmp_path / "run", "step") == first  # recorded: not run again
    assert marker.read_text() == "x"
    step = {"run": tmp_path / "run", "step": "step", "command": command}
    assert rx.is_done(step) and not rx.is_done({**step, "command": command + ["--other"]})
    run_once(command + ["--other"], tmp_path / "run", "step")  # another command: runs, its record replaces the old
    assert marker.read_text() == "xx"
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(SystemExit, match="exit 3"):
        run_once(failing, tmp_path / "run", "step")
    assert not (tmp_path / "run" / "step.done.json").exists()  # a failed step is not recorded as finished


def test_every_arm_gets_the_same_fine_tune_command_and_evaluation(tmp_path):
    args = SimpleNamespace(**{**vars(rx.parse_args([])), "tokenizer": "tok", "seeds": [0, 1]})
    steps = rx.plan(args, tmp_path, tmp_path / "texts.txt", tmp_path / "scifact")
    assert len(steps) == 2 * 3 * 4

    def normalised(step):  # the command with this run's own folder replaced
        return [a.replace(str(step["run"]), "RUN") for a in step["command"]]

    for kind in ("finetune", "eval-zeroshot", "eval-finetuned"):
        for seed in (0, 1):
            commands = {tuple(normalised(s)) for s in steps if s["step"] == kind and s["run"].name.endswith(f"d{seed}")}
            assert len(commands) == 1, kind  # none, mlm and retromae: one command
    finetune = normalised(next(s for s in steps if s["step"] == "finetune"))
    assert finetune[finetune.index("--seed") + 1] == "0" and finetune[finetune.index("--model") + 1] == "RUN/pretrained"
    pretrain = {s["run"].name: s["command"] for s in steps if s["step"] == "pretrain" and "seed1" in s["run"].name}
    assert pretrain["mlm-seed1"][pretrain["mlm-seed1"].index("--objective") + 1] == "mlm"
    steps = {arm: int(c[c.index("--max-steps") + 1]) for arm, c in pretrain.items() if "--max-steps" in c}
    assert steps == {"mlm-seed1": args.mlm_steps, "retromae-seed1": args.retromae_steps}  # equal compute: 320 vs 100
    assert args.mlm_steps > args.retromae_steps

    def without_objective_and_steps(command):
        return [a for i, a in enumerate(command) if a not in ("retromae", "mlm") and command[i - 1] != "--max-steps"]

    # otherwise the same command: batch, lr, schedule, seed, data, model
    assert without_objective_and_steps(pretrain["retromae-seed1"]) == [
        a.replace("mlm-seed1", "retromae-seed1") for a in without_objective_and_steps(pretrain["mlm-seed1"])]


# ---------------------------------------------------------------- the output folder
def test_the_output_folder_is_claimed_only_when_new_empty_or_this_runners_own(tmp_path):
    """A user's folder (no marker, or a stranger beside the runner's entries) is refused with nothing touched; a new
    or empty folder is claimed (marker written); the runner's own folder is taken again, so a rerun continues."""
    own = rx.OWN_ENTRIES.fullmatch
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"did not write .*notes\.txt.*nothing in it is deleted"):
        claim_output_dir(users, "benchmarks.retromae_experiment", own)
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]  # untouched, no marker added

    ours = tmp_path / "ours"
    claim_output_dir(ours, "benchmarks.retromae_experiment", own)  # new: made and marked
    (ours / "mlm-seed0").mkdir()
    (ours / "settings.json").write_text("{}")
    claim_output_dir(ours, "benchmarks.retromae_experiment", own)  # its own entries: a rerun continues there
    with pytest.raises(SystemExit, match="did not write"):  # another runner's marker is not this one's
        claim_output_dir(ours, "benchmarks.matryoshka_curve", own)
    (ours / "thesis.pdf").write_text("x")  # something the user put in it
    with pytest.raises(SystemExit, match=r"not its own: thesis\.pdf"):
        claim_output_dir(ours, "benchmarks.retromae_experiment", own)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit, match="is not a folder"):
        claim_output_dir(tmp_path / "a-file", "benchmarks.retromae_experiment", own)
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_output_dir(empty, "benchmarks.retromae_experiment", own)
    assert (empty / ".written_by.json").is_file()
