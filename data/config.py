"""The data options of train.py (DataConfig): training files, groups, and how batches are drawn."""
from __future__ import annotations

from dataclasses import dataclass

from cli_config import ConfigError, check_rules, number_above, whole_at_least, opt


@dataclass
class DataConfig:
    train_data: list = opt([], "training files or folders (BGE JSONL, pair/triplet JSONL/TSV, NLI TSV, scored pairs), "
                               "or one prepared corpus folder (scripts/prepare_data.py; memory-mapped, for big data)")
    group_size: int = opt(8, "passages per query: 1 positive + group_size-1 negatives (pair losses use 1)")
    score_max: float = opt(5.0, "scored pairs (cosine loss): label = score / score_max")
    skip_bad_rows: bool = opt(False, "skip invalid rows (counted and reported) instead of stopping")
    num_workers: int = opt(0, "DataLoader worker processes")
    length_buckets: bool = opt(True, "batch examples of similar token length (BGE-style buckets; far less padding)")
    num_buckets: int = opt(0, "length buckets of about equal size; 0 = auto (2+ global batches each, at most 64)")
    bucket_boundaries: list[int] = opt([], "instead: inclusive upper passage lengths (tokens) of the buckets, "
                                           "e.g. 32 64 128 256")
    same_dataset_batches: bool = opt(False, "draw every global batch from one --train-data file (BGE's "
                                            "same_dataset_within_batch)")
    dataset_weights: list[float] = opt([], "sampling weight per --train-data file or prepared source (needs "
                                           "--same-dataset-batches)")
    sampling_alpha: float = opt(None, "draw each batch's source with probability ∝ rows^α (GTE: 0.5; 1 = by size, "
                                      "0 = uniform), times --dataset-weights if given (needs --same-dataset-batches)")
    dedup_batches: bool = opt(True, "keep repeated query / positive / hard-negative texts out of a global batch "
                                    "(in-batch-negative losses)")

    def check(self) -> None:
        """ConfigError naming the key for a value wrong on its own (the files are checked by train.py's data step)."""
        if not self.train_data:
            raise ConfigError("train_data", "is required")
        check_rules(self, {"group_size": (whole_at_least(1), "≥ 1"),
                           "score_max": (number_above(0), "a finite number > 0"),
                           "num_workers": (whole_at_least(0), "≥ 0"), "num_buckets": (whole_at_least(0), "≥ 0")})
