"""data/rows.py: one row schema. The prepared Arrow schema derived from `Example` is the one corpora were written
with, the content digest is the value it always was (old corpora and checkpoints stay valid), and a corpus prepared
before the schema was derived is still read, row for row, like its raw files."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest

from data.examples import load_examples
from data.groups import GroupedDataset, PreparedGroupedDataset
from data.prepared import FORMAT, PreparedCorpus, row_schema, shard_features, shard_schema
from data.row_kind import RowKind
from data.rows import CONTENT_FIELDS, ITEM_FIELDS, Digest, Example, examples_digest
from data.tables import DataError
from tests.helpers import REPO, minilm_path

OLD = REPO / "tests" / "fixtures" / "prepared-v3"

# the shard layout of prepared-training-corpus/3, as data/prepared.py wrote it out by hand before issue 22
V3_ROW = [("query", pa.string()), ("pos", pa.list_(pa.string())), ("neg", pa.list_(pa.string())),
          ("pos_scores", pa.list_(pa.float64())), ("neg_scores", pa.list_(pa.float64())), ("prompt", pa.string()),
          ("label", pa.float64()), ("source", pa.int32()), ("file", pa.int32()), ("line", pa.int64())]
V3_ANNOTATIONS = [("query_len", pa.int32()), ("passage_len", pa.int32()), ("key_hashes", pa.list_(pa.int64())),
                  ("neg_hashes", pa.list_(pa.int64()))]
V3_IDS = [("query_ids", pa.list_(pa.int32())), ("passage_ids", pa.list_(pa.list_(pa.int32())))]


def test_the_derived_arrow_schema_is_the_v3_layout():
    assert row_schema().equals(pa.schema(V3_ROW))
    assert shard_schema(False).equals(pa.schema(V3_ROW + V3_ANNOTATIONS))
    assert shard_schema(True).equals(pa.schema(V3_ROW + V3_ANNOTATIONS + V3_IDS))
    for pretokenize in (False, True):  # the datasets Features prepare writes the shards with
        assert shard_features(pretokenize).arrow_schema.remove_metadata().equals(shard_schema(pretokenize))
    # and the shards an old prepare wrote hold exactly that
    with pa.memory_map(str(OLD / "corpus-v3" / "shards" / "shard-00000.arrow")) as f:
        assert pa.ipc.open_stream(f).schema.remove_metadata().equals(shard_schema(False))
    assert CONTENT_FIELDS == ("query", "pos", "neg", "pos_scores", "neg_scores", "prompt", "label")
    assert ITEM_FIELDS == ("query", "prompt", "label")


def test_the_content_digest_is_pinned():
    """Values computed with the code before issue 22 (examples_digest in data/examples.py, a copy in prepared.py)."""
    rows = [Example("q1", ["p1", "p2"], ["n1"], [0.5, 0.25], [-1.0], "query: ", None, source="a:1", file_index=0),
            Example("질문", ["답"], [], None, None, None, 2, source="b:3", file_index=1),
            Example("s1", ["s2"], [], None, None, None, 0.8, file_index=1),
            Example("q \"x\"\t", ["é"], ["n", "m"], None, None, "", None, file_index=2)]
    assert examples_digest(rows) == "968a08e5bc4f97ff"
    assert examples_digest(rows[:1]) == "16bb6409be86921c" and examples_digest([]) == "e3b0c44298fc1c14"
    streamed = Digest()
    for ex in rows:
        streamed.update(ex)
    assert streamed.hexdigest() == "968a08e5bc4f97ff"
    rows[2].label = 0.7  # the check can fail: any content change moves it
    assert examples_digest(rows) != "968a08e5bc4f97ff"


@pytest.fixture
def old(tmp_path):
    """The fixture corpora, copied (a test may change them), opened from their own folder (relative sources)."""
    shutil.copytree(OLD, tmp_path / "v3")
    cwd = os.getcwd()
    os.chdir(tmp_path / "v3")
    yield tmp_path / "v3"
    os.chdir(cwd)


def test_a_corpus_prepared_before_the_schema_is_read_like_its_raw_files(old):
    from transformers import AutoTokenizer

    from models.bi_encoder import EncoderSettings

    corpus = PreparedCorpus("corpus-v3")
    assert corpus.manifest["format"] == FORMAT and "row_fields" not in corpus.manifest
    examples, _ = load_examples(["rows.jsonl", "nli.tsv"])
    assert corpus.content_digest == examples_digest(examples) == "0c11624b93836481"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    settings = EncoderSettings(query_max_len=16, passage_max_len=24)
    corpus.check_settings(tokenizer, settings, RowKind.SCORED_GROUPS)
    raw, mapped = GroupedDataset(examples, 2, seed=3), PreparedGroupedDataset(corpus, 2, seed=3)
    assert [mapped.example(i) for i in range(len(examples))] == examples
    own = [i for i, ex in enumerate(examples) if ex.neg]  # rows without a negative of their own draw a random one
    assert len(own) == 5 and [mapped[i] for i in own] == [raw[i] for i in own]
    # its teacher scores and negative counts are checked like raw rows'
    with pytest.raises(DataError, match="rows.jsonl:3: field 'pos_scores'/'neg_scores' missing") as prepared_error:
        PreparedGroupedDataset(corpus, 2, rows=RowKind.SCORED_GROUPS)
    with pytest.raises(DataError) as raw_error:
        GroupedDataset(examples, 2, rows=RowKind.SCORED_GROUPS)
    assert str(prepared_error.value) == str(raw_error.value)

    nli = PreparedCorpus("corpus-v3-nli")
    pairs, _ = load_examples(["nli.tsv"], RowKind.NLI_PAIRS)
    nli.check_settings(tokenizer, settings, RowKind.NLI_PAIRS)
    items = PreparedGroupedDataset(nli, 1, rows=RowKind.NLI_PAIRS)
    assert [items.example(i) for i in range(len(pairs))] == pairs  # labels are class ids again
    assert [items[i]["label"] for i in range(len(pairs))] == [0, 2, 0, 0, 2] and "query_ids" in items[0]


def test_a_corpus_of_another_format_or_without_a_field_rows_have_now_is_refused(old):
    PreparedCorpus("corpus-v3")  # precondition: it opens
    manifest = json.loads((old / "corpus-v3" / "manifest.json").read_text())
    (old / "corpus-v3" / "manifest.json").write_text(json.dumps({**manifest, "format": "prepared-training-corpus/2"}))
    with pytest.raises(DataError, match=r"format 'prepared-training-corpus/2', this code reads 'prepared-training-"
                                        r"corpus/3'; prepare it again \(python -m scripts.prepare_data\)"):
        PreparedCorpus("corpus-v3")
    # a corpus written before a field was added to Example: named, with the command that prepares it again
    (old / "corpus-v3" / "manifest.json").write_text(json.dumps({**manifest, "row_fields": list(CONTENT_FIELDS[:-1])}))
    with pytest.raises(DataError, match=r"prepared without the field\(s\) label .*python -m scripts.prepare_data"):
        PreparedCorpus("corpus-v3")


def test_a_new_corpus_records_its_row_fields(old):
    from data.prepared import prepare

    manifest = prepare(["rows.jsonl", "nli.tsv"], minilm_path(), "new", query_max_len=16, passage_max_len=24,
                       progress=False, log=lambda *a: None)
    assert manifest["row_fields"] == list(CONTENT_FIELDS) and manifest["pair_kind"] is None
    old_manifest = PreparedCorpus("corpus-v3").manifest
    assert manifest["content_digest"] == old_manifest["content_digest"]  # the same rows, the same digest
    for name in ("length_keys", "source", "key_hashes", "neg_hashes", "scored", "neg_count", "can_collide"):
        assert np.array_equal(PreparedCorpus("new").array(name), PreparedCorpus("corpus-v3").array(name)), name
