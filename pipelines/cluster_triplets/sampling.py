"""Which triplets to ask a judge about: ClusterLLM's entropy-based sampling, and a random-anchor baseline.

ClusterLLM (Zhang et al. 2023, arXiv:2305.14871, §3.1): cluster the embeddings with k-means, give every text a soft
assignment over the cluster centres with a Student's t kernel (DEC, α = 1),

    q_ij = (1 + ||x_i − μ_j||²)⁻¹ / Σ_j' (1 + ||x_i − μ_j'||²)⁻¹,

restrict it to the text's m closest clusters and renormalise, and rank texts by the entropy of that restricted
distribution: a text about as close to two clusters as to one is one the embedding cannot place, so a judge's
answer about it is worth most. Each anchor gets one triplet whose two choices are a random member of each of two
of its m closest clusters (m = 2: its two closest). Where we differ, and why:
- k-means runs on the embeddings as the model gives them (ClusterLLM standardises features first; our encoders
  L2-normalise, so every dimension is already on one scale).
- Anchors are taken in entropy order, one triplet each; more triplets than texts start a new sweep with new
  random choices. ClusterLLM cycles over its top 20 % by entropy; for num_triplets ≤ 20 % of the texts both
  pick the same anchors.
- A choice is never the anchor's row or the anchor's text, and the two choices differ in text (a duplicate text
  would be a question with no answer).
The A/B order of every triplet is a coin flip, so a judge with a position bias is not always right or wrong.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans

ANCHOR_RULES = ("entropy", "random")


@dataclass(frozen=True)
class Triplet:
    """Row indices into the texts: the anchor and the choices shown as "A" and "B"."""

    anchor: int
    a: int
    b: int


@dataclass
class SampledTriplets:
    triplets: list[Triplet]
    clusters: np.ndarray  # [N] k-means cluster of every text
    closest: np.ndarray  # [N, m] each text's m closest clusters, closest first
    entropy: np.ndarray  # [N] entropy of the soft assignment over those m clusters
    skipped: Counter = field(default_factory=Counter)  # anchors passed over, by reason

    def describe(self) -> str:
        lines = [f"{len(self.triplets)} triplets from {len(set(t.anchor for t in self.triplets))} anchors"]
        lines += [f"  {n} × {why}" for why, n in self.skipped.most_common()]
        return "\n".join(lines)


def kmeans_clusters(embeddings: np.ndarray, k: int, seed: int = 0, n_init: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """embeddings [N, D] -> (cluster of each text [N], centres [k, D]); k must be in 2..N."""
    n = len(embeddings)
    if k < 2:
        raise ValueError(f"k = {k}: triplet sampling needs at least 2 clusters (each anchor's two closest)")
    if k > n:
        raise ValueError(f"k = {k} clusters is larger than the {n} texts; use k ≤ {n}")
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(embeddings)
    return km.labels_.astype(np.int64), km.cluster_centers_


def soft_assignment(embeddings: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Student's t (α = 1) soft assignment q [N, k], rows summing to 1 (formula in the module docstring)."""
    x = np.asarray(embeddings, dtype=np.float64)
    mu = np.asarray(centers, dtype=np.float64)
    sq_dist = (x * x).sum(1)[:, None] - 2 * x @ mu.T + (mu * mu).sum(1)[None, :]  # [N, k]
    kernel = 1.0 / (1.0 + np.maximum(sq_dist, 0.0))  # [N, k]
    return kernel / kernel.sum(1, keepdims=True)


def closest_entropy(q: np.ndarray, m: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """q [N, k] -> (the m most probable clusters per row [N, m], most probable first; entropy of q restricted
    to them and renormalised [N], in nats). Ties in q go to the lower cluster id."""
    if not 2 <= m <= q.shape[1]:
        raise ValueError(f"closest clusters m = {m} must be in 2..k = {q.shape[1]}")
    closest = np.argsort(-q, axis=1, kind="stable")[:, :m]  # [N, m]
    p = np.take_along_axis(q, closest, axis=1)  # [N, m]
    p = p / p.sum(1, keepdims=True)
    entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(1)  # [N]
    return closest, entropy


def rank_by_entropy(entropy: np.ndarray) -> np.ndarray:
    """Row indices, most uncertain (highest entropy) first; equal entropies keep row order."""
    return np.argsort(-np.asarray(entropy), kind="stable")


def sample_triplets(embeddings: np.ndarray, texts: list[str], k: int, num_triplets: int, *, seed: int = 0,
                    anchors: str = "entropy", closest_clusters: int = 2, kmeans_n_init: int = 3) -> SampledTriplets:
    """k-means, entropy (or random) anchors, one choice from each of two of the anchor's closest clusters.

    embeddings [N, D] are the texts' embeddings in row order. Returns up to `num_triplets` distinct triplets;
    anchors that cannot make one (a closest cluster with no other text) are counted in `skipped`, and a run
    that cannot find enough distinct triplets in a few sweeps returns what it found, with the shortfall counted.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(texts):
        raise ValueError(f"embeddings must be [N, D] for the {len(texts)} texts, got shape {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if anchors not in ANCHOR_RULES:
        raise ValueError(f"anchors must be one of {ANCHOR_RULES}, got {anchors!r}")
    if num_triplets < 1:
        raise ValueError(f"num_triplets must be ≥ 1, got {num_triplets}")
    clusters, centers = kmeans_clusters(embeddings, k, seed, kmeans_n_init)
    closest, entropy = closest_entropy(soft_assignment(embeddings, centers), closest_clusters)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(clusters == c) for c in range(k)]
    if anchors == "entropy":
        order = rank_by_entropy(entropy)
    else:
        order = rng.permutation(len(texts))

    triplets: list[Triplet] = []
    seen: set[tuple[int, frozenset]] = set()
    skipped: Counter = Counter()
    max_sweeps = -(-num_triplets // len(texts)) + 3
    for sweep in range(max_sweeps):
        added = 0
        for anchor in order:
            anchor = int(anchor)
            pair = rng.choice(closest[anchor], size=2, replace=False) if closest_clusters > 2 else closest[anchor]
            choices = []
            for c in pair:
                pool = [j for j in members[int(c)] if j != anchor and texts[j] != texts[anchor]
                        and (not choices or texts[j] != texts[choices[0]])]
                if not pool:
                    break
                choices.append(int(pool[rng.integers(len(pool))]))
            if len(choices) < 2:
                skipped["anchors whose closest cluster has no other text"] += 1
                continue
            key = (anchor, frozenset(choices))
            if key in seen:
                skipped["repeated triplets drawn again (not kept)"] += 1
                continue
            seen.add(key)
            a, b = choices if rng.random() < 0.5 else choices[::-1]
            triplets.append(Triplet(anchor, a, b))
            added += 1
            if len(triplets) == num_triplets:
                return SampledTriplets(triplets, clusters, closest, entropy, skipped)
        if added == 0:
            break
    skipped[f"triplets short of --num-triplets {num_triplets} (no new ones after {sweep + 1} sweeps)"] = \
        num_triplets - len(triplets)
    return SampledTriplets(triplets, clusters, closest, entropy, skipped)
