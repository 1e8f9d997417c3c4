"""data/batch_planner.py (the planner), data/length_buckets.py, data/text_ids.py and data/sampler_inputs.py: bucket
purity, rank alignment, no duplicate texts, determinism, exact resume, same-file batches with weights, and train.py
with all of it on.

The sampler is pure computation, so ranks 0..W-1 are simulated in one process.
"""
import json
import random

import numpy as np
import pytest

import train
from data.batch_planner import MIXED, BucketBatchSampler, stable_cell_order
from data.length_buckets import quantile_boundaries
from data.text_ids import rows_that_can_collide
from data.sampler_inputs import length_keys, text_ids
from data.batch_planner import check_sampler_options
from data.examples import Example
from data.tables import OptionError
from tests.helpers import DATA, make_tiny_run_files, minilm_path, needs_data


def random_keys(n, seed=0):
    rnd = random.Random(seed)
    return [(rnd.choice(range(8, 257, 8)), rnd.randint(4, 64)) for _ in range(n)]


def sampler(n=1000, batch_size=8, world_size=4, rank=0, **kw):
    kw.setdefault("length_keys", random_keys(n))
    return BucketBatchSampler(n, batch_size, world_size=world_size, rank=rank, **kw)


def examples_with_duplicates(n=400, seed=0):
    """Rows sharing queries and positives, and hard negatives that are other rows' positives or queries."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        q = f"query {rnd.randrange(n // 4)}"  # each query about 4 times
        pos = [f"doc {rnd.randrange(n // 2)}"]  # each positive about twice
        neg = [f"doc {rnd.randrange(n // 2)}", f"query {rnd.randrange(n // 4)}"]
        out.append(Example(q, pos, neg, source=f"mem:{i}"))
    return out


def batch_is_clean(batch, examples):
    """No text twice among queries + positives; no hard negative equal to another row's query / positive."""
    keys = [t for i in batch for t in {examples[i].query, *examples[i].pos}]
    if len(keys) != len(set(keys)):
        return False
    for i in batch:
        own = {examples[i].query, *examples[i].pos}
        others = set(keys) - own
        if others & set(examples[i].neg):
            return False
    return True


# ------------------------------------------------------------------ buckets
def test_pure_batches_hold_one_bucket_and_leftovers_form_few_mixed_batches():
    s = sampler()
    assert s.num_buckets > 4
    for epoch in range(3):
        plan = s.plan(epoch)
        assert len(plan.batches) == len(s) == 1000 // 32
        for b in plan.batches:
            buckets = {s.bucket_of[i] for i in b.indices}
            assert len(b.indices) == 32 and (b.bucket == MIXED or buckets == {b.bucket})
        assert 0 < plan.mixed <= s.num_buckets - 1
        placed = [i for b in plan.batches for i in b.indices]
        assert len(set(placed)) == len(placed) == 1000 - plan.left_out  # nothing repeated, the rest counted
        assert plan.left_out < 32


def test_buckets_that_hold_whole_batches_give_only_pure_batches():
    lengths = [(8 * (1 + i % 5), 10) for i in range(5 * 64)]  # 5 buckets of 64 = 2 global batches each
    s = BucketBatchSampler(len(lengths), 8, world_size=4, length_keys=lengths, boundaries=[8, 16, 24, 32])
    plan = s.plan(0)
    assert s.num_buckets == 5 and plan.mixed == 0 and plan.left_out == 0 and len(plan.batches) == 10
    assert all(len({lengths[i] for i in b.indices}) == 1 for b in plan.batches)
    assert len({b.bucket for b in plan.batches[:5]}) > 1  # bucket order is shuffled, not bucket by bucket


def test_ranks_get_disjoint_slices_of_the_same_global_batch_and_equal_steps():
    data = examples_with_duplicates(600)
    for world in (1, 3, 4):
        ranks = [BucketBatchSampler(600, 8, world_size=world, rank=r, length_keys=random_keys(600),
                                    text_ids=text_ids(data))
                 for r in range(world)]
        for epoch in (0, 1):
            for s in ranks:
                s.set_epoch(epoch)
            per_rank = [list(s) for s in ranks]
            assert {len(x) for x in per_rank} == {len(ranks[0])}  # same steps on every rank
            for step, global_batch in enumerate(ranks[0].plan(epoch).batches):
                slices = [per_rank[r][step] for r in range(world)]
                assert sum(slices, []) == global_batch.indices
                assert all(len(x) == 8 for x in slices)
                assert len(set(sum(slices, []))) == 8 * world


# ------------------------------------------------------------------ duplicates
def test_no_duplicate_texts_in_a_global_batch_and_collisions_are_deferred_not_dropped():
    data = examples_with_duplicates()
    s = BucketBatchSampler(len(data), 8, world_size=2, length_keys=random_keys(len(data)), text_ids=text_ids(data))
    for epoch in range(4):
        plan = s.plan(epoch)
        assert plan.deferred > 0
        assert all(batch_is_clean(b.indices, data) for b in plan.batches)
        if plan.extra_passes == 0:
            placed = {i for b in plan.batches for i in b.indices}
            assert len(placed) + plan.left_out == len(data)
    # the check above can fail: without text ids the same data puts duplicates together
    off = BucketBatchSampler(len(data), 8, world_size=2, length_keys=random_keys(len(data)))
    assert not all(batch_is_clean(b.indices, data) for b in off.plan(0).batches)


def test_data_where_no_clean_batch_exists_is_a_clear_error():
    data = [Example("same question", [f"doc {i}"]) for i in range(20)]
    s = BucketBatchSampler(20, 4, text_ids=text_ids(data))
    with pytest.raises(OptionError, match="without repeating a text.*lower batch_size or turn off dedup") as e:
        s.plan(0)
    assert e.value.fields == ("batch_size", "dedup")


# ------------------------------------------------------------------ determinism and resume
def test_deterministic_from_seed_and_epoch():
    def batches(seed, epoch):
        return [b.indices for b in sampler(seed=seed).plan(epoch).batches]

    assert batches(7, 0) == batches(7, 0) and batches(7, 3) == batches(7, 3)
    assert batches(7, 0) != batches(7, 1)
    assert batches(7, 0) != batches(8, 0)


def test_mid_epoch_resume_continues_at_the_exact_next_batch():
    data = examples_with_duplicates(600)
    kw = dict(length_keys=random_keys(600), text_ids=text_ids(data), world_size=2, rank=1, seed=3)
    first = BucketBatchSampler(600, 8, **kw)
    first.set_epoch(2)
    full = list(first)
    first.set_epoch(2)
    it = iter(first)
    seen = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    assert state["epoch"] == 2 and state["start_batch"] == 5

    resumed = BucketBatchSampler(600, 8, **kw)  # a new process
    resumed.load_state_dict(state)
    assert seen + list(resumed) == full
    # with DataLoader workers reading ahead, the trainer passes what it consumed
    assert first.state_dict(batches_consumed=3)["start_batch"] == 3

    other_data = BucketBatchSampler(600, 8, **{**kw, "length_keys": random_keys(600, seed=1)})
    with pytest.raises(ValueError, match="different fingerprint"):
        other_data.load_state_dict(state)
    other_batch = BucketBatchSampler(600, 4, **{**kw, "world_size": 2})
    with pytest.raises(ValueError, match="different global_batch"):
        other_batch.load_state_dict(state)


# ------------------------------------------------------------------ files and weights
FILE_SIZES = (400, 240, 160)
FILES = [d for d, n in enumerate(FILE_SIZES) for _ in range(n)]


def test_same_dataset_batches_take_each_file_once_per_epoch():
    s = sampler(len(FILES), batch_size=4, world_size=2, file_index=FILES, same_file=True)
    plan = s.plan(0)
    assert len(s) == sum(n // 8 for n in FILE_SIZES)
    for b in plan.batches:
        assert {FILES[i] for i in b.indices} == {b.file}
    assert [sum(b.file == d for b in plan.batches) for d in range(3)] == [n // 8 for n in FILE_SIZES]
    assert plan.extra_passes == 0
    assert len({b.file for b in plan.batches[:10]}) > 1  # files interleaved, not one after the other


def test_dataset_weights_set_each_files_share_of_batches():
    s = sampler(len(FILES), batch_size=4, world_size=2, file_index=FILES, same_file=True,
                file_weights=[1, 0, 3], seed=1)
    counts = [0, 0, 0]
    for epoch in range(5):
        plan = s.plan(epoch)
        assert len(plan.batches) == len(s)
        for b in plan.batches:
            assert {FILES[i] for i in b.indices} == {b.file}
            counts[b.file] += 1
    total = sum(counts)
    assert counts[1] == 0
    assert abs(counts[2] / total - 0.75) < 0.05, counts  # 500 draws: σ ≈ 0.02
    assert s.plan(0).extra_passes > 0  # file 2 (20 batches a pass) is upsampled to ~75 batches an epoch


@pytest.mark.parametrize("kw, message, field", [
    (dict(file_weights=[1, 2], same_file=True), r"dataset_weights \[1.0, 2.0\]: 2 weights for 3 training files",
     "dataset_weights"),
    (dict(file_weights=[1, -1, 1], same_file=True), "must be ≥ 0", "dataset_weights"),
    (dict(file_weights=[1, 1, 1]), r"need same-dataset batches \(set same_dataset\)", "dataset_weights"),
    (dict(sampling_alpha=0.5), r"^sampling_alpha: chooses the source", "sampling_alpha"),
    (dict(boundaries=[64, 32]), "strictly increasing", "boundaries"),
])
def test_bad_options_say_what_to_change(kw, message, field):
    sampler(len(FILES), batch_size=4, world_size=2, file_index=FILES)  # precondition: the defaults work
    with pytest.raises(OptionError, match=message) as e:
        sampler(len(FILES), batch_size=4, world_size=2, file_index=FILES, **kw)
    assert e.value.field == field and "--" not in str(e.value)  # a library error names the field, never a flag


def test_an_option_error_shows_a_command_lines_names():
    """train.py shows an OptionError with its flags: each {field} of the message becomes the name it is given."""
    with pytest.raises(OptionError) as e:
        check_sampler_options(2, None, False, None, sampling_alpha=0.5)
    flags = {"sampling_alpha": "--sampling-alpha", "same_dataset": "--same-dataset-batches"}
    assert str(e.value).startswith("sampling_alpha: ") and "(set same_dataset)" in str(e.value)
    shown = e.value.text(flags)
    assert shown.startswith("--sampling-alpha: ") and "(set --same-dataset-batches)" in shown


def test_file_smaller_than_a_global_batch_is_refused_with_same_dataset_batches():
    files = [0] * 100 + [1] * 5
    with pytest.raises(OptionError, match="small.jsonl has 5 examples, fewer than one global batch.*merge it"):
        sampler(105, batch_size=4, world_size=2, file_index=files, same_file=True,
                file_names=["big.jsonl", "small.jsonl"])
    with pytest.raises(OptionError, match="fewer than one global batch.*lower batch_size"):
        sampler(6, batch_size=4, world_size=2)


# ------------------------------------------------------------------ real tokenizer, train.py, padding
def test_length_keys_are_the_collators_padded_widths():
    from transformers import AutoTokenizer

    from data.collator import Collator

    tok = AutoTokenizer.from_pretrained(minilm_path())
    rows = [Example("short", ["a b c"], ["one two three four five six seven eight nine ten eleven"]),
            Example("a much longer question with many words in it " * 3, ["x"], prompt="query: ")]
    keys = length_keys(rows, tok, query_max_len=16, passage_max_len=64, query_prompt="q: ", progress=False)
    collate = Collator(tok, 16, 64, query_prompt="q: ")
    for ex, (passage_key, query_len) in zip(rows, keys):
        batch = collate([{"query": ex.query, "prompt": ex.prompt, "passages": ex.pos + ex.neg,
                          "teacher_scores": None, "label": None}])
        assert batch["passage"]["input_ids"].shape[1] == passage_key
        assert int(batch["query"]["attention_mask"].sum()) == query_len
    assert keys[1][1] == 16  # truncated like the collator


def test_train_py_with_buckets_same_file_batches_and_weights(tmp_path, capsys):
    model_dir, data = make_tiny_run_files(str(tmp_path), minilm_path(), rows=32)
    long_file = tmp_path / "long.jsonl"
    with open(long_file, "w", encoding="utf-8") as f:
        for i in range(24):
            words = " ".join(f"w{i}x{j}" for j in range(6 + i % 12))
            f.write(json.dumps({"query": f"question {i}", "pos": [words], "neg": [words + " no", "other " + words]})
                    + "\n")
    args = dict(model=model_dir, train_data=[data, str(long_file)], group_size=3, batch_size=4, max_steps=3,
                log_steps=1, report_to="none", same_dataset_batches=True, dataset_weights=[1.0, 2.0], num_buckets=2)
    result = train.main(train.TrainConfig.of(**args, output_dir=str(tmp_path / "out")))
    assert result["steps"] == 3
    out = capsys.readouterr().out
    assert "2 length buckets" in out and "each from one file" in out and "14 global batches of 4×1" in out
    # the flag, from train.py (it maps OptionError.fields to flags)
    with pytest.raises(SystemExit, match=r"data error: --dataset-weights \[1.0\]: 1 weights for 2 "
                                         "training files"):
        train.main(train.TrainConfig.of(**{**args, "dataset_weights": [1.0]}, output_dir=str(tmp_path / "bad")))


@needs_data
def test_bench_padding_buckets_cut_waste_3x_on_kornli(capsys):
    from benchmarks import bench_padding

    result = bench_padding.main(["--data", str(DATA / "train" / "kornli-triplets.jsonl"), "--tokenizer", minilm_path()])
    rows = result["rows"]
    random_waste = rows.pop("random batches")["waste"]
    (bucketed,) = rows.values()
    assert random_waste / bucketed["waste"] >= 3.0, (random_waste, bucketed)


# ------------------------------------------------------------------ the vectorised fill is the plain greedy fill
def reference_fill(queue, text_sets, gb):
    """The batch fill written plainly (the planner's previous implementation): take examples in queue order, defer
    one whose query/positive is already in the batch as any text or whose negative is there as a query/positive
    (up to gb deferred stay at the front, more go to the back); stop when the queue cannot fill a batch."""
    from collections import deque

    batches, deferrals, pending = [], 0, deque(queue)
    while len(pending) >= gb:
        batch, front, back, keys, negs = [], [], [], set(), set()
        for _ in range(len(pending)):
            i = pending.popleft()
            k, n = text_sets[i]
            if any(t in keys or t in negs for t in k) or any(t in keys for t in n):
                (front if len(front) < gb else back).append(i)
                continue
            keys.update(k)
            negs.update(n)
            batch.append(i)
            if len(batch) == gb:
                break
        deferrals += len(front) + len(back)
        pending.extendleft(reversed(front))
        pending.extend(back)
        if len(batch) < gb:
            pending.extendleft(reversed(batch))
            break
        batches.append(batch)
    return batches, list(pending), deferrals


@pytest.mark.parametrize("distinct", [5, 40, 400, 100_000])  # from every batch colliding to none
def test_vectorised_fill_equals_the_plain_greedy_fill(distinct):
    rnd = random.Random(distinct)
    n, gb = 1500, 12
    data = [Example(f"t{rnd.randrange(distinct)}", [f"t{rnd.randrange(distinct)}"],
                    [f"t{rnd.randrange(distinct)}" for _ in range(rnd.randrange(3))]) for _ in range(n)]
    ids = text_ids(data)
    s = BucketBatchSampler(n, gb, text_ids=ids)
    text_sets = [({hash(ex.query), *map(hash, ex.pos)}, set(map(hash, ex.neg))) for ex in data]
    for seed in range(3):
        queue = np.random.default_rng(seed).permutation(n)
        want_batches, want_rest, want_deferrals = reference_fill(queue.tolist(), text_sets, gb)
        batches, rest, deferrals = s._fill(queue)
        assert batches.tolist() == want_batches and rest.tolist() == want_rest and deferrals == want_deferrals
    assert distinct == 100_000 or want_deferrals > 0  # the collision path is exercised


# ------------------------------------------------------------------ the planner's array passes at scale
@pytest.mark.parametrize("parts_of", [10 ** 9, 7])  # one part; several parts (bounded memory at 100M+ rows)
def test_rows_that_can_collide_are_those_sharing_a_text_with_another_row(parts_of):
    rnd = random.Random(parts_of)
    data = [Example(f"t{rnd.randrange(300)}", [f"t{rnd.randrange(300)}"],
                    [f"t{rnd.randrange(300)}" for _ in range(rnd.randrange(3))]) for _ in range(200)]
    ids = text_ids(data)
    got = rows_that_can_collide(ids.key_offsets, ids.key_hashes, ids.neg_offsets, ids.neg_hashes,
                                entries_per_part=parts_of)
    want = []
    for i, a in enumerate(data):  # by the texts themselves, pair by pair
        keys_a, negs_a = {a.query, *a.pos}, set(a.neg) - {a.query, *a.pos}
        hit = False
        for j, b in enumerate(data):
            if j != i:
                keys_b, negs_b = {b.query, *b.pos}, set(b.neg) - {b.query, *b.pos}
                hit |= bool(keys_a & keys_b or keys_a & negs_b or negs_a & keys_b)
        want.append(hit)
    assert got.tolist() == want and 0 < sum(want) < len(want)


def test_quantile_boundaries_and_cell_order_in_chunks_equal_the_whole_array_versions():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 40, 1001) * 7
    s = np.sort(keys)
    for buckets in (1, 3, 8, 2000):
        want = []
        for k in range(1, buckets):  # the plain definition: the key at each quantile of the sorted keys
            edge = s[k * len(s) // buckets - 1].item()
            if (not want or edge > want[-1]) and edge < s[-1]:
                want.append(edge)
        assert quantile_boundaries(keys, buckets, chunk=97) == want
    cells = rng.integers(0, 5, 1001)
    order, starts = stable_cell_order(lambda lo, hi: cells[lo:hi], len(cells), 6, np.int32, chunk=64)
    assert order.tolist() == np.argsort(cells, kind="stable").tolist() and order.dtype == np.int32
    assert starts.tolist() == [0, *np.cumsum(np.bincount(cells, minlength=6)).tolist()]
