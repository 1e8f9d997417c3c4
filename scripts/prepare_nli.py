"""NLI pairs (TSV/JSONL `sentence1, sentence2, gold_label`) -> BGE JSONL triplets for contrastive training.

    python -m scripts.prepare_nli --input ../shared/data/train/kornli-pairs.tsv --output nli-triplets.jsonl --first

Each premise becomes one row {query: premise, pos: [entailments], neg: [contradictions]} (SimCSE / GTE style;
neutral hypotheses are not used) through data/examples.py's `nli_to_groups`, the same conversion train.py
applies to NLI files. --first keeps one entailment and one contradiction per premise (the first of each), as
../shared/data/train/kornli-triplets.jsonl was made. Premises with no contradiction are dropped and counted
unless --allow-no-negative. The output is checked first (not a folder, not an input; an existing file is replaced
only with --overwrite) and written atomically.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse


from data.examples import DataError, load_examples, nli_to_groups
from data.row_kind import RowKind
from pipelines.corpus_search import add_overwrite_flag, check_output, example_to_row, write_jsonl
from storage.folders import OutputError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, nargs="+", help="NLI file(s): sentence1, sentence2, gold_label")
    p.add_argument("--output", required=True, help="BGE JSONL to write")
    add_overwrite_flag(p)
    p.add_argument("--first", action="store_true", help="one entailment and one contradiction per premise")
    p.add_argument("--allow-no-negative", action="store_true", help="keep premises that have no contradiction")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_output(args.output, [("--input", path) for path in args.input], args.overwrite)
    try:
        pairs, report = load_examples(args.input, RowKind.NLI_PAIRS)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    groups = nli_to_groups(pairs, report)
    if not args.allow_no_negative:
        without = [g for g in groups if not g.neg]
        if without:
            report.notes.append(f"{len(without)} premises have no contradiction and are dropped "
                                "(--allow-no-negative keeps them)")
        groups = [g for g in groups if g.neg]
    if args.first:
        for g in groups:
            g.pos, g.neg = g.pos[:1], g.neg[:1]
    print(report.summary())
    if not groups:
        raise SystemExit("error: no (premise, entailment, contradiction) group could be formed; nothing written")
    try:
        n = write_jsonl(args.output, (example_to_row(g) for g in groups), overwrite=args.overwrite)
    except OutputError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {n} rows to {args.output}")
    return {"rows": n}


if __name__ == "__main__":
    main()
