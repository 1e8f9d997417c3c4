"""The GPU checks in one command, for whoever has a GPU for a few minutes (≤ 8 on one H100 / H200).

    python -m benchmarks.gpu_suite --out gpu_suite_out      # on the GPU machine: gpu_suite.json + gpu_suite.md
    python -m benchmarks.gpu_suite --dry-run --out /tmp/g   # CPU, toy sizes, every part (tests/test_gpu_suite.py)
    python -m benchmarks.gpu_suite --fetch-wheels           # here, with network: .whl/ for an image without DeepSpeed

Parts (PARTS, in order; each writes its own table):
  - mfu: BERT-base step (benchmarks/bench_memory.py: train_step + AdamW, bf16 autocast, query 32 + passage 128
    tokens), plain and GradCache, under every attention set-up available — SDPA, flash-attention 2 if the flash-attn
    package is installed, SDPA + torch.compile — and the best of each. Unpadding is not available: BiEncoder has
    no padding-free (varlen) path, and these batches have no padding to remove.
  - ceiling: one GradCache + tiled-loss step (tiles of 4,096) at 65,536 and 262,144 pairs (bench_memory), its
    peak memory, or the error (out of memory) it stopped with.
  - zero: DDP and ZeRO-1/2/3 + GradCache at a global batch of 4,096 (benchmarks/bench_zero.py: one process,
    NCCL), pairs/s and collectives per step. In a world of one, accelerate still wraps DDP but skips `no_sync`,
    so "ddp+gradcache" all-reduces (locally) once per chunk; its check line says so.
  - lora: one LoRA step of a random-weight Gemma2-9B-shaped bi-encoder (benchmarks/bench_lora_big.py: bf16
    weights, rank 16 on the decoder targets, gradient checkpointing, GradCache), its peak memory and pairs/s.

The image of the lent GPU machines has no DeepSpeed (nor its pydantic and hjson): `--fetch-wheels` puts them in
.whl/ (git-ignored) here, and on the GPU machine the suite installs them from there into a temporary folder at
start when `import deepspeed` fails. benchmarks/README.md ("GPU suite") gives the exact commands.
Without a GPU and without --dry-run it stops with a message (exit 2). Each part has a share of the time; a part
that fails is recorded with its error and the next one runs.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = os.path.join(REPO, ".whl")
# What the GPU image lacks (benchmarks/README.md): DeepSpeed is built into a wheel from pip's source distribution,
# the others are downloaded as CPython 3.12 manylinux wheels. Versions: those requirements.txt installs here.
DEEPSPEED = "deepspeed==0.19.8"
DEEPSPEED_NEEDS = ("hjson==3.1.0", "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
                   "typing-inspection==0.4.5")

# sizes: GPU, and --dry-run's toy CPU ones
SIZES = {
    "gpu": {"mfu": {"batches": [1024], "chunk": 512, "query_len": 32, "passage_len": 128, "steps": 3},
            "ceiling": {"batches": [65536, 262144], "chunk": 1024, "query_len": 16, "passage_len": 32, "tile": 4096},
            "zero": {"batch": 4096, "chunks": 8, "hidden": 384, "layers": 6, "vocab": 30522, "steps": 3, "warmup": 1,
                     "arms": ["ddp+gradcache", "zero1+gradcache", "zero2+gradcache", "zero3+gradcache"]},
            "lora": {"shape": "gemma2-9b", "batch": 256, "chunk": 32, "query_len": 32, "passage_len": 128,
                     "rank": 16, "steps": 1}},
    # one process per configuration, as on the GPU, but fewer of them (ZeRO-1/2 differ from ZeRO-3 in config only)
    "dry": {"mfu": {"batches": [8], "chunk": 4, "query_len": 8, "passage_len": 8, "steps": 1},
            "ceiling": {"batches": [256], "chunk": 64, "query_len": 8, "passage_len": 8, "tile": 64},
            "zero": {"batch": 8, "chunks": 4, "hidden": 64, "layers": 1, "vocab": 1000, "steps": 1, "warmup": 1,
                     "arms": ["ddp+gradcache", "zero3+gradcache"]},
            "lora": {"shape": "tiny", "batch": 8, "chunk": 4, "query_len": 8, "passage_len": 8, "rank": 8,
                     "steps": 1}},
}


def run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """A benchmark subprocess from the repository root; raises with its output's tail when it fails."""
    proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=max(timeout, 1),
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return proc


def bench_memory(args, sizes: dict, batch: int, chunk: int, extra: list[str], timeout: float) -> dict:
    """One configuration of benchmarks/bench_memory.py, in a fresh process as it runs each one -> its result."""
    from benchmarks.bench_memory import PEAK_TFLOPS

    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--one", "--device", args.device, "--batch", str(batch),
           "--chunk", str(chunk), "--query-len", str(sizes["query_len"]), "--passage-len", str(sizes["passage_len"]),
           *extra]
    if args.device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        cmd += ["--peak-tflops", str(peak)] if peak else []
    if args.device == "cpu":  # as bench_memory runs CPU steps; one thread: the dry run shares the test machine
        cmd += ["--threads", "1"]
    env = {} if args.device == "cuda" else {"MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = run(cmd, timeout, env)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ---------------------------------------------------------------- parts: (args, sizes, seconds) -> (results, table)
def attention_setups(dry_run: bool) -> list[tuple[str, list[str]]]:
    setups = [("sdpa", ["--attn", "sdpa"])]
    try:
        import flash_attn  # noqa: F401

        setups.append(("flash-attention 2", ["--attn", "flash_attention_2"]))
    except ImportError:
        pass
    if not dry_run:  # compiling takes longer than the whole dry run may
        setups.append(("sdpa + torch.compile", ["--attn", "sdpa", "--compile"]))
    return setups


def part_mfu(args, sizes: dict, seconds: float):
    runs = [(name, extra, chunk) for name, extra in attention_setups(args.dry_run) for chunk in (0, sizes["chunk"])]
    results, rows = [], []
    for i, (name, extra, chunk) in enumerate(runs):
        timeout = (seconds - (time.monotonic() - args.part_start)) / (len(runs) - i)
        results.append({"setup": name, **attempt(lambda chunk=chunk, extra=extra, timeout=timeout: bench_memory(
            args, sizes, sizes["batches"][0], chunk, ["--steps", str(sizes["steps"]), *extra], timeout),
            {"batch": sizes["batches"][0], "chunk": chunk})})
    for r in results:
        mode = "GradCache" if r["chunk"] else "plain"
        if "error" in r:
            rows.append(f"| {r['setup']} | {mode} | failed: {r['error'][-120:]} | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "n/a (CPU)"
        rows.append(f"| {r['setup']} | {mode} | {r['pairs_per_s']:.0f} | {r['tokens_per_s']:.0f} | {mfu} |")
    for mode, on in (("plain", False), ("GradCache", True)):
        done = [r for r in results if "error" not in r and bool(r["chunk"]) == on]
        if done:
            best = max(done, key=lambda r: r["pairs_per_s"])
            mfu = f"{best['mfu']:.1%}" if best.get("mfu") else "n/a (CPU)"
            rows.append(f"| **best: {best['setup']}** | {mode} | {best['pairs_per_s']:.0f} | "
                        f"{best['tokens_per_s']:.0f} | {mfu} |")
    table = [(f"Batch {sizes['batches'][0]} pairs, query {sizes['query_len']} + passage {sizes['passage_len']} "
              f"tokens, GradCache chunk {sizes['chunk']}."), "", "| attention | step | pairs/s | tokens/s | MFU |",
             "|---|---|---|---|---|", *rows, "",
             "Unpadding: not available (BiEncoder has no padding-free path; these batches have no padding)."]
    return results, table


def part_ceiling(args, sizes: dict, seconds: float):
    results = []
    for i, batch in enumerate(sizes["batches"]):  # one at a time: a failure at 262,144 keeps 65,536's result
        timeout = (seconds - (time.monotonic() - args.part_start)) / (len(sizes["batches"]) - i)
        results.append(attempt(lambda batch=batch, timeout=timeout: bench_memory(args, sizes, batch, sizes["chunk"], [
            "--loss-tile", str(sizes["tile"]), "--steps", "0"], timeout), {"batch": batch}))
    mem = "peak CUDA allocated" if args.device == "cuda" else "peak RSS"
    table = [f"Query {sizes['query_len']} + passage {sizes['passage_len']} tokens; one step (warm-up included).", "",
             f"| pairs | GradCache chunk | loss tile | {mem} (MiB) | seconds for the step |", "|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            table.append(f"| {r['batch']:,} | {sizes['chunk']} | {sizes['tile']} | failed: {r['error'][-150:]} | |")
        else:
            table.append(f"| {r['batch']:,} | {r['chunk']} | {r['loss_tile']} | {r['peak_bytes'] / 2**20:.0f} | "
                         f"{r['seconds_per_step']:.1f} |")
    return results, table


def attempt(measure, what: dict) -> dict:
    """measure() -> its result, or `what` with the error it stopped with (out of memory, a time-out)."""
    try:
        return measure()
    except subprocess.TimeoutExpired as e:
        return {**what, "error": f"timed out after {e.timeout:.0f} s"}
    except (RuntimeError, StopIteration) as e:
        return {**what, "error": str(e)[-300:] or type(e).__name__}


def part_zero(args, sizes: dict, seconds: float):
    from benchmarks import bench_zero

    zargs = argparse.Namespace(nproc=1, cuda=args.device == "cuda", threads=1, chunks=[sizes["chunks"]],
                               batch_size=sizes["batch"], query_len=32 if args.device == "cuda" else 8,
                               passage_len=128 if args.device == "cuda" else 8, hidden=sizes["hidden"],
                               layers=sizes["layers"], vocab=sizes["vocab"], steps=sizes["steps"],
                               warmup_steps=sizes["warmup"], rounds=1, load="")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, arm in enumerate(sizes["arms"]):
            zargs.arm_timeout = (seconds - (time.monotonic() - args.part_start)) / (len(sizes["arms"]) - i)
            try:
                results += bench_zero.run_arm(zargs, arm, os.path.join(tmp, f"{arm}.json"))
            except subprocess.TimeoutExpired as e:
                results.append({"arm": arm, "error": f"timed out after {e.timeout:.0f} s"})
            except SystemExit as e:  # bench_zero's message for a failed launch
                results.append({"arm": arm, "error": str(e)[-300:]})
    done = [r for r in results if "error" not in r]
    table = bench_zero.report(zargs, done, "")[1:] if done else []
    table += [f"{r['arm']}: failed: {r['error'][-200:]}" for r in results if "error" in r]
    return results, table


def part_lora(args, sizes: dict, seconds: float):
    cmd = [sys.executable, "-m", "benchmarks.bench_lora_big", "--device", args.device,
           *[x for k in ("shape", "rank", "batch", "chunk", "steps") for x in (f"--{k}", str(sizes[k]))],
           "--query-len", str(sizes["query_len"]), "--passage-len", str(sizes["passage_len"])]

    def measure() -> dict:
        proc = run(cmd, seconds - (time.monotonic() - args.part_start))
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])

    r = attempt(measure, {"shape": sizes["shape"], "batch": sizes["batch"]})
    mem = "peak CUDA allocated" if args.device == "cuda" else "peak RSS"
    table = [(f"Random-weight Gemma2 ({sizes['shape']} shape), LoRA rank {sizes['rank']} on the decoder targets, "
              f"gradient checkpointing; batch {sizes['batch']} pairs, GradCache chunk {sizes['chunk']}, query "
              f"{sizes['query_len']} + passage {sizes['passage_len']} tokens."), "",
             f"| trained / frozen parameters | attention | pairs/s | s/step | {mem} (MiB) |", "|---|---|---|---|---|"]
    if "error" in r:
        table.append(f"| failed: {r['error'][-200:]} | | | | |")
    else:
        table.append(f"| {r['trained_parameters']:,} / {r['frozen_parameters']:,} | {r['attention']} | "
                     f"{r['pairs_per_s']:.1f} | {r['seconds_per_step']:.2f} | {r['peak_bytes'] / 2**20:.0f} |")
    return [r], table


PARTS = {  # name: (function, share of the time budget)
    "mfu": (part_mfu, 0.30),
    "ceiling": (part_ceiling, 0.25),
    "zero": (part_zero, 0.25),
    "lora": (part_lora, 0.20),
}


# ---------------------------------------------------------------- wheels for an image without DeepSpeed
def fetch_wheels() -> None:
    """Here (network): DeepSpeed as a wheel built from its source distribution, its missing needs as CPython 3.12
    manylinux wheels, all into .whl/."""
    os.makedirs(WHEELS, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", WHEELS, DEEPSPEED], check=True)
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", WHEELS, *DEEPSPEED_NEEDS],
                   check=True)
    print(f"wheels in {WHEELS}: {', '.join(sorted(os.listdir(WHEELS)))}")


def ensure_deepspeed() -> str:
    """`import deepspeed` works, installing the carried wheels into a temporary folder first if needed (also for
    the subprocesses, through PYTHONPATH) -> what was done."""
    try:
        import deepspeed  # noqa: F401

        return "deepspeed already installed"
    except ImportError:
        pass
    wheels = sorted(glob.glob(os.path.join(WHEELS, "*.whl")))
    if not wheels:
        raise SystemExit(f"gpu_suite: DeepSpeed is not installed and {WHEELS} holds no wheels; run "
                         f"`python -m benchmarks.gpu_suite --fetch-wheels` where pip has network, and carry .whl/")
    target = tempfile.mkdtemp(prefix="gpu_suite_site_")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", target, *wheels], check=True)
    sys.path.insert(0, target)
    os.environ["PYTHONPATH"] = os.pathsep.join([target, *filter(None, [os.environ.get("PYTHONPATH")])])
    return f"installed {len(wheels)} carried wheels into {target}"


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_suite_out", help="folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--dry-run", action="store_true", help="every part on CPU at toy sizes (seconds)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), help=f"from {', '.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all parts, shared out as PARTS says "
                    "(default 450 on a GPU; 900 in a dry run, where it only guards against a hang)")
    ap.add_argument("--fetch-wheels", action="store_true", help="fill .whl/ here (needs network), then stop")
    args = ap.parse_args(argv)
    if args.fetch_wheels:
        fetch_wheels()
        return
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts {' '.join(unknown)}: unknown; choose from {', '.join(PARTS)}")
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_suite: no CUDA GPU is visible (torch.cuda.is_available() is False). Run it on a GPU machine, or "
              "pass --dry-run for the CPU toy run of every part.", file=sys.stderr)
        raise SystemExit(2)
    args.device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run:  # the carried DeepSpeed wheel was built on a CPU host: never let it guess
        os.environ.setdefault("DS_ACCELERATOR", "cuda")
    budget = args.budget or (900.0 if args.dry_run else 450.0)
    setup = ensure_deepspeed()
    from benchmarks.machine import describe_machine

    sizes = SIZES["dry" if args.dry_run else "gpu"]
    report = {"machine": describe_machine(), "dry_run": args.dry_run, "setup": setup, "parts": {},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    md = [f"# GPU suite{' (dry run: CPU, toy sizes)' if args.dry_run else ''}", "",
          f"{report['machine']}; {report['date']}; {setup}", ""]
    os.makedirs(args.out, exist_ok=True)
    for name in args.parts:
        function, share = PARTS[name]
        args.part_start = time.monotonic()
        print(f"gpu_suite: {name} ...", file=sys.stderr, flush=True)
        try:
            results, table = function(args, sizes[name], share * budget)
        except Exception as e:  # noqa: BLE001 - recorded; the next part still runs
            results, table = {"error": f"{type(e).__name__}: {e}"[-500:]}, [f"failed: {type(e).__name__}: {e}"[-500:]]
        elapsed = time.monotonic() - args.part_start
        report["parts"][name] = {"sizes": sizes[name], "seconds": elapsed, "results": results}
        md += [f"## {name} ({elapsed:.0f} s)", "", *table, ""]
        with open(os.path.join(args.out, "gpu_suite.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(args.out, "gpu_suite.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
