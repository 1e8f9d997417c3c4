"""Prepare a big training corpus once: Arrow shards that train.py memory-maps, with token lengths and text hashes.

    python -m scripts.prepare_data --input a.jsonl b.tsv hub/dataset --tokenizer MODEL --output corpus/
    python train.py --model MODEL --train-data corpus/ --same-dataset-batches --sampling-alpha 0.5 ...

Inputs are anything train.py reads (BGE JSONL, pairs / triplets, NLI, scored pairs, a datasets folder, a Hub id);
each becomes one source of the corpus (same-source batches, --dataset-weights and --sampling-alpha count sources in
this order). Rows are validated as train.py validates them (`file:line: field` errors; --skip-bad-rows counts them
in the manifest), streamed, and annotated in --num-proc processes with the token lengths the length buckets need
(for --tokenizer with the max lengths and prompts train.py will use — give it train.py's --model and the same
flags) and 64-bit hashes of the texts for in-batch dedup. The folder is complete or absent: it is built beside
the output and renamed into place, an interrupted run starts over, a failed run leaves an existing corpus as it
was, and re-running with unchanged inputs does nothing. An existing corpus is replaced only with --overwrite;
any other existing folder or file at --output is refused, never deleted. The format: data/prepared/format.py.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse
import os
import sys

from data.examples import DataError
from data.prepared import prepare
from data.row_kind import RowKind
from models.family import TokenizerSetupError
from storage.folders import OutputError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="training files, datasets folders or Hub ids (sources)")
    p.add_argument("--tokenizer", required=True, help="the model folder / Hub id train.py will get as --model")
    p.add_argument("--output", required=True, help="corpus folder to write")
    p.add_argument("--query-max-len", type=int, default=64, help="as train.py's flag (and its default)")
    p.add_argument("--passage-max-len", type=int, default=256, help="as train.py's flag (and its default)")
    p.add_argument("--query-prompt", help="as train.py's flag (default: the model's saved prompt)")
    p.add_argument("--passage-prompt", help="as train.py's flag (default: the model's saved prompt)")
    p.add_argument("--query-instruction-format", help="as train.py's flag (default: the model's saved format)")
    p.add_argument("--query-instruction", help="as train.py's flag (default: the model's saved instruction)")
    p.add_argument("--format-passages", action=argparse.BooleanOptionalAction, default=None,
                   help="as train.py's flag (default: on for --pair-kind rows, off for query/passage groups)")
    p.add_argument("--append-eos", action=argparse.BooleanOptionalAction, default=None,
                   help="as train.py's flag (default: the model's saved setting, else on for decoder-only models)")
    p.add_argument("--pair-kind", choices=["nli", "scored"],
                   help="labelled pairs for --loss softmax (nli) or --loss cosine (scored); default: query/passage "
                        "groups for the contrastive losses")
    p.add_argument("--score-max", type=float, default=5.0, help="scored pairs: label = score / score_max")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip invalid rows (counted in the manifest)")
    p.add_argument("--pretokenize", action="store_true",
                   help="also store token ids, so DataLoader workers only pad (more disk, less CPU per step)")
    p.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="processes for the token-length pass")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a corpus this tool wrote earlier at --output (other folders are never replaced)")
    p.add_argument("--rows-per-shard", type=int, default=1_000_000,
                   help="rows per shard before the --num-proc split (each shard is split num-proc ways)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    try:
        return prepare(a.input, a.tokenizer, a.output, query_max_len=a.query_max_len,
                       passage_max_len=a.passage_max_len, query_prompt=a.query_prompt,
                       passage_prompt=a.passage_prompt, query_instruction_format=a.query_instruction_format,
                       query_instruction=a.query_instruction, format_passages=a.format_passages,
                       append_eos=a.append_eos, rows=RowKind(a.pair_kind) if a.pair_kind else RowKind.GROUPS,
                       score_max=a.score_max, skip_bad_rows=a.skip_bad_rows, pretokenize=a.pretokenize,
                       num_proc=a.num_proc, rows_per_shard=a.rows_per_shard, overwrite=a.overwrite)
    except DataError as e:
        sys.exit(f"data error: {e}")
    except (OutputError, TokenizerSetupError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
