"""Training-data readers: every format, every bad input named by file, line and field, groups and collation."""
from __future__ import annotations

import json
import os

import pytest

from data.collator import Collator
from data.examples import NLI_CLASS_IDS, DataError, load_examples
from data.groups import GroupedDataset
from data.row_kind import RowKind
from data.tables import OptionError
from tests.helpers import REPO, minilm_path


def write(tmp_path, name: str, lines: list) -> str:
    path = tmp_path / name
    path.write_text("".join((json.dumps(x, ensure_ascii=False) if not isinstance(x, str) else x) + "\n"
                            for x in lines), encoding="utf-8")
    return str(path)


GOOD = {"query": "오늘 아침에 학생이 책을 읽는다.", "pos": ["A student reads a book this morning."],
        "neg": ["A farmer sells apples.", "The pilot sleeps."]}


# ---------------------------------------------------------------- formats
def test_reads_bge_jsonl_with_scores_and_prompt(tmp_path):
    row = {**GOOD, "pos_scores": [0.9], "neg_scores": [0.1, 0.2], "prompt": "query: "}
    (ex,), report = load_examples(write(tmp_path, "a.jsonl", [row]))
    assert (ex.query, ex.pos, ex.neg, ex.pos_scores, ex.neg_scores, ex.prompt) == (
        row["query"], row["pos"], row["neg"], [0.9], [0.1, 0.2], "query: ")
    assert ex.source.endswith("a.jsonl:1") and report.rows == 1 and not report.skipped


def test_reads_triplet_tsv_and_keeps_quotes_verbatim(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('anchor\tpositive\tnegative\nHe said "hi"\tA greeting\tA farewell\nQ2\tP2\t\n', encoding="utf-8")
    examples, _ = load_examples(str(path))
    assert [(e.query, e.pos, e.neg) for e in examples] == [('He said "hi"', ["A greeting"], ["A farewell"]),
                                                          ("Q2", ["P2"], [])]


def test_nli_rows_become_groups_or_labelled_pairs(tmp_path):
    path = tmp_path / "nli.tsv"
    path.write_text("sentence1\tsentence2\tgold_label\n"
                    "P1\tE1\tentailment\nP1\tC1\tcontradiction\nP1\tN1\tneutral\nP2\tC2\tcontradiction\n",
                    encoding="utf-8")
    groups, report = load_examples(str(path))
    assert [(g.query, g.pos, g.neg) for g in groups] == [("P1", ["E1"], ["C1"])]
    assert any("no entailment" in note for note in report.notes)  # P2 is reported, not silently lost
    pairs, _ = load_examples(str(path), RowKind.NLI_PAIRS)
    assert [p.label for p in pairs] == [NLI_CLASS_IDS[x] for x in ("entailment", "contradiction", "neutral",
                                                                 "contradiction")]


def test_scored_pairs_are_scaled_for_the_cosine_loss(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\nA\tB\t4.0\nC\tD\t0\n", encoding="utf-8")
    pairs, _ = load_examples(str(path), RowKind.SCORED_PAIRS)
    assert [p.label for p in pairs] == [0.8, 0.0]
    with pytest.raises(OptionError, match=r"sts.tsv:2: field 'score' 4.0 is outside \[0, 2.0\] \(set score_max\)") as e:
        load_examples(str(path), RowKind.SCORED_PAIRS, score_max=2.0)
    assert e.value.field == "score_max" and "(set --score-max)" in e.value.text({"score_max": "--score-max"})
    with pytest.raises(DataError, match="scored pairs.*which the cosine loss trains on"):
        load_examples(str(path))


def test_examples_remember_their_file(tmp_path):
    a, b = write(tmp_path, "a.jsonl", [GOOD]), write(tmp_path, "b.jsonl", [GOOD, GOOD])
    examples, _ = load_examples([a, b])
    assert [e.file_index for e in examples] == [0, 1, 1]


# ---------------------------------------------------------------- bad input: file, line and field
@pytest.mark.parametrize("row, message", [
    ({"pos": ["x"]}, r"bad.jsonl:2: cannot tell the row's format"),
    ({"query": "", "pos": ["x"]}, r"bad.jsonl:2: field 'query' is missing or empty"),
    ({"query": "q"}, r"bad.jsonl:2: field 'pos' is missing"),
    ({"query": "q", "pos": []}, r"bad.jsonl:2: field 'pos' is an empty list"),
    ({"query": "q", "pos": "x"}, r"bad.jsonl:2: field 'pos' must be a list of non-empty strings"),
    ({"query": 3, "pos": ["x"]}, r"bad.jsonl:2: field 'query' must be a string, got int"),
    ({"query": "q", "pos": ["x"], "neg": [1]}, r"bad.jsonl:2: field 'neg' must be a list of non-empty strings"),
    ({"query": "q", "pos": ["x"], "pos_scores": [1, 2]},
     r"bad.jsonl:2: field 'pos_scores' has 2 scores but 'pos' has 1"),
    ({"query": "q", "pos": ["x"], "neg": ["y"], "neg_scores": ["high"]},
     r"bad.jsonl:2: field 'neg_scores' must be a list of numbers"),
    # teacher scores a softmax cannot take (written by json as -Infinity / NaN / Infinity)
    ({"query": "q", "pos": ["x"], "neg": ["y"], "pos_scores": [float("-inf")], "neg_scores": [float("-inf")]},
     r"bad.jsonl:2: field 'pos_scores' holds -inf; teacher scores must be finite"),
    ({"query": "q", "pos": ["x"], "neg": ["y"], "pos_scores": [1.0], "neg_scores": [float("nan")]},
     r"bad.jsonl:2: field 'neg_scores' holds nan"),
    ({"query": "q", "pos": ["x"], "neg": ["y"], "pos_scores": [float("inf")], "neg_scores": [0.0]},
     r"bad.jsonl:2: field 'pos_scores' holds inf"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = write(tmp_path, "bad.jsonl", [GOOD, row])
    with pytest.raises(DataError, match=message):
        load_examples(path)


def test_missing_empty_malformed_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match=r"nothere.jsonl: file not found"):
        load_examples(str(tmp_path / "nothere.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: file is empty"):
        load_examples(str(tmp_path / "empty.jsonl"))
    path = write(tmp_path, "broken.jsonl", [GOOD, '{"query": "q", "pos": ["x"]'])
    with pytest.raises(DataError, match=r"broken.jsonl:2: invalid JSON"):
        load_examples(path)
    path = write(tmp_path, "list.jsonl", [GOOD, '["q", "x"]'])
    with pytest.raises(DataError, match=r"list.jsonl:2: expected a JSON object, got list"):
        load_examples(path)
    (tmp_path / "cols.tsv").write_text("anchor\tpositive\nq\tp\textra\n")
    with pytest.raises(DataError, match=r"cols.tsv:2: expected 2 tab-separated fields \(anchor, positive\), found 3"):
        load_examples(str(tmp_path / "cols.tsv"))
    (tmp_path / "data.parquet.txt2").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_examples(str(tmp_path / "data.parquet.txt2"))


# ---------------------------------------------------------------- folders: read file by file, named file:line
def folder_of(tmp_path, files: dict) -> str:
    """tmp_path/data holding files {name: rows (JSON objects) or text}."""
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            (folder / name).write_text(content, encoding="utf-8")
        else:
            write(folder, name, content)
    return str(folder)


def test_a_folder_is_read_file_by_file_in_path_order_each_row_named_by_file_and_line(tmp_path):
    """Issue 25: two JSONL files with different columns failed inside `datasets` (CastError). Each row is valid on
    its own, so both files are read, in path order, as one source."""
    scored = {**GOOD, "pos_scores": [0.9], "neg_scores": [0.1, 0.2], "prompt": "query: "}
    folder = folder_of(tmp_path, {"b.jsonl": [GOOD, GOOD], "a.jsonl": [scored], "sub/c.tsv":
                                  "anchor\tpositive\nq\tp\n", "README.md": "# a dataset card"})
    examples, report = load_examples([folder])
    assert [ex.source for ex in examples] == [f"{folder}/a.jsonl:1", f"{folder}/b.jsonl:1", f"{folder}/b.jsonl:2",
                                              f"{folder}/sub/c.tsv:2"]
    assert examples[0].pos_scores == [0.9] and examples[1].pos_scores is None and examples[3].query == "q"
    assert {ex.file_index for ex in examples} == {0} and report.rows == 4
    other = tmp_path / "elsewhere"
    other.mkdir()
    write(other, "d.jsonl", [GOOD])
    os.symlink(other, tmp_path / "data" / "linked")  # a linked subfolder is read too, and a link back is not
    os.symlink(tmp_path / "data", other / "back")
    assert [ex.source for ex in load_examples([folder])[0]] == [
        f"{folder}/a.jsonl:1", f"{folder}/b.jsonl:1", f"{folder}/b.jsonl:2", f"{folder}/linked/d.jsonl:1",
        f"{folder}/sub/c.tsv:2"]


def test_a_folder_row_error_names_the_file_and_line(tmp_path):
    """Issue 25: a malformed JSONL in a folder gave DatasetGenerationError, naming no file or line."""
    folder = folder_of(tmp_path, {"a.jsonl": [GOOD], "b.jsonl": [GOOD, '{"query": "q", "pos": ["x"]']})
    with pytest.raises(DataError, match=rf"^{folder}/b.jsonl:2: invalid JSON"):
        load_examples([folder])
    (tmp_path / "data" / "b.jsonl").write_text(json.dumps(GOOD) + "\n")
    assert len(load_examples([folder])[0]) == 2  # precondition: the folder reads once the line is fixed
    write(tmp_path / "data", "c.jsonl", [{"query": "q"}])
    with pytest.raises(DataError, match=rf"^{folder}/c.jsonl:1: field 'pos' is missing"):
        load_examples([folder])


def test_an_empty_folder_or_one_with_no_data_files_is_refused(tmp_path):
    """Issue 25: an empty folder gave datasets' EmptyDatasetError (prepare_data too)."""
    folder = folder_of(tmp_path, {})
    with pytest.raises(DataError, match=rf"^{folder}: the folder holds no data files \(.jsonl, "):
        load_examples([folder])
    (tmp_path / "data" / "README.md").write_text("# only a card")
    with pytest.raises(DataError, match=rf"^{folder}: the folder holds no data files"):
        load_examples([folder])
    write(tmp_path / "data", "a.jsonl", [GOOD])
    assert len(load_examples([folder])[0]) == 1  # precondition: with a data file it reads


@pytest.mark.parametrize("name", ["load.py", "rows.bin"])
def test_a_folder_holding_a_file_no_reader_reads_is_refused_by_name(tmp_path, name):
    """Issue 25: a .py file in a folder failed inside `datasets` (RuntimeError: dataset scripts)."""
    folder = folder_of(tmp_path, {"a.jsonl": [GOOD]})
    assert len(load_examples([folder])[0]) == 1  # precondition: the folder reads without it
    (tmp_path / "data" / name).write_text("x = 1\n")
    with pytest.raises(DataError, match=rf"^{folder}: holds files that are not training data this code reads: "
                                        rf"{name}; a folder may hold only .jsonl"):
        load_examples([folder])


def test_a_folder_holding_a_held_out_split_is_refused(tmp_path):
    """Every file of a folder is training data: a test / dev file there would be trained on (`datasets` read only a
    `train` split out of such a folder, silently leaving the rest)."""
    folder = folder_of(tmp_path, {"train.jsonl": [GOOD], "extra.jsonl": [GOOD]})
    assert len(load_examples([folder])[0]) == 2  # precondition; before, `datasets` read train.jsonl alone
    write(tmp_path / "data", "kornli-dev.jsonl", [GOOD])
    with pytest.raises(DataError, match=rf"^{folder}: holds kornli-dev.jsonl, named like a held-out split"):
        load_examples([folder])


def test_a_folder_mixing_row_formats_names_both_files(tmp_path):
    folder = folder_of(tmp_path, {"a.jsonl": [GOOD], "b.tsv": "sentence1\tsentence2\tgold_label\nP\tH\tentailment\n"})
    with pytest.raises(DataError, match=rf"^{folder}: mixes row formats \['group', 'nli'\] \(group at "
                                        rf"{folder}/a.jsonl:1, nli at {folder}/b.tsv:2\); use one format per folder"):
        load_examples([folder])
    assert len(load_examples([folder + "/a.jsonl", folder + "/b.tsv"])[0]) == 2  # as two sources they read


def test_parquet_and_arrow_files_are_read_with_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = folder_of(tmp_path, {})
    pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "query": "second"}]), f"{folder}/a.parquet")
    table = pa.Table.from_pylist([{"query": "third", "pos": ["p"]}])
    with pa.ipc.new_stream(f"{folder}/b.arrow", table.schema) as w:  # the stream format, as `datasets` writes
        w.write_table(table)
    examples, _ = load_examples([folder])
    assert [(ex.query, ex.source) for ex in examples] == [
        (GOOD["query"], f"{folder}/a.parquet:1"), ("second", f"{folder}/a.parquet:2"), ("third", f"{folder}/b.arrow:1")]
    (tmp_path / "data" / "c.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"^{folder}/c.parquet: cannot read it as parquet \(ArrowInvalid"):
        load_examples([folder])


def test_a_saved_dataset_goes_through_datasets_and_its_errors_name_the_path(tmp_path):
    import datasets

    folder = str(tmp_path / "saved")
    datasets.Dataset.from_list([GOOD, GOOD]).save_to_disk(folder)
    assert [ex.source for ex in load_examples([folder])[0]] == [f"{folder}:1", f"{folder}:2"]
    for f in os.listdir(folder):
        if f.endswith(".arrow"):
            os.remove(os.path.join(folder, f))
    with pytest.raises(DataError, match=rf"^{folder}: cannot read it as a datasets folder \(save_to_disk\) \("):
        load_examples([folder])


def test_the_same_data_given_twice_is_refused(tmp_path):
    """Issue 25: the same --train-data path twice was accepted without a word, its rows read twice."""
    folder = folder_of(tmp_path, {"a.jsonl": [GOOD], "b.jsonl": [GOOD]})
    a, b = f"{folder}/a.jsonl", f"{folder}/b.jsonl"
    os.symlink(a, tmp_path / "link.jsonl")
    assert len(load_examples([a, b])[0]) == 2  # precondition: two files
    for paths, message in [([a, a], rf"{a}: given twice"),
                           ([a, f"{folder}/../data/a.jsonl"], rf"{folder}/../data/a.jsonl: the same file as {a}"),
                           ([a, str(tmp_path / "link.jsonl")], rf"{tmp_path}/link.jsonl: the same file as {a}"),
                           ([folder, folder], rf"{folder}: given twice"),
                           ([folder, b], rf"{b}: lies inside the folder {folder}, which is also given")]:
        with pytest.raises(DataError, match=f"^{message}"):
            load_examples(paths)
    from data.examples import check_data_paths  # what train.py checks its options with, before loading anything

    check_data_paths([a, b])
    with pytest.raises(DataError, match=rf"^{a}: given twice"):
        check_data_paths([a, a])


def test_skip_bad_rows_counts_every_reason(tmp_path):
    rows = [GOOD, {"query": "q"}, {"query": "q", "pos": []}, {"query": "q", "pos": []}, GOOD]
    path = write(tmp_path, "some-bad.jsonl", rows)
    with pytest.raises(DataError):
        load_examples(path)
    examples, report = load_examples(path, skip_bad_rows=True)
    assert len(examples) == 2 and report.rows == 2
    assert report.skipped == {"field 'pos' is missing": 1, "field 'pos' is an empty list": 2}
    assert "3 rows skipped" in report.summary()
    with pytest.raises(DataError, match="no usable rows"):
        load_examples(write(tmp_path, "all-bad.jsonl", [{"query": "q"}]), skip_bad_rows=True)


def test_distill_needs_scores_on_every_row(tmp_path):
    scored = {**GOOD, "pos_scores": [0.9], "neg_scores": [0.1, 0.2]}
    examples, _ = load_examples(write(tmp_path, "d.jsonl", [scored, GOOD]))
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'pos_scores'/'neg_scores' missing"):
        GroupedDataset(examples, 3, rows=RowKind.SCORED_GROUPS)
    with pytest.raises(OptionError, match=r"d.jsonl:1: field 'neg' has 2 scored negatives.*group_size 4") as e:
        GroupedDataset(examples[:1], 4, rows=RowKind.SCORED_GROUPS)
    assert e.value.field == "group_size"
    GroupedDataset(examples, 3)  # precondition: the same rows serve a loss without teacher scores
    item = GroupedDataset(examples[:1], 3, rows=RowKind.SCORED_GROUPS)[0]
    assert item["teacher_scores"][0] == 0.9 and sorted(item["teacher_scores"][1:]) == [0.1, 0.2]


# ---------------------------------------------------------------- groups and collation
def test_groups_are_deterministic_per_epoch_and_top_up_from_the_corpus(tmp_path):
    rows = [{"query": f"q{i}", "pos": [f"p{i}a", f"p{i}b"], "neg": [f"n{i}"]} for i in range(20)]
    examples, _ = load_examples(write(tmp_path, "g.jsonl", rows))
    ds = GroupedDataset(examples, group_size=4, seed=1)
    first = [ds[i] for i in range(20)]
    assert first == [GroupedDataset(examples, 4, seed=1)[i] for i in range(20)]  # rebuilt exactly
    for i, item in enumerate(first):
        assert item["passages"][0] in rows[i]["pos"] and item["passages"][1] == f"n{i}"
        random_negs = item["passages"][2:]
        assert len(set(random_negs)) == 2 and not set(random_negs) & set(rows[i]["pos"] + rows[i]["neg"])
    ds.set_epoch(1)
    assert [ds[i] for i in range(20)] != first  # reshuffled each epoch
    with pytest.raises(DataError, match="too few other passages"):
        GroupedDataset(examples[:1], group_size=4)[0]


def test_collator_prompts_padding_and_group_layout():
    from transformers import AutoTokenizer

    collate = Collator(AutoTokenizer.from_pretrained(minilm_path()), 16, 32, "query: ", "passage: ")
    items = [{"query": "a cat", "prompt": None, "passages": ["p1", "n1"], "teacher_scores": [1.0, 0.0], "label": None},
             {"query": "a dog", "prompt": "Represent this: ", "passages": ["p2", "n2"], "teacher_scores": [0.5, 0.2],
              "label": None}]
    batch = collate(items)
    decode = collate.tokenizer.batch_decode
    assert decode(batch["query"]["input_ids"], skip_special_tokens=True) == ["query : a cat", "represent this : a dog"]
    assert decode(batch["passage"]["input_ids"], skip_special_tokens=True) == [
        "passage : p1", "passage : n1", "passage : p2", "passage : n2"]  # group-major: query i's passages at i*G
    assert batch["query"]["input_ids"].shape[1] % 8 == 0 and batch["passage"]["input_ids"].shape[1] % 8 == 0
    assert batch["teacher_scores"].shape == (2, 2) and "labels" not in batch


# ------------------------------------------------------------------ the one table reader (data/tables.py)
def test_training_and_evaluation_read_a_tsv_with_a_byte_order_mark(tmp_path):
    from evaluation.task_files import read_sts

    path = tmp_path / "bom.tsv"
    path.write_bytes("\ufeffsentence1\tsentence2\tscore\na cat\ta dog\t1.0\nrain\tsnow\t4.0\n".encode("utf-8"))
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # the precondition: the file really has a BOM
    examples, _ = load_examples(str(path), RowKind.SCORED_PAIRS)
    assert [(ex.query, ex.pos, ex.label) for ex in examples] == [("a cat", ["a dog"], 0.2), ("rain", ["snow"], 0.8)]
    assert read_sts(path).scores == [1.0, 4.0]


def test_reading_a_long_field_leaves_the_csv_field_limit_as_it_was(tmp_path):
    import csv

    before = csv.field_size_limit()
    long_text = "word " * 40_000  # 200 KB: over the csv module's default 128 KiB field limit
    assert len(long_text) > before
    path = tmp_path / "long.tsv"
    path.write_text(f"anchor\tpositive\n{long_text}\tshort\n", encoding="utf-8")
    (example,), _ = load_examples(str(path))
    assert example.query == long_text
    assert csv.field_size_limit() == before


def test_importing_the_readers_does_not_change_the_csv_field_limit():
    import subprocess
    import sys

    code = ("import csv; before = csv.field_size_limit(); import data.examples, evaluation.task_files; "
            "assert csv.field_size_limit() == before, (before, csv.field_size_limit())")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
