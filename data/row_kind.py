"""What rows a loss trains on: one name for it, declared by each loss (losses/registry.py) and read by data/.

    GROUPS         a query, its positives and hard negatives (BGE JSONL, anchor/positive[/negative], NLI turned
                   into premise → entailment / contradiction groups): the contrastive losses
    SCORED_GROUPS  the same with a teacher score on every passage (pos_scores / neg_scores): distillation
    NLI_PAIRS      sentence pairs with an NLI class (sentence1, sentence2, gold_label): softmax
    SCORED_PAIRS   sentence pairs with a similarity score (sentence1, sentence2, score): cosine
"""
from __future__ import annotations

import enum


class RowKind(enum.Enum):
    GROUPS = "groups"
    SCORED_GROUPS = "scored_groups"
    NLI_PAIRS = "nli"
    SCORED_PAIRS = "scored"

    @property
    def pair_kind(self) -> str | None:
        """The labelled-pair kind the readers take ("nli" / "scored"; a prepared corpus's `pair_kind`), or None for
        query / passage groups."""
        return self.value if self in (RowKind.NLI_PAIRS, RowKind.SCORED_PAIRS) else None

    @property
    def is_pairs(self) -> bool:
        """One sentence pair per row: the group size is 1 whatever group_size says."""
        return self.pair_kind is not None

    @property
    def needs_scores(self) -> bool:
        """Every passage of a group carries a teacher score."""
        return self is RowKind.SCORED_GROUPS


# ------------------------------------------------------------------------------------------ compat (issue 22)
# train.py still derives the rows from a loss's `needs` strings and passes pair_kind / needs_scores / label_kind;
# delete this section once it passes the loss's RowKind (losses/registry.py).
def pair_kind_for(needs) -> str | None:
    """compat: the labelled-pair rows a loss's `needs` asks for ("nli" / "scored"), or None for groups."""
    return legacy_row_kind(needs=needs).pair_kind


def legacy_row_kind(pair_kind: str | None = None, needs_scores: bool = False, needs=None) -> RowKind:
    """compat: the RowKind of the old parameters (a `needs` set, or pair_kind + needs_scores)."""
    if needs is not None:
        needs = set(needs)
        pair_kind = "nli" if "nli_label" in needs else "scored" if "similarity_score" in needs else None
        needs_scores = "teacher_scores" in needs
    if pair_kind:
        return RowKind(pair_kind)
    return RowKind.SCORED_GROUPS if needs_scores else RowKind.GROUPS
