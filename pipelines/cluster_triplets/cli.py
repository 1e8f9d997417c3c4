"""The chain behind scripts/llm_triplets.py: embed -> sample -> judge -> convert -> train.py -> evaluate.py.

Arguments are parsed and every input checked (files, k, template, judge model or URL) before the first
embedding; train.py and evaluate.py run as their command lines (subprocesses by default). Usage: the script's
docstring, `python -m scripts.llm_triplets --help`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from pipelines.cluster_triplets import finetune_and_score
from pipelines.cluster_triplets.cache import JudgementCache
from pipelines.cluster_triplets.convert import training_rows, write_rows
from pipelines.cluster_triplets.judges import (DEFAULT_PERSPECTIVE, DEFAULT_TEMPLATE, EmbeddingJudge, GoldOracle,
                                          JudgeError, NoisyOracle, check_template)
from pipelines.cluster_triplets.run_judge import judge_triplets
from pipelines.cluster_triplets.sampling import ANCHOR_RULES, sample_triplets
from pipelines.cluster_triplets.texts import read_clustering_texts
from data.examples import DataError

JUDGES = ("oracle", "noisy-oracle", "causal-lm", "http", "embedding")


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.llm_triplets", description=description or __doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bi-encoder to fine-tune (folder or Hub id)")
    p.add_argument("--input", required=True,
                   help="clustering file the triplets come from (.csv/.tsv/.jsonl: text, label)")
    p.add_argument("--eval-file", help="clustering file scored before/after (default: --input, which scores the "
                                       "texts trained on)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--k", type=int, help="k-means clusters (default: the number of labels in --input)")
    p.add_argument("--num-triplets", type=int, default=1000)
    p.add_argument("--anchors", choices=ANCHOR_RULES, default="entropy", help="entropy (ClusterLLM) or random")
    p.add_argument("--closest-clusters", type=int, default=2, help="clusters the entropy and the two choices come "
                                                                   "from (default 2: the two closest)")
    p.add_argument("--seed", type=int, default=0, help="k-means, sampling, noisy oracle and train.py seed")
    j = p.add_argument_group("judge")
    j.add_argument("--judge", choices=JUDGES, required=True)
    j.add_argument("--agreement", type=float, default=1.0, help="noisy-oracle: fraction of answers kept gold")
    j.add_argument("--judge-model", help="causal-lm: a Hugging Face causal LM (folder or Hub id)")
    j.add_argument("--judge-chat-template", choices=("auto", "on", "off"), default="auto",
                   help="causal-lm: wrap the prompt in the tokenizer's chat template (auto: when it has one)")
    j.add_argument("--judge-device", help="causal-lm: cpu, cuda, ... (default cuda when available)")
    j.add_argument("--judge-url", help="http: OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    j.add_argument("--judge-api-model", help="http: the `model` field of each request")
    j.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="http: environment variable with the key")
    j.add_argument("--judge-concurrency", type=int, default=4, help="http: requests at a time")
    j.add_argument("--judge-max-retries", type=int, default=3, help="http: retries per request (back-off doubles)")
    j.add_argument("--judge-backoff", type=float, default=1.0, help="http: first back-off in seconds")
    j.add_argument("--judge-timeout", type=float, default=60.0, help="http: seconds per request")
    j.add_argument("--judge-batch-size", type=int, default=8, help="causal-lm: prompts per forward pass")
    j.add_argument("--perspective", default=DEFAULT_PERSPECTIVE, help="what 'closer' means: intent, topic, ...")
    j.add_argument("--prompt-template", default=DEFAULT_TEMPLATE,
                   help="format string with {anchor}, {a}, {b} and optionally {perspective}")
    j.add_argument("--prompt-template-file", help="read the template from this file instead")
    j.add_argument("--cache", help="judgement cache (default OUTPUT_DIR/judgements.jsonl)")
    p.add_argument("--self-pairs", action="store_true", help="also train on (anchor, anchor) rows")
    p.add_argument("--train-args", default="", help="extra train.py flags, e.g. '--epochs 2 --lr 3e-5'")
    p.add_argument("--eval-args", default="", help="extra evaluate.py flags")
    p.add_argument("--embed-batch-size", type=int, default=64)
    p.add_argument("--no-train", action="store_true", help="stop after writing triplets.jsonl")
    args = p.parse_args(argv)
    if args.prompt_template_file:
        args.prompt_template = Path(args.prompt_template_file).read_text(encoding="utf-8")
    try:
        check_template(args.prompt_template)
    except ValueError as err:
        p.error(f"--prompt-template: {err}")
    if args.judge == "causal-lm" and not args.judge_model:
        p.error("--judge causal-lm needs --judge-model")
    if args.judge == "http" and not (args.judge_url and args.judge_api_model):
        p.error("--judge http needs --judge-url and --judge-api-model")
    if not 0 <= args.agreement <= 1:
        p.error("--agreement must be in [0, 1]")
    return args


def build_judge(args, labels, embeddings_fn):
    if args.judge == "oracle":
        return GoldOracle(labels)
    if args.judge == "noisy-oracle":
        return NoisyOracle(labels, args.agreement, args.seed)
    if args.judge == "causal-lm":
        from pipelines.cluster_triplets.causal_lm_judge import CausalLMJudge

        chat = {"auto": None, "on": True, "off": False}[args.judge_chat_template]
        return CausalLMJudge(args.judge_model, batch_size=args.judge_batch_size, device=args.judge_device,
                             chat_template=chat)
    if args.judge == "http":
        from pipelines.cluster_triplets.http_judge import HTTPJudge

        return HTTPJudge(args.judge_url, args.judge_api_model, api_key_env=args.judge_api_key_env,
                         concurrency=args.judge_concurrency, max_retries=args.judge_max_retries,
                         backoff=args.judge_backoff, timeout=args.judge_timeout)
    return EmbeddingJudge(embeddings_fn(), name=args.model)


def main(argv=None, runner=finetune_and_score.run_subprocess, description: str | None = None) -> dict:
    """The whole chain; `runner` runs the train.py / evaluate.py command lines (default: subprocesses)."""
    args = parse_args(argv, description)
    out = Path(args.output_dir)
    try:
        data = read_clustering_texts(args.input)
        eval_file = args.eval_file or args.input
        read_clustering_texts(eval_file)  # checked now, scored later by evaluate.py
        k = args.k or len(set(data.labels))
        if not 2 <= k <= len(data.texts):
            raise DataError(f"{args.input}: --k {k} must be between 2 and the {len(data.texts)} texts")
        embeddings = None

        def get_embeddings():
            nonlocal embeddings
            if embeddings is None:
                print(f"1. embed {len(data.texts)} texts of {args.input}", flush=True)
                embeddings = finetune_and_score.embed_texts(args.model, data.texts, args.embed_batch_size)
            return embeddings

        judge = build_judge(args, data.labels, get_embeddings)
        if args.eval_file is None:
            print("note: scoring on --input itself; give --eval-file for texts the triplets did not come from")
        get_embeddings()
        print(f"2. sample {args.num_triplets} triplets (k = {k}, anchors by {args.anchors}, seed {args.seed})")
        sampled = sample_triplets(embeddings, data.texts, k, args.num_triplets, seed=args.seed, anchors=args.anchors,
                                  closest_clusters=args.closest_clusters)
        print(sampled.describe())
        print(f"3. judge with {judge.name}", flush=True)
        cache = JudgementCache(args.cache or out / "judgements.jsonl")
        try:
            judgements, report = judge_triplets(judge, sampled.triplets, data.texts, args.prompt_template,
                                                perspective=args.perspective, cache=cache, labels=data.labels)
        finally:
            cache.close()
        print(report.describe())
    except (DataError, ValueError, JudgeError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")

    rows = training_rows(judgements, data.texts, self_pairs=args.self_pairs)
    if not rows:
        sys.exit("error: the judge answered none of the triplets with A or B; nothing to train on")
    n = write_rows(out / "triplets.jsonl", rows)
    print(f"4. {n} training rows -> {out / 'triplets.jsonl'}")
    result = {"triplets": len(sampled.triplets), "rows": n, "judge": judge.name, "asked": report.asked,
              "from_cache": report.from_cache, "unreadable": report.unreadable, "agreement": report.agreement,
              "gold": dict(report.gold)}
    if args.no_train:
        (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    print("5. score the base model, fine-tune, score again", flush=True)
    eval_extra = shlex.split(args.eval_args)
    finetune_and_score.run_once(finetune_and_score.evaluate_command(args.model, eval_file, out / "eval-base",
                                                                    eval_extra),
                                out / "eval-base.done.json", out / "eval-base.log", runner)
    finetune_and_score.run_once(finetune_and_score.train_command(args.model, out / "triplets.jsonl", out / "model",
                                                                 args.seed, shlex.split(args.train_args)),
                                out / "train.done.json", out / "train.log", runner)
    finetune_and_score.run_once(finetune_and_score.evaluate_command(str(out / "model"), eval_file, out / "eval-tuned",
                                                                    eval_extra),
                                out / "eval-tuned.done.json", out / "eval-tuned.log", runner)
    base, tuned = finetune_and_score.read_scores(out / "eval-base"), finetune_and_score.read_scores(out / "eval-tuned")
    print(finetune_and_score.format_table([("base", base), (f"fine-tuned ({judge.name})", tuned)]))
    result.update(base=base, tuned=tuned)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

