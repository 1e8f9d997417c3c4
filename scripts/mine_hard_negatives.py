"""Mine hard negatives with a bi-encoder, BGE style, and write BGE JSONL ({query, pos, neg[, prompt]}).

    python scripts/mine_hard_negatives.py --model M --input train.jsonl [--corpus corpus.jsonl] \
        --range 10-100 --negative-number 7 --output mined.jsonl
    python scripts/mine_hard_negatives.py --model M --beir ../shared/data/retrieval/scifact --split test \
        --range 10-100 --negative-number 7 --output mined.jsonl

Queries and passages are encoded with the model's saved prompts and lengths (a row's own `prompt` wins for its
query); every query searches the corpus exactly (faiss IndexFlatIP; faiss-GPU or chunked torch top-k on CUDA
when present). From the results ranked START..END-1 (0-based, counted before filtering, as FlagEmbedding's
--range_for_sampling) the query's positives and the query text itself are removed, then — with
--max-pos-ratio r — every candidate scoring above r × (the query's lowest positive score) (likely a false
negative, NV-Retriever's TopK-PercPos filter), and --negative-number are sampled at random. Rows left with too
few are topped up with random corpus passages (counted). Existing `neg` lists and teacher scores are replaced.

Corpus: --beir uses the folder's corpus (title + " " + text) and its qrels' judged documents as positives;
--input alone uses every pos/neg text in the file; --corpus names a .jsonl/.tsv/.csv with a `text` column.
Corpus embeddings are cached under --cache-dir (key: model weights + settings + corpus), so re-mining with
other ranges or seeds does not re-encode. The output is written atomically; the same inputs and --seed give
the same file.
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.examples import DataError, Example, load_examples  # noqa: E402
from data.pipeline import (SEARCH_BACKENDS, Corpus, cache_dir_for, corpus_from,  # noqa: E402
                           encode_passages_cached, example_to_row, load_encoder, parse_range, passage_embeddings,
                           query_texts, search, write_jsonl)
from evaluation.fast import mteb_document_text  # noqa: E402
from evaluation.task_files import TaskDataError, read_beir  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bi-encoder: a saved folder (BiEncoder / sentence-transformers) or Hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="training rows (BGE JSONL, pair/triplet, NLI): queries and positives")
    src.add_argument("--beir", help="BEIR folder: queries and positives from qrels/<split>.tsv, corpus.jsonl as corpus")
    p.add_argument("--split", default="train", help="qrels split with --beir (default train)")
    p.add_argument("--corpus", help="passages to mine from (.jsonl/.tsv/.csv with `text`, optional `title`); "
                                    "default: every pos/neg text of --input")
    p.add_argument("--output", required=True, help="BGE JSONL to write")
    p.add_argument("--range", default="10-100", help="0-based rank range START-END to sample from (default 10-100)")
    p.add_argument("--negative-number", type=int, default=7, help="negatives per query (default 7)")
    p.add_argument("--max-pos-ratio", type=float, default=None,
                   help="drop candidates scoring above this fraction of the positive's score, e.g. 0.95")
    p.add_argument("--skip-missing-positives", action="store_true",
                   help="with --corpus: skip (and count) rows whose positives are not in the corpus instead of stopping")
    p.add_argument("--cache-dir", default=None, help="corpus-embedding cache (default: <output folder>/.embedding_cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--search", choices=SEARCH_BACKENDS, default="auto", help="search backend (default auto)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if args.corpus and args.beir:
        p.error("--corpus cannot be used with --beir (the BEIR folder has its corpus)")
    if args.negative_number < 1:
        p.error("--negative-number must be >= 1")
    if args.max_pos_ratio is not None and not args.max_pos_ratio > 0:
        p.error("--max-pos-ratio must be > 0")
    try:
        args.start, args.end = parse_range(args.range)
    except ValueError as e:
        p.error(f"--range: {e}")
    return args


def beir_examples(folder: str, split: str, report: Counter) -> tuple[list[Example], list[str]]:
    """One row per judged query: positives are its documents with relevance > 0; corpus = all documents."""
    data = read_beir(folder, split)
    docs = {doc_id: mteb_document_text(title, text) for doc_id, (title, text) in data.corpus.items()}
    qrels_file = Path(folder) / "qrels" / f"{split}.tsv"
    examples = []
    for qid, query in data.queries.items():
        pos = [docs[d] for d, rel in data.qrels[qid].items() if rel > 0]
        if pos:
            examples.append(Example(query, pos, source=f"{qrels_file}: query {qid}"))
        else:
            report["queries with no relevant (score > 0) document skipped"] += 1
    return examples, list(docs.values())


def mine(model, examples: list[Example], corpus: Corpus, *, start: int, end: int, negative_number: int,
         max_pos_ratio: float | None = None, seed: int = 42, cache_dir: str | None = None, batch_size: int = 64,
         backend: str = "auto", report: Counter | None = None, corpus_emb: torch.Tensor | None = None) -> list[Example]:
    """Examples with `neg` replaced by mined negatives (and teacher scores dropped); counts go into `report`.

    corpus_emb: precomputed passage embeddings [N, D] of corpus.texts (default: encoded, or read from the cache).
    """
    report = Counter() if report is None else report
    if start >= len(corpus):
        raise DataError(f"--range {start}-{end} starts at rank {start} but the corpus has only {len(corpus)} passages")
    if end > len(corpus):
        report[f"range end {end} beyond the corpus: searched all {len(corpus)} passages"] += 1
        end = len(corpus)
    if len(corpus) <= negative_number:
        raise DataError(f"the corpus has {len(corpus)} passages; --negative-number {negative_number} needs more "
                        "than that (positives are excluded)")
    s = model.settings
    if corpus_emb is None:
        corpus_emb = encode_passages_cached(model, corpus.texts, cache_dir, batch_size)  # [N, D]
    elif corpus_emb.shape[0] != len(corpus):
        raise ValueError(f"corpus_emb has {corpus_emb.shape[0]} rows for {len(corpus)} passages")
    q_emb = model.encode(query_texts(examples, s.query_prompt), batch_size, "", s.query_max_len, show_progress=True)
    scores, ids = search(q_emb, corpus_emb, end, backend)  # [Q, end]
    pos_scores = None
    if max_pos_ratio is not None:
        pos_texts = [t for ex in examples for t in ex.pos]
        pos_emb = passage_embeddings(model, pos_texts, corpus, corpus_emb, batch_size)  # [P, D]
        offsets = [0]
        for ex in examples:
            offsets.append(offsets[-1] + len(ex.pos))
        pos_scores = [(q_emb[i] @ pos_emb[offsets[i]:offsets[i + 1]].T).min().item() for i in range(len(examples))]

    rng = random.Random(seed)
    out = []
    for i, ex in enumerate(examples):
        banned = {corpus.index[t] for t in ex.pos + [ex.query] if t in corpus.index}
        cands = [(int(j), float(sc)) for j, sc in zip(ids[i, start:end], scores[i, start:end]) if int(j) not in banned]
        if pos_scores is not None:
            limit = max_pos_ratio * pos_scores[i]
            kept = [(j, sc) for j, sc in cands if sc <= limit]
            report["candidates dropped by --max-pos-ratio (scored too close to the positive)"] += len(cands) - len(kept)
            cands = kept
        picked = [j for j, _ in cands]
        if len(picked) > negative_number:
            picked = rng.sample(picked, negative_number)
        elif len(picked) < negative_number:
            extra = random_passages(rng, len(corpus), banned | set(picked), negative_number - len(picked))
            report["rows topped up with random corpus passages"] += 1
            report["random passages added"] += len(extra)
            if len(picked) + len(extra) < negative_number:
                report[f"rows with fewer than {negative_number} negatives (corpus exhausted)"] += 1
            picked += extra
        out.append(Example(ex.query, ex.pos, [corpus.texts[j] for j in picked], prompt=ex.prompt, source=ex.source))
    return out


def random_passages(rng: random.Random, n: int, banned: set[int], k: int) -> list[int]:
    """k distinct random corpus rows outside `banned` (fewer only when the corpus has no more)."""
    available = n - len(banned)
    if available <= k:
        return [j for j in range(n) if j not in banned]
    picked: list[int] = []
    taken = set(banned)
    while len(picked) < k:
        j = rng.randrange(n)
        if j not in taken:
            taken.add(j)
            picked.append(j)
    return picked


def main(argv=None) -> dict:
    args = parse_args(argv)
    report: Counter = Counter()
    try:
        if args.beir:
            examples, corpus_texts = beir_examples(args.beir, args.split, report)
            corpus = Corpus(corpus_texts, f"{args.beir}/corpus.jsonl")
        else:
            examples, load_report = load_examples(args.input)
            print(load_report.summary())
            corpus = corpus_from(args.corpus, examples, args.input)
        examples = drop_missing_positives(examples, corpus, args.skip_missing_positives, report)
        if not examples:
            raise DataError("no queries left to mine for")
        print(corpus.describe())
        mined = mine(load_encoder(args.model), examples, corpus, start=args.start, end=args.end,
                     negative_number=args.negative_number, max_pos_ratio=args.max_pos_ratio, seed=args.seed,
                     cache_dir=cache_dir_for(args.output, args.cache_dir, args.no_cache),
                     batch_size=args.batch_size, backend=args.search, report=report)
    except (DataError, TaskDataError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    n = write_jsonl(args.output, (example_to_row(ex) for ex in mined))
    print(f"wrote {n} rows to {args.output}")
    for what, count in report.items():
        print(f"  {count} × {what}")
    return {"rows": n, "report": dict(report)}


def drop_missing_positives(examples: list[Example], corpus: Corpus, skip: bool, report: Counter) -> list[Example]:
    """Rows whose positives are all in the corpus; others stop the run, or are skipped and counted with `skip`."""
    missing = [ex for ex in examples if any(p not in corpus.index for p in ex.pos)]
    if not missing:
        return examples
    if not skip:
        first = missing[0]
        text = next(p for p in first.pos if p not in corpus.index)
        raise DataError(f"{len(missing)} of {len(examples)} queries have positives missing from the corpus "
                        f"(first: {first.source}: {text[:80]!r}); the corpus must hold every positive so it is never "
                        "mined as a negative — fix the corpus, or pass --skip-missing-positives to skip those rows")
    report["rows skipped: positive not in the corpus"] += len(missing)
    drop = {id(ex) for ex in missing}
    return [ex for ex in examples if id(ex) not in drop]


if __name__ == "__main__":
    main()
