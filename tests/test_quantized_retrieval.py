"""Truncated (Matryoshka) and quantized evaluation: `BiEncoder.encode(truncate_dim=)`, evaluation/quantization.py,
evaluation/variants.py and evaluate.py's --truncate-dim / --quantize / --rescore-multiplier.

References are written plainly (loops, float64); the tiny random BERT of tests/helpers.py keeps the CLI runs to
seconds. The real-data checks need ../shared/data and the packaged MiniLM (SciFact's is `slow`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from evaluation.quantization import (
    binary_first_stage,
    dequantize_int8,
    int8_ranges,
    pack_signs,
    quantize_int8,
    quantized_search,
    quantized_view,
    unpack_signs,
)
from models.bi_encoder import BiEncoder
from tests.helpers import DATA, minilm_path, needs_data, tiny_bi_encoder
from tests.test_evaluation import forbid_model_loading, run_cli_in_process, write_beir, write_sts

VARIANT_FLAGS = ["--truncate-dim", "32", "16", "--quantize", "int8", "binary", "--rescore-multiplier", "2"]


@pytest.fixture(scope="module")
def tokenizer_folder() -> str:
    return minilm_path()


@pytest.fixture
def tiny_tasks(tmp_path) -> list[str]:
    """--local-task values: a 40-document BEIR folder (4 judged queries) and a 5-pair STS file."""
    topics = ["cats purr and sleep", "stock markets fell sharply", "the violin concerto premiered", "rain is expected"]
    corpus = [{"_id": f"d{i}", "title": "", "text": f"{topics[i % 4]} note {i}"} for i in range(40)]
    queries = [{"_id": f"q{i}", "text": f"what about {topics[i]}?"} for i in range(4)]
    qrels = [(f"q{i}", f"d{j}", 1) for i in range(4) for j in range(40) if j % 4 == i]
    sts = write_sts(tmp_path / "sts.tsv", ("a bird sings", "a bird chirps", 4), ("the car is red", "stocks rose", 0))
    return [f"retrieval={write_beir(tmp_path / 'tiny', corpus, queries, qrels)}", f"sts={sts}"]


@pytest.fixture
def tiny_model(tokenizer_folder, tmp_path) -> str:
    folder = tmp_path / "model"
    tiny_bi_encoder(tokenizer_folder).save(str(folder))  # hidden size 64
    return str(folder)


def cli(model: str, tasks: list[str], out, *extra: str) -> dict:
    return run_cli_in_process(["--model", model, "--local-task", *tasks, "--device", "cpu", "--output-dir", str(out),
                               *extra])


# ---------------------------------------------------------------- truncation
def test_truncated_encode_is_the_full_encode_cut_and_renormalised(tokenizer_folder):
    texts = ["a cat sleeps on the mat", "markets fell", "the violin concerto premiered in Vienna", "rain"]
    for normalize in (True, False):
        model = tiny_bi_encoder(tokenizer_folder, normalize=normalize)
        full = model.encode(texts).double()  # [4, 64]
        cut = model.encode(texts, truncate_dim=16)
        assert cut.shape == (4, 16) and cut.dtype == torch.float32
        expected = full[:, :16].clone()
        if normalize:
            for row in expected:
                row /= math.sqrt(sum(float(v) ** 2 for v in row))
            assert all(float(n) < 0.99 for n in full[:, :16].norm(dim=1))  # control: the cut alone is not unit-length
        torch.testing.assert_close(cut.double(), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.encode(texts, truncate_dim=64).double(), full, atol=0, rtol=0)
    for bad in (0, 65):
        with pytest.raises(ValueError, match=f"truncate_dim {bad}: must be from 1 to the model's dimension 64"):
            model.encode(texts, truncate_dim=bad)


# ---------------------------------------------------------------- codes
def test_binary_codes_take_ceil_d_over_8_bytes_and_hamming_counts_sign_disagreements():
    rng = np.random.default_rng(0)
    for dim in (13, 16, 64):
        queries, corpus = rng.standard_normal((5, dim)), rng.standard_normal((30, dim))
        query_bits, corpus_bits = pack_signs(queries), pack_signs(corpus)
        assert query_bits.shape == (5, -(-dim // 8)) and corpus_bits.shape == (30, -(-dim // 8))
        assert query_bits.dtype == np.uint8
        distances, indices = binary_first_stage(query_bits, corpus_bits, n=30)
        for i in range(5):
            assert sorted(indices[i]) == list(range(30)) and list(distances[i]) == sorted(distances[i])
            for rank in range(30):
                j = indices[i, rank]
                disagreements = sum(1 for t in range(dim) if (queries[i, t] > 0) != (corpus[j, t] > 0))
                assert distances[i, rank] == disagreements, (dim, i, j)
        assert np.array_equal(unpack_signs(query_bits, dim), np.where(queries > 0, 1.0, -1.0))


def st_int8_by_hand(x: np.ndarray, calibration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sentence-transformers' quantize_embeddings(x, "int8", calibration_embeddings=calibration) and its
    _dequantize_embeddings, transcribed with Python floats (float64): -> (codes, dequantized)."""
    dims = range(x.shape[1])
    low = [min(float(row[j]) for row in calibration) for j in dims]
    high = [max(float(row[j]) for row in calibration) for j in dims]
    steps = [(high[j] - low[j]) / 255 or 1.0 for j in dims]
    codes = np.zeros(x.shape, dtype=np.int64)
    dequantized = np.zeros(x.shape)
    for i, row in enumerate(x):
        for j in dims:
            codes[i, j] = min(max(math.floor((float(row[j]) - low[j]) / steps[j]), 0), 255) - 128
            dequantized[i, j] = (codes[i, j] + 128) * steps[j] + low[j]
    return codes, dequantized


def test_int8_matches_a_float64_transcription_of_sentence_transformers():
    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((200, 24))
    calibration[:, 5] = 0.25  # a constant dimension: step 0 becomes 1
    queries = 1.5 * rng.standard_normal((20, 24))  # partly outside the ranges: clipped to the end buckets
    ranges = int8_ranges(calibration)
    for x in (calibration, queries):
        codes = quantize_int8(x, ranges)
        expected_codes, expected_dequantized = st_int8_by_hand(x, calibration)
        assert codes.dtype == np.int8 and np.array_equal(codes, expected_codes)
        np.testing.assert_allclose(dequantize_int8(codes, ranges), expected_dequantized, rtol=1e-15, atol=1e-15)
    assert (quantize_int8(queries, ranges) == -128).any() and (quantize_int8(queries, ranges) == 127).any()

    # and the library itself, which computes in float32: a value within float32 rounding of a bucket edge may land
    # one bucket apart, nothing more
    quantization = pytest.importorskip("sentence_transformers.quantization")
    x32, calibration32 = queries.astype(np.float32), calibration.astype(np.float32)
    theirs = quantization.quantize_embeddings(x32, "int8", calibration_embeddings=calibration32).astype(int)
    ours = quantize_int8(x32, int8_ranges(calibration32)).astype(int)
    assert np.abs(theirs - ours).max() <= 1 and (theirs != ours).mean() < 1e-2


def test_quantized_pairs_are_dequantized_int8_or_signs_whose_cosine_is_hamming_similarity():
    rng = np.random.default_rng(2)
    x, calibration = rng.standard_normal((8, 20)), rng.standard_normal((50, 20))
    _, expected = st_int8_by_hand(x, calibration)
    np.testing.assert_allclose(quantized_view(x, "int8", calibration), expected, rtol=1e-6, atol=1e-6)
    signs = quantized_view(x, "binary", calibration).astype(np.float64)
    for a in range(8):
        for b in range(8):
            hamming = sum(1 for t in range(20) if (x[a, t] > 0) != (x[b, t] > 0))
            cosine = signs[a] @ signs[b] / (np.linalg.norm(signs[a]) * np.linalg.norm(signs[b]))
            assert cosine == pytest.approx(1 - 2 * hamming / 20, abs=1e-12)


# ---------------------------------------------------------------- search and rescoring
def float_against_dequantized(queries, corpus, precision) -> list[list[int]]:
    """Every query's ranking of the whole corpus by float query · dequantized (int8) / ±1 (binary) vector."""
    if precision == "int8":
        _, vectors = st_int8_by_hand(corpus, corpus)
    else:
        vectors = np.array([[1.0 if v > 0 else -1.0 for v in row] for row in corpus])
    return [sorted(range(len(corpus)), key=lambda j: -float(q @ vectors[j])) for q in queries]


def test_rescoring_every_candidate_ranks_as_the_float_query_against_the_dequantized_corpus():
    rng = np.random.default_rng(3)
    queries, corpus = rng.standard_normal((6, 32)), rng.standard_normal((50, 32))
    for precision in ("int8", "binary"):
        expected = float_against_dequantized(queries, corpus, precision)
        for top_k, multiplier in ((50, 1), (5, 10), (5, 50), (200, 1)):  # k·multiplier ≥ the corpus size
            scores, indices = quantized_search(queries, corpus, precision, top_k, multiplier)
            assert indices.tolist() == [ranking[:top_k] for ranking in expected], (precision, top_k, multiplier)
            assert np.all(np.diff(scores, axis=1) <= 0)
        _, first_stage = quantized_search(queries, corpus, precision, 50)  # control: the codes alone rank otherwise
        assert first_stage.tolist() != expected, precision
        # k·multiplier < the corpus size: the first stage's top 6, re-sorted by the float query, best 3 kept
        _, rescored = quantized_search(queries, corpus, precision, 3, 2)
        for i, ranking in enumerate(expected):
            assert rescored[i].tolist() == [j for j in ranking if j in set(first_stage[i, :6])][:3]


# ---------------------------------------------------------------- evaluate.py
def test_summary_retention_is_the_score_over_the_float32_score(tiny_model, tiny_tasks, tmp_path, capsys):
    plain = cli(tiny_model, tiny_tasks, tmp_path / "plain")
    summary = cli(tiny_model, tiny_tasks, tmp_path / "variants", *VARIANT_FLAGS)
    table = capsys.readouterr().out
    assert any(line.startswith("task ") and line.endswith("retention") for line in table.splitlines())
    revision = next((tmp_path / "variants" / "results").glob("*/*"))
    for name, entry in summary.items():
        assert entry["main_score"] == pytest.approx(plain[name]["main_score"], abs=1e-6)  # the cache changes nothing
        kinds = {(v["dim"], v["precision"], v.get("rescore_multiplier")) for v in entry["variants"]}
        rescored = [None, 2] if name == "tiny" else [None]  # rescoring is retrieval's
        assert kinds == {(32, "float32", None), (16, "float32", None)} | {
            (d, p, m) for d in (64, 32, 16) for p in ("int8", "binary") for m in rescored}
        for variant in entry["variants"]:
            assert variant["retention"] == variant["main_score"] / entry["main_score"]
            assert f"{100 * variant['retention']:.2f}%" in table
            experiment = "__".join(f"{k}_{v}" for k, v in sorted({
                "embed_dim": variant["dim"] if variant["dim"] != 64 else None,
                "quantize": variant["precision"] if variant["precision"] != "float32" else None,
                "rescore_multiplier": variant.get("rescore_multiplier")}.items()) if v is not None)
            saved = json.loads((revision / "experiments" / experiment / f"{name}.json").read_text())
            # rounded in the saved file
            assert saved["scores"]["test"][0]["main_score"] == pytest.approx(variant["main_score"], abs=1e-6)


def test_one_encode_per_run_however_many_variants(tiny_model, tiny_tasks, tmp_path, monkeypatch):
    calls = []
    original = BiEncoder.encode

    def counting(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(BiEncoder, "encode", counting)
    cli(tiny_model, tiny_tasks, tmp_path / "plain")
    plain, calls[:] = list(calls), []
    cli(tiny_model, tiny_tasks, tmp_path / "variants", *VARIANT_FLAGS, "--truncate-dim", "8", "4")
    assert sorted(calls) == sorted(plain) == [4, 5, 5, 40]  # queries, both STS columns, corpus: once each


def test_bad_variant_options_stop_at_start(tiny_model, tiny_tasks, tmp_path, monkeypatch, capsys):
    forbid_model_loading(monkeypatch)
    (tmp_path / "clf").mkdir()
    for split in ("train", "test"):
        (tmp_path / "clf" / f"{split}.csv").write_text("text,label\na cat,x\na dog,y\n")
    (tmp_path / "clusters.tsv").write_text("text\tlabel\na cat\tx\na dog\ty\n")
    out = tmp_path / "out"
    cases = [
        (["--truncate-dim", "0"], "--truncate-dim 0: must be ≥ 1"),
        (["--truncate-dim", "32", "-8"], "--truncate-dim -8: must be ≥ 1"),
        (["--truncate-dim", "65"], "error: --truncate-dim 65: more than the model's 64 dimensions"),
        (["--truncate-dim", "64"], "--truncate-dim 64: the model's full dimension, which is always scored"),
        (["--truncate-dim", "32", "16", "32"], "--truncate-dim 32: given twice"),
        (["--quantize", "int8", "binary", "int8"], "--quantize int8: given twice"),
        (["--quantize", "int4"], "argument --quantize: invalid choice: 'int4'"),
        (["--quantize", "binary", "--rescore-multiplier", "0"], "--rescore-multiplier 0: must be ≥ 1"),
        (["--rescore-multiplier", "4"], "--rescore-multiplier 4: rescores the search of --quantize, which is not set"),
        (["--quantize", "int8", "--local-task", f"classification={tmp_path / 'clf'}"],
         "error: --quantize int8: scores Retrieval and STS tasks only; it has no meaning for clf (Classification)"),
        (["--quantize", "binary", "--local-task", f"clustering={tmp_path / 'clusters.tsv'}"],
         "it has no meaning for clusters (Clustering)"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as stop:
            cli(tiny_model, tiny_tasks, out, *extra)
        err = capsys.readouterr().err
        assert (stop.value.code not in (0, None)
                and message in f"{stop.value.code}\n{err}"), (extra, stop.value.code, err)
        assert "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------- the packaged MiniLM on real data
@needs_data
def test_korsts_variants_with_minilm(tmp_path):
    summary = run_cli_in_process(["--model", minilm_path(), "--local-task", f"sts={DATA / 'sts' / 'korsts-test.tsv'}",
                                  "--device", "cpu", "--output-dir", str(tmp_path), "--truncate-dim", "128",
                                  "--quantize", "int8", "binary"])
    entry = summary["korsts-test"]
    assert entry["main_score"] == pytest.approx(0.42184, abs=5e-4)  # the published score, as without variants
    retention = {(v["dim"], v["precision"]): v["retention"] for v in entry["variants"]}
    assert set(retention) == {(128, "float32"), (384, "int8"), (384, "binary"), (128, "int8"), (128, "binary")}
    assert retention[384, "int8"] > 0.97 and retention[384, "binary"] > 0.8 and retention[128, "float32"] > 0.8


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the 5,183-document encode passed pytest.ini's 900 s on the shared 2-core CPU under load
@needs_data
def test_scifact_variants_with_minilm(tmp_path):
    summary = run_cli_in_process(["--model", minilm_path(),
                                  "--local-task", f"retrieval={DATA / 'retrieval' / 'scifact'}",
                                  "--device", "cpu", "--output-dir", str(tmp_path), "--truncate-dim", "128",
                                  "--quantize", "int8", "binary", "--rescore-multiplier", "4"])
    entry = summary["scifact"]
    assert entry["main_score"] == pytest.approx(0.64508, abs=2e-3)
    score = {(v["dim"], v["precision"], v.get("rescore_multiplier")): v["main_score"] for v in entry["variants"]}
    print(json.dumps({" ".join(map(str, k)): round(s, 5) for k, s in score.items()}, indent=1))
    assert score[384, "binary", 4] > score[384, "binary", None]  # rescoring recovers what the sign bits lose
    assert (score[384, "int8", 4] > 0.97 * entry["main_score"]
            and score[128, "float32", None] > 0.8 * entry["main_score"])
