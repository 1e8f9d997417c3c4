"""The batch planner for contrastive training: length buckets, same-file batches with weights, no duplicate texts.

It works on per-example inputs given as numpy arrays — length keys (data/length_buckets.py), text ids (64-bit
hashes, data/text_ids.py), file index — and never sees a text. They come from the examples (data/sampler_inputs.py,
raw files) or are memory-mapped from a prepared corpus (data/prepared/); data/train_sampler.py wires either into
train.py. Both paths give the same
arrays for the same rows, so they get the same batches. Time and memory are linear in the number of examples with
small constants (numpy passes over chunks of 4M rows, a sort per bucket's shuffle; Python work only for the few
batches where duplicates meet): it keeps 10 bytes per example (bucket 2, members sorted by pool and bucket 4,
the epoch's plan 4) and reads the inputs in place, so it plans 100M+ examples (measured at 10M: 2 s, 100 MiB
anonymous, benchmarks/README.md); its resume state is O(1): (epoch, batch position, seed, fingerprint).

Every step draws one *global* batch (batch_size × world_size examples) and gives rank r the slice
[r·B, (r+1)·B). All ranks compute the same plan from (seed, epoch) without talking to each other, so they
agree on every global batch, see similar lengths at each step and run the same number of steps.

How one epoch is planned (`BucketBatchSampler.plan(epoch)`):

1. Pools. A batch is drawn from one pool of examples: its training file (source) when `same_file` is on (BGE's
   `same_dataset_within_batch`: every global batch comes from one file), else all examples form one pool.
2. One pass over a pool. Inside a pool, examples are split into length buckets by a length key: the longest
   positive / negative in tokens (rounded up to 8), then the query's tokens (`sampler_inputs.length_keys`; BGE's
   split_by_length uses max(query, passages), which any int key reproduces). Buckets are ranges of that key
   holding about equal numbers of examples (`length_buckets.quantile_boundaries`) or given by token edges. Each
   bucket is shuffled and cut into full global batches ("pure" batches: every example from one bucket).
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
   be one too. Texts compare by 64-bit hashes (`text_ids.TextIds`): two different texts share a hash with probability
   about 2⁻⁶⁴ per pair (≈ 3·10⁻⁴ for a corpus of 10⁸ distinct texts), and such a collision only defers an
   example that did not need it — a real duplicate is never missed. Random negatives that the dataset draws
   for rows with too few hard negatives are picked per epoch after batching and are not checked.
   Filling is vectorised: runs of consecutive global batches with no collision are accepted whole; only a batch
   where texts meet is filled example by example, exactly as described. Only rows that share a text with some
   other row can ever collide (`rows_that_can_collide`, computed once per corpus: a prepared corpus stores it),
   so a run is checked by sorting the hashes of those rows alone; in a corpus of distinct texts that is none.
3. Order. Batches of a pass are shuffled, so the buckets come in random order. Without weights the epoch
   interleaves the pools' batches in a random order, each batch once. With weights, each step's file is drawn
   with probability w_d / Σw (a seeded generator); w_d = (dataset_weights)_d × n_d^α with sampling_alpha α
   (GTE: α = 0.5; α = 1 proportional to size, α = 0 uniform over files), either factor 1 when not given.
   Either way an epoch has Σ_d floor(N_d / global_batch) steps — one pass over all data's worth. A file that
   runs out of batches within the epoch (upsampled by its weight, or short of batches because duplicates could
   not be placed) starts a fresh pass with a new shuffle (counted in `extra_passes`); a downsampled file leaves
   some of its batches unseen that epoch. `file_shares(epoch)` gives each file's realised share of the epoch.

Every random draw comes from a numpy generator seeded by a string "seed:epoch:..." (hashed with SHA-256), so a
plan is a pure function of (data, settings, seed, epoch) on every machine: `state_dict()` / `load_state_dict()`
store the epoch and the position in it, and a resumed run continues at exactly the next batch without replaying
the batches before it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Sampler

from data.length_buckets import QUERY_BITS, auto_num_buckets, encode_length_keys, quantile_boundaries
from data.tables import OptionError
from data.text_ids import TextIds, conflicting_groups

MIXED = -1  # `GlobalBatch.bucket` of a batch made of several buckets' leftovers
ALL_FILES = -1  # `GlobalBatch.file` when batches are not kept to one file (the one pool is all the data)
MAX_FRONT_DEFERRED = 1  # × global batch: deferred examples kept at the queue's front; more go to its back


def stable_cell_order(cell_of: Callable[[int, int], np.ndarray], n: int, num_cells: int, dtype,
                      chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Example indices sorted by cell, ascending within a cell (a counting sort, `chunk` rows at a time: no O(N)
    int64 temporaries) -> (indices [n] of dtype, cell starts [num_cells + 1]). cell_of(lo, hi): cells of rows lo..hi."""
    counts = np.zeros(num_cells, dtype=np.int64)
    for lo in range(0, n, chunk):
        counts += np.bincount(cell_of(lo, min(n, lo + chunk)), minlength=num_cells)
    starts = np.concatenate([[0], np.cumsum(counts)])
    out, fill = np.empty(n, dtype=dtype), starts[:-1].copy()
    for lo in range(0, n, chunk):
        cells = cell_of(lo, min(n, lo + chunk))
        order = np.argsort(cells, kind="stable")
        c = cells[order]
        got = np.bincount(c, minlength=num_cells)
        first = np.cumsum(got) - got  # where each cell starts in this chunk's sorted cells
        out[fill[c] + np.arange(len(c)) - first[c]] = order + lo
        fill += got
    return out, starts



def check_sampler_options(num_files: int, dataset_weights: Sequence[float] | None, same_dataset: bool,
                          boundaries: Sequence[int] | None, sampling_alpha: float | None = None) -> None:
    """OptionError saying what to change for inconsistent options (cheap: call it before loading a model). Options
    are named as `build_train_sampler` (data/train_sampler.py) calls them: dataset_weights, same_dataset,
    sampling_alpha, boundaries (the sampler's file_weights, same_file, sampling_alpha, boundaries)."""
    if dataset_weights:
        w = [float(x) for x in dataset_weights]
        if len(w) != num_files:
            raise OptionError("dataset_weights", f"{{dataset_weights}} {w}: {len(w)} weights for {num_files} training "
                                                 "files; give one weight per file, in the order of the training data "
                                                 "(a prepared corpus: in the order of its sources)")
        if any(not x >= 0 for x in w) or sum(w) <= 0:
            raise OptionError("dataset_weights", f"{{dataset_weights}} {w}: weights must be ≥ 0 with a positive sum")
        if not same_dataset:
            raise OptionError(("dataset_weights", "same_dataset"),
                              "{dataset_weights}: weights choose the file of each batch, so they need same-dataset "
                              "batches (set {same_dataset})")
    if sampling_alpha is not None:
        if not (sampling_alpha >= 0 and np.isfinite(sampling_alpha)):
            raise OptionError("sampling_alpha", f"{{sampling_alpha}} {sampling_alpha}: must be ≥ 0 (sources drawn "
                                                "∝ rows^α: 1 proportional, 0 uniform, GTE 0.5)")
        if not same_dataset:
            raise OptionError(("sampling_alpha", "same_dataset"),
                              "{sampling_alpha}: chooses the source of each batch, so it needs same-dataset batches "
                              "(set {same_dataset})")
    if boundaries:
        b = list(boundaries)
        if any(int(x) != x or x <= 0 for x in b) or any(x >= y for x, y in zip(b, b[1:])):
            raise OptionError("boundaries", f"{{boundaries}} {b}: bucket boundaries must be positive, strictly "
                                            "increasing token lengths")


def seeded(*parts) -> np.random.Generator:
    """A numpy generator from a string seed "a:b:c" (SHA-256 of it), the same everywhere."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int.from_bytes(digest[:16], "little"))))


# ------------------------------------------------------------------------------------------ plan
@dataclass
class GlobalBatch:
    indices: list[int]  # batch_size × world_size example indices; rank r takes [r·B, (r+1)·B)
    file: int  # file index, or ALL_FILES
    bucket: int  # length bucket, or MIXED


class _Batches(Sequence):
    """plan.batches: GlobalBatch views of the plan's arrays, built on access (no per-batch objects kept)."""

    def __init__(self, plan: "EpochPlan"):
        self.plan = plan

    def __len__(self):
        return len(self.plan.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        p = self.plan
        return GlobalBatch(p.indices[k].tolist(), int(p.files[k]), int(p.buckets[k]))


@dataclass
class EpochPlan:
    indices: np.ndarray  # [steps, global batch] example indices
    files: np.ndarray  # [steps] file of each batch, or ALL_FILES
    buckets: np.ndarray  # [steps] bucket of each batch, or MIXED
    deferred: int = 0  # times an example was put off to a later batch because a text was already in the batch
    left_out: int = 0  # examples in no batch of this epoch's first pass of their pool (see module docstring)
    extra_passes: int = 0  # fresh passes started because a pool ran out of batches within the epoch
    mixed: int = field(init=False)

    def __post_init__(self):
        self.mixed = int((self.buckets == MIXED).sum())

    @property
    def batches(self) -> _Batches:
        return _Batches(self)


class BucketBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch; the algorithm is in the module docstring.

    length_keys: per example a length key — (passage tokens rounded to 8, query tokens) pairs from
        `sampler_inputs.length_keys` (an [N, 2] array or tuples), or any int such as BGE's max length — or None
        for no length buckets (random batches).
    boundaries: inclusive upper edges of the buckets in tokens of the key's first part, e.g. [32, 64, 128]
        (passage lengths); None = `num_buckets` buckets of about equal size (`quantile_boundaries`).
    num_buckets: 0 = `auto_num_buckets` (2+ global batches per bucket, at most 64).
    file_index: per example, the index of its training file / source; used with same_file / file_weights /
        sampling_alpha. file_names: for messages.
    text_ids: `TextIds` (64-bit hashes of each example's texts) to keep duplicate texts out of a global batch;
        None = no check.
    content_digest: returns a hash of the examples' content, for the resume fingerprint (computed on first use).
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int = 42, rank: int = 0, world_size: int = 1,
                 length_keys=None, boundaries: Sequence[int] | None = None, num_buckets: int = 0,
                 file_index=None, same_file: bool = False, file_weights: Sequence[float] | None = None,
                 sampling_alpha: float | None = None, file_names: Sequence[str] | None = None,
                 text_ids: TextIds | None = None, content_digest: Callable[[], str] | None = None):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size ≥ 1 and 0 ≤ rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        for name, seq in (("length_keys", length_keys), ("file_index", file_index), ("text_ids", text_ids)):
            if seq is not None and len(seq) != num_examples:
                raise ValueError(f"{name} has {len(seq)} entries for {num_examples} examples")
        if num_examples < self.global_batch:
            raise OptionError("batch_size", f"{num_examples} training examples are fewer than one global batch "
                                            f"({batch_size} per process × {world_size} processes); lower "
                                            "{batch_size}")
        files = (np.asarray(file_index, dtype=np.int32) if file_index is not None
                 else np.zeros(num_examples, dtype=np.int32))
        self.num_files = max(int(files.max()) + 1, len(file_names or []))
        self.file_names = list(file_names) if file_names else [f"file {d}" for d in range(self.num_files)]
        check_sampler_options(len(self.file_names), file_weights, same_file, boundaries, sampling_alpha)
        self.text_ids = text_ids
        self.index_dtype = np.int32 if num_examples < 2 ** 31 else np.int64
        # hash of the examples themselves (examples_digest, or a prepared corpus's manifest digest), computed on
        # first use: only checkpoints need it, and on millions of raw rows it takes seconds
        self._content_digest, self._digest = content_digest, None

        # buckets
        if length_keys is None:
            self.length_keys, self.key_pairs, self.boundaries = None, False, []
        else:
            self.length_keys, self.key_pairs = encode_length_keys(length_keys)
            if boundaries:  # on the first part of pair keys: (b, max) sorts after every (b, query length)
                self.boundaries = [(int(x) << QUERY_BITS) | ((1 << QUERY_BITS) - 1) if self.key_pairs else int(x)
                                   for x in boundaries]
            else:
                self.boundaries = quantile_boundaries(
                    self.length_keys, num_buckets or auto_num_buckets(num_examples, self.global_batch))
        edges = np.asarray(self.boundaries, dtype=np.int64)
        self.bucket_of = np.zeros(num_examples, dtype=np.int16)
        if self.length_keys is not None:
            for lo in range(0, num_examples, 1 << 22):  # chunks: no [N] int64 temporary
                self.bucket_of[lo:lo + (1 << 22)] = np.searchsorted(edges, self.length_keys[lo:lo + (1 << 22)])
        self.num_buckets = len(self.boundaries) + 1

        # pools: one per file with same-file batches, else one for all; members sorted by (pool, bucket, index)
        self.same_file = same_file
        num_pools = self.num_files if same_file else 1

        def cell_of(lo: int, hi: int) -> np.ndarray:
            bucket = self.bucket_of[lo:hi].astype(np.int32)
            return files[lo:hi] * self.num_buckets + bucket if same_file else bucket

        self._members, self._cell_start = stable_cell_order(cell_of, num_examples, num_pools * self.num_buckets,
                                                            self.index_dtype)
        counts = np.diff(self._cell_start)
        self.pool_sizes = counts.reshape(-1, self.num_buckets).sum(axis=1)  # [pools]
        self.pools = [p for p in range(len(self.pool_sizes)) if self.pool_sizes[p] > 0]
        self._nominal = {p: int(self.pool_sizes[p]) // self.global_batch for p in self.pools}

        # weights: explicit per file, times rows^α
        self.file_weights = [float(x) for x in file_weights] if file_weights else None
        self.sampling_alpha = sampling_alpha
        if self.file_weights is None and sampling_alpha is None:
            self.weights = None
        else:
            w = np.asarray(self.file_weights if self.file_weights else [1.0] * self.num_files, dtype=np.float64)
            if sampling_alpha is not None:
                sizes = np.zeros(self.num_files)
                sizes[:len(self.pool_sizes)] = self.pool_sizes
                w = w * np.where(sizes > 0, sizes, 0.0) ** sampling_alpha
            if not w.sum() > 0:
                raise ValueError("every file has weight 0 or no rows: nothing to sample")
            self.weights = (w / w.sum()).tolist()
        for p in self.pools:
            usable = self.weights is None or self.weights[p] > 0
            if self._nominal[p] == 0 and usable:
                raise OptionError(
                    ("batch_size", "dataset_weights", "same_dataset"),
                    f"{self.file_names[p]} has {self.pool_sizes[p]} examples, fewer than one global batch "
                    f"({batch_size} per process × {world_size} processes), so with same-dataset batches it can never "
                    "form a batch; merge it with another file, lower {batch_size}, give it weight 0 in "
                    "{dataset_weights}, or turn off {same_dataset}")
        if same_file:
            for d in range(self.num_files):
                if self.weights is None or self.weights[d] > 0:
                    if d >= len(self.pool_sizes) or self.pool_sizes[d] == 0:
                        raise ValueError(f"{self.file_names[d]} has no rows")
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
        h.update(np.ascontiguousarray(self.bucket_of).tobytes())
        h.update(repr(self.pool_sizes.tolist()).encode())
        if self.text_ids is not None:
            h.update(self.text_ids.key_hashes[:1000].tobytes())
            h.update(self.text_ids.neg_hashes[:1000].tobytes())
        return h.hexdigest()[:16]

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """Where the next batch is. batches_consumed: batches of this epoch the trainer has used; default: those
        this sampler has yielded (exact with num_workers=0; with DataLoader workers, which read ahead, pass it)."""
        position = batches_consumed if batches_consumed is not None else self.start_batch + self._yielded
        return {"epoch": self.epoch, "start_batch": position, "seed": self.seed, "global_batch": self.global_batch,
                "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("seed", self.seed), ("global_batch", self.global_batch),
                          ("fingerprint", self.fingerprint())):
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
        for row in plan.indices[self.start_batch:]:
            self._yielded += 1
            yield row[lo:hi].tolist()

    def plan(self, epoch: int) -> EpochPlan:
        """The epoch's global batches in order (cached for the current epoch)."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._plan(epoch))
        return self._cache[1]

    def file_shares(self, epoch: int) -> dict[str, float]:
        """Realised share of each file among the epoch's batches (all files when batches mix files)."""
        files = self.plan(epoch).files
        if not self.same_file:
            return {"all files": 1.0}
        counts = np.bincount(files, minlength=self.num_files)
        return {name: counts[d] / len(files) for d, name in enumerate(self.file_names)}

    def describe_shares(self, epoch: int) -> str:
        """Each file's realised share of the epoch's batches next to its target (weights, else its size)."""
        nominal = np.zeros(self.num_files)
        for p, n in self._nominal.items():
            nominal[p] = n
        target = self.weights if self.weights is not None else (nominal / nominal.sum()).tolist()
        return f"epoch {epoch} batches by file: " + ", ".join(
            f"{name} {100 * x:.2f}% (target {100 * t:.2f}%)"
            for (name, x), t in zip(self.file_shares(epoch).items(), target))

    def _plan(self, epoch: int) -> EpochPlan:
        rng = seeded(self.seed, epoch, "order")
        if self.weights is None:
            order = rng.permutation(np.repeat(self.pools, [self._nominal[p] for p in self.pools]))
        else:
            order = rng.choice(len(self.weights), size=len(self), p=self.weights)
        indices = np.empty((len(order), self.global_batch), dtype=self.index_dtype)
        files = np.empty(len(order), dtype=np.int32)
        buckets = np.empty(len(order), dtype=np.int32)
        deferred = left_out = extra = 0
        for pool in np.unique(order).tolist():
            steps = np.flatnonzero(order == pool)
            got_idx, got_bucket, passes = [], [], 0
            while sum(len(b) for b in got_bucket) < len(steps):
                idx, bucket, d, out = self._one_pass(pool, seeded(self.seed, epoch, pool, passes))
                if len(idx) == 0:
                    where = self.file_names[pool] if self.same_file else "the training data"
                    raise OptionError(("batch_size", "dedup"),
                                      f"{where}: no global batch of {self.global_batch} examples can be formed without "
                                      "repeating a text (query / positive / hard negative); lower {batch_size} or "
                                      "turn off {dedup}")
                if passes == 0:
                    deferred, left_out = deferred + d, left_out + out
                got_idx.append(idx)
                got_bucket.append(bucket)
                passes += 1
            extra += passes - 1
            indices[steps] = (got_idx[0] if passes == 1 else np.concatenate(got_idx))[:len(steps)]
            buckets[steps] = (got_bucket[0] if passes == 1 else np.concatenate(got_bucket))[:len(steps)]
            del got_idx, got_bucket
            files[steps] = pool if self.same_file else ALL_FILES
        return EpochPlan(indices, files, buckets, deferred=deferred, left_out=left_out, extra_passes=extra)

    def _one_pass(self, pool: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
        """One shuffled pass over a pool -> (batches [n, gb] in random order, their buckets, deferrals, left out)."""
        parts, labels, leftovers, deferred = [], [], [], 0
        for bucket in range(self.num_buckets):
            cell = pool * self.num_buckets + bucket if self.same_file else bucket
            members = self._members[self._cell_start[cell]:self._cell_start[cell + 1]]
            if len(members) == 0:
                continue
            full, rest, d = self._fill(rng.permutation(members))
            parts.append(full)
            labels.append(np.full(len(full), bucket, dtype=np.int32))
            leftovers.append(rest)
            deferred += d
        rest = np.concatenate(leftovers) if leftovers else np.empty(0, dtype=self.index_dtype)
        sort_key = self.bucket_of[rest] if self.length_keys is None else self.length_keys[rest]
        mixed, left, d = self._fill(rest[np.argsort(sort_key, kind="stable")])
        if len(mixed):
            mixed = rng.permuted(mixed, axis=1)  # so that every rank gets a similar share of the lengths
            b = self.bucket_of[mixed]
            parts.append(mixed)
            labels.append(np.where((b == b[:, :1]).all(axis=1), b[:, 0], MIXED).astype(np.int32))
        if not parts:
            return np.empty((0, self.global_batch), dtype=self.index_dtype), np.empty(0, dtype=np.int32), 0, 0
        batches, labels = np.concatenate(parts), np.concatenate(labels)
        order = rng.permutation(len(batches))
        return batches[order], labels[order], deferred + d, len(left)

    def _fill(self, queue: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Cut a queue into full global batches without duplicate texts -> (batches [n, gb], rest, deferrals).

        Examples that collide with the batch being filled are deferred: up to one global batch of them stays at
        the front of the queue (first in line for the next batch), more go to its back. The rest is what is left
        when the queue cannot fill another batch. Runs of collision-free batches are taken in one step
        (`_clean_prefix`); a batch where texts meet is filled one example at a time (`_fill_one`).
        """
        gb = self.global_batch
        if self.text_ids is None:
            n = len(queue) // gb * gb
            return queue[:n].reshape(-1, gb), queue[n:], 0
        out: list[np.ndarray] = []
        deferrals, window = 0, 16
        # pending = front + queue[pos:] + back
        front: list[int] = []
        back: list[int] = []
        pos = 0
        while len(front) + len(queue) - pos + len(back) >= gb:
            if pos == len(queue) and back:
                queue, pos, back = np.asarray(back, dtype=queue.dtype), 0, []
            if not front and len(queue) - pos >= gb:
                k = min(window, (len(queue) - pos) // gb)
                chunks = queue[pos:pos + k * gb].reshape(k, gb)
                clean = self._clean_prefix(chunks)
                if clean:
                    out.append(chunks[:clean])
                    pos += clean * gb
                if clean == k:
                    window = min(window * 2, 1 << 14)
                    continue
                window = max(16, window // 4)
            batch, front, pos, back, d = self._fill_one(front, queue, pos, back)
            deferrals += d
            if batch is None:
                break
            out.append(np.asarray(batch, dtype=queue.dtype)[None])
        rest = np.concatenate([np.asarray(front, dtype=queue.dtype), queue[pos:], np.asarray(back, dtype=queue.dtype)])
        full = np.concatenate(out) if out else np.empty((0, gb), dtype=queue.dtype)
        return full, rest, deferrals

    def _clean_prefix(self, chunks: np.ndarray) -> int:
        """How many leading rows of chunks [k, gb] the example-by-example fill would take whole (no text of one
        example among another's keys; hard negatives may repeat among themselves). Only rows that can collide at
        all (`rows_that_can_collide`) are looked at: for a corpus of distinct texts this is one boolean gather."""
        t = self.text_ids
        flat = chunks.reshape(-1)
        suspect = np.flatnonzero(t.collision_rows()[flat])
        if len(suspect) == 0:
            return len(chunks)
        kpos, khash = t.gather(flat[suspect], "keys")
        npos, nhash = t.gather(flat[suspect], "negs")
        chunk = suspect[np.concatenate([kpos, npos])] // chunks.shape[1]
        is_key = np.concatenate([np.ones(len(khash), bool), np.zeros(len(nhash), bool)])
        bad = conflicting_groups(np.concatenate([khash, nhash]), is_key, group=chunk)
        return int(chunk[bad].min()) if bad.any() else len(chunks)

    def _fill_one(self, front: list[int], queue: np.ndarray, pos: int, back: list[int]):
        """Fill one batch from pending = front + queue[pos:] + back, example by example.
        -> (batch or None when the whole queue cannot fill one, front, pos, back, deferrals)."""
        gb, t = self.global_batch, self.text_ids
        batch: list[int] = []
        new_front: list[int] = []
        new_back: list[int] = []
        keys: set[int] = set()  # query / positive hashes in the batch
        negs: set[int] = set()  # hard-negative hashes in the batch
        f = b = 0  # consumed from front / back
        q = pos

        def take(i: int) -> bool:
            k, n = t.keys(i), t.negs(i)
            if any(x in keys or x in negs for x in k) or any(x in keys for x in n):
                (new_front if len(new_front) < MAX_FRONT_DEFERRED * gb else new_back).append(i)
                return False
            keys.update(k)
            negs.update(n)
            batch.append(i)
            return len(batch) == gb

        full = False
        while not full and f < len(front):
            full = take(front[f])
            f += 1
        while not full and q < len(queue):
            full = take(int(queue[q]))
            q += 1
        while not full and b < len(back):
            full = take(back[b])
            b += 1
        deferrals = len(new_front) + len(new_back)
        if not full:  # scanned everything: what is left is batch + deferred, in the old order
            return None, batch + new_front + front[f:], q, back[b:] + new_back, deferrals
        return batch, new_front + front[f:], q, back[b:] + new_back, deferrals

    # -------------------------------------------------------------- report
    def describe(self) -> str:
        """Buckets, batches per epoch and what epoch 0 deferred or left out, for the training log."""
        gb = f"{self.batch_size}×{self.world_size}"
        if self.length_keys is None:
            head = "random batches (no length buckets)"
        else:
            sizes = np.bincount(self.bucket_of, minlength=self.num_buckets)
            what = "passage tokens (rounded up to 8), then query tokens" if self.key_pairs else "tokens"
            first = [e >> QUERY_BITS if self.key_pairs else e for e in self.boundaries]
            head = (f"{self.num_buckets} length buckets by {what} (upper passage edges {sorted(set(first))}), "
                    f"{sizes.min()}–{sizes.max()} examples each")
        p = self.plan(self.epoch)
        parts = [f"{head}; {len(self)} global batches of {gb} per epoch"]
        if self.length_keys is not None:
            parts.append(f"{p.mixed} of them mixing bucket leftovers")
        if self.same_file:
            w = "" if self.weights is None else " shares " + ", ".join(
                f"{n}={x:.3g}" for n, x in zip(self.file_names, self.weights))
            if self.sampling_alpha is not None:
                w += f" (rows^{self.sampling_alpha:g}{' × dataset weights' if self.file_weights else ''})"
            parts.append(f"each from one file{w}")
        parts.append(f"epoch {self.epoch}: {p.left_out} examples sit out (fewer than a global batch per "
                     f"{'file' if self.same_file else 'epoch'}, reshuffled next epoch)")
        if self.text_ids is not None:
            parts.append(f"{p.deferred} deferrals to keep duplicate texts out of a batch")
        if p.extra_passes:
            parts.append(f"{p.extra_passes} extra passes over files that ran out")
        return "sampler: " + "; ".join(parts)
