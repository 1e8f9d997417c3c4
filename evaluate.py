"""Evaluate an embedding model with mteb: hub tasks by name, local tasks from files.

    python evaluate.py --model out/ --local-task sts=../shared/data/sts/stsb-test.tsv --output-dir eval/
    python evaluate.py --model sentence-transformers/all-MiniLM-L6-v2 --tasks STSBenchmark SciFact --output-dir eval/
    python evaluate.py --model out/ --local-task retrieval=../shared/data/retrieval/scifact \\
        --compare ../shared/data/reference/all-MiniLM-L6-v2.json --output-dir eval/

Steps: build every task (names resolved, hub data downloaded, files parsed and checked) -> load the model with its saved prompts and
lengths (command-line flags override them) -> mteb.evaluate -> write mteb's per-task result JSON under
OUTPUT_DIR/results/<model>/<revision>/ and OUTPUT_DIR/summary.json -> print a table (with deltas for --compare).
Results are always recomputed: the revision hashes the weights and settings, the data may have changed.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from models.bi_encoder import PRECISIONS
from evaluation.local_tasks import LOCAL_TASK_KINDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate a BiEncoder checkpoint (or any sentence-transformers model) with mteb.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="local task files (KIND=PATH):\n"
               "  sts                  .tsv/.csv/.jsonl with sentence1, sentence2, score (any range)\n"
               "  retrieval            BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv\n"
               "  classification       folder with train.csv and test.csv: text + label (or category)\n"
               "  clustering           .tsv/.csv/.jsonl with text, label\n"
               "  pair_classification  NLI .tsv with sentence1, sentence2, gold_label (entailment = positive)\n"
               "TSV files are read without quote handling: quote characters are text.")
    parser.add_argument("--model", required=True, help="folder saved by BiEncoder.save / sentence-transformers, or a Hub id")
    parser.add_argument("--tasks", nargs="+", action="extend", default=[], metavar="NAME",
                        help="mteb task names, e.g. STSBenchmark SciFact (data is downloaded from the Hub)")
    parser.add_argument("--local-task", nargs="+", action="extend", default=[], metavar="KIND=PATH",
                        help=f"a task from local files; KIND one of {', '.join(LOCAL_TASK_KINDS)}; named after the file "
                             "stem or folder; retrieval takes an optional @SPLIT (default test), e.g. retrieval=data/scifact@dev")
    parser.add_argument("--output-dir", required=True, help="where results and summary.json are written")
    parser.add_argument("--compare", metavar="REF.json",
                        help="reference scores ({'tasks': {name: {file, split, metric, score}}}); adds a delta column")
    prompts = parser.add_argument_group("prompts and lengths (default: what the model folder saved)")
    prompts.add_argument("--query-prompt", help="prefix for queries (mteb PromptType.query), e.g. 'query: '")
    prompts.add_argument("--passage-prompt", help="prefix for documents (mteb PromptType.document), e.g. 'passage: '")
    prompts.add_argument("--task-prompt", nargs="+", action="extend", default=[], metavar="KEY=PROMPT",
                         help="prompt by task name or type, optionally suffixed -query/-document, e.g. "
                              "'STS=query: ' 'SciFact-query=Represent the claim: '")
    prompts.add_argument("--query-max-len", type=int, help="token limit for queries")
    prompts.add_argument("--passage-max-len", type=int, help="token limit for documents and symmetric tasks")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): bf16 autocast on CUDA, fp32 on CPU; fp32 reproduces CPU scores on a GPU")
    parser.add_argument("--model-name", help="name in mteb's result files (default: Hub id or local/<parent>__<folder>)")
    args = parser.parse_args(argv)
    if not args.tasks and not args.local_task:
        parser.error("give at least one task: --tasks NAME ... and/or --local-task KIND=PATH ...")
    bad = [p for p in args.task_prompt if "=" not in p or not p.partition("=")[0]]
    if bad:
        parser.error(f"--task-prompt expects KEY=PROMPT, got {', '.join(map(repr, bad))}")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output-dir {args.output_dir}: is a file, not a folder")
    return args


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import mteb
    from mteb.cache import ResultCache

    from evaluation.mteb_encoder import BiEncoderForMTEB
    from evaluation.summary import add_reference, format_table, load_reference, summarize
    from evaluation.tasks import HubDataError, build_tasks, preload_hub_data

    # 1. Every task (hub data downloaded, local files parsed) and the reference file, before the model is loaded.
    try:
        tasks = build_tasks(args.tasks, args.local_task)
        reference = load_reference(args.compare) if args.compare else None
        preload_hub_data(tasks)
    except (ValueError, FileNotFoundError, HubDataError) as err:  # TaskDataError, UnknownTaskError, ...
        sys.exit(f"error: {err}")

    # 2. The model, with its saved prompts/lengths unless overridden here.
    encoder = BiEncoderForMTEB(
        args.model, name=args.model_name, device=args.device, precision=args.precision, batch_size=args.batch_size,
        query_prompt=args.query_prompt, passage_prompt=args.passage_prompt,
        task_prompts=dict(p.split("=", 1) for p in args.task_prompt) or None,
        query_max_len=args.query_max_len, passage_max_len=args.passage_max_len)
    meta = encoder.mteb_model_meta
    print(f"model {meta.name} revision {meta.revision}: {meta.n_parameters:,} parameters, dim {meta.embed_dim}, "
          f"prompts {encoder.model_prompts or 'none'}", flush=True)

    # 3. mteb's evaluators; results written by mteb's cache layer, never read back from it.
    output_dir = Path(args.output_dir)
    results = mteb.evaluate(encoder, tasks, cache=ResultCache(output_dir), overwrite_strategy="always",
                            encode_kwargs={"batch_size": args.batch_size})

    # 4. Summary, reference deltas, table.
    summary = summarize(tasks, results.task_results)
    if reference is not None:
        add_reference(summary, results.task_results, reference)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(format_table(summary))
    print(f"results: {ResultCache(output_dir).get_task_result_path(tasks[0].metadata.name, meta).parent}, "
          f"summary: {output_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
