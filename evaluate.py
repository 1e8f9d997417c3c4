"""Evaluate an embedding model with mteb: hub tasks by name, local tasks from files.

    python evaluate.py --model out/ --local-task sts=../shared/data/sts/stsb-test.tsv --output-dir eval/
    python evaluate.py --model sentence-transformers/all-MiniLM-L6-v2 --tasks STSBenchmark SciFact --output-dir eval/
    python evaluate.py --model out/ --local-task retrieval=../shared/data/retrieval/scifact \\
        --compare ../shared/data/reference/all-MiniLM-L6-v2.json --output-dir eval/
    python evaluate.py --model out/ --local-task retrieval=../shared/data/retrieval/scifact \\
        --truncate-dim 256 128 64 --quantize int8 binary --rescore-multiplier 4 --output-dir eval/

Steps: check the options, the model folder (config, weights, tokenizer files; max lengths against its position
limit, from config.json alone) and --output-dir -> build every task (names resolved, hub data downloaded, files
parsed and checked) -> load the model with its saved prompts and lengths (command-line flags override them) ->
mteb.evaluate -> write mteb's per-task result JSON under OUTPUT_DIR/results/<model>/<revision>/ and
OUTPUT_DIR/summary.json -> print a table (with deltas for --compare). With --truncate-dim / --quantize the texts are
still encoded once: each variant is scored from the same full-width embeddings, its retention = score / full float32
score in the summary and the table, its mteb files under experiments/ (evaluation/variants.py).
Results are always recomputed: the revision hashes the weights and settings, the data may have changed.
OUTPUT_DIR is written whole or not at all (storage/folders.py: built beside it, renamed when complete). An existing
one is replaced only when it holds an earlier output of evaluate.py and nothing else, and --overwrite is given; a
folder holding other files, the model folder and a task's data are never written into.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

from evaluation.local_tasks import LOCAL_TASK_KINDS
from evaluation.quantization import PRECISIONS as QUANTIZED_PRECISIONS
from models.checks import MaxLengthError, check_max_lengths, check_model_folder, find_model
from models.encode import PRECISIONS
from models.st_folder import SETTINGS_FILE, read_settings
from storage.files import check_output_place
from storage.folders import check_output_folder, staged_folder

TOOL = "evaluate.py"  # the name in OUTPUT_DIR/.written_by.json (storage/folders.py)
OWN_ENTRIES = ("results", "summary.json")


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
    parser.add_argument("--model", required=True,
                        help="folder saved by BiEncoder.save / sentence-transformers, or a Hub id")
    parser.add_argument("--tasks", nargs="+", action="extend", default=[], metavar="NAME",
                        help="mteb task names, e.g. STSBenchmark SciFact (data is downloaded from the Hub)")
    parser.add_argument("--local-task", nargs="+", action="extend", default=[], metavar="KIND=PATH",
                        help=f"a task from local files; KIND one of {', '.join(LOCAL_TASK_KINDS)}; named after the "
                             "file stem or folder; retrieval takes an optional @SPLIT (default test), "
                             "e.g. retrieval=data/scifact@dev")
    parser.add_argument("--output-dir", required=True,
                        help="where results/ and summary.json are written: a new or empty folder, or one evaluate.py "
                             "wrote before (with --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier output of evaluate.py in --output-dir (only when it holds nothing "
                             "else; other folders are never replaced)")
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
    variants = parser.add_argument_group("truncated and quantized embeddings, each scored against the full float32 "
                                         "score from the same single encode")
    variants.add_argument("--truncate-dim", nargs="+", action="extend", type=int, default=[], metavar="D",
                          help="also score the first D dimensions (Matryoshka), re-normalised where the model "
                               "normalises, e.g. 256 128 64")
    variants.add_argument("--quantize", nargs="+", action="extend", choices=QUANTIZED_PRECISIONS, default=[],
                          help="also score int8 / binary embeddings at every dimension; retrieval and STS tasks only "
                               "(evaluation/quantization.py)")
    variants.add_argument("--rescore-multiplier", type=int, metavar="M",
                          help="retrieval under --quantize: also rescore the quantized search's top 100·M with the "
                               "float query (sentence-transformers' published runs: 4; its search default: 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): bf16 autocast on CUDA, fp32 on CPU; fp32 reproduces CPU scores on a GPU")
    parser.add_argument("--model-name",
                        help="name in mteb's result files (default: Hub id or local/<parent>__<folder>)")
    args = parser.parse_args(argv)
    if not args.tasks and not args.local_task:
        parser.error("give at least one task: --tasks NAME ... and/or --local-task KIND=PATH ...")
    bad = [p for p in args.task_prompt if "=" not in p or not p.partition("=")[0]]
    if bad:
        parser.error(f"--task-prompt expects KEY=PROMPT, got {', '.join(map(repr, bad))}")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output-dir {args.output_dir}: is a file, not a folder")
    for flag, value in (("--batch-size", args.batch_size), ("--query-max-len", args.query_max_len),
                        ("--passage-max-len", args.passage_max_len), ("--rescore-multiplier", args.rescore_multiplier),
                        *(("--truncate-dim", d) for d in args.truncate_dim)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: must be ≥ 1")
    for flag, values in (("--truncate-dim", args.truncate_dim), ("--quantize", args.quantize)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            parser.error(f"{flag} {' '.join(map(str, twice))}: given twice; each variant is scored once")
    if args.rescore_multiplier is not None and not args.quantize:
        parser.error(f"--rescore-multiplier {args.rescore_multiplier}: rescores the search of --quantize, which is "
                     "not set")
    if args.device is not None:
        problem = device_problem(args.device)
        if problem:
            parser.error(f"--device {args.device}: {problem}")
    return args


def device_problem(device: str) -> str | None:
    """Why `device` cannot run here (not a device, no CUDA, no such GPU), or None."""
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        return "not a device; use cpu, cuda or cuda:N"
    if d.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available here (torch.cuda.is_available() is False); use --device cpu"
        if d.index is not None and d.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            return f"there are {n} CUDA devices here (cuda:0 .. cuda:{n - 1})"
    elif d.type == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available here; use --device cpu"
    elif d.type not in ("cpu", "cuda", "mps"):
        return "use cpu, cuda, cuda:N or mps"
    return None


def locate_model(name: str, download: bool) -> str | None:
    try:
        return find_model(name, download=download)
    except ValueError as e:
        raise ValueError(f"--model {e}") from None


def check_model(args: argparse.Namespace, path: str) -> None:
    """The model folder is complete and its lengths (flags, else saved) fit its position limit: ValueError naming
    the flag or the saved setting. Reads config.json and the settings files, no weights."""
    try:
        check_model_folder(path)
    except ValueError as e:
        raise ValueError(f"--model {e}") from None
    saved = read_settings(path)
    ours = os.path.isfile(os.path.join(path, SETTINGS_FILE))
    lengths = {"query_max_len": args.query_max_len, "passage_max_len": args.passage_max_len}
    for field, value in lengths.items():
        flag = "--" + field.replace("_", "-")
        if value is None:  # the saved length (a sentence-transformers folder's queries get its passage length)
            value = getattr(saved, field) if ours or field == "passage_max_len" else None
        try:
            for note in check_max_lengths(path, **{field: value}):
                print(f"note: {note}")
        except MaxLengthError as e:
            if lengths[field] is not None:
                raise ValueError(f"{flag} {e.value}: {e.reason}") from None
            raise ValueError(f"{args.model}: the model's saved {field} is {e.value}, {e.reason}; pass {flag} "
                             f"{e.limit} (or less)") from None
    check_truncate_dims(args.truncate_dim, path)


def check_truncate_dims(dims: list[int], path: str) -> None:
    """Each --truncate-dim below the model's dimension (hidden_size in its config.json; no weights are read)."""
    if not dims:
        return
    from transformers import AutoConfig

    full = AutoConfig.from_pretrained(path).hidden_size
    for d in dims:
        if d > full:
            raise ValueError(f"--truncate-dim {d}: more than the model's {full} dimensions")
        if d == full:
            raise ValueError(f"--truncate-dim {d}: the model's full dimension, which is always scored (the "
                             "baseline); leave it out")


def check_output(args: argparse.Namespace, model_path: str | None) -> None:
    """--output-dir may be written: new, empty, or evaluate.py's own earlier output (with --overwrite), not the
    model folder or a task's data or inside them, and its parent writable. ValueError (OutputError) otherwise."""
    from evaluation.tasks import parse_local_spec

    inputs = [("the model folder", model_path)] if model_path else []
    inputs += [(f"the data of --local-task {spec}", parse_local_spec(spec).path) for spec in args.local_task]
    check_output_place(args.output_dir, inputs, "--output-dir")
    check_output_folder(args.output_dir, TOOL, **output_rule(args))


def output_rule(args: argparse.Namespace) -> dict:
    return dict(overwrite=args.overwrite, flag="--output-dir", own_entries=OWN_ENTRIES,
                recognise=lambda p: os.path.isfile(os.path.join(p, "summary.json")))  # written before the marker


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    # 0. The model (a local folder, or a Hub id already cached) and the output folder, before anything is built.
    try:
        model_path = locate_model(args.model, download=False)  # None: a Hub id not downloaded yet
        if model_path is not None:
            check_model(args, model_path)
        check_output(args, model_path)
    except ValueError as err:  # OutputError, MaxLengthError, TaskSpecError included
        sys.exit(f"error: {err}")

    from mteb.cache import ResultCache

    from evaluation.mteb_encoder import BiEncoderForMTEB
    from evaluation.summary import add_reference, add_variants, format_table, load_reference, summarize
    from evaluation.tasks import HubDataError, build_tasks, preload_hub_data
    from evaluation.variants import BASELINE, evaluate_variants, plan_variants, quantize_problem

    # 1. Every task (hub data downloaded, local files parsed) and the reference file, before the model is loaded.
    try:
        tasks = build_tasks(args.tasks, args.local_task)
        problem = quantize_problem(tasks, args.quantize)
        if problem:
            raise ValueError(f"--quantize {' '.join(args.quantize)}: {problem}")
        reference = load_reference(args.compare) if args.compare else None
        preload_hub_data(tasks)
        if model_path is None:  # a Hub model: downloaded now, then checked as a folder is
            model_path = locate_model(args.model, download=True)
            check_model(args, model_path)
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

    # 3. mteb's evaluators, once per variant (the full float32 baseline alone unless --truncate-dim / --quantize);
    # results written by mteb's cache layer into a folder beside --output-dir, renamed to it once summary.json is
    # written (never read back: results are always recomputed).
    output_dir = Path(args.output_dir)
    variants = plan_variants(args.truncate_dim, args.quantize, args.rescore_multiplier)
    with staged_folder(args.output_dir, TOOL, **output_rule(args), log=print) as staging:
        results = evaluate_variants(encoder, tasks, variants, cache=ResultCache(staging),
                                    encode_kwargs={"batch_size": args.batch_size})

        # 4. Summary, reference deltas, each variant's retention, table.
        summary = summarize(tasks, results[BASELINE])
        if reference is not None:
            add_reference(summary, results[BASELINE], reference)
        add_variants(summary, [(v.describe(meta.embed_dim), r) for v, r in results.items() if v != BASELINE])
        (Path(staging) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        result_folder = ResultCache(staging).get_task_result_path(tasks[0].metadata.name, meta).parent
        result_folder = output_dir / result_folder.relative_to(staging)
    print(format_table(summary))
    print(f"results: {result_folder}, summary: {output_dir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
