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


    def formats_passages(self, asked: bool | None) -> bool:
        """Whether passages get the instruction format as queries do (models/text_format.py): as asked, else on for
        sentence pairs (symmetric data: both sides the same kind of text), off for query → passage groups."""
        return self.is_pairs if asked is None else bool(asked)
