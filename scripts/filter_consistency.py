"""E5's consistency filter: keep a (query, positive) pair only if a model ranks the positive in the top-k.

    python -m scripts.filter_consistency --model M --input pairs.jsonl [--corpus corpus.jsonl] --top-k 2 \
        --output filtered.jsonl

A positive's rank is the number of corpus passages — other than the row's own positives — that score strictly
higher for the query (so rank 0 is first); it is kept when rank < --top-k. A positive need not be in the corpus.
Rows keep their kept positives (with their pos_scores) and negatives; rows with no positive left are dropped
and counted. Corpus: --corpus (.jsonl/.tsv/.csv with `text`, optional `title`), else every pos/neg text in the
file. Corpus embeddings share mine_hard_negatives.py's cache; the output is checked before the model loads (not a
folder, not an input; an existing file is replaced only with --overwrite) and written atomically.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse


from data.examples import DataError, Example, load_examples
from evaluation.task_files import TaskDataError
from pipelines.corpus_search import (SEARCH_BACKENDS, Corpus, add_overwrite_flag, cache_dir_for, check_model,
                                     check_output, corpus_from, encode_passages_cached, example_to_row, load_encoder,
                                     passage_embeddings, query_texts, search, write_jsonl)
from storage.folders import OutputError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bi-encoder: saved folder or Hub id")
    p.add_argument("--input", required=True, help="training rows (BGE JSONL, pair/triplet files)")
    p.add_argument("--corpus", help="passages to rank against (default: every pos/neg text of --input)")
    p.add_argument("--top-k", type=int, default=2, help="keep positives ranked in the top k (default 2, as E5)")
    p.add_argument("--output", required=True, help="BGE JSONL to write")
    add_overwrite_flag(p)
    p.add_argument("--cache-dir", default=None,
                   help="corpus-embedding cache (default: <output folder>/.embedding_cache)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--search", choices=SEARCH_BACKENDS, default="auto")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be >= 1")
    return args


def consistent(model, examples: list[Example], corpus: Corpus, top_k: int, cache_dir: str | None = None,
               batch_size: int = 64, backend: str = "auto") -> tuple[list[Example], int]:
    """(rows with only their top-k positives, rows with none left) ; see the module docstring for the rank."""
    s = model.settings
    corpus_emb = encode_passages_cached(model, corpus.texts, cache_dir, batch_size)  # [N, D]
    q_emb = model.encode(query_texts(examples, s), batch_size, "", s.query_max_len, show_progress=True)
    pos_texts = [t for ex in examples for t in ex.pos]
    pos_emb = passage_embeddings(model, pos_texts, corpus, corpus_emb, batch_size)  # [P, D]
    depth = min(len(corpus), top_k + max(len(ex.pos) for ex in examples))  # top_k others survive the exclusion
    scores, ids = search(q_emb, corpus_emb, depth, backend)  # [Q, depth]
    kept_rows, dropped, k = [], 0, 0
    for i, ex in enumerate(examples):
        own = {corpus.index[t] for t in ex.pos if t in corpus.index}
        others = [float(sc) for j, sc in zip(ids[i], scores[i]) if int(j) not in own]  # best first
        keep = []
        for j in range(len(ex.pos)):
            pos_score = float(q_emb[i] @ pos_emb[k + j])
            keep.append(sum(sc > pos_score for sc in others[:top_k]) < top_k)
        k += len(ex.pos)
        if not any(keep):
            dropped += 1
            continue
        pick = [j for j, ok in enumerate(keep) if ok]
        kept_rows.append(Example(ex.query, [ex.pos[j] for j in pick], ex.neg,
                                 [ex.pos_scores[j] for j in pick] if ex.pos_scores is not None else None,
                                 ex.neg_scores, ex.prompt, source=ex.source))
    return kept_rows, dropped


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_model(args.model, "--model")
    check_output(args.output, [("--input", args.input), ("--corpus", args.corpus), ("--model", args.model)],
                 args.overwrite)
    try:
        examples, report = load_examples(args.input)
        print(report.summary())
        corpus = corpus_from(args.corpus, examples, args.input)
        print(corpus.describe())
        kept, dropped = consistent(load_encoder(args.model), examples, corpus, args.top_k,
                                   cache_dir_for(args.output, args.cache_dir, args.no_cache), args.batch_size,
                                   args.search)
    except (DataError, TaskDataError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    if not kept:
        raise SystemExit(f"error: no row has a positive in the top {args.top_k}; nothing to write")
    n_pos_in = sum(len(ex.pos) for ex in examples)
    n_pos_out = sum(len(ex.pos) for ex in kept)
    try:
        n = write_jsonl(args.output, (example_to_row(ex) for ex in kept), overwrite=args.overwrite)
    except OutputError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"kept {n_pos_out} of {n_pos_in} positives (top {args.top_k}); {dropped} of {len(examples)} rows dropped "
          f"(no positive left); wrote {n} rows to {args.output}")
    return {"rows": n, "dropped": dropped, "positives_kept": n_pos_out}


if __name__ == "__main__":
    main()
