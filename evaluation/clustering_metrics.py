"""Clustering accuracy (Hungarian matching) and NMI of a k-means clustering of embeddings.

mteb's clustering task reports V-measure over bootstrapped mini-batch k-means runs; papers on embedding clustering
also quote accuracy and NMI of one k-means with k = number of gold labels, so we add those on the same embeddings.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def clustering_accuracy(labels: Sequence, clusters: Sequence[int]) -> float:
    """Fraction of items whose cluster maps to their label under the best one-to-one cluster↔label matching.

    Hand-written because no library ships it: cluster ids are arbitrary, so accuracy needs the Hungarian matching
    (scipy's `linear_sum_assignment`) that maximises the matched counts of the label × cluster contingency table.
    """
    if len(labels) != len(clusters):
        raise ValueError(f"{len(labels)} labels but {len(clusters)} cluster assignments")
    counts = contingency_matrix(labels, clusters)  # [n_labels, n_clusters]
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def kmeans_scores(embeddings, labels: Sequence, seed: int = 42) -> dict[str, float]:
    """k-means (k = number of distinct labels, 10 restarts) on `embeddings` [N, D] -> {cluster_accuracy, nmi}."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    k = len(set(labels))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embeddings)
    return {
        "cluster_accuracy": clustering_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
    }
