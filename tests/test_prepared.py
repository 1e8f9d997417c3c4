"""data/prepared/ + scripts/prepare_data.py: a prepared corpus gives the raw path's batches and items, train.py
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
from data.batch_planner import BucketBatchSampler
from data.collator import Collator
from data.examples import DataError, load_examples
from data.groups import GroupedDataset, PreparedGroupedDataset
from data.prepared import PreparedCorpus, prepare
from data.row_kind import RowKind
from data.tables import OptionError
from data.train_sampler import build_prepared_sampler, build_train_sampler
from data.sampler_inputs import length_keys, text_ids
from models.settings import EncoderSettings
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
    raw = train.main(train.TrainConfig.of(train_data=inputs, output_dir=str(tmp_path / "raw"), **args))
    mapped = train.main(train.TrainConfig.of(train_data=[corpus], output_dir=str(tmp_path / "mapped"), **args))
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
    with pytest.raises(OptionError, match=message) as e:
        BucketBatchSampler(80, 4, file_index=files, same_file=True, sampling_alpha=alpha)
    assert e.value.field == "sampling_alpha"
    model, inputs, _ = run
    # through train.py: the flags (train.py maps OptionError.fields)
    with pytest.raises(SystemExit, match=r"data error: --sampling-alpha \S+: must be ≥ 0"):
        train.main(train.TrainConfig.of(model=model, train_data=inputs, same_dataset_batches=True,
                                        sampling_alpha=alpha))
    with pytest.raises(SystemExit, match=r"--sampling-alpha: chooses the source.*\(set --same-dataset-batches\)"):
        train.main(train.TrainConfig.of(model=model, train_data=inputs, sampling_alpha=0.5))


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
    json.dump({"tool": "scripts.prepare_data", "entries": [], "staging_for": "c"},
              open(staging + "/.written_by.json", "w"))
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

    def without(field):
        def change():
            manifest = json.load(open(os.path.join(out, "manifest.json")))
            part, _, key = field.partition(".")
            if key:
                del manifest[part][0][key]
            else:
                del manifest[part]
            json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"))
        return change

    broken(without("token_lengths"), "manifest.json: the manifest lacks token_lengths; prepare the corpus again")
    broken(without("index.crc32"), r"manifest.json: the manifest lacks index\[0\].crc32; prepare the corpus again")
    broken(older_format, "format 'prepared-training-corpus/1', this code reads 'prepared-training-corpus/3'; "
                         "prepare it again \\(python -m scripts.prepare_data\\)")


def changed_index(out: str, tmp_path, name: str, change) -> str:
    """A copy of the corpus `out` whose index/<name>.npy went through change(array) in place (same size)."""
    copy = str(tmp_path / f"changed-{name}")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(out, copy)
    array = np.load(os.path.join(copy, "index", name + ".npy"), mmap_mode="r+")
    change(array)
    array.flush()
    return copy


def _seven(a):
    a[:] = 7


def _one_row_to_the_other_source(a):
    assert a[0] == 0
    a[0] = 1


def _times_1000(a):
    a[:] = a * 1000


def _shorter_query_than_any(a):  # still a valid key, outside the range the manifest records
    a[3] = (a[3] >> 32 << 32) | 1


def _backwards(a):
    a[4], a[5] = a[5], a[4]


def _one_bit(a):
    a[5] ^= 1


@pytest.mark.parametrize("name, change, message", [
    ("source", _seven, r"index/source.npy row 0: source id 7, but the manifest has 2 source\(s\)"),
    ("source", _one_row_to_the_other_source, r"index/source.npy gives 95 rows to source 0 \(\S+train.jsonl\), the "
                                             "manifest 96"),
    ("length_keys", _times_1000, r"index/length_keys.npy row 0: key \d+ decodes to \d+ query and \d+ passage "
                                 r"tokens; the corpus allows query ≤ 16 and passage ≤ 24"),
    ("length_keys", _shorter_query_than_any, r"index/length_keys.npy spans \[1, \d+\] query and .*, the manifest "
                                             r"records \[[2-9]\d*, "),
    ("key_offsets", _backwards, r"index/key_offsets.npy row 4: -\d+ hashes of the query and positives"),
    ("scored", _seven, r"index/scored.npy row 0: 7, not two flag bits")])
def test_index_arrays_that_are_not_what_prepare_wrote_are_refused_at_open(corpus, tmp_path, name, change, message):
    """Issue 25: source ids all 7 trained with exit 0, length keys × 1000 were accepted. Each change keeps the
    file's size, so only a look at the values can see it."""
    assert len(PreparedCorpus(changed_index(corpus, tmp_path, name, lambda a: None))) == 176  # precondition
    with pytest.raises(DataError, match=message + ".*; prepare the corpus again"):
        PreparedCorpus(changed_index(corpus, tmp_path, name, change))


def test_changes_only_a_checksum_sees_are_found_on_request(corpus, tmp_path):
    """A changed text hash, or a value changed within its range, passes the checks at open (they read values, not
    every byte); verify_shards(contents=True) compares every file's CRC-32."""
    from data.prepared import verify_shards

    verify_shards(corpus, PreparedCorpus(corpus).manifest, contents=True)  # precondition: the corpus passes
    def another_key_in_range(a):
        a[4] = a.max() if a[4] != a.max() else a.min()

    for name, change in (("key_hashes", _one_bit), ("length_keys", another_key_in_range)):
        changed = changed_index(corpus, tmp_path, name, change)
        with pytest.raises(DataError, match=rf"index file index/{name}.npy has CRC-32 \w+, the manifest says \w+ "
                                            r"\(changed in place since it was prepared\)"):
            verify_shards(changed, PreparedCorpus(changed).manifest, contents=True)


def test_train_py_refuses_source_ids_outside_the_manifest(run, corpus, tmp_path):
    """Issue 25: with --same-dataset-batches the run blamed the wrong file ('... has no rows'); now it stops before
    training, naming the index file."""
    model, _, _ = run
    args = dict(model=model, group_size=3, batch_size=4, max_steps=1, same_dataset_batches=True, query_max_len=16,
                passage_max_len=24, report_to="none")
    train.main(train.TrainConfig.of(train_data=[changed_index(corpus, tmp_path, "source", lambda a: None)],
                                 output_dir=str(tmp_path / "o1"), **args))  # precondition: an unchanged copy trains
    with pytest.raises(SystemExit, match=r"data error: .*index/source.npy row 0: source id 7"):
        train.main(train.TrainConfig.of(train_data=[changed_index(corpus, tmp_path, "source", _seven)],
                                     output_dir=str(tmp_path / "o2"), **args))


def damage(file: str, text: str, at: int = 0) -> None:
    """Overwrite byte `at` of the one place `text` is stored in `file` with 0xff (never valid in UTF-8): the file
    keeps its size, as with a bit flipped on disk."""
    data = bytearray(open(file, "rb").read())
    stored = text.encode()
    assert data.count(stored) == 1, text
    data[data.index(stored) + at] = 0xFF
    open(file, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def one_shard(run, tmp_path_factory):
    """A corpus of the 96-row file alone, in one shard -> (folder, its examples)."""
    model, inputs, _ = run
    out = str(tmp_path_factory.mktemp("one-shard") / "c")
    prepare([inputs[0]], model, out, query_max_len=16, passage_max_len=24, **QUIET)
    return out, load_examples([inputs[0]])[0]


def test_a_shard_damaged_in_place_names_the_shard_and_row(one_shard, tmp_path):
    """Issue 25: bytes flipped inside a shard failed after step 1 with a UnicodeDecodeError naming no file."""
    from data.prepared import verify_shards

    out, examples = one_shard
    copy = str(tmp_path / "c")
    shutil.copytree(out, copy)
    (shard,) = [os.path.join(copy, s["file"]) for s in PreparedCorpus(copy).manifest["shards"]]
    corpus = PreparedCorpus(copy)
    assert corpus.row(40)["query"] == examples[40].query  # precondition: the row reads before the damage
    damage(shard, examples[40].query)
    corpus = PreparedCorpus(copy)  # opens: same size, and the index does not depend on the texts
    with pytest.raises(DataError, match=rf"^{shard}: row 40 of the corpus \({examples[40].source}\) cannot be "
                                        r"decoded \(UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff.*\); "
                                        "the shard was changed after it was written"):
        corpus.row(40)
    assert corpus.row(41)["query"] == examples[41].query  # the other rows of its record batch still read
    with pytest.raises(DataError, match=r"shard shards/\S+ has CRC-32 \w+, the manifest says \w+ \(changed in place"):
        verify_shards(copy, corpus.manifest, contents=True)  # on request: a read of every shard
    verify_shards(out, corpus.manifest, contents=True)  # precondition: the undamaged corpus passes


def test_damaged_offsets_in_a_shard_are_a_data_error_not_a_crash(one_shard, tmp_path):
    """pyarrow aborts the whole process (std::length_error) when it decodes a string whose offsets run backwards;
    the row read checks its own offsets first. Run in a child process, so that a crash cannot take pytest along."""
    import subprocess
    import sys

    from tests.helpers import REPO

    out, examples = one_shard
    copy = str(tmp_path / "c")
    shutil.copytree(out, copy)
    (shard,) = [os.path.join(copy, s["file"]) for s in PreparedCorpus(copy).manifest["shards"]]
    # the query column's offsets: int32, one more than the rows, each the UTF-8 bytes of the queries before it
    offsets = np.cumsum([0] + [len(ex.query.encode()) for ex in examples]).astype(np.int32)
    data = bytearray(open(shard, "rb").read())
    assert data.count(offsets.tobytes()) == 1
    at = data.index(offsets.tobytes()) + 4 * 41  # offsets[41]: the end of row 40, the start of row 41
    read = ("import sys; from data.prepared import PreparedCorpus; "
            "print(PreparedCorpus(sys.argv[1]).row(int(sys.argv[2]))['query'])")

    def row(i):
        return subprocess.run([sys.executable, "-c", read, copy, str(i)], cwd=REPO, capture_output=True, text=True)

    assert row(40).stdout.strip() == examples[40].query  # precondition: the read works before the damage
    data[at:at + 4] = np.int32(offsets[40] - 5).tobytes()  # row 40 would end 5 bytes before it starts
    open(shard, "wb").write(bytes(data))
    done = row(40)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert f"DataError: {shard}: row 40 of the corpus ({examples[40].source}) cannot be decoded" in done.stderr
    done = row(10)  # another row of the same record batch: the damaged row is named all the same
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert f"{shard}: row 40 of the corpus ({examples[40].source}) cannot be decoded" in done.stderr
    assert "found reading row 10 from the same record batch" in done.stderr


@pytest.mark.parametrize("workers", [0, 1])
def test_train_py_on_a_damaged_shard_stops_with_the_shards_name(run, one_shard, tmp_path, workers):
    model = run[0]
    out, examples = one_shard
    copy = str(tmp_path / "c")
    shutil.copytree(out, copy)
    args = dict(model=model, group_size=3, batch_size=4, max_steps=1, query_max_len=16, passage_max_len=24,
                report_to="none", num_workers=workers)
    train.main(train.TrainConfig.of(train_data=[copy], output_dir=str(tmp_path / "o1"), **args))  # precondition
    (shard,) = [os.path.join(copy, s["file"]) for s in PreparedCorpus(copy).manifest["shards"]]
    for ex in {ex.query: ex for ex in examples}.values():  # every row's query: the first batch meets one
        damage(shard, ex.query)
    with pytest.raises(SystemExit, match=rf"data error: {shard}: row \d+ of the corpus \(\S+:\d+\) cannot be decoded"):
        train.main(train.TrainConfig.of(train_data=[copy], output_dir=str(tmp_path / "o2"), **args))


def test_a_folder_source_keeps_each_rows_file_and_line(run, tmp_path):
    """A folder is one source, read file by file: a prepared row names its file in the folder and its line, as the
    raw rows do (before, `datasets` numbered the folder's rows as one table)."""
    model, _, _ = run
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"query": f"q{i}", "pos": [f"p{i}"]} for i in range(3)])
    write_jsonl(folder / "b.jsonl", [{"query": f"r{i}", "pos": [f"s{i}"], "neg": [f"t{i}"]} for i in range(4)])
    examples, _ = load_examples([str(folder)])
    assert [ex.source for ex in examples] == [f"{folder}/a.jsonl:{i}" for i in (1, 2, 3)] + [
        f"{folder}/b.jsonl:{i}" for i in (1, 2, 3, 4)]
    out = str(tmp_path / "c")
    prepare([str(folder)], model, out, **QUIET)
    corpus = PreparedCorpus(out)
    assert [corpus.where(i) for i in range(len(corpus))] == [ex.source for ex in examples]
    assert PreparedGroupedDataset(corpus, 1).example(4).source == examples[4].source
    # an empty folder (datasets' EmptyDatasetError before) and an input given twice are refused, nothing written
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"^{tmp_path}/empty: the folder holds no data files"):
        prepare([str(tmp_path / "empty")], model, str(tmp_path / "d"), **QUIET)
    with pytest.raises(DataError, match=f"^{folder}: given twice"):
        prepare([str(folder), str(folder)], model, str(tmp_path / "d"), **QUIET)
    assert sorted(os.listdir(tmp_path)) == ["c", "empty", "in"]


def test_a_corpus_prepared_for_other_settings_is_refused_with_the_differences(run, corpus, tmp_path):
    model, inputs, _ = run
    args = dict(model=model, train_data=[corpus], group_size=3, batch_size=4, max_steps=1, report_to="none",
                query_max_len=16, passage_max_len=24, output_dir=str(tmp_path / "o"))
    train.main(train.TrainConfig.of(**args))  # precondition: the matching settings train
    with pytest.raises(SystemExit) as e:
        train.main(train.TrainConfig.of(**{**args, "passage_max_len": 32, "query_prompt": "query: ",
                                        "output_dir": str(tmp_path / "o2")}))
    # through train.py: the fields until train.py shows its flags (issue 22: train.py maps OptionError.fields)
    assert "--passage-max-len: 24 in the corpus, 32 in this run" in str(e.value)
    assert "--query-prompt: '' in the corpus, 'query: ' in this run" in str(e.value)
    with pytest.raises(SystemExit, match="rows: query/passage groups in the corpus, nli for this loss"):
        train.main(train.TrainConfig.of(**{**args, "loss": "softmax", "output_dir": str(tmp_path / "o3")}))
    # the library call: an OptionError naming the settings' fields
    other_settings = EncoderSettings(query_max_len=16, passage_max_len=32, query_prompt="query: ")
    with pytest.raises(OptionError) as e:
        PreparedCorpus(corpus).check_settings(AutoTokenizer.from_pretrained(model), other_settings, RowKind.GROUPS)
    assert e.value.fields == ("passage_max_len", "query_prompt") and "--" not in str(e.value)
    assert "passage_max_len: 24 in the corpus, 32 in this run" in str(e.value)
    with pytest.raises(DataError, match="rows: query/passage groups in the corpus, nli for this loss"):
        PreparedCorpus(corpus).check_settings(AutoTokenizer.from_pretrained(model), SETTINGS, RowKind.NLI_PAIRS)
    # another tokenizer: the same folder with one more token
    other = str(tmp_path / "other-tokenizer")
    tok = AutoTokenizer.from_pretrained(model)
    tok.add_tokens(["zzzunseenword"])
    tok.save_pretrained(other)
    with pytest.raises(DataError, match=r"tokenizer \(fingerprint\): '\w+' in the corpus, '\w+' in this run"):
        PreparedCorpus(corpus).check_settings(AutoTokenizer.from_pretrained(other), SETTINGS, RowKind.GROUPS)
    for rows in (RowKind.GROUPS, RowKind.SCORED_GROUPS):  # precondition: the same tokenizer and settings pass
        PreparedCorpus(corpus).check_settings(AutoTokenizer.from_pretrained(model), SETTINGS, rows)


def test_prepared_corpus_is_the_only_train_data_and_weights_count_its_sources(run, corpus):
    model, inputs, _ = run
    with pytest.raises(SystemExit, match="a prepared corpus must be the only --train-data"):
        train.main(train.TrainConfig.of(model=model, train_data=[corpus, inputs[0]]))
    with pytest.raises(SystemExit, match="3 weights for 2 training files"):
        train.main(train.TrainConfig.of(model=model, train_data=[corpus], same_dataset_batches=True,
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
    datasets.Dataset.from_list([{"query": ex.query, "pos": ex.pos, "neg": ex.neg}
                                for ex in examples]).save_to_disk(folder)
    a = prepare([inputs[1]], model, str(tmp_path / "a"), **QUIET)
    b = prepare([folder], model, str(tmp_path / "b"), **QUIET)
    assert a["content_digest"] == b["content_digest"] and a["rows"] == b["rows"] == 80


def test_train_py_says_when_preparing_would_pay():
    from data.prepared import PREPARE_HINT_ROWS, prepare_hint

    assert prepare_hint(PREPARE_HINT_ROWS - 1, ["a.jsonl"]) is None
    hint = prepare_hint(PREPARE_HINT_ROWS, ["a.jsonl", "b.tsv"])
    assert "python -m scripts.prepare_data --input a.jsonl b.tsv" in hint and "then train on DIR" in hint
    assert "--model" not in hint and "--train-data" not in hint  # a library note names no train.py flag
