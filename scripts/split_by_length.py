"""Split BGE JSONL rows into length-range files, as FlagEmbedding's split_data_by_length.py does offline.

    python -m scripts.split_by_length --input scored.jsonl --tokenizer M --length-list 0 128 256 512 \
        --output-dir split/

A row's length is the token count (with special tokens, untruncated) of its longest text among query, positives
and negatives. With --length-list 0 128 256 a row goes to `<stem>_len-0-128.jsonl`, `<stem>_len-128-256.jsonl`
or `<stem>_len-256-inf.jsonl` (ranges include their start, exclude their end). Empty ranges write no file.
Each file is a normal training file for `train.py --train-data` — e.g. to give each length range its own batch
size, as BGE does for long inputs.
--output-dir follows storage/folders.py, checked before the tokenizer loads: it is built beside the target and
renamed into place whole, so all files appear together at the end or not at all; an existing folder is replaced
only when it is an earlier output of this tool holding nothing else, and --overwrite is given. It may not be, or
lie inside, --input or --tokenizer, nor hold --input.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse
import bisect
import json
import os
from pathlib import Path


from tqdm.auto import tqdm

from data.examples import DataError, load_examples
from pipelines.corpus_search import add_overwrite_flag, atomic_outputs, check_model, example_to_row
from storage.files import check_output_place
from storage.folders import OutputError, check_output_folder, lies_inside, staged_folder

TOOL = "scripts.split_by_length"  # the name in the folder's .written_by.json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="BGE JSONL (or any training file train.py reads)")
    p.add_argument("--tokenizer", required=True, help="tokenizer (model folder or Hub id) that counts the tokens")
    p.add_argument("--length-list", type=int, nargs="+", default=[0, 128, 256, 512, 1024],
                   help="range boundaries, starting at 0 and increasing (default 0 128 256 512 1024)")
    p.add_argument("--output-dir", required=True, help="folder to write: new, empty, or an earlier output of this tool "
                                                      "(with --overwrite)")
    add_overwrite_flag(p, "--output-dir this tool wrote (a folder holding anything else is never replaced)")
    p.add_argument("--batch-size", type=int, default=1000, help="rows tokenised at a time")
    args = p.parse_args(argv)
    b = args.length_list
    if b[0] != 0 or any(x >= y for x, y in zip(b, b[1:])):
        p.error(f"--length-list must start at 0 and increase strictly, got {b}")
    return args


def row_lengths(tokenizer, examples, batch_size: int = 1000) -> list[int]:
    """Token count of each row's longest text (query, positives, negatives)."""
    lengths = []
    for start in tqdm(range(0, len(examples), batch_size), desc="tokenise", leave=False):
        chunk = examples[start:start + batch_size]
        texts = [t for ex in chunk for t in [ex.query] + ex.pos + ex.neg]
        counts = iter(len(ids) for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"])
        lengths.extend(max(next(counts) for _ in range(1 + len(ex.pos) + len(ex.neg))) for ex in chunk)
    return lengths


def range_names(stem: str, boundaries: list[int]) -> list[str]:
    ends = [str(x) for x in boundaries[1:]] + ["inf"]
    return [f"{stem}_len-{lo}-{hi}.jsonl" for lo, hi in zip(boundaries, ends)]


def check_output_dir(args) -> None:
    """Before any work: --output-dir may be written (SystemExit `error: ...` naming what is in the way)."""
    try:
        check_output_place(args.output_dir, [("--input", args.input), ("--tokenizer", args.tokenizer)], "--output-dir")
        if os.path.exists(args.input) and lies_inside(args.input, args.output_dir):
            raise OutputError(f"--output-dir {args.output_dir}: holds --input {args.input}, which replacing the "
                              "folder would delete; choose another output folder")
        check_output_folder(args.output_dir, TOOL, overwrite=args.overwrite, flag="--output-dir")
    except OutputError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_model(args.tokenizer, "--tokenizer", tokenizer_only=True)
    check_output_dir(args)
    from transformers import AutoTokenizer

    try:
        examples, report = load_examples(args.input)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print(report.summary())
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    lengths = row_lengths(tokenizer, examples, args.batch_size)
    names = range_names(Path(args.input).stem, args.length_list)
    bins: list[list] = [[] for _ in names]
    for ex, n in zip(examples, lengths):
        bins[bisect.bisect_right(args.length_list, n) - 1].append(ex)
    used = [(name, rows) for name, rows in zip(names, bins) if rows]
    try:
        with staged_folder(args.output_dir, TOOL, overwrite=args.overwrite, flag="--output-dir", log=print) as staging:
            with atomic_outputs([Path(staging) / name for name, _ in used]) as files:
                for f, (_, rows) in zip(files, used):
                    for ex in rows:
                        f.write(json.dumps(example_to_row(ex), ensure_ascii=False) + "\n")
    except OutputError as e:  # the folder changed while the tool ran
        raise SystemExit(f"error: {e}") from None
    paths = [Path(args.output_dir) / name for name, _ in used]
    counts = {str(path): len(rows) for path, (_, rows) in zip(paths, used)}
    for path, n in counts.items():
        print(f"{n:8d} rows → {path}")
    empty = [name for name, rows in zip(names, bins) if not rows]
    if empty:
        print(f"no rows in: {', '.join(empty)} (not written)")
    return counts


if __name__ == "__main__":
    main()
