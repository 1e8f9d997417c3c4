"""benchmarks/gpu_suite.py: --dry-run runs every part on CPU at toy sizes (the same code the GPU run takes, a tiny
Gemma2 for the LoRA step) and writes its JSON and Markdown; without a GPU and without --dry-run it stops with a
message."""
import json
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import gpu_suite
from tests.helpers import REPO, subprocess_env


def test_without_a_gpu_and_without_dry_run_it_stops(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        gpu_suite.main(["--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "--dry-run" in err
    assert not (tmp_path / "out").exists()


def test_unknown_part_is_refused():
    with pytest.raises(SystemExit, match="--parts gemma: unknown; choose from mfu, ceiling, zero, lora"):
        gpu_suite.main(["--dry-run", "--parts", "gemma"])


@pytest.mark.multiprocess
def test_dry_run_runs_every_part(tmp_path):
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "--dry-run", "--out", str(tmp_path)],
                         check=False, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert list(report["parts"]) == list(gpu_suite.PARTS)
    mfu = report["parts"]["mfu"]["results"]
    assert sorted(bool(r["chunk"]) for r in mfu) == [False, True] and all("error" not in r for r in mfu), mfu
    ceiling = report["parts"]["ceiling"]["results"]
    assert [r["batch"] for r in ceiling] == gpu_suite.SIZES["dry"]["ceiling"]["batches"], ceiling
    assert all(r.get("peak_bytes", 0) > 0 for r in ceiling), ceiling
    zero = report["parts"]["zero"]["results"]
    assert [r["arm"] for r in zero] == gpu_suite.SIZES["dry"]["zero"]["arms"], zero
    assert all("error" not in r for r in zero), zero
    lora = report["parts"]["lora"]["results"]
    assert [r.get("shape") for r in lora] == ["tiny"] and all("error" not in r for r in lora), lora
    assert 0 < lora[0]["trained_parameters"] < lora[0]["frozen_parameters"] and lora[0]["peak_bytes"] > 0, lora
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "zero3+gradcache: " in table and "× DDP+GradCache" in table and "**best: sdpa**" in table
    print(f"dry run: {seconds:.0f} s")
