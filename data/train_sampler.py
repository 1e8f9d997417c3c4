"""train.py's batch sampler: the planner (data/bucket_sampler.py) fed with the examples' inputs
(data/sampler_inputs.py), from train.py's options."""
from __future__ import annotations

from typing import Sequence

from data.bucket_sampler import BucketBatchSampler
from data.examples import examples_digest
from data.sampler_inputs import shared_length_keys, text_ids


def build_train_sampler(examples, tokenizer, settings, *, batch_size: int, seed: int, rank: int, world_size: int,
                        length_buckets: bool = True, num_buckets: int = 0, boundaries: Sequence[int] | None = None,
                        same_dataset: bool = False, dataset_weights: Sequence[float] | None = None,
                        dedup: bool = True, file_names: Sequence[str] | None = None,
                        progress: bool = True) -> BucketBatchSampler:
    """train.py's sampler from its options; `settings` (EncoderSettings) gives max lengths and prompts.

    Option names follow train.py's (--same-dataset-batches, --dataset-weights): both are about training files."""
    keys = (shared_length_keys(examples, tokenizer, settings.query_max_len, settings.passage_max_len,
                               settings.query_prompt or "", settings.passage_prompt or "", rank, world_size,
                               progress=progress)
            if length_buckets else None)
    return BucketBatchSampler(len(examples), batch_size, seed=seed, rank=rank, world_size=world_size,
                              length_keys=keys, boundaries=boundaries or None, num_buckets=num_buckets,
                              file_index=[ex.file_index for ex in examples], same_file=same_dataset,
                              file_weights=dataset_weights or None, file_names=file_names,
                              text_ids=text_ids(examples) if dedup else None,
                              content_digest=lambda: examples_digest(examples))
