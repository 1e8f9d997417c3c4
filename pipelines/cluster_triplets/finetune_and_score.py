"""The chain's outer steps: embed the texts, fine-tune with train.py, score with evaluate.py, print the table.

train.py and evaluate.py run unchanged as their command lines (subprocesses of the same Python by default), so the
fine-tune is exactly what a user gets from the command line, and the scores are evaluate.py's clustering task:
mteb's V-measure plus clustering accuracy (Hungarian) and NMI of one k-means with k = number of labels.
A step whose command already finished (a `<name>.done.json` beside its output holding the same command) is not
run again, so a rerun of an interrupted chain picks up at the first unfinished step.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SCORES = (("cluster_accuracy", "ACC"), ("nmi", "NMI"), ("v_measure", "V-measure"))
DEFAULT_TRAIN_ARGS = ("--loss", "infonce", "--temperature", "0.05", "--group-size", "2", "--batch-size", "32",
                      "--epochs", "1", "--lr", "2e-5", "--query-max-len", "64", "--passage-max-len", "64",
                      "--report-to", "none")


def embed_texts(model_path: str, texts: list[str], batch_size: int = 64, device: str | None = None) -> np.ndarray:
    """[N, D] float32 embeddings as evaluate.py's clustering task makes them: the model's "Clustering" task prompt
    (none unless it saved one) and its passage length."""
    import torch

    from models.bi_encoder import BiEncoder

    model = BiEncoder.from_pretrained(model_path)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prompt = model.settings.task_prompts.get("Clustering", "")
    emb = model.encode(texts, batch_size, prompt, model.settings.passage_max_len, show_progress=True)
    return emb.numpy().astype(np.float32)


def run_subprocess(command: list[str], log_file: Path) -> None:
    """Run `command` from the repository root with its output in `log_file`; a failure raises with the log's end."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w", encoding="utf-8") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command[:3])} ... failed (exit {result.returncode}); log {log_file}:\n{tail}")


def run_once(command: list[str], done_file: Path, log_file: Path, runner=run_subprocess) -> bool:
    """Run `command` with `runner(command, log_file)` unless `done_file` records that this exact command finished.
    Returns True when it ran. `runner` may call train.py's / evaluate.py's `main` in the caller's process instead
    (the benchmark and the tests do; this package never imports those scripts)."""
    if done_file.is_file() and json.loads(done_file.read_text())["command"] == command:
        return False
    done_file.unlink(missing_ok=True)
    runner(command, log_file)
    done_file.write_text(json.dumps({"command": command}) + "\n")
    return True


def train_command(model: str, train_jsonl: Path, output_dir: Path, seed: int, extra: list[str] = ()) -> list[str]:
    """train.py on the triplet rows; `extra` flags come last and win over the defaults."""
    return [sys.executable, str(REPO / "train.py"), "--model", str(model), "--train-data", str(train_jsonl),
            *DEFAULT_TRAIN_ARGS, "--seed", str(seed), "--output-dir", str(output_dir), *extra]


def evaluate_command(model: str, eval_file: str, output_dir: Path, extra: list[str] = ()) -> list[str]:
    # --overwrite: the chain owns its eval folders, and reruns one whose command changed
    return [sys.executable, str(REPO / "evaluate.py"), "--model", str(model),
            "--local-task", f"clustering={eval_file}", "--output-dir", str(output_dir), "--overwrite", *extra]


def read_scores(eval_dir: Path) -> dict[str, float]:
    """{cluster_accuracy, nmi, v_measure} of the one task in `eval_dir/summary.json`."""
    summary = json.loads((Path(eval_dir) / "summary.json").read_text(encoding="utf-8"))
    (entry,) = summary.values()
    return {"v_measure": entry["main_score"], **entry.get("extra", {})}


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """Rows (name, scores) -> a Markdown table of ACC / NMI / V-measure (×100), with deltas to the first row."""
    head = "| model | " + " | ".join(label for _, label in SCORES) + " |"
    lines = [head, "|---|" + "---:|" * len(SCORES)]
    base = rows[0][1] if rows else {}
    for i, (name, scores) in enumerate(rows):
        cells = []
        for key, _ in SCORES:
            cell = f"{100 * scores[key]:.2f}"
            if i:
                cell += f" ({100 * (scores[key] - base[key]):+.2f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
