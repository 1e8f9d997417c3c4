"""benchmarks/collectives.py counts every torch.distributed collective once, with its payload; benchmarks/bench_zero.py
refuses sizes it cannot run. (Its collective counts under DDP and ZeRO: tests/test_distributed.py.)"""
import pytest
import torch
import torch.distributed as dist

from benchmarks import bench_zero
from benchmarks.collectives import CollectiveCounter


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_collective_counter_counts_each_call_once_with_its_payload(one_process_group):
    counter = CollectiveCounter().install()
    try:
        x = torch.ones(10)  # 40 bytes
        dist.all_reduce(x)
        dist.distributed_c10d.all_reduce(x)  # the other name DeepSpeed looks collectives up by
        out = torch.empty(10)
        dist.all_gather_into_tensor(out, x)
        dist._all_gather_base(out, x)  # deprecated: calls all_gather_into_tensor inside, counted once
        dist.all_gather([torch.empty(10)], x)
        dist.broadcast(x, src=0)
        snapshot = counter.snapshot()
    finally:
        counter.uninstall()
    assert snapshot["all_reduce"] == {"calls": 2, "bytes": 80}
    assert snapshot["all_gather"] == {"calls": 3, "bytes": 120}
    assert snapshot["broadcast"] == {"calls": 1, "bytes": 40}
    assert snapshot["reduce_scatter"] == {"calls": 0, "bytes": 0}
    assert not getattr(dist.all_reduce, "_counted", False)  # uninstalled


def test_collective_counter_counts_ddp_buckets(one_process_group):
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 4))
    counter = CollectiveCounter().install()
    try:
        counter.count_ddp_buckets(model)
        model(torch.ones(2, 8)).sum().backward()
        snapshot = counter.snapshot()
    finally:
        counter.uninstall()
    weights = (8 * 4 + 4) * 4
    assert snapshot["ddp_buckets"] == {"calls": 1, "bytes": weights}
    assert snapshot["all_reduce"] == {"calls": 1, "bytes": weights}  # DDP's all-reduce, seen through its hook


@pytest.mark.parametrize("argv, message", [
    (["--chunks", "3"], "--chunks 3: must be even, ≥ 2"),
    (["--chunks", "0"], "--chunks 0: must be even, ≥ 2"),
    (["--chunks", "-4"], "--chunks -4: must be even, ≥ 2"),
    (["--chunks", "128", "--batch-size", "32"], "--chunks 128: must be even, ≥ 2 .* divide --batch-size 32"),
    (["--batch-size", "0"], "--batch-size 0: must be ≥ 1"),
    (["--arms", "zero4+gradcache"], "--arms zero4\\+gradcache: unknown"),
])
def test_bench_zero_refuses_what_it_cannot_run(argv, message):
    with pytest.raises(SystemExit, match=message):
        bench_zero.main(argv)
