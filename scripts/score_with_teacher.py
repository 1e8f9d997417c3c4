"""Fill `pos_scores` / `neg_scores` of BGE JSONL rows with a teacher's scores (for --loss distill).

    python -m scripts.score_with_teacher --teacher BAAI/bge-reranker-base --input mined.jsonl --output scored.jsonl
    python -m scripts.score_with_teacher --teacher path/to/bi-encoder --input mined.jsonl --output scored.jsonl

The teacher is a cross-encoder reranker (a `...ForSequenceClassification` model with one output: the score is
its logit for the (query, passage) pair) or a bi-encoder (the score is the dot product of its embeddings —
cosine for normalising models — with its saved prompts and lengths; a row's own `prompt` wins). --teacher-type
auto picks by the model's architecture. Pairs are scored once each, in batches of similar token length, bf16 on
a GPU. Any non-finite score stops the run naming the row; existing scores are replaced. The output is checked
before the teacher loads (not a folder, not the input; an existing file is replaced only with --overwrite) and
written atomically, rows in input order.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse
import math


import torch
from tqdm.auto import tqdm

from data.examples import DataError, Example, load_examples
from pipelines.corpus_search import (add_overwrite_flag, check_model, check_output, example_to_row, load_encoder,
                                  query_texts, write_jsonl)
from storage.folders import OutputError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="cross-encoder or bi-encoder: local folder or Hub id")
    p.add_argument("--teacher-type", choices=("auto", "cross-encoder", "bi-encoder"), default="auto")
    p.add_argument("--input", required=True, help="BGE JSONL rows (query, pos, neg)")
    p.add_argument("--output", required=True, help="BGE JSONL with pos_scores / neg_scores")
    add_overwrite_flag(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512, help="cross-encoder: max tokens per (query, passage) pair")
    return p.parse_args(argv)


def is_cross_encoder(name_or_path: str) -> bool:
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(name_or_path).architectures or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


@torch.inference_mode()
def cross_encoder_scores(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 32,
                         max_length: int = 512) -> torch.Tensor:
    """Logits [len(pairs)] of a one-output sequence-classification model, in input order."""
    if model.config.num_labels != 1:
        raise DataError(f"the cross-encoder has {model.config.num_labels} outputs; a reranker teacher needs exactly 1")
    device = next(model.parameters()).device
    model.eval()
    lengths = []  # truncated pair lengths, tokenised in chunks so memory stays flat on large files
    for start in range(0, len(pairs), 4096):
        chunk = pairs[start:start + 4096]
        lengths += [len(ids) for ids in tokenizer([q for q, _ in chunk], [p for _, p in chunk], truncation=True,
                                                  max_length=max_length)["input_ids"]]
    order = sorted(range(len(pairs)), key=lambda i: -lengths[i])  # longest first: similar lengths share a batch
    out = torch.empty(len(pairs))
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    for start in tqdm(range(0, len(pairs), batch_size), desc="score", leave=False):
        idx = order[start:start + batch_size]
        batch = tokenizer([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(**batch).logits  # [B, 1]
        out[idx] = logits[:, 0].float().cpu()
    return out


def bi_encoder_scores(model, examples: list[Example], pairs: list[tuple[int, str]],
                      batch_size: int = 32) -> torch.Tensor:
    """Dot products [len(pairs)] of (row index, passage) pairs; each query and passage is encoded once."""
    s = model.settings
    q_emb = model.encode(query_texts(examples, s), batch_size, "", s.query_max_len, show_progress=True)
    passages = list(dict.fromkeys(p for _, p in pairs))
    p_emb = model.encode(passages, batch_size, s.passage_prompt, s.passage_max_len, show_progress=True)
    where = {p: i for i, p in enumerate(passages)}
    rows = torch.tensor([r for r, _ in pairs])
    cols = torch.tensor([where[p] for _, p in pairs])
    return (q_emb[rows] * p_emb[cols]).sum(-1)


def score_examples(teacher: str, examples: list[Example], teacher_type: str = "auto", batch_size: int = 32,
                   max_length: int = 512) -> list[Example]:
    """Examples with pos_scores / neg_scores from the teacher; a non-finite score raises DataError."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if teacher_type == "auto":
        teacher_type = "cross-encoder" if is_cross_encoder(teacher) else "bi-encoder"
    pairs = [(r, p) for r, ex in enumerate(examples) for p in ex.pos + ex.neg]  # row-major: pos then neg
    print(f"scoring {len(pairs)} (query, passage) pairs of {len(examples)} rows with {teacher_type} {teacher}")
    if teacher_type == "cross-encoder":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(teacher).to(device)
        unique = list(dict.fromkeys((examples[r].query, p) for r, p in pairs))
        values = cross_encoder_scores(model, AutoTokenizer.from_pretrained(teacher), unique, batch_size, max_length)
        by_pair = dict(zip(unique, values.tolist()))
        scores = [by_pair[(examples[r].query, p)] for r, p in pairs]
    else:
        model = load_encoder(teacher)
        scores = bi_encoder_scores(model, examples, pairs, batch_size).tolist()
    if len(scores) != len(pairs):
        raise DataError(f"the teacher returned {len(scores)} scores for {len(pairs)} pairs")
    bad = [r for (r, _), s in zip(pairs, scores) if not math.isfinite(s)]
    if bad:
        raise DataError(f"the teacher gave {len(bad)} non-finite scores (NaN/inf), first on {examples[bad[0]].source}; "
                        "nothing was written")
    out, k = [], 0
    for ex in examples:
        n_pos, n_neg = len(ex.pos), len(ex.neg)
        out.append(Example(ex.query, ex.pos, ex.neg, scores[k:k + n_pos], scores[k + n_pos:k + n_pos + n_neg],
                           ex.prompt, source=ex.source))
        k += n_pos + n_neg
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_model(args.teacher, "--teacher")
    check_output(args.output, [("--input", args.input), ("--teacher", args.teacher)], args.overwrite)
    try:
        examples, report = load_examples(args.input)
        print(report.summary())
        replaced = sum(ex.pos_scores is not None or ex.neg_scores is not None for ex in examples)
        if replaced:
            print(f"{replaced} rows already had scores; they are replaced")
        scored = score_examples(args.teacher, examples, args.teacher_type, args.batch_size, args.max_length)
        n = write_jsonl(args.output, (example_to_row(ex) for ex in scored), overwrite=args.overwrite)
    except (DataError, OutputError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {n} scored rows to {args.output}")
    return {"rows": n}


if __name__ == "__main__":
    main()
