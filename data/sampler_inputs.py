"""What the batch planner (data/batch_planner.py) needs from raw examples, computed once per run, per example:

- length keys: (longest passage in tokens rounded up to 8, query tokens), the sort key of the length buckets
  (data/length_buckets.py); `shared_length_keys` splits the tokenising across the processes of a distributed run;
- text ids: 64-bit hashes of the query and positives and of the hard negatives (data/text_ids.py), so duplicate
  texts can be kept out of a batch by comparing ints instead of strings;
- the file index is `Example.file_index` (position of the example's training source).

A prepared corpus (data/prepared/) stores the same token lengths and hashes per row, computed by the same
functions (`token_counts`, `row_text_hashes`), so both paths feed the planner the same arrays.
"""
from __future__ import annotations

import numpy as np

from data.length_buckets import passage_key
from data.text_ids import TextIds, row_text_hashes
from models.text_format import TextFormat


def token_counts(tokenizer, texts: list[str], max_len: int) -> list[int]:
    """Tokens of each text as the collator sees it (special tokens included, truncated to max_len)."""
    if not texts:
        return []
    ids = tokenizer(texts, truncation=True, max_length=max_len, padding=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    return [len(x) for x in ids]


def length_keys(examples, tokenizer, query_max_len: int, passage_max_len: int, query_prompt: str = "",
                passage_prompt: str = "", chunk: int = 1024, progress: bool = True,
                text_format: TextFormat | None = None) -> np.ndarray:
    """Per example [longest passage in tokens rounded up to a multiple of 8, query tokens]: the bucket sort key,
    as an [N, 2] int array.

    Queries and passages are padded separately, to their own longest in the batch, and a batch holds G passages
    per query, so batches are sorted by passage length first (rounded to the collator's multiple of 8: lengths
    within one multiple pad alike) and by query length within that. BGE sorts by max(query, passages) instead;
    that lumps together rows whose long side is the query with rows whose long side is a passage (measured in
    benchmarks/README.md). Lengths are what the collator will see: queries with their prompt (a row's own
    `prompt` wins) truncated to query_max_len, every positive and negative with passage_prompt truncated to
    passage_max_len — or as `text_format` writes them (the instruction format); EOS included when the tokenizer
    appends it; tokenised in chunks of `chunk` examples by the fast tokenizer, without padding.
    """
    from tqdm.auto import tqdm

    fmt = text_format or TextFormat(query_prompt, passage_prompt)
    out = np.zeros((len(examples), 2), dtype=np.int64)
    for start in tqdm(range(0, len(examples), chunk), desc="token lengths", unit="chunk", disable=not progress,
                      total=-(-len(examples) // chunk)):
        part = examples[start:start + chunk]
        q = token_counts(tokenizer, [fmt.query(ex.query, ex.prompt) for ex in part], query_max_len)
        p = token_counts(tokenizer, [fmt.passage(t, ex.prompt) for ex in part for t in ex.pos + ex.neg],
                         passage_max_len)
        at = 0
        for j, (ex, q_len) in enumerate(zip(part, q)):
            n = len(ex.pos) + len(ex.neg)
            out[start + j] = (passage_key(max(p[at:at + n])), q_len)
            at += n
    return out


def shared_length_keys(examples, tokenizer, query_max_len: int, passage_max_len: int, query_prompt: str = "",
                       passage_prompt: str = "", rank: int = 0, world_size: int = 1,
                       progress: bool = True, text_format: TextFormat | None = None) -> np.ndarray:
    """`length_keys` of all examples on every process, each process tokenising only every world_size-th example
    (then all_gather_object): start-up tokenising is split W ways instead of repeated W times. Without a process
    group of that size (one process, or ranks simulated in one process) it computes all of them here."""
    import torch.distributed as dist

    if world_size == 1 or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size):
        return length_keys(examples, tokenizer, query_max_len, passage_max_len, query_prompt, passage_prompt,
                           progress=progress, text_format=text_format)
    mine = length_keys(examples[rank::world_size], tokenizer, query_max_len, passage_max_len, query_prompt,
                       passage_prompt, progress=progress, text_format=text_format)
    parts: list = [None] * world_size
    dist.all_gather_object(parts, mine)
    out = np.zeros((len(examples), 2), dtype=np.int64)
    for r, part in enumerate(parts):
        out[r::world_size] = part
    return out


def text_ids(examples) -> TextIds:
    """Per example: 64-bit hashes of its query and positives, and of its hard negatives; equal strings, equal ids
    (and, with probability ~2⁻⁶⁴ per pair, two different strings — see data/text_ids.py)."""
    rows = [row_text_hashes(ex.query, ex.pos, ex.neg) for ex in examples]
    return TextIds.from_lists([k for k, _ in rows], [n for _, n in rows])
