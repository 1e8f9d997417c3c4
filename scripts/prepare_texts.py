"""Tokenise raw text once for pretrain.py: a prepared text corpus that every run and every process memory-maps.

    python -m scripts.prepare_texts --input wiki.txt pubmed.jsonl beir/scifact --tokenizer MODEL --max-len 512 \
        --output texts/
    python pretrain.py --model MODEL --train-data texts/ --max-len 512 ...

Inputs are what pretrain.py reads (.txt one passage a line, JSONL / TSV / CSV / Parquet with a text column, a BEIR
folder); each becomes one source. Empty texts are skipped and counted in the manifest. The ids are those of
--tokenizer (give pretrain.py's --model) cut at --max-len (pretrain.py's flag; a run with another value or tokenizer
is refused). The folder is complete or absent; an earlier corpus is replaced only with --overwrite. The format:
pretraining/prepared.py.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse
import sys

from data.tables import DataError
from pretraining.prepared import prepare_texts
from storage.folders import OutputError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="text files or BEIR folders (one source each)")
    p.add_argument("--tokenizer", required=True, help="the model folder / Hub id pretrain.py will get as --model")
    p.add_argument("--output", required=True, help="corpus folder to write")
    p.add_argument("--max-len", type=int, default=512, help="as pretrain.py's flag (and its default)")
    p.add_argument("--text-field", default="text", help="as pretrain.py's flag (and its default)")
    p.add_argument("--overwrite", action="store_true", help="replace a corpus this tool wrote earlier at --output")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    try:
        return prepare_texts(a.input, a.tokenizer, a.output, max_len=a.max_len, text_field=a.text_field,
                             overwrite=a.overwrite)
    except DataError as e:
        sys.exit(f"data error: {e}")
    except OutputError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
