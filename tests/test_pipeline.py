"""The data-pipeline scripts (scripts/mine_hard_negatives.py, score_with_teacher.py, split_by_length.py,
filter_consistency.py, prepare_nli.py; shared code in scripts/lib/) on small hand-made data with tiny random models.

Each script runs in-process through its `main(argv)`. References are brute force: every similarity computed
with a plain matrix product, ranks by sorting, teacher scores by one model call per pair.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from pipelines.corpus_search import write_jsonl
from storage.folders import OutputError
from models.bi_encoder import BiEncoder
from scripts import filter_consistency, mine_hard_negatives, prepare_nli, score_with_teacher, split_by_length
from tests.helpers import DATA, minilm_path, needs_data, tiny_bi_encoder

ANIMALS = [("otter", "rivers", "fish and crayfish", 12), ("badger", "woodland setts", "earthworms", 6),
           ("puffin", "sea cliffs", "sand eels", 2), ("hedgehog", "hedgerows", "beetles and slugs", 3),
           ("red fox", "farmland edges", "voles and berries", 7), ("barn owl", "open grassland", "field mice", 3),
           ("grey seal", "rocky shores", "cod and sand eels", 1), ("red squirrel", "conifer forests", "pine seeds", 4),
           ("kingfisher", "slow streams", "minnows", 1), ("pine marten", "old pinewoods", "squirrels and birds", 5)]
CITIES = [("Lyon", "Rhône", "silk weaving"), ("Bristol", "Avon", "suspension bridge"),
          ("Cologne", "Rhine", "cathedral"), ("Seville", "Guadalquivir", "orange trees"),
          ("Porto", "Douro", "fortified wine"), ("Kraków", "Vistula", "cloth hall"),
          ("Budapest", "Danube", "thermal baths"), ("Turin", "Po", "car factories")]


def diet(a):
    return f"The {a[0]} lives near {a[1]} and mostly eats {a[2]}."


def rearing(a):
    return f"Young {a[0]}s stay with their mother for about {a[3]} months before leaving."


def river(c):
    return f"{c[0]} sits on the {c[1]} and is known for its {c[2]}."


def make_rows() -> list[dict]:
    """13 queries over a 29-passage world; one query text also appears as a passage (for the query-text rule)."""
    rows = []
    for a in ANIMALS:
        rows.append({"query": f"What does the {a[0]} eat?", "pos": [diet(a)], "neg": [rearing(a)]})
    for c in CITIES[:2]:
        rows.append({"query": f"Which river runs through {c[0]}?", "pos": [river(c)], "neg": []})
    rows.append({"query": "Which animals eat sand eels?", "pos": [diet(ANIMALS[2]), diet(ANIMALS[6])],
                 "neg": [river(c) for c in CITIES[2:]] + ["What does the otter eat?"]})
    return rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-bi-encoder")
    tiny_bi_encoder().save(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory) -> str:
    """A random one-output BERT cross-encoder with MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-reranker")
    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def train_file(tmp_path) -> str:
    path = tmp_path / "train.jsonl"
    write_jsonl(path, make_rows())
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def corpus_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(t for r in rows for t in r["pos"] + r["neg"]))


def brute_force_scores(model_dir: str, queries: list[str], passages: list[str]) -> torch.Tensor:
    """[Q, P] dot products of the model's embeddings (no prompts are set on the tiny model)."""
    model = BiEncoder.from_pretrained(model_dir)
    q = model.encode(queries, max_length=model.settings.query_max_len)
    p = model.encode(passages, max_length=model.settings.passage_max_len)
    return q @ p.T


def mine(model, train, out, *extra, cache=None):
    argv = ["--model", model, "--input", train, "--output", str(out), *extra]
    argv += ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    return mine_hard_negatives.main(argv)


# ------------------------------------------------------------------ mining
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_mined_negatives_come_from_the_rank_range_and_exclude_positives(tiny_model, train_file, tmp_path, backend):
    start, end, n = 3, 15, 5
    result = mine(tiny_model, train_file, tmp_path / "mined.jsonl", "--range", f"{start}-{end}",
                  "--negative-number", str(n), "--search", backend)
    rows_in, rows_out = make_rows(), read_jsonl(tmp_path / "mined.jsonl")
    assert [r["query"] for r in rows_out] == [r["query"] for r in rows_in]
    assert not any("topped up" in k for k in result["report"])
    corpus = corpus_of(rows_in)
    sims = brute_force_scores(tiny_model, [r["query"] for r in rows_in], corpus)
    for i, row in enumerate(rows_out):
        assert row["pos"] == rows_in[i]["pos"] and "pos_scores" not in row
        assert len(row["neg"]) == n == len(set(row["neg"]))
        assert not set(row["neg"]) & (set(row["pos"]) | {row["query"]})
        ranked = sims[i].sort(descending=True).values  # score at each 0-based rank
        for neg in row["neg"]:
            s = sims[i, corpus.index(neg)]
            assert ranked[end - 1] - 1e-5 <= s <= ranked[start] + 1e-5, (row["query"], neg)


def test_search_backends_agree(tiny_model, train_file, tmp_path):
    for backend in ("faiss", "torch"):
        mine(tiny_model, train_file, tmp_path / f"{backend}.jsonl", "--range", "2-12", "--search", backend)
    assert read_jsonl(tmp_path / "faiss.jsonl") == read_jsonl(tmp_path / "torch.jsonl")


def test_top_up_fills_with_random_passages_never_positives_or_the_query(tiny_model, train_file, tmp_path):
    rows_in = make_rows()
    corpus = corpus_of(rows_in)
    n = len(corpus) - 2  # the otter row has 1 positive, and its query text is a corpus passage
    result = mine(tiny_model, train_file, tmp_path / "mined.jsonl", "--range", "0-3", "--negative-number", str(n))
    rows_out = read_jsonl(tmp_path / "mined.jsonl")
    otter = rows_out[0]
    assert otter["query"] == "What does the otter eat?" and otter["query"] in corpus
    assert sorted(otter["neg"]) == sorted(set(corpus) - set(otter["pos"]) - {otter["query"]})
    for row in rows_out:
        assert len(set(row["neg"])) == len(row["neg"]) and not set(row["neg"]) & (set(row["pos"]) | {row["query"]})
        assert len(row["neg"]) == min(n, len(set(corpus) - set(row["pos"]) - {row["query"]}))
    assert result["report"]["rows topped up with random corpus passages"] == len(rows_out)


def test_max_pos_ratio_drops_candidates_scoring_close_to_the_positive(tiny_model, train_file, tmp_path):
    rows_in = make_rows()
    corpus = corpus_of(rows_in)
    sims = brute_force_scores(tiny_model, [r["query"] for r in rows_in], corpus)
    start, end = 0, len(corpus)
    # Candidate / positive score ratios; a threshold at their median drops about half the candidates.
    ratios, allowed = [], []
    for i, r in enumerate(rows_in):
        pos = min(sims[i, corpus.index(p)].item() for p in r["pos"])
        cands = [j for j, t in enumerate(corpus) if t not in r["pos"] and t != r["query"]]
        ratios += [sims[i, j].item() / pos for j in cands]
        allowed.append((pos, cands))
    ratios.sort()
    ratio = (ratios[len(ratios) // 2] + ratios[len(ratios) // 2 + 1]) / 2  # between two candidates, not on one
    result = mine(tiny_model, train_file, tmp_path / "mined.jsonl", "--range", f"{start}-{end}",
                  "--negative-number", "3", "--max-pos-ratio", str(ratio))
    expected_drops = 0
    for i, row in enumerate(read_jsonl(tmp_path / "mined.jsonl")):
        pos, cands = allowed[i]
        too_close = {corpus[j] for j in cands if sims[i, j].item() > ratio * pos}
        expected_drops += len(too_close)
        if len(cands) - len(too_close) >= 3:  # enough candidates: no random top-up, so the filter must hold
            assert not set(row["neg"]) & too_close
    assert expected_drops > 0
    assert (result["report"]["candidates dropped by --max-pos-ratio (scored too close to the positive)"]
            == expected_drops)


def test_corpus_embeddings_are_cached_and_reused(tiny_model, train_file, tmp_path, monkeypatch):
    encoded: list[int] = []
    original = BiEncoder.encode

    def counting_encode(self, texts, *args, **kwargs):
        encoded.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(BiEncoder, "encode", counting_encode)
    cache = tmp_path / "cache"
    n_corpus, n_queries = len(corpus_of(make_rows())), len(make_rows())
    mine(tiny_model, train_file, tmp_path / "a.jsonl", "--range", "2-12", cache=cache)
    assert sorted(encoded) == sorted([n_corpus, n_queries])
    (cache_file,) = cache.iterdir()
    mtime = cache_file.stat().st_mtime_ns
    encoded.clear()
    mine(tiny_model, train_file, tmp_path / "b.jsonl", "--range", "2-12", "--seed", "7", cache=cache)
    assert encoded == [n_queries]  # the corpus came from the cache
    assert cache_file.stat().st_mtime_ns == mtime and len(list(cache.iterdir())) == 1


def test_output_is_written_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("previous run\n")

    def rows():
        yield {"query": "q", "pos": ["p"]}
        raise RuntimeError("crashed mid-way")

    with pytest.raises(RuntimeError):
        write_jsonl(target, rows(), overwrite=True)
    assert target.read_text() == "previous run\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temporary file left behind
    # a file that is there when the new one is complete is replaced only with overwrite=True (the scripts check
    # before any work too; this catches one that appeared meanwhile)
    with pytest.raises(OutputError, match="out.jsonl: appeared while the tool ran; not replaced"):
        write_jsonl(target, [{"query": "q", "pos": ["p"]}])
    assert target.read_text() == "previous run\n" and os.listdir(tmp_path) == ["out.jsonl"]
    write_jsonl(target, [{"query": "q", "pos": ["p"]}], overwrite=True)
    assert read_jsonl(target) == [{"query": "q", "pos": ["p"]}]


def test_beir_folder_gives_queries_and_positives_from_qrels(tiny_model, tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": a[0].title(), "text": diet(a)} for i, a in enumerate(ANIMALS)]
    write_jsonl(beir / "corpus.jsonl", docs)
    write_jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "What eats fish?"},
                                         {"_id": "q2", "text": "Who eats mice?"}, {"_id": "q3", "text": "not judged"}])
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq1\td1\t0\nq2\td5\t1\n")
    mine_hard_negatives.main(["--model", tiny_model, "--beir", str(beir), "--split", "train", "--range", "1-6",
                              "--negative-number", "3", "--output", str(tmp_path / "m.jsonl"), "--no-cache"])
    rows = read_jsonl(tmp_path / "m.jsonl")
    assert [(r["query"], r["pos"]) for r in rows] == [("What eats fish?", ["Otter " + diet(ANIMALS[0])]),
                                                      ("Who eats mice?", ["Barn Owl " + diet(ANIMALS[5])])]
    assert all(len(r["neg"]) == 3 and r["pos"][0] not in r["neg"] for r in rows)


# ------------------------------------------------------------------ bad input
def test_positives_missing_from_the_corpus_stop_the_run_or_are_counted(tiny_model, train_file, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"text": t} for t in corpus_of(make_rows()) if t != diet(ANIMALS[1])])
    out = tmp_path / "mined.jsonl"
    with pytest.raises(SystemExit,
                       match=r"1 of 13 queries have positives missing from the corpus \(first: .*train.jsonl:2"):
        mine(tiny_model, train_file, out, "--corpus", str(corpus), "--range", "2-10")
    assert not out.exists()
    result = mine(tiny_model, train_file, out, "--corpus", str(corpus), "--range", "2-10", "--skip-missing-positives")
    assert result["rows"] == 12 and result["report"]["rows skipped: positive not in the corpus"] == 1


def test_empty_corpus_is_an_error(tiny_model, train_file, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"text": ""}, {"text": "  "}])
    with pytest.raises(SystemExit, match="the corpus is empty"):
        mine(tiny_model, train_file, tmp_path / "m.jsonl", "--corpus", str(corpus))


def test_range_beyond_the_corpus(tiny_model, train_file, tmp_path):
    out = tmp_path / "m.jsonl"
    with pytest.raises(SystemExit, match="starts at rank 100 but the corpus has only 29 passages"):
        mine(tiny_model, train_file, out, "--range", "100-200")
    assert not out.exists()
    result = mine(tiny_model, train_file, out, "--range", "20-200", "--negative-number", "3")
    assert result["report"]["range end 200 beyond the corpus: searched all 29 passages"] == 1


def test_beir_judgement_of_a_missing_document_is_an_error(tiny_model, tmp_path):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "corpus.jsonl", [{"_id": "d0", "text": diet(ANIMALS[0])}])
    write_jsonl(beir / "queries.jsonl", [{"_id": "q1", "text": "What eats fish?"}])
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    with pytest.raises(SystemExit, match=r"test.tsv:2: corpus-id 'd9' is not in corpus.jsonl"):
        mine_hard_negatives.main(["--model", tiny_model, "--beir", str(beir), "--split", "test",
                                  "--output", str(tmp_path / "m.jsonl")])


def test_mismatched_score_lengths_are_an_error(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0, 2.0], "neg_scores": [0.5]}])
    with pytest.raises(SystemExit, match=r"bad.jsonl:1: field 'pos_scores' has 2 scores but 'pos' has 1 texts"):
        score_with_teacher.main(["--teacher", tiny_model, "--input", str(bad), "--output", str(tmp_path / "o.jsonl")])
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------ teacher scores
def test_cross_encoder_scores_equal_a_direct_model_call(tiny_reranker, train_file, tmp_path):
    out = tmp_path / "scored.jsonl"
    score_with_teacher.main(["--teacher", tiny_reranker, "--input", train_file, "--output", str(out),
                             "--batch-size", "4"])
    model = BertForSequenceClassification.from_pretrained(tiny_reranker).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reranker)
    rows = read_jsonl(out)
    assert len(rows) == len(make_rows())
    for row in rows:
        for key, texts in (("pos_scores", row["pos"]), ("neg_scores", row["neg"])):
            assert len(row[key]) == len(texts)
            for text, got in zip(texts, row[key]):
                with torch.no_grad():
                    want = model(**tokenizer(row["query"], text, return_tensors="pt")).logits[0, 0].item()
                assert got == pytest.approx(want, abs=1e-5)


def test_bi_encoder_teacher_scores_are_embedding_dot_products(tiny_model, train_file, tmp_path):
    out = tmp_path / "scored.jsonl"
    score_with_teacher.main(["--teacher", tiny_model, "--input", train_file, "--output", str(out)])
    rows = read_jsonl(out)
    model = BiEncoder.from_pretrained(tiny_model)
    for row in rows[:3]:
        q = model.encode([row["query"]], max_length=model.settings.query_max_len)
        p = model.encode(row["pos"] + row["neg"])
        assert row["pos_scores"] + row["neg_scores"] == pytest.approx((q @ p.T)[0].tolist(), abs=1e-5)


def test_nan_teacher_output_is_an_error(tiny_reranker, train_file, tmp_path):
    broken = tmp_path / "nan-reranker"
    model = BertForSequenceClassification.from_pretrained(tiny_reranker)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_reranker).save_pretrained(broken)
    out = tmp_path / "scored.jsonl"
    with pytest.raises(SystemExit, match=r"non-finite scores \(NaN/inf\), first on .*train.jsonl:1"):
        score_with_teacher.main(["--teacher", str(broken), "--input", train_file, "--output", str(out)])
    assert not out.exists()


# ------------------------------------------------------------------ split, filter, NLI
def test_split_by_length_puts_each_row_in_its_range(train_file, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    counts = split_by_length.main(["--input", train_file, "--tokenizer", minilm_path(),
                                   "--length-list", "0", "16", "20", "--output-dir", str(tmp_path / "split")])
    expected = {}
    for row in make_rows():
        n = max(len(tokenizer(t)["input_ids"]) for t in [row["query"]] + row["pos"] + row["neg"])
        name = "train_len-0-16.jsonl" if n < 16 else "train_len-16-20.jsonl" if n < 20 else "train_len-20-inf.jsonl"
        expected.setdefault(name, []).append(row)
    assert len(expected) >= 2  # the data really spans several ranges
    assert sorted(os.listdir(tmp_path / "split")) == sorted([*expected, ".written_by.json"])  # + the rule's marker
    for name, rows in expected.items():
        assert read_jsonl(tmp_path / "split" / name) == rows
    assert sum(counts.values()) == len(make_rows())


def test_filter_consistency_keeps_exactly_the_positives_ranked_in_the_top_k(tiny_model, train_file, tmp_path):
    top_k = 4
    result = filter_consistency.main(["--model", tiny_model, "--input", train_file, "--top-k", str(top_k),
                                      "--output", str(tmp_path / "f.jsonl"), "--no-cache"])
    rows_in = make_rows()
    corpus = corpus_of(rows_in)
    sims = brute_force_scores(tiny_model, [r["query"] for r in rows_in], corpus)
    expected = []
    for i, r in enumerate(rows_in):
        kept = []
        for p in r["pos"]:
            rank = sum(sims[i, j].item() > sims[i, corpus.index(p)].item()
                       for j, t in enumerate(corpus) if t not in r["pos"])
            if rank < top_k:
                kept.append(p)
        if kept:
            expected.append({"query": r["query"], "pos": kept, "neg": r["neg"]})
    assert 0 < len(expected) < len(rows_in)  # the filter both keeps and drops on this data
    assert read_jsonl(tmp_path / "f.jsonl") == expected
    assert result["dropped"] == len(rows_in) - len(expected)


def test_filter_consistency_does_not_rank_a_positive_below_its_own_row_s_other_positives(tiny_model, tmp_path):
    query = "What does the otter eat?"
    rows = make_rows()[1:] + [{"query": query, "pos": [query, query + "!"], "neg": []}]  # both near-copies rank 0, 1
    write_jsonl(tmp_path / "in.jsonl", rows)
    filter_consistency.main(["--model", tiny_model, "--input", str(tmp_path / "in.jsonl"), "--top-k", "1",
                             "--output", str(tmp_path / "f.jsonl"), "--no-cache"])
    assert read_jsonl(tmp_path / "f.jsonl")[-1] == rows[-1]


def test_prepare_nli_groups_premises_into_triplets(tmp_path):
    nli = tmp_path / "nli.tsv"
    lines = ["sentence1\tsentence2\tgold_label",
             "A man plays a guitar on stage.\tA man is making music.\tentailment",
             "A man plays a guitar on stage.\tThe man is asleep at home.\tcontradiction",
             "A man plays a guitar on stage.\tThe man is famous.\tneutral",
             "A man plays a guitar on stage.\tSomeone performs.\tentailment",
             "Two dogs run through snow.\tAnimals are outside.\tentailment",
             "A child reads a book.\tA kid is reading.\tentailment",
             "A child reads a book.\tThe child is swimming.\tcontradiction"]
    nli.write_text("\n".join(lines) + "\n")
    prepare_nli.main(["--input", str(nli), "--output", str(tmp_path / "all.jsonl")])
    assert read_jsonl(tmp_path / "all.jsonl") == [
        {"query": "A man plays a guitar on stage.", "pos": ["A man is making music.", "Someone performs."],
         "neg": ["The man is asleep at home."]},
        {"query": "A child reads a book.", "pos": ["A kid is reading."], "neg": ["The child is swimming."]}]
    prepare_nli.main(["--input", str(nli), "--output", str(tmp_path / "first.jsonl"), "--first", "--allow-no-negative"])
    assert [(r["pos"], r["neg"]) for r in read_jsonl(tmp_path / "first.jsonl")] == [
        (["A man is making music."], ["The man is asleep at home."]), (["Animals are outside."], []),
        (["A kid is reading."], ["The child is swimming."])]


@needs_data
def test_prepare_nli_reproduces_the_shared_kornli_triplets(tmp_path):
    prepare_nli.main(["--input", str(DATA / "train" / "kornli-pairs.tsv"), "--output", str(tmp_path / "t.jsonl"),
                      "--first"])
    assert (tmp_path / "t.jsonl").read_bytes() == (DATA / "train" / "kornli-triplets.jsonl").read_bytes()


# ------------------------------------------------------------------ end to end
def test_mine_score_train_end_to_end(tiny_model, tiny_reranker, train_file, tmp_path):
    import train

    mined, scored = tmp_path / "mined.jsonl", tmp_path / "scored.jsonl"
    mine(tiny_model, train_file, mined, "--range", "2-20", "--negative-number", "3", "--max-pos-ratio", "0.99")
    score_with_teacher.main(["--teacher", tiny_reranker, "--input", str(mined), "--output", str(scored)])
    result = train.main(train.TrainConfig.of(model=tiny_model, train_data=[str(scored)], loss="distill", group_size=4,
                                          batch_size=4, max_steps=2, report_to="none", log_steps=1,
                                          output_dir=str(tmp_path / "model")))
    assert result["steps"] == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result["history"])
    assert BiEncoder.from_pretrained(str(tmp_path / "model")).dim == 64


# ------------------------------------------------------------------ outputs: checked before any work
@pytest.fixture
def no_model_loading(monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded although the output is refused")

    for module in (mine_hard_negatives, filter_consistency, score_with_teacher):
        monkeypatch.setattr(module, "load_encoder", must_not_load)


def nli_file(tmp_path) -> str:
    path = tmp_path / "nli.tsv"
    path.write_text("sentence1\tsentence2\tgold_label\nA man eats.\tSomeone eats.\tentailment\n"
                    "A man eats.\tNobody eats.\tcontradiction\n", encoding="utf-8")
    return str(path)


def test_every_output_file_is_checked_before_any_model_loads(tiny_model, train_file, tmp_path, no_model_loading):
    """A folder as --output (IsADirectoryError only after mining), an input as the output, an existing file (silently
    replaced), a parent that is a file: each a one-line error before any model loads, nothing touched."""
    nli = nli_file(tmp_path)
    scripts = {
        "mine_hard_negatives": (mine_hard_negatives, ["--model", tiny_model, "--input", train_file, "--no-cache"]),
        "score_with_teacher": (score_with_teacher, ["--teacher", tiny_model, "--teacher-type", "bi-encoder",
                                                    "--input", train_file]),
        "filter_consistency": (filter_consistency, ["--model", tiny_model, "--input", train_file, "--no-cache"]),
        "prepare_nli": (prepare_nli, ["--input", nli]),
    }
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    existing = tmp_path / "existing.jsonl"
    existing.write_text("someone's rows\n")
    for name, (script, args) in scripts.items():
        source = nli if name == "prepare_nli" else train_file
        cases = [(tmp_path / "a-folder", "is a folder, not a file"),
                 (source, f"is the input --input {source}; writing it would overwrite what the tool reads"),
                 (existing, "exists; pass --overwrite to replace it"),
                 (tmp_path / "a-file" / "out.jsonl", f"{tmp_path / 'a-file'} is a file, so the folder")]
        if name != "prepare_nli":
            cases.append((os.path.join(tiny_model, "out.jsonl"), f"lies inside the input {args[0]} {tiny_model}"))
        for output, message in cases:
            with pytest.raises(SystemExit) as stop:
                script.main([*args, "--output", str(output)])
            assert str(stop.value.code).startswith(f"error: --output {output}: ") and message in stop.value.code, \
                (name, stop.value.code)
    assert existing.read_text() == "someone's rows\n" and not os.listdir(tmp_path / "a-folder")
    assert not os.path.exists(os.path.join(tiny_model, "out.jsonl"))


def test_an_existing_output_file_is_replaced_only_with_overwrite(tiny_model, train_file, tmp_path, capsys):
    nli, out = nli_file(tmp_path), tmp_path / "triplets.jsonl"
    prepare_nli.main(["--input", nli, "--output", str(out)])  # precondition: a new file is written
    first = out.read_text()
    out.write_text("edited by hand\n")
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        prepare_nli.main(["--input", nli, "--output", str(out)])
    assert out.read_text() == "edited by hand\n"
    prepare_nli.main(["--input", nli, "--output", str(out), "--overwrite"])
    assert out.read_text() == first
    mined = tmp_path / "mined.jsonl"
    mine(tiny_model, train_file, mined, "--range", "2-12")
    rows = read_jsonl(mined)
    mine(tiny_model, train_file, mined, "--range", "2-12", "--overwrite")
    assert read_jsonl(mined) == rows  # the same rows again
    for script in (mine_hard_negatives, score_with_teacher, filter_consistency, prepare_nli, split_by_length):
        with pytest.raises(SystemExit):
            script.parse_args(["--help"])
        assert "--overwrite" in capsys.readouterr().out, script.__name__  # each --help says how to replace


def test_split_by_length_output_dir_follows_the_folder_rule(train_file, tmp_path):
    tokenizer = minilm_path()
    args = ["--input", train_file, "--tokenizer", tokenizer, "--length-list", "0", "16"]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"--output-dir .*theirs: is a folder that scripts.split_by_length did not "
                                         r"write \(1 entry: notes.txt\)"):
        split_by_length.main(args + ["--output-dir", str(theirs)])
    assert os.listdir(theirs) == ["notes.txt"]
    out = tmp_path / "split"
    first = split_by_length.main(args + ["--output-dir", str(out)])  # precondition: a new folder is written
    with pytest.raises(SystemExit, match="holds an earlier output of scripts.split_by_length .*pass --overwrite"):
        split_by_length.main(args + ["--output-dir", str(out)])
    assert split_by_length.main(args + ["--output-dir", str(out), "--overwrite"]) == first
    inside = out / "train_len-0-16.jsonl"
    with pytest.raises(SystemExit, match=r"holds --input .*train_len-0-16.jsonl, which replacing the folder would "
                                         r"delete"):
        split_by_length.main(["--input", str(inside), "--tokenizer", tokenizer, "--output-dir", str(out),
                              "--overwrite"])
    assert inside.is_file()


def test_make_sample_data_replaces_only_its_own_folder(tmp_path):
    from scripts import make_sample_data

    small = ["--train-rows", "20", "--sts-pairs", "10", "--queries", "5"]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "train.jsonl").write_text("my own rows\n")
    (theirs / "notes.txt").write_text("mine")
    for overwrite in ([], ["--overwrite"]):  # someone else's folder: refused, --overwrite or not
        with pytest.raises(SystemExit, match="is a folder that scripts.make_sample_data did not write"):
            make_sample_data.main(["--output", str(theirs), *overwrite, *small])
    assert (theirs / "train.jsonl").read_text() == "my own rows\n"
    out = tmp_path / "sample"
    make_sample_data.main(["--output", str(out), *small])  # precondition: a new folder is written
    first = (out / "train.jsonl").read_bytes()
    with pytest.raises(SystemExit, match="holds an earlier output of scripts.make_sample_data"):
        make_sample_data.main(["--output", str(out), *small])
    make_sample_data.main(["--output", str(out), "--overwrite", *small])
    assert (out / "train.jsonl").read_bytes() == first


# ------------------------------------------------------------------ how the README runs the tools
@pytest.mark.filterwarnings("ignore:.*found in sys.modules after import of package:RuntimeWarning")
def test_every_script_and_benchmark_runs_as_a_module_from_the_repository_root(monkeypatch, capsys):
    """`python -m scripts.NAME` / `python -m benchmarks.NAME` (the README's commands) import and parse --help, run
    as __main__ the way `-m` runs them (runpy, repository root on sys.path as pytest's pythonpath puts it); only
    scripts/_repo_root.py (imported when a script runs as a file) edits sys.path."""
    import runpy

    from tests.helpers import REPO

    imported_only = ("__init__", "machine", "collectives", "recorded_runs", "_repo_root")
    names = sorted(f"{folder}.{p.stem}" for folder in ("scripts", "benchmarks")
                   for p in (REPO / folder).glob("*.py") if p.stem not in imported_only)
    assert "scripts.mine_hard_negatives" in names and "benchmarks.bench_padding" in names  # the glob found them
    for name in names:
        monkeypatch.setattr("sys.argv", [name, "--help"])
        with pytest.raises(SystemExit) as stop:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        assert stop.value.code in (0, None), name
        assert "usage:" in capsys.readouterr().out, name
    editors = [p.relative_to(REPO) for folder in ("scripts", "benchmarks") for p in (REPO / folder).rglob("*.py")
               if "sys.path" in p.read_text()]
    # gpu_suite puts the site folder of its carried wheels on the path (the GPU image lacks DeepSpeed), not the root
    assert sorted(str(p) for p in editors) == [os.path.join("benchmarks", "gpu_suite.py"),
                                               os.path.join("scripts", "_repo_root.py")]


def test_scripts_run_as_files_from_any_folder(tmp_path):
    """`python scripts/NAME.py --help`, as users type it, stopped with ModuleNotFoundError: No module named 'data'."""
    import subprocess
    import sys

    from tests.helpers import REPO, subprocess_env

    env = {k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"}  # only the script's own bootstrap
    for name in ("mine_hard_negatives", "llm_triplets", "prepare_data"):
        res = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and "usage:" in res.stdout, (name, res.stderr[-2000:])
        assert "--overwrite" in res.stdout or name == "llm_triplets"
