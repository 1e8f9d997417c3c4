"""train.py's batch sampler: the planner (data/batch_planner.py) fed with per-example arrays — computed from the
examples of raw files (data/sampler_inputs.py), or memory-mapped from a prepared corpus (data/prepared/) — from
train.py's options. The same rows give the same arrays either way, hence the same batches."""
from __future__ import annotations

from typing import Sequence

from data.batch_planner import BucketBatchSampler
from data.rows import examples_digest
from data.sampler_inputs import shared_length_keys, text_ids


def build_train_sampler(examples, tokenizer, settings, *, batch_size: int, seed: int, rank: int, world_size: int,
                        length_buckets: bool = True, num_buckets: int = 0, boundaries: Sequence[int] | None = None,
                        same_dataset: bool = False, dataset_weights: Sequence[float] | None = None,
                        sampling_alpha: float | None = None, dedup: bool = True,
                        file_names: Sequence[str] | None = None, progress: bool = True,
                        text_format=None) -> BucketBatchSampler:
    """train.py's sampler over raw examples; `settings` (EncoderSettings) gives max lengths and prompts, and
    `text_format` (models/text_format.py) how texts are written (default: the settings' own).

    same_dataset, dataset_weights, sampling_alpha: every batch from one training source, each source's share of
    the batches (`check_sampler_options` names these options in its errors)."""
    import numpy as np

    keys = (shared_length_keys(examples, tokenizer, settings.query_max_len, settings.passage_max_len,
                               settings.query_prompt or "", settings.passage_prompt or "", rank, world_size,
                               progress=progress, text_format=text_format or settings.text_format())
            if length_buckets else None)
    return BucketBatchSampler(len(examples), batch_size, seed=seed, rank=rank, world_size=world_size,
                              length_keys=keys, boundaries=boundaries or None, num_buckets=num_buckets,
                              file_index=np.fromiter((ex.file_index for ex in examples), np.int32, len(examples)),
                              same_file=same_dataset, file_weights=dataset_weights or None,
                              sampling_alpha=sampling_alpha, file_names=file_names,
                              text_ids=text_ids(examples) if dedup else None,
                              content_digest=lambda: examples_digest(examples))


def build_prepared_sampler(corpus, *, batch_size: int, seed: int, rank: int, world_size: int,
                           length_buckets: bool = True, num_buckets: int = 0,
                           boundaries: Sequence[int] | None = None, same_dataset: bool = False,
                           dataset_weights: Sequence[float] | None = None, sampling_alpha: float | None = None,
                           dedup: bool = True) -> BucketBatchSampler:
    """train.py's sampler over a PreparedCorpus: lengths, hashes and sources read from its shards as arrays (the
    corpus was checked to match the run's tokenizer and settings); nothing is tokenised."""
    return BucketBatchSampler(len(corpus), batch_size, seed=seed, rank=rank, world_size=world_size,
                              length_keys=corpus.length_keys() if length_buckets else None,
                              boundaries=boundaries or None, num_buckets=num_buckets,
                              file_index=corpus.file_index(), same_file=same_dataset,
                              file_weights=dataset_weights or None, sampling_alpha=sampling_alpha,
                              file_names=corpus.source_names, text_ids=corpus.text_ids() if dedup else None,
                              content_digest=lambda: corpus.content_digest)
