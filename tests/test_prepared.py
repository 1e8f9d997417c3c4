"""data/prepared.py + scripts/prepare_data.py: a prepared corpus gives the raw path's batches and items, train.py
trains on it with the same losses, --sampling-alpha gives GTE's shares, and every bad input of issue 12 is refused
with what to do (each case checks its precondition: the same call without the fault works)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

import train
from data.bucket_sampler import BucketBatchSampler
from data.collator import Collator
from data.examples import DataError, load_examples
from data.groups import GroupedDataset, PreparedGroupedDataset
from data.prepared import PreparedCorpus, prepare
from data.train_sampler import build_prepared_sampler, build_train_sampler
from data.sampler_inputs import length_keys, text_ids
from models.bi_encoder import EncoderSettings
from scripts import prepare_data
from storage.folders import OutputError
from tests.helpers import make_tiny_run_files, minilm_path

SETTINGS = EncoderSettings(query_max_len=16, passage_max_len=24)
QUIET = dict(progress=False, log=lambda *a: None)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model, its BGE file (96 rows, 3 negatives each) and a second source with repeated texts."""
    folder = tmp_path_factory.mktemp("prepared")
    model, data = make_tiny_run_files(str(folder), minilm_path(), rows=96)
    rows = [{"query": f"question {i % 20}", "pos": [f"answer {i % 30} " + "word " * (i % 9)],
             "neg": [f"answer {(i + 7) % 30} ", f"question {(i + 3) % 20}", f"other {i}"]} for i in range(80)]
    dup = write_jsonl(folder / "dup.jsonl", rows)
    return model, [data, dup], folder


@pytest.fixture(scope="module")
def corpus(run):
    model, inputs, folder = run
    prepare(inputs, model, str(folder / "corpus"), query_max_len=16, passage_max_len=24, **QUIET)
    return str(folder / "corpus")


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("world_size", [1, 2])
def test_prepared_corpus_gives_the_raw_paths_batches_and_items(run, corpus, world_size):
    model, inputs, _ = run
    tok = AutoTokenizer.from_pretrained(model)
    examples, _ = load_examples(inputs)
    prepared = PreparedCorpus(corpus)
    assert len(prepared) == len(examples) == 176
    options = dict(batch_size=4, seed=5, world_size=world_size, same_dataset=True, sampling_alpha=0.5,
                   dataset_weights=[1.0, 2.0], num_buckets=3)
    for rank in range(world_size):
        raw = build_train_sampler(examples, tok, SETTINGS, rank=rank, file_names=inputs, progress=False, **options)
        mapped = build_prepared_sampler(prepared, rank=rank, **options)
        assert mapped.fingerprint() == raw.fingerprint()  # same rows, digest, buckets and text hashes
        for epoch in range(3):
            a, b = raw.plan(epoch), mapped.plan(epoch)
            assert np.array_equal(a.indices, b.indices) and np.array_equal(a.buckets, b.buckets)
            assert b.deferred > 0  # the duplicate source makes the dedup work
            raw.set_epoch(epoch)
            mapped.set_epoch(epoch)
            assert list(raw) == list(mapped)  # this rank's slices
    assert not prepared._maps  # planning read the index arrays only: no shard was opened
    ids, mapped_ids = text_ids(examples), prepared.text_ids()
    for name in ("key_offsets", "key_hashes", "neg_offsets", "neg_hashes"):
        assert np.array_equal(getattr(ids, name), getattr(mapped_ids, name))
    assert np.array_equal(ids.collision_rows(), mapped_ids.can_collide) and mapped_ids.can_collide.any()
    keys = length_keys(examples, tok, 16, 24, progress=False)
    assert np.array_equal((keys[:, 0] << 32) | keys[:, 1], prepared.length_keys().keys)
    groups, mapped_groups = GroupedDataset(examples, 3, seed=5), PreparedGroupedDataset(prepared, 3, seed=5)
    for epoch in (0, 1):
        groups.set_epoch(epoch)
        mapped_groups.set_epoch(epoch)
        assert [groups[i] for i in range(len(examples))] == [mapped_groups[i] for i in range(len(examples))]


def test_a_corpus_sent_to_a_spawned_worker_carries_paths_not_maps(corpus):
    import pickle

    prepared = PreparedCorpus(corpus)
    first = prepared.row(0)
    assert prepared._maps  # the read opened a shard here
    copy = pickle.loads(pickle.dumps(prepared))
    assert not copy._maps and copy.row(0) == first and copy.row(175) == prepared.row(175)
    with pytest.raises(IndexError):
        prepared.row(176)


def test_train_py_on_a_prepared_corpus_logs_the_raw_runs_losses(run, corpus, tmp_path, capsys):
    model, inputs, _ = run
    args = dict(model=model, group_size=3, batch_size=4, max_steps=5, log_steps=1, report_to="none",
                query_max_len=16, passage_max_len=24, same_dataset_batches=True, sampling_alpha=0.5,
                mixed_precision="no", lr=1e-3)
    raw = train.main(train.TrainConfig(train_data=inputs, output_dir=str(tmp_path / "raw"), **args))
    mapped = train.main(train.TrainConfig(train_data=[corpus], output_dir=str(tmp_path / "mapped"), **args))
    assert [h["loss"] for h in mapped["history"]] == [h["loss"] for h in raw["history"]]
    out = capsys.readouterr().out
    assert f"prepared corpus {corpus}: 176 rows from 2 source(s)" in out
    assert "epoch 0 batches by file:" in out  # realised shares, logged per epoch


def test_pretokenized_corpus_collates_to_the_same_tensors(run, tmp_path):
    model, inputs, _ = run
    tok = AutoTokenizer.from_pretrained(model)
    prepare(inputs, model, str(tmp_path / "plain"), query_max_len=16, passage_max_len=24, **QUIET)
    prepare(inputs, model, str(tmp_path / "ids"), query_max_len=16, passage_max_len=24, pretokenize=True, **QUIET)
    plain = PreparedGroupedDataset(PreparedCorpus(str(tmp_path / "plain")), 5, seed=1)  # 5 > 1 + 3 negatives:
    ids = PreparedGroupedDataset(PreparedCorpus(str(tmp_path / "ids")), 5, seed=1)  # random negatives, no ids
    assert "query_ids" in ids[0] and "query_ids" not in plain[0]
    collate = Collator(tok, 16, 24, query_prompt="", passage_prompt="")
    for start in range(0, 176, 16):
        a = collate([plain[i] for i in range(start, start + 16)])
        b = collate([ids[i] for i in range(start, start + 16)])
        for side in ("query", "passage"):
            for k in ("input_ids", "attention_mask"):
                assert a[side][k].shape == b[side][k].shape and (a[side][k] == b[side][k]).all()


# ------------------------------------------------------------------ source mixing
def test_sampling_alpha_gives_gte_shares():
    """Sources of 1,000 / 10,000 / 100,000 rows at α = 0.5: batches in the ratio 1 : √10 : 10 over an epoch."""
    sizes = (1_000, 10_000, 100_000)
    files = np.repeat(np.arange(3), sizes)
    s = BucketBatchSampler(len(files), 8, file_index=files, same_file=True, sampling_alpha=0.5, seed=3)
    want = np.sqrt(sizes) / np.sqrt(sizes).sum()  # 0.0705, 0.2229, 0.7066
    for epoch in range(2):
        counts = np.bincount(s.plan(epoch).files, minlength=3)
        assert counts.sum() == len(s) == sum(n // 8 for n in sizes)  # 13,875 draws
        sigma = np.sqrt(want * (1 - want) / counts.sum())  # ≤ 0.004
        assert (np.abs(counts / counts.sum() - want) < 4 * sigma).all(), (counts, want)
        assert abs(counts[1] / counts[0] - 10 ** 0.5) < 0.35 and abs(counts[2] / counts[0] - 10) < 1.0
        for b in s.plan(epoch).batches[:50]:
            assert set(files[b.indices]) == {b.file}
    shares = s.file_shares(0)
    assert abs(sum(shares.values()) - 1) < 1e-9
    # without α the same sources come in proportion to their size: the check above can fail
    plain = BucketBatchSampler(len(files), 8, file_index=files, same_file=True, seed=3)
    assert np.bincount(plain.plan(0).files)[0] == 1_000 // 8
    # α and explicit weights multiply
    both = BucketBatchSampler(len(files), 8, file_index=files, same_file=True, sampling_alpha=0.0,
                              file_weights=[2, 1, 1], seed=3)
    assert np.allclose(both.weights, [0.5, 0.25, 0.25])


@pytest.mark.parametrize("alpha, message", [(-0.5, "must be ≥ 0"), (float("nan"), "must be ≥ 0")])
def test_negative_alpha_is_refused(run, alpha, message):
    files = np.repeat(np.arange(2), 40)
    BucketBatchSampler(80, 4, file_index=files, same_file=True, sampling_alpha=0.5)  # precondition: 0.5 works
    with pytest.raises(ValueError, match=message):
        BucketBatchSampler(80, 4, file_index=files, same_file=True, sampling_alpha=alpha)
    model, inputs, _ = run
    with pytest.raises(SystemExit, match="--sampling-alpha must be ≥ 0"):
        train.main(train.TrainConfig(model=model, train_data=inputs, same_dataset_batches=True, sampling_alpha=alpha))
    with pytest.raises(SystemExit, match="--sampling-alpha chooses the source.*--same-dataset-batches"):
        train.main(train.TrainConfig(model=model, train_data=inputs, sampling_alpha=0.5))


# ------------------------------------------------------------------ prepare: no-op, interrupted, failures
def test_rerun_is_a_no_op_and_an_interrupted_prepare_starts_over(run, tmp_path):
    model, inputs, _ = run
    out = str(tmp_path / "c")
    messages = []
    first = prepare(inputs, model, out, progress=False, log=messages.append)
    stamp = os.stat(os.path.join(out, "manifest.json")).st_mtime_ns
    again = prepare(inputs, model, out, progress=False, log=messages.append)
    assert again == first and os.stat(os.path.join(out, "manifest.json")).st_mtime_ns == stamp
    assert "nothing to do" in messages[-1]
    # another setting is not a no-op, and replaces the earlier corpus only when asked to
    with pytest.raises(OutputError, match="holds an earlier output of scripts.prepare_data .*pass --overwrite"):
        prepare(inputs, model, out, passage_prompt="passage: ", progress=False, log=messages.append)
    prepare(inputs, model, out, passage_prompt="passage: ", overwrite=True, progress=False, log=messages.append)
    assert PreparedCorpus(out).manifest["settings"]["passage_prompt"] == "passage: "
    # a half-written staging folder from a killed run: removed, then a clean start
    staging = str(tmp_path / ".c.killed.partial")
    os.makedirs(staging + "/shards")
    open(staging + "/shards/shard-00000.arrow", "wb").write(b"half")
    json.dump({"tool": "scripts.prepare_data", "entries": [], "staging_for": "c"}, open(staging + "/.written_by.json", "w"))
    prepare(inputs, model, out, overwrite=True, progress=False, log=messages.append)
    assert not os.path.exists(staging) and "starting over" in " ".join(messages)
    assert sorted(os.listdir(tmp_path)) == ["c"]  # no staging or replaced folder left beside it
    # the partial folder never looks complete to train.py
    os.makedirs(staging + "/shards")
    with pytest.raises(DataError, match="no manifest.json: not a complete prepared corpus"):
        PreparedCorpus(staging)


def test_bad_rows_are_named_like_train_py_names_them_and_skipped_rows_are_counted(run, tmp_path):
    model, inputs, _ = run
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q1", "pos": ["p1"]}, {"query": "q2", "pos": "p2"},
                                               {"query": "", "pos": ["p3"]}, {"query": "q4", "pos": ["p4"]}])
    with pytest.raises(DataError) as raw_error:
        load_examples([bad])
    with pytest.raises(DataError) as prepared_error:
        prepare([bad], model, str(tmp_path / "c"), **QUIET)
    assert str(prepared_error.value) == str(raw_error.value) == (
        f"{bad}:2: field 'pos' must be a list of non-empty strings, got \"p2\"")
    assert os.listdir(tmp_path) == ["bad.jsonl"]  # no corpus and no staging folder left
    manifest = prepare([bad], model, str(tmp_path / "c"), skip_bad_rows=True, **QUIET)
    assert manifest["rows"] == 2 and manifest["sources"][0]["rows"] == 2
    assert sum(manifest["skipped_rows"].values()) == 2
    assert "field 'query' is missing or empty" in manifest["skipped_rows"]


def test_a_source_with_zero_rows_is_refused(run, tmp_path):
    model, inputs, _ = run
    all_bad = write_jsonl(tmp_path / "all_bad.jsonl", [{"query": "q", "pos": []}])
    no_groups = write_jsonl(tmp_path / "nli.jsonl", [  # valid NLI rows, but no premise has an entailment
        {"sentence1": "a man sleeps", "sentence2": "a man runs", "gold_label": "contradiction"},
        {"sentence1": "a dog barks", "sentence2": "an animal is loud", "gold_label": "neutral"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="all_bad.jsonl: no usable rows"):
        prepare([inputs[0], all_bad], model, str(tmp_path / "c"), skip_bad_rows=True, **QUIET)
    with pytest.raises(DataError, match="nli.jsonl: no usable rows \\(every row was skipped or formed no group\\)"):
        prepare([inputs[0], no_groups], model, str(tmp_path / "c"), **QUIET)
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        prepare([inputs[0], str(empty)], model, str(tmp_path / "c"), **QUIET)
    prepare([inputs[0]], model, str(tmp_path / "c"), **QUIET)  # precondition: the good source alone works


def test_a_failed_prepare_loses_nothing_already_prepared(run, tmp_path):
    model, inputs, _ = run
    out = str(tmp_path / "c")
    good = prepare(inputs, model, out, **QUIET)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "pos": ["p"]}, {"nonsense": 1}])
    with pytest.raises(DataError, match="bad.jsonl:2: cannot tell the row's format"):
        prepare([bad], model, out, overwrite=True, **QUIET)
    corpus = PreparedCorpus(out)
    assert corpus.manifest == good and len(corpus) == good["rows"]


# ------------------------------------------------------------------ read: shards and settings
def test_a_manifest_that_does_not_match_its_shards_is_refused(run, tmp_path):
    model, inputs, _ = run
    out = str(tmp_path / "c")
    prepare(inputs, model, out, num_proc=2, **QUIET)
    shards = PreparedCorpus(out).manifest["shards"]
    assert len(shards) == 2
    first = os.path.join(out, shards[0]["file"])

    def broken(change, message):
        backup = str(tmp_path / "backup")
        shutil.copytree(out, backup)
        try:
            change()
            with pytest.raises(DataError, match=message):
                PreparedCorpus(out)
        finally:
            shutil.rmtree(out)
            shutil.move(backup, out)
        PreparedCorpus(out)  # restored: loads again

    broken(lambda: os.remove(first), f"shard {shards[0]['file']} of the manifest is missing")
    broken(lambda: os.truncate(first, shards[0]["bytes"] // 2),
           f"shard {shards[0]['file']} has {shards[0]['bytes'] // 2} bytes, the manifest says {shards[0]['bytes']}")
    broken(lambda: shutil.copy(first, os.path.join(out, "shards", "shard-99999.arrow")),
           "shards/shard-99999.arrow not in the manifest \\(extra shard\\)")
    keys = os.path.join(out, "index", "length_keys.npy")
    size = os.path.getsize(keys)
    broken(lambda: os.remove(keys), "index file index/length_keys.npy of the manifest is missing")
    broken(lambda: os.truncate(keys, size - 8), f"index file index/length_keys.npy has {size - 8} bytes")
    broken(lambda: shutil.copy(keys, os.path.join(out, "index", "extra.npy")),
           "index/extra.npy not in the manifest \\(extra index file\\)")

    def older_format():
        manifest = json.load(open(os.path.join(out, "manifest.json")))
        manifest["format"] = "prepared-training-corpus/1"
        json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"))

    broken(older_format, "format 'prepared-training-corpus/1', this code reads 'prepared-training-corpus/2'; "
                         "prepare it again")


def test_a_corpus_prepared_for_other_settings_is_refused_with_the_differences(run, corpus, tmp_path):
    model, inputs, _ = run
    args = dict(model=model, train_data=[corpus], group_size=3, batch_size=4, max_steps=1, report_to="none",
                query_max_len=16, passage_max_len=24, output_dir=str(tmp_path / "o"))
    train.main(train.TrainConfig(**args))  # precondition: the matching settings train
    with pytest.raises(SystemExit) as e:
        train.main(train.TrainConfig(**{**args, "passage_max_len": 32, "query_prompt": "query: ",
                                        "output_dir": str(tmp_path / "o2")}))
    assert "--passage-max-len: 24 in the corpus, 32 in this run" in str(e.value)
    assert "--query-prompt: '' in the corpus, 'query: ' in this run" in str(e.value)
    with pytest.raises(SystemExit, match="rows: query/passage groups in the corpus, nli for this loss"):
        train.main(train.TrainConfig(**{**args, "loss": "softmax", "output_dir": str(tmp_path / "o3")}))
    # another tokenizer: the same folder with one more token
    other = str(tmp_path / "other-tokenizer")
    tok = AutoTokenizer.from_pretrained(model)
    tok.add_tokens(["zzzunseenword"])
    tok.save_pretrained(other)
    with pytest.raises(DataError, match=r"tokenizer \(fingerprint\): '\w+' in the corpus, '\w+' in this run"):
        PreparedCorpus(corpus).check_settings(AutoTokenizer.from_pretrained(other), SETTINGS, None)
    PreparedCorpus(corpus).check_settings(AutoTokenizer.from_pretrained(model), SETTINGS, None)  # precondition


def test_prepared_corpus_is_the_only_train_data_and_weights_count_its_sources(run, corpus):
    model, inputs, _ = run
    with pytest.raises(SystemExit, match="a prepared corpus must be the only --train-data"):
        train.main(train.TrainConfig(model=model, train_data=[corpus, inputs[0]]))
    with pytest.raises(SystemExit, match="3 dataset weights for 2 training files"):
        train.main(train.TrainConfig(model=model, train_data=[corpus], same_dataset_batches=True,
                                     dataset_weights=[1, 1, 1]))


def test_prepare_cli(run, tmp_path, capsys):
    model, inputs, _ = run
    manifest = prepare_data.main(["--input", *inputs, "--tokenizer", model, "--output", str(tmp_path / "c"),
                                  "--num-proc", "1", "--query-prompt", "q: "])
    assert manifest["rows"] == 176 and manifest["settings"]["query_prompt"] == "q: "
    assert manifest["settings"]["query_max_len"] == 64  # train.py's default
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q"}])
    with pytest.raises(SystemExit, match="data error: .*bad.jsonl:1: field 'pos' is missing"):
        prepare_data.main(["--input", bad, "--tokenizer", model, "--output", str(tmp_path / "d")])


def test_a_datasets_folder_is_a_source_like_a_file(run, tmp_path):
    import datasets

    model, inputs, _ = run
    examples, _ = load_examples([inputs[1]])
    folder = str(tmp_path / "ds")
    datasets.Dataset.from_list([{"query": ex.query, "pos": ex.pos, "neg": ex.neg} for ex in examples]).save_to_disk(folder)
    a = prepare([inputs[1]], model, str(tmp_path / "a"), **QUIET)
    b = prepare([folder], model, str(tmp_path / "b"), **QUIET)
    assert a["content_digest"] == b["content_digest"] and a["rows"] == b["rows"] == 80


def test_train_py_says_when_preparing_would_pay():
    from data.prepared import PREPARE_HINT_ROWS, prepare_hint

    assert prepare_hint(PREPARE_HINT_ROWS - 1, ["a.jsonl"]) is None
    hint = prepare_hint(PREPARE_HINT_ROWS, ["a.jsonl", "b.tsv"])
    assert "python -m scripts.prepare_data --input a.jsonl b.tsv" in hint and "--train-data DIR" in hint
