"""Mine hard negatives with a bi-encoder, BGE style, and write BGE JSONL ({query, pos, neg[, prompt]}).

    python -m scripts.mine_hard_negatives --model M --input train.jsonl [--corpus corpus.jsonl] \
        --range 10-100 --negative-number 7 --output mined.jsonl
    python -m scripts.mine_hard_negatives --model M --beir ../shared/data/retrieval/scifact --split test \
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
other ranges or seeds does not re-encode. The output is checked before the model loads (not a folder, not an
input; an existing file is replaced only with --overwrite) and written atomically; the same inputs and --seed give
the same file.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse
from collections import Counter
from pathlib import Path

from data.examples import DataError, Example, load_examples
from data.document_text import mteb_document_text
from evaluation.task_files import TaskDataError, read_beir
from pipelines.hard_negatives import mine
from storage.folders import OutputError
from pipelines.corpus_search import (SEARCH_BACKENDS, Corpus, add_overwrite_flag, cache_dir_for, check_model,
                                     check_output, corpus_from, example_to_row, load_encoder, parse_range, write_jsonl)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="bi-encoder: a saved folder (BiEncoder / sentence-transformers) or Hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="training rows (BGE JSONL, pair/triplet, NLI): queries and positives")
    src.add_argument("--beir", help="BEIR folder: queries and positives from qrels/<split>.tsv, corpus.jsonl as corpus")
    p.add_argument("--split", default="train", help="qrels split with --beir (default train)")
    p.add_argument("--corpus", help="passages to mine from (.jsonl/.tsv/.csv with `text`, optional `title`); "
                                    "default: every pos/neg text of --input")
    p.add_argument("--output", required=True, help="BGE JSONL to write")
    add_overwrite_flag(p)
    p.add_argument("--range", default="10-100", help="0-based rank range START-END to sample from (default 10-100)")
    p.add_argument("--negative-number", type=int, default=7, help="negatives per query (default 7)")
    p.add_argument("--max-pos-ratio", type=float, default=None,
                   help="drop candidates scoring above this fraction of the positive's score, e.g. 0.95")
    p.add_argument("--skip-missing-positives", action="store_true",
                   help="with --corpus: skip (and count) rows whose positives are not in the corpus "
                        "instead of stopping")
    p.add_argument("--cache-dir", default=None,
                   help="corpus-embedding cache (default: <output folder>/.embedding_cache)")
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_model(args.model, "--model")
    check_output(args.output, [("--input", args.input), ("--beir", args.beir), ("--corpus", args.corpus),
                               ("--model", args.model)], args.overwrite)
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
        n = write_jsonl(args.output, (example_to_row(ex) for ex in mined), overwrite=args.overwrite)
    except (DataError, TaskDataError, FileNotFoundError, OutputError) as e:
        raise SystemExit(f"error: {e}") from None
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
