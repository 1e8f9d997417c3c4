"""The batch planner for contrastive training: length buckets, same-file batches with weights, no duplicate texts.

It works on per-example inputs given as sequences — length keys, text ids, file index (data/sampler_inputs.py
computes them from the examples; data/train_sampler.py wires it all up for train.py) — and never sees a text.

Every step draws one *global* batch (batch_size × world_size examples) and gives rank r the slice
[r·B, (r+1)·B). All ranks compute the same plan from (seed, epoch) without talking to each other, so they
agree on every global batch, see similar lengths at each step and run the same number of steps.

How one epoch is planned (`BucketBatchSampler.plan(epoch)`):

1. Pools. A batch is drawn from one pool of examples: its training file when `same_file` is on (BGE's
   `same_dataset_within_batch`: every global batch comes from one file), else all examples form one pool.
2. One pass over a pool. Inside a pool, examples are split into length buckets by a length key: the longest
   positive / negative in tokens (rounded up to 8), then the query's tokens (`sampler_inputs.length_keys`; BGE's
   split_by_length uses max(query, passages), which any int key reproduces). Buckets are ranges of that key
   holding about equal numbers of examples (`quantile_boundaries`) or given by token edges. Each bucket is
   shuffled and cut into full global batches ("pure" batches: every example from one bucket).
   Leftovers: each bucket's last incomplete batch is not dropped. The leftovers of all buckets of the pool are
   sorted by length and cut into full global batches ("mixed" batches, spanning neighbouring buckets; at most
   one fewer than the number of buckets per pass). Only what is still left after that — fewer than one global
   batch per pool and pass — sits out this epoch (counted in `left_out`); the reshuffle of the next epoch
   leaves out different examples. So a pass yields floor(N_pool / global_batch) batches, like plain random
   batching, with all but a handful of them single-bucket.
   Duplicates: while a batch is filled, an example whose query or positive text is already in the batch as a
   query, positive or hard negative — or whose hard negative is already there as a query or positive — is
   deferred (counted in `deferred`): it stays at the front of the queue and goes into the next batch of the same
   bucket (else into the mixed batches, else it sits out this epoch, counted in `left_out`). A duplicate
   positive would be a false in-batch negative; a hard negative equal to another row's query or positive would
   be one too. Texts compare by exact string equality. Random negatives that GroupedDataset draws from the
   corpus for rows with too few hard negatives are picked per epoch after batching and are not checked.
3. Order. Batches of a pass are shuffled, so the buckets come in random order. Without weights the epoch
   interleaves the pools' batches in a random order, each batch once. With `file_weights`, each step's
   file is drawn with probability w_d / Σw (a seeded generator). Either way an epoch has
   Σ_d floor(N_d / global_batch) steps — one pass over all data's worth. A file that runs out of batches
   within the epoch (upsampled by its weight, or short of batches because duplicates could not be placed)
   starts a fresh pass with a new shuffle (counted in `extra_passes`); a downsampled file leaves some of its
   batches unseen that epoch.

Everything is seeded by strings "seed:epoch:..." (Python's string seeding is stable across processes and
runs), so a plan is a pure function of (data, settings, seed, epoch): `state_dict()` / `load_state_dict()`
store the epoch and the position in it, and a resumed run continues at exactly the next batch.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

from torch.utils.data import Sampler

MIXED = -1  # `GlobalBatch.bucket` of a batch made of several buckets' leftovers
ALL_FILES = -1  # `GlobalBatch.file` when batches are not kept to one file (the one pool is all the data)
MAX_FRONT_DEFERRED = 1  # × global batch: deferred examples kept at the queue's front; more go to its back


def quantile_boundaries(keys: Sequence, num_buckets: int) -> list:
    """Inclusive upper edges of up to num_buckets buckets of about equal size along the sorted keys.

    Keys are ints or tuples (compared in order); equal keys always share a bucket, so equal edges merge and a
    bucket can be larger than N / num_buckets. The last bucket is open (every key above the last edge).
    """
    if num_buckets < 1:
        raise ValueError(f"number of length buckets must be ≥ 1, got {num_buckets}")
    s = sorted(keys)
    edges: list = []
    for k in range(1, num_buckets):
        edge = s[k * len(s) // num_buckets - 1]
        if (not edges or edge > edges[-1]) and edge < s[-1]:
            edges.append(edge)
    return edges


def auto_num_buckets(num_examples: int, global_batch: int, most: int = 64) -> int:
    """Default bucket count: at least 2 global batches per bucket, at most `most` buckets.

    More buckets, less padding; but each bucket must hold whole batches, and the fewer batches a bucket holds the
    less random a batch's company is (and the more leftovers go to mixed batches).
    """
    return max(1, min(most, num_examples // (2 * global_batch)))


def check_sampler_options(num_files: int, file_weights: Sequence[float] | None, same_file: bool,
                          boundaries: Sequence[int] | None) -> None:
    """Raise ValueError with what to change for inconsistent options (cheap: call it before loading a model).

    Messages name train.py's options (--dataset-weights, --same-dataset-batches)."""
    if file_weights:
        w = [float(x) for x in file_weights]
        if len(w) != num_files:
            raise ValueError(f"{len(w)} dataset weights for {num_files} training files; give one weight per file, "
                             "in the order of --train-data")
        if any(not x >= 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"dataset weights must be ≥ 0 with a positive sum, got {w}")
        if not same_file:
            raise ValueError("dataset weights choose the file of each batch, so they need same-dataset batches "
                             "(add --same-dataset-batches)")
    if boundaries:
        b = list(boundaries)
        if any(int(x) != x or x <= 0 for x in b) or any(x >= y for x, y in zip(b, b[1:])):
            raise ValueError(f"bucket boundaries must be positive, strictly increasing token lengths, got {b}")


# ------------------------------------------------------------------------------------------ plan
@dataclass
class GlobalBatch:
    indices: list[int]  # batch_size × world_size example indices; rank r takes [r·B, (r+1)·B)
    file: int  # file index, or ALL_FILES
    bucket: int  # length bucket, or MIXED


@dataclass
class EpochPlan:
    batches: list[GlobalBatch]
    deferred: int = 0  # times an example was put off to a later batch because a text was already in the batch
    left_out: int = 0  # examples in no batch of this epoch's first pass of their pool (see module docstring)
    extra_passes: int = 0  # fresh passes started because a pool ran out of batches within the epoch
    mixed: int = field(init=False)

    def __post_init__(self):
        self.mixed = sum(b.bucket == MIXED for b in self.batches)


class BucketBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch; the algorithm is in the module docstring.

    length_keys: per example a length key — (passage tokens rounded to 8, query tokens) from
        `sampler_inputs.length_keys`, or any int such as BGE's max length — or None for no length buckets
        (random batches).
    boundaries: inclusive upper edges of the buckets in tokens of the key's first part, e.g. [32, 64, 128]
        (passage lengths); None = `num_buckets` buckets of about equal size (`quantile_boundaries`).
    num_buckets: 0 = `auto_num_buckets` (2+ global batches per bucket, at most 64).
    file_index: per example, the index of its training file (`Example.file_index`); used with same_file /
        file_weights. file_names: for messages.
    text_ids: `sampler_inputs.text_ids(examples)` to keep duplicate texts out of a global batch; None = no check.
    content_digest: returns a hash of the examples' content, for the resume fingerprint (computed on first use).
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int = 42, rank: int = 0, world_size: int = 1,
                 length_keys: Sequence | None = None, boundaries: Sequence[int] | None = None, num_buckets: int = 0,
                 file_index: Sequence[int] | None = None, same_file: bool = False,
                 file_weights: Sequence[float] | None = None, file_names: Sequence[str] | None = None,
                 text_ids: Sequence[tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
                 content_digest: Callable[[], str] | None = None):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size ≥ 1 and 0 ≤ rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        for name, seq in (("length_keys", length_keys), ("file_index", file_index), ("text_ids", text_ids)):
            if seq is not None and len(seq) != num_examples:
                raise ValueError(f"{name} has {len(seq)} entries for {num_examples} examples")
        if num_examples < self.global_batch:
            raise ValueError(f"{num_examples} training examples are fewer than one global batch "
                             f"({batch_size} per process × {world_size} processes); lower --batch-size")
        files = list(file_index) if file_index is not None else [0] * num_examples
        self.num_files = max(files) + 1
        self.file_names = list(file_names) if file_names else [f"file {d}" for d in range(self.num_files)]
        check_sampler_options(len(self.file_names), file_weights, same_file, boundaries)
        self.length_keys = list(length_keys) if length_keys is not None else None
        self.text_ids = text_ids
        # hash of the examples themselves (data.examples.examples_digest), computed on first use: only checkpoints
        # need it, and on millions of rows it takes seconds
        self._content_digest, self._digest = content_digest, None

        # buckets
        if self.length_keys is None:
            self.boundaries: list[int] = []
        elif boundaries:  # on the first part of tuple keys: (b, inf) sorts after every (b, query length)
            tuple_keys = isinstance(self.length_keys[0], tuple)
            self.boundaries = [(int(x), float("inf")) if tuple_keys else int(x) for x in boundaries]
        else:
            self.boundaries = quantile_boundaries(
                self.length_keys, num_buckets or auto_num_buckets(num_examples, self.global_batch))
        self.bucket_of = ([bisect.bisect_left(self.boundaries, n) for n in self.length_keys] if self.length_keys is not None
                          else [0] * num_examples)
        self.num_buckets = len(self.boundaries) + 1

        # pools: one per file with same-file batches, else one for all
        self.weights = [float(x) for x in file_weights] if file_weights else None
        self.same_file = same_file
        pool_of = files if same_file else [0] * num_examples
        self.pools = sorted(set(pool_of))
        # per pool, per bucket: example indices in ascending order (shuffled per pass)
        self._members = {p: [[] for _ in range(self.num_buckets)] for p in self.pools}
        for i, (p, b) in enumerate(zip(pool_of, self.bucket_of)):
            self._members[p][b].append(i)
        self._pool_size = {p: sum(map(len, self._members[p])) for p in self.pools}
        self._nominal = {p: self._pool_size[p] // self.global_batch for p in self.pools}
        for p in self.pools:
            usable = self.weights is None or self.weights[p] > 0
            if self._nominal[p] == 0 and usable:
                raise ValueError(f"{self.file_names[p]} has {self._pool_size[p]} examples, fewer than one global "
                                 f"batch ({batch_size} per process × {world_size} processes), so with same-dataset "
                                 "batches it can never form a batch; merge it with another file, lower --batch-size, "
                                 "give it weight 0, or drop --same-dataset-batches")
        self.epoch, self.start_batch, self._yielded = 0, 0, 0
        self._cache: tuple[int, EpochPlan] | None = None

    # -------------------------------------------------------------- state
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside epoch {epoch}'s {len(self)} batches")
        self.epoch, self.start_batch, self._yielded = epoch, start_batch, 0

    def content_digest(self) -> str:
        if self._digest is None:
            self._digest = self._content_digest() if self._content_digest else ""
        return self._digest

    def fingerprint(self) -> str:
        """Hash of everything the plan depends on except (seed, epoch): data order, buckets, files, settings."""
        h = hashlib.sha256()
        h.update(repr((self.num_examples, self.global_batch, self.boundaries, self.same_file, self.weights,
                       self.content_digest())).encode())
        h.update(bytes(b % 256 for b in self.bucket_of))
        h.update(repr(sorted(self._pool_size.items())).encode())
        if self.text_ids is not None:
            h.update(repr(self.text_ids[:1000]).encode())
        return h.hexdigest()[:16]

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """Where the next batch is. batches_consumed: batches of this epoch the trainer has used; default: those
        this sampler has yielded (exact with num_workers=0; with DataLoader workers, which read ahead, pass it)."""
        position = batches_consumed if batches_consumed is not None else self.start_batch + self._yielded
        return {"epoch": self.epoch, "start_batch": position, "seed": self.seed, "global_batch": self.global_batch,
                "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("seed", self.seed), ("global_batch", self.global_batch), ("fingerprint", self.fingerprint())):
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state is from a run with a different {key} ({state[key]} vs {mine} now): "
                                 "the data, its order, the length buckets, the files' weights or batch_size × "
                                 "world_size changed, so the resumed run would not continue at the same batch")
        self.set_epoch(state["epoch"], state["start_batch"])

    # -------------------------------------------------------------- iteration
    def __len__(self) -> int:
        """Global batches (= steps) per epoch, the same on every rank and in every epoch."""
        return sum(self._nominal.values())

    def __iter__(self):
        plan = self.plan(self.epoch)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        self._yielded = 0
        for batch in plan.batches[self.start_batch:]:
            self._yielded += 1
            yield batch.indices[lo:hi]

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's global batches in order (cached for the current epoch)."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._plan(epoch))
        return self._cache[1]

    def _plan(self, epoch: int) -> EpochPlan:
        rng = random.Random(f"{self.seed}:{epoch}:order")
        if self.weights is None:
            order = [p for p in self.pools for _ in range(self._nominal[p])]
            rng.shuffle(order)
        else:
            order = rng.choices(range(len(self.weights)), weights=self.weights, k=len(self))
        streams = {p: _PoolStream(self, p, epoch) for p in sorted(set(order))}
        batches = [streams[p].next() for p in order]
        return EpochPlan(batches, deferred=sum(s.deferred for s in streams.values()),
                         left_out=sum(s.left_out for s in streams.values()),
                         extra_passes=sum(s.passes - 1 for s in streams.values()))

    def _one_pass(self, pool: int, rng: random.Random) -> tuple[list[GlobalBatch], int, int]:
        """One shuffled pass over a pool -> (batches in random order, deferrals, examples left out)."""
        file = pool if self.same_file else ALL_FILES
        batches, leftovers, deferred = [], [], 0
        for bucket, members in enumerate(self._members[pool]):
            queue = list(members)
            rng.shuffle(queue)
            full, rest, d = self._fill(queue)
            batches += [GlobalBatch(b, file, bucket) for b in full]
            leftovers += rest
            deferred += d
        leftovers.sort(key=lambda i: self.bucket_of[i] if self.length_keys is None else self.length_keys[i])
        mixed, left_out, d = self._fill(leftovers)
        for b in mixed:
            rng.shuffle(b)  # so that every rank gets a similar share of the lengths
        batches += [GlobalBatch(b, file, MIXED if len({self.bucket_of[i] for i in b}) > 1 else self.bucket_of[b[0]])
                    for b in mixed]
        rng.shuffle(batches)
        return batches, deferred + d, len(left_out)

    def _fill(self, queue: list[int]) -> tuple[list[list[int]], list[int], int]:
        """Cut a queue into full global batches without duplicate texts -> (batches, rest, deferrals).

        Examples that collide with the batch being filled are deferred: up to one global batch of them stays at
        the front of the queue (first in line for the next batch), more go to its back. The rest is what is left
        when the queue cannot fill another batch.
        """
        gb, batches, deferrals = self.global_batch, [], 0
        pending = deque(queue)
        while len(pending) >= gb:
            batch, front, back = [], [], []
            keys: set[int] = set()  # query / positive ids in the batch
            negs: set[int] = set()  # hard-negative ids in the batch
            for _ in range(len(pending)):
                i = pending.popleft()
                if self.text_ids is not None:
                    k, n = self.text_ids[i]
                    if any(t in keys or t in negs for t in k) or any(t in keys for t in n):
                        (front if len(front) < MAX_FRONT_DEFERRED * gb else back).append(i)
                        continue
                    keys.update(k)
                    negs.update(n)
                batch.append(i)
                if len(batch) == gb:
                    break
            deferrals += len(front) + len(back)
            pending.extendleft(reversed(front))
            pending.extend(back)
            if len(batch) < gb:  # scanned the whole queue: no full batch left
                pending.extendleft(reversed(batch))
                break
            batches.append(batch)
        return batches, list(pending), deferrals

    # -------------------------------------------------------------- report
    def describe(self) -> str:
        """Buckets, batches per epoch and what epoch 0 deferred or left out, for the training log."""
        gb = f"{self.batch_size}×{self.world_size}"
        if self.length_keys is None:
            head = "random batches (no length buckets)"
        else:
            sizes = [0] * self.num_buckets
            for b in self.bucket_of:
                sizes[b] += 1
            what = "passage tokens (rounded up to 8), then query tokens" if isinstance(self.length_keys[0], tuple) else "tokens"
            first = [e[0] if isinstance(e, tuple) else e for e in self.boundaries]
            head = (f"{self.num_buckets} length buckets by {what} (upper passage edges {sorted(set(first))}), "
                    f"{min(sizes)}–{max(sizes)} examples each")
        p = self.plan(self.epoch)
        parts = [f"{head}; {len(self)} global batches of {gb} per epoch"]
        if self.length_keys is not None:
            parts.append(f"{p.mixed} of them mixing bucket leftovers")
        if self.same_file:
            w = "" if self.weights is None else " weights " + ", ".join(
                f"{n}={x:g}" for n, x in zip(self.file_names, self.weights))
            parts.append(f"each from one file{w}")
        parts.append(f"epoch {self.epoch}: {p.left_out} examples sit out (fewer than a global batch per "
                     f"{'file' if self.same_file else 'epoch'}, reshuffled next epoch)")
        if self.text_ids is not None:
            parts.append(f"{p.deferred} deferrals to keep duplicate texts out of a batch")
        if p.extra_passes:
            parts.append(f"{p.extra_passes} extra passes over files that ran out")
        return "sampler: " + "; ".join(parts)


class _PoolStream:
    """Batches of one pool for one epoch: pass 0, then fresh passes (new shuffles) if the epoch needs more.

    deferred / left_out count pass 0 (what the epoch's one pass over the pool put off or could not place).
    """

    def __init__(self, sampler: BucketBatchSampler, pool: int, epoch: int):
        self.sampler, self.pool, self.epoch = sampler, pool, epoch
        self.queue: deque[GlobalBatch] = deque()
        self.passes, self.deferred, self.left_out = 0, 0, 0

    def next(self) -> GlobalBatch:
        if not self.queue:
            s = self.sampler
            rng = random.Random(f"{s.seed}:{self.epoch}:{self.pool}:{self.passes}")
            batches, deferred, left_out = s._one_pass(self.pool, rng)
            if not batches:
                where = s.file_names[self.pool] if s.same_file else "the training data"
                raise ValueError(f"{where}: no global batch of {s.global_batch} examples can be formed without "
                                 "repeating a text (query / positive / hard negative); lower --batch-size or turn "
                                 "off --dedup-batches")
            if self.passes == 0:
                self.deferred, self.left_out = deferred, left_out
            self.passes += 1
            self.queue.extend(batches)
        return self.queue.popleft()
