"""Run a judge over triplets through the cache; count what it could not answer; measure it against gold labels."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from pipelines.cluster_triplets.cache import JudgementCache, judgement_key
from pipelines.cluster_triplets.judges import (DEFAULT_PERSPECTIVE, Judge, JudgeError, gold_answer, parse_choice,
                                               render_prompt)
from pipelines.cluster_triplets.sampling import Triplet


@dataclass
class Judgement:
    triplet: Triplet
    reply: str
    choice: str | None  # "A", "B", or None when the reply is neither


@dataclass
class JudgingReport:
    asked: int = 0  # questions sent to the judge in this run
    from_cache: int = 0
    unreadable: int = 0  # replies that are neither A nor B: skipped
    gold: Counter = field(default_factory=Counter)  # gold answers of the triplets: A / B / both / neither
    agreeing: int = 0  # readable answers on gold-decidable triplets that match gold
    compared: int = 0  # readable answers on gold-decidable triplets

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    def describe(self) -> str:
        parts = [f"{self.asked} asked, {self.from_cache} from the cache",
                 f"{self.unreadable} replies neither A nor B (skipped)"]
        if self.compared:
            parts.append(f"agreement with gold labels {self.agreement:.3f} on {self.compared} decidable triplets")
        if self.gold:
            parts.append("gold: " + ", ".join(f"{k} {v}" for k, v in sorted(self.gold.items())))
        return "; ".join(parts)


def judge_triplets(judge: Judge, triplets: list[Triplet], texts: Sequence[str], template: str, *,
                   perspective: str = DEFAULT_PERSPECTIVE, cache: JudgementCache | None = None,
                   labels: Sequence[str] | None = None, progress: bool = True) -> tuple[list[Judgement], JudgingReport]:
    """One judgement per triplet, asking the judge only what the cache lacks, in chunks of judge.batch_size.

    Every answer is cached as soon as its chunk returns; a judge that fails part-way through a chunk hands back
    what it answered (JudgeError.partial), which is cached before the error propagates.
    """
    report = JudgingReport()
    prompts = [render_prompt(template, texts[t.anchor], texts[t.a], texts[t.b], perspective) for t in triplets]
    keys = [judgement_key(judge.name, p, texts[t.anchor], texts[t.a], texts[t.b]) for p, t in zip(prompts, triplets)]
    replies: list[str | None] = [cache.get(k) if cache is not None else None for k in keys]
    todo = [i for i, r in enumerate(replies) if r is None]
    report.from_cache = len(triplets) - len(todo)
    step = judge.batch_size or max(len(todo), 1)

    def store(i: int, reply: str) -> None:
        replies[i] = reply
        report.asked += 1
        if cache is not None:
            t = triplets[i]
            cache.put(keys[i], reply, judge=judge.name, anchor=t.anchor, a=t.a, b=t.b)

    with tqdm(total=len(todo), desc=f"judge {judge.name}", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            try:
                answers = judge.answer([prompts[i] for i in chunk], [triplets[i] for i in chunk])
            except JudgeError as err:
                for j, reply in getattr(err, "partial", {}).items():
                    store(chunk[j], reply)
                raise
            if len(answers) != len(chunk):
                raise JudgeError(f"judge {judge.name} returned {len(answers)} replies for {len(chunk)} questions")
            for i, reply in zip(chunk, answers):
                store(i, reply)
            bar.update(len(chunk))

    judgements = []
    for t, reply in zip(triplets, replies):
        choice = parse_choice(reply)
        report.unreadable += choice is None
        judgements.append(Judgement(t, reply, choice))
        if labels is not None:
            gold = gold_answer(labels, t)
            report.gold[gold] += 1
            if choice is not None and gold in ("A", "B"):
                report.compared += 1
                report.agreeing += choice == gold
    return judgements, report
