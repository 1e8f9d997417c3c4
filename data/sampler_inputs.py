"""What the batch planner (data/bucket_sampler.py) needs from the examples, computed once per run, per example:

- length keys: (longest passage in tokens rounded up to 8, query tokens), the sort key of the length buckets;
  `shared_length_keys` splits the tokenising across the processes of a distributed run;
- text ids: (ids of the query and positives, ids of the hard negatives), so duplicate texts can be kept out of
  a batch by comparing ints instead of strings;
- the file index is `Example.file_index` (position of the example's file in --train-data).

The planner takes these as plain sequences, one entry per example, and never sees the texts.
"""
from __future__ import annotations


def length_keys(examples, tokenizer, query_max_len: int, passage_max_len: int, query_prompt: str = "",
                passage_prompt: str = "", chunk: int = 1024, progress: bool = True) -> list[tuple[int, int]]:
    """Per example (longest passage in tokens rounded up to a multiple of 8, query tokens): the bucket sort key.

    Queries and passages are padded separately, to their own longest in the batch, and a batch holds G passages
    per query, so batches are sorted by passage length first (rounded to the collator's multiple of 8: lengths
    within one multiple pad alike) and by query length within that. BGE sorts by max(query, passages) instead;
    that lumps together rows whose long side is the query with rows whose long side is a passage (measured in
    benchmarks/README.md). Lengths are what the collator will see: queries with their prompt (a row's own
    `prompt` wins) truncated to query_max_len, every positive and negative with passage_prompt truncated to
    passage_max_len; tokenised in chunks of `chunk` examples by the fast tokenizer, without padding.
    """
    from tqdm.auto import tqdm

    def token_counts(texts: list[str], max_len: int) -> list[int]:
        if not texts:
            return []
        ids = tokenizer(texts, truncation=True, max_length=max_len, padding=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        return [len(x) for x in ids]

    out: list[tuple[int, int]] = []
    for start in tqdm(range(0, len(examples), chunk), desc="token lengths", unit="chunk", disable=not progress,
                      total=-(-len(examples) // chunk)):
        part = examples[start:start + chunk]
        q = token_counts([(ex.prompt if ex.prompt is not None else query_prompt) + ex.query for ex in part],
                         query_max_len)
        p = token_counts([passage_prompt + t for ex in part for t in ex.pos + ex.neg], passage_max_len)
        at = 0
        for ex, q_len in zip(part, q):
            n = len(ex.pos) + len(ex.neg)
            longest = max(p[at:at + n])
            out.append((-(-longest // 8) * 8, q_len))
            at += n
    return out


def shared_length_keys(examples, tokenizer, query_max_len: int, passage_max_len: int, query_prompt: str = "",
                       passage_prompt: str = "", rank: int = 0, world_size: int = 1,
                       progress: bool = True) -> list[tuple[int, int]]:
    """`length_keys` of all examples on every process, each process tokenising only every world_size-th example
    (then all_gather_object): start-up tokenising is split W ways instead of repeated W times. Without a process
    group of that size (one process, or ranks simulated in one process) it computes all of them here."""
    import torch.distributed as dist

    if world_size == 1 or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size):
        return length_keys(examples, tokenizer, query_max_len, passage_max_len, query_prompt, passage_prompt,
                           progress=progress)
    mine = length_keys(examples[rank::world_size], tokenizer, query_max_len, passage_max_len, query_prompt,
                       passage_prompt, progress=progress)
    parts: list = [None] * world_size
    dist.all_gather_object(parts, mine)
    out: list = [None] * len(examples)
    for r, part in enumerate(parts):
        out[r::world_size] = part
    return out


def text_ids(examples) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per example: (ids of its query and positives, ids of its hard negatives); equal strings, equal ids.

    Ids are given in order of first appearance, so they are the same in every process.
    """
    ids: dict[str, int] = {}

    def get(t: str) -> int:
        return ids.setdefault(t, len(ids))

    return [(tuple({get(ex.query), *map(get, ex.pos)}), tuple(set(map(get, ex.neg)))) for ex in examples]
