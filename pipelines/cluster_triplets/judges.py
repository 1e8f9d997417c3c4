"""The judge interface, the prompt it is asked, how its reply is read, and the two oracle judges.

A judge answers, for each triplet, which of two choices ("A" or "B") is closer to the anchor under a stated
perspective (intent, topic, entity type, domain, ...). `answer(prompts, triplets)` returns one reply string per
triplet; `parse_choice` reads it as "A", "B" or neither (neither is counted and skipped by `run_judge`, never guessed).
`name` identifies the judge in the cache key, so a different model, endpoint or noise level never reuses
another's answers. `batch_size` is how many questions one `answer` call takes (None: all at once).

The oracles read the gold labels: a triplet is decidable when exactly one choice shares the anchor's label; the
gold oracle answers that choice, else replies "neither" or "both". The noisy oracle gives the gold answer except on
an exact fraction (1 − agreement) of the decidable triplets of each call, chosen at random, where it answers the
other choice: it measures how accurate a judge must be for its triplets to help.
"""
from __future__ import annotations

import re
import string
from typing import Protocol, Sequence

import numpy as np

from pipelines.cluster_triplets.sampling import Triplet

DEFAULT_PERSPECTIVE = "intent"
DEFAULT_TEMPLATE = (
    "Select the text that better corresponds with the Query in terms of {perspective}.\n\n"
    "Query: {anchor}\nA: {a}\nB: {b}\n\n"
    "Answer with the letter A or B only.\nAnswer:")
TEMPLATE_FIELDS = ("anchor", "a", "b")  # required; {perspective} is optional


class JudgeError(RuntimeError):
    """A judge could not be set up or stopped answering; the message says which judge and why.

    `partial` maps positions in the failed `answer` call to the replies it did get, so they can be cached.
    """

    def __init__(self, message: str, partial: dict[int, str] | None = None):
        super().__init__(message)
        self.partial = partial or {}


class Judge(Protocol):
    name: str
    batch_size: int | None

    def answer(self, prompts: list[str], triplets: list[Triplet]) -> list[str]: ...


def check_template(template: str) -> str:
    """The template if it is usable: non-empty, with {anchor}, {a} and {b}, and no other field than {perspective}."""
    if not template or not template.strip():
        raise ValueError("the prompt template is empty; it needs {anchor}, {a} and {b} (and may use {perspective})")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(f"the prompt template is not a valid format string: {err}") from None
    missing = [f for f in TEMPLATE_FIELDS if f not in fields]
    unknown = sorted(fields - set(TEMPLATE_FIELDS) - {"perspective"})
    if missing or unknown:
        raise ValueError("the prompt template " + "; ".join(
            ([f"lacks {', '.join('{' + f + '}' for f in missing)}"] if missing else []) +
            ([f"has unknown field(s) {', '.join('{' + f + '}' for f in unknown)}"] if unknown else [])))
    return template


def render_prompt(template: str, anchor: str, a: str, b: str, perspective: str = DEFAULT_PERSPECTIVE) -> str:
    return template.format(anchor=anchor, a=a, b=b, perspective=perspective)


# the letter, optionally after "answer/choice/option (is)", then the end, a punctuation mark or a line break
_CHOICE = re.compile(r"^\W*(?:(?:the\s+)?(?:answer|choice|option)\s*(?:is)?\s*[:\-]?\s*)?\(?([AB])(?=$|[^\w\s]|\s*\n)",
                     re.IGNORECASE)


def parse_choice(reply: str | None) -> str | None:
    """"A" or "B" when the reply is that letter ("B", " a.", "(B)", "Answer: A", "B) ..."), else None: a reply
    such as "A customer would ..." (an article, not a choice) is not read as A."""
    if not reply:
        return None
    m = _CHOICE.match(reply.strip())
    return m.group(1).upper() if m else None


def gold_answer(labels: Sequence[str], t: Triplet) -> str:
    """"A" / "B" when exactly that choice shares the anchor's label, else "both" or "neither"."""
    same_a, same_b = labels[t.a] == labels[t.anchor], labels[t.b] == labels[t.anchor]
    if same_a != same_b:
        return "A" if same_a else "B"
    return "both" if same_a else "neither"


class GoldOracle:
    """Answers from the gold labels (an upper bound for any judge)."""

    batch_size = None

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.name = "gold-oracle"

    def answer(self, prompts: list[str], triplets: list[Triplet]) -> list[str]:
        return [gold_answer(self.labels, t) for t in triplets]


class NoisyOracle:
    """The gold oracle with exactly round((1 − agreement) × decidable) answers per call flipped A <-> B."""

    batch_size = None

    def __init__(self, labels: Sequence[str], agreement: float, seed: int = 0):
        if not 0.0 <= agreement <= 1.0:
            raise ValueError(f"noisy oracle agreement must be in [0, 1], got {agreement}")
        self.labels, self.agreement, self.seed = list(labels), agreement, seed
        self.rng = np.random.default_rng(seed)
        self.name = f"noisy-oracle(agreement={agreement:g},seed={seed})"

    def answer(self, prompts: list[str], triplets: list[Triplet]) -> list[str]:
        replies = [gold_answer(self.labels, t) for t in triplets]
        decidable = [i for i, r in enumerate(replies) if r in ("A", "B")]
        n_flip = int(round((1.0 - self.agreement) * len(decidable)))
        for i in self.rng.choice(decidable, size=n_flip, replace=False) if n_flip else ():
            replies[i] = "B" if replies[i] == "A" else "A"
        return replies


class EmbeddingJudge:
    """The embedding itself as judge: the choice with the higher cosine similarity to the anchor (ClusterLLM's
    self-supervised baseline, no LLM). embeddings [N, D] in text order; ties reply "tie"."""

    batch_size = None

    def __init__(self, embeddings, name: str = "embedding"):
        x = np.asarray(embeddings, dtype=np.float64)
        self.x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        self.name = f"embedding-judge:{name}"

    def answer(self, prompts: list[str], triplets: list[Triplet]) -> list[str]:
        out = []
        for t in triplets:
            sa, sb = self.x[t.anchor] @ self.x[t.a], self.x[t.anchor] @ self.x[t.b]
            out.append("A" if sa > sb else "B" if sb > sa else "tie")
        return out
