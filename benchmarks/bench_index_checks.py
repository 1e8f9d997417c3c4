"""What a prepared corpus's integrity checks cost (data/prepared/; issue 25, point 9).

    python -m benchmarks.bench_index_checks --rows 1000000 10000000 --corpus-rows 300000

1. At open, `check_index` on a synthetic index of N rows shaped like bench_data's corpus (pairs without hard
   negatives: 2 key hashes per row, 50 bytes of index per row), written with numpy beside a manifest (no shards: the
   check reads only the manifest's shard entries). Timed warm (the files just written are in the page cache, as on
   every start but the first after a reboot), best of --repeats: the checks at open (`check_index`, which
   checksums only the small record_batches.npy), and the CRC-32 of every index file that
   `verify_shards(contents=True)` adds on request.
2. Per row read, `PreparedCorpus.row` at random rows of a prepared synthetic corpus (bench_data's generator and
   `WordTokens` lengths), with the offsets check of each decoded record batch (`_check_offsets`) and with that
   check replaced by a no-op; and a loader's work per batch (32 random items of `PreparedGroupedDataset`,
   collated: tokenised and padded) both ways. CPU time of this process, median of alternating trials.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.machine import describe_machine


def synthetic_index(folder: str, n: int, seed: int = 0) -> dict:
    """index/*.npy of n rows and their manifest entries, as prepare writes them for pairs without negatives."""
    from data.prepared import INDEX, ROWS_PER_BATCH, file_crc32

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, INDEX), exist_ok=True)
    q, p = rng.integers(8, 17, n), rng.integers(6, 14, n) * 8
    batches = np.arange(0, n, ROWS_PER_BATCH)
    shard = batches // 1_000_000
    first_in_shard = np.searchsorted(batches, shard * 1_000_000)
    offset = 8 + (np.arange(len(batches)) - first_in_shard) * 2_000_000
    arrays = {"length_keys": (p.astype(np.int64) << 32) | q, "source": (np.arange(n) >= n // 2).astype(np.int32),
              "can_collide": np.zeros(n, np.bool_), "neg_count": np.zeros(n, np.int32),
              "scored": np.zeros(n, np.uint8), "key_offsets": np.arange(0, 2 * n + 1, 2, dtype=np.int64),
              "key_hashes": rng.integers(0, 2**63, 2 * n, dtype=np.int64).view(np.uint64),
              "neg_offsets": np.zeros(n + 1, np.int64), "neg_hashes": np.zeros(0, np.uint64),
              "record_batches": np.stack([shard, offset, batches], axis=1).astype(np.int64)}
    index = []
    for name, a in sorted(arrays.items()):
        file = os.path.join(folder, INDEX, name + ".npy")
        np.save(file, a)
        index.append({"file": f"{INDEX}/{name}.npy", "bytes": os.path.getsize(file), "crc32": file_crc32(file)})
    shards = [{"file": f"shards/shard-{k:05d}.arrow", "rows": int(min(n, (k + 1) * 1_000_000) - k * 1_000_000),
               "bytes": 2_000_000_000} for k in range(int(shard[-1]) + 1)]
    return {"rows": n, "sources": [{"path": "a.jsonl", "rows": n // 2, "files": ["a.jsonl"]},
                                   {"path": "b.jsonl", "rows": n - n // 2, "files": ["b.jsonl"]}],
            "settings": {"query_max_len": 64, "passage_max_len": 256}, "shards": shards, "index": index,
            "token_lengths": {"query": [int(q.min()), int(q.max())], "passage": [int(p.min()), int(p.max())]}}


def open_checks(n: int, repeats: int) -> dict:
    import data.prepared.format as prepared

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        manifest = synthetic_index(folder, n)
        values, crc = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            prepared.check_index(folder, manifest)
            values.append(time.perf_counter() - t)
            t = time.perf_counter()
            for entry in manifest["index"]:
                prepared._check_crc32(folder, "index file", entry)
            crc.append(time.perf_counter() - t)
        mib = sum(e["bytes"] for e in manifest["index"]) / 2**20
    return {"rows": n, "index_mib": round(mib), "check_index_s": round(min(values), 3),
            "crc32_all_index_files_s": round(min(crc), 3)}


def row_reads(corpus_rows: int, reads: int, loader_batches: int, trials: int) -> dict:
    """Per row read and per loader batch, CPU seconds of this process (`time.process_time`: less moved than wall
    time by other work on shared cores), median over `trials` alternating trials of each mode."""
    from transformers import AutoTokenizer

    import data.prepared.read as prepared
    from benchmarks.bench_data import WordTokens, vocabulary, write_corpus
    from data.collator import Collator
    from data.groups import PreparedGroupedDataset
    from data.prepared import PreparedCorpus, prepare
    from tests.helpers import minilm_path

    tokenizer_path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    collate = Collator(tokenizer)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        data, out = os.path.join(folder, "pairs.jsonl"), os.path.join(folder, "c")
        write_corpus(data, corpus_rows, vocabulary(tokenizer))
        prepare([data], tokenizer_path, out, count_tokens=WordTokens(), progress=False, log=lambda *a: None)
        rng = np.random.default_rng(0)
        times, check = {"checked": ([], []), "unchecked": ([], [])}, prepared._check_offsets
        for _ in range(trials):
            for mode in times:
                prepared._check_offsets = check if mode == "checked" else (lambda batch, checks: None)
                corpus = PreparedCorpus(out)
                rows = rng.integers(0, corpus_rows, reads)
                t = time.process_time()
                for i in rows:
                    corpus.row(int(i))
                times[mode][0].append((time.process_time() - t) / reads * 1e6)
                dataset = PreparedGroupedDataset(PreparedCorpus(out), 1, seed=0)  # what a DataLoader worker does
                batches = rng.integers(0, corpus_rows, (loader_batches, 32))
                t = time.process_time()
                for b in batches:
                    collate([dataset[int(i)] for i in b])
                times[mode][1].append((time.process_time() - t) / loader_batches * 1e3)
        prepared._check_offsets = check
    result = {mode: {"row_cpu_us": round(float(np.median(r)), 1), "batch_of_32_cpu_ms": round(float(np.median(b)), 2)}
              for mode, (r, b) in times.items()}
    return {"corpus_rows": corpus_rows, "reads_per_trial": reads, "trials": trials, **result}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--corpus-rows", type=int, default=100_000, help="rows of the prepared corpus for part 2 (0: skip)")
    ap.add_argument("--reads", type=int, default=5_000, help="random row reads per trial")
    ap.add_argument("--loader-batches", type=int, default=20, help="batches of 32 items, collated, per trial")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the open checks (best) ")
    ap.add_argument("--trials", type=int, default=9, help="alternating trials of the row reads (median)")
    a = ap.parse_args(argv)
    result = {"machine": describe_machine(), "open": [open_checks(n, a.repeats) for n in a.rows]}
    if a.corpus_rows:
        result["rows"] = row_reads(a.corpus_rows, a.reads, a.loader_batches, a.trials)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
