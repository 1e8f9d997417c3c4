"""A prepared training corpus: Arrow shards written once by `prepare` (python -m scripts.prepare_data), memory-mapped
by train.py as a `PreparedCorpus`.

Raw files are read into Python `Example`s and every text is tokenised on every start to build the length buckets
and the duplicate ids: fine for a quick experiment, impossible at pretraining scale (100M+ pairs). Preparing does
that work once and stores per row its content, its token lengths and text hashes, and beside the shards the
planner's inputs as flat arrays. The package is split by job:

    format.py   the layout on disk, the manifest, `LengthSettings`, and the checks of shards and index at open
    write.py    `prepare`: rows streamed into shards, the index arrays, the manifest last (atomic, no-op on rerun)
    read.py     `PreparedCorpus`: the planner's inputs memory-mapped, rows read by index, damage named by row
"""
from data.prepared.format import (FORMAT, INDEX, MANIFEST, ROWS_PER_BATCH, SHARDS, LengthSettings, check_index,
                                  file_crc32, is_prepared, read_manifest, row_schema, shard_features, shard_schema,
                                  tokenizer_fingerprint, verify_shards)
from data.prepared.read import PreparedCorpus
from data.prepared.write import PREPARE_HINT_ROWS, prepare, prepare_hint

__all__ = ["FORMAT", "INDEX", "MANIFEST", "PREPARE_HINT_ROWS", "ROWS_PER_BATCH", "SHARDS", "LengthSettings",
           "PreparedCorpus", "check_index", "file_crc32", "is_prepared", "prepare", "prepare_hint", "read_manifest",
           "row_schema", "shard_features", "shard_schema", "tokenizer_fingerprint", "verify_shards"]
