"""Write the repo's own bilingual sample data (English → Korean) for the quickstart and the tests.

Every sentence is built from our own templates: a person does something somewhere at some time
("The teacher is reading a newspaper in the library this morning." / "오늘 아침에 선생님이 도서관에서 신문을
읽고 있다."), with the Korean particles chosen by the final consonant (batchim) of the noun before them.
Combinations of (person, action, place, time) are split 80/20 into a training part and a held-out part; every
held-out sentence (STS pairs, queries, corpus) comes from the held-out part, so none is ever trained on; the held-out
part is evaluated as

  heldout-sts.tsv          Korean–Korean pairs, score = 5 × (slots in common) / 4  (5 = same meaning,
                           other word order);
  heldout-retrieval/       BEIR folder: English queries, Korean corpus (the translations plus near misses
                           that differ in one slot), qrels/test.tsv.

and trained on with train.jsonl (BGE format): an English query, its Korean translation as `pos`, and Korean
sentences that differ in exactly one slot as `neg` (hard negatives); a fifth of the rows are Korean→Korean
(same meaning, another word order).

    python -m scripts.make_sample_data --output sample_data --overwrite   # deterministic: same files every run

The folder is written whole (storage/folders.py: built beside it, renamed into place); an existing one is replaced
only when it holds this tool's files and nothing else, and --overwrite is given.
"""
from __future__ import annotations

if not __package__:  # run as a file, python scripts/NAME.py: makes the repository root importable
    import _repo_root  # noqa: F401

import argparse
import json
import os
import random

from storage.files import check_output_place
from storage.folders import OutputError, check_output_folder, staged_folder

TOOL = "scripts.make_sample_data"  # the name in the folder's .written_by.json
OWN_ENTRIES = ("train.jsonl", "heldout-sts.tsv", "heldout-retrieval")

# (English, Korean) — people; Korean subject particle is attached by `_particle`.
PEOPLE = [("the teacher", "선생님"), ("a little girl", "어린 소녀"), ("my neighbour", "내 이웃"),
          ("the old man", "노인"), ("a doctor", "의사"), ("the chef", "요리사"), ("a student", "학생"),
          ("the farmer", "농부"), ("a police officer", "경찰관"), ("the singer", "가수"),
          ("a tourist", "관광객"), ("the pilot", "조종사"), ("my grandmother", "우리 할머니"),
          ("the young soldier", "젊은 군인"), ("a nurse", "간호사"), ("the boy", "소년")]
# (English verb phrase, Korean object noun, Korean verb) — the object takes 을/를.
ACTIONS = [("is reading a newspaper", "신문", "읽고 있다"), ("is eating an apple", "사과", "먹고 있다"),
           ("is drinking coffee", "커피", "마시고 있다"), ("is writing a letter", "편지", "쓰고 있다"),
           ("is drawing a picture", "그림", "그리고 있다"), ("is watching a movie", "영화", "보고 있다"),
           ("is cleaning the window", "창문", "닦고 있다"), ("is playing the piano", "피아노", "치고 있다"),
           ("is kicking a ball", "공", "차고 있다"), ("is buying vegetables", "채소", "사고 있다"),
           ("is carrying a heavy bag", "무거운 가방", "들고 있다"),
           ("is waiting for a friend", "친구", "기다리고 있다"),
           ("is looking for a key", "열쇠", "찾고 있다"), ("is selling flowers", "꽃", "팔고 있다")]
PLACES = [("in the park", "공원에서"), ("at the beach", "해변에서"), ("in the kitchen", "부엌에서"),
          ("at the station", "역에서"), ("in the library", "도서관에서"), ("on the bus", "버스에서"),
          ("at the market", "시장에서"), ("in the hospital", "병원에서"), ("at school", "학교에서"),
          ("in the garden", "정원에서"), ("at the airport", "공항에서"), ("in a small cafe", "작은 카페에서")]
TIMES = [("this morning", "오늘 아침에"), ("tonight", "오늘 밤에"), ("on Sunday afternoon", "일요일 오후에"),
         ("after lunch", "점심 식사 후에"), ("before dinner", "저녁 식사 전에"), ("right now", "지금")]
SLOTS = (PEOPLE, ACTIONS, PLACES, TIMES)


def _has_batchim(word: str) -> bool:
    """True when the last Hangul syllable ends in a consonant (가 = U+AC00; 28 finals per vowel)."""
    code = ord(word[-1]) - 0xAC00
    if not 0 <= code < 11172:
        raise ValueError(f"{word!r} does not end in a Hangul syllable")
    return code % 28 != 0


def _particle(word: str, with_batchim: str, without: str) -> str:
    return word + (with_batchim if _has_batchim(word) else without)


def english(combo: tuple, order: int) -> str:
    (person, _), (verb, _, _), (place, _), (time, _) = (SLOTS[k][i] for k, i in enumerate(combo))
    if order == 0:
        return f"{person[0].upper() + person[1:]} {verb} {place} {time}."
    return f"{time[0].upper() + time[1:]}, {person} {verb} {place}."


def korean(combo: tuple, order: int) -> str:
    (_, person), (_, obj, verb), (_, place), (_, time) = (SLOTS[k][i] for k, i in enumerate(combo))
    subject, objekt = _particle(person, "이", "가"), _particle(obj, "을", "를")
    words = [[time, subject, place, objekt, verb], [subject, time, place, objekt, verb],
             [subject, place, time, objekt, verb]][order]
    return " ".join(words) + "."


def near_misses(combo: tuple, rng: random.Random, n: int, allowed: set) -> list[tuple]:
    """n combinations from `allowed` that differ from `combo` in exactly one slot."""
    candidates = [combo[:k] + (v,) + combo[k + 1:] for k in range(4) for v in range(len(SLOTS[k])) if v != combo[k]]
    return sorted(rng.sample([c for c in candidates if c in allowed], n))


def with_shared_slots(combo: tuple, shared: int, rng: random.Random, allowed: list) -> tuple:
    """A combination from `allowed` that has exactly `shared` of its 4 slots in common with `combo`."""
    while True:
        other = rng.choice(allowed)
        if sum(x == y for x, y in zip(combo, other)) == shared:
            return other


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.writelines(line + "\n" for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="sample_data", help="folder to write (default sample_data)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier output of this tool at --output (a folder holding anything else is "
                             "never replaced)")
    parser.add_argument("--train-rows", type=int, default=1600)
    parser.add_argument("--sts-pairs", type=int, default=600)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rule = dict(overwrite=args.overwrite, own_entries=OWN_ENTRIES,  # sample_data was written before the marker
                recognise=lambda path: os.path.isfile(os.path.join(path, "train.jsonl")))
    try:
        check_output_folder(args.output, TOOL, **rule)
        check_output_place(args.output, [], "--output")
    except OutputError as e:
        raise SystemExit(f"error: {e}") from None
    rng = random.Random(args.seed)

    combos = [(a, b, c, d) for a in range(len(PEOPLE)) for b in range(len(ACTIONS))
              for c in range(len(PLACES)) for d in range(len(TIMES))]
    rng.shuffle(combos)
    heldout = set(combos[:len(combos) // 5])  # 20% of all combinations are never trained on
    train_combos = combos[len(combos) // 5:]
    trainable = set(train_combos)

    rows = []
    for i, combo in enumerate(train_combos[:args.train_rows]):
        neg_combos = near_misses(combo, rng, 3, trainable)
        if i % 5 == 4:  # Korean → Korean, another word order
            row = {"query": korean(combo, 0), "pos": [korean(combo, rng.choice((1, 2)))]}
        else:
            row = {"query": english(combo, rng.randrange(2)), "pos": [korean(combo, rng.randrange(3))]}
        row["neg"] = [korean(c, rng.randrange(3)) for c in neg_combos]
        rows.append(json.dumps(row, ensure_ascii=False))

    held = sorted(heldout)
    sts = ["sentence1\tsentence2\tscore"]
    for i in range(args.sts_pairs):
        a = rng.choice(held)
        shared = i % 5  # 0..4 slots in common, evenly spread
        if shared == 4:
            b, orders = a, rng.sample(range(3), 2)
        else:
            b, orders = with_shared_slots(a, shared, rng, held), (rng.randrange(3), rng.randrange(3))
        sts.append(f"{korean(a, orders[0])}\t{korean(b, orders[1])}\t{5 * shared / 4:.2f}")

    query_combos = rng.sample(held, args.queries)
    corpus_combos = set(query_combos)
    for combo in query_combos:
        corpus_combos.update(near_misses(combo, rng, 4, heldout))
    corpus_ids = {c: f"d{i}" for i, c in enumerate(sorted(corpus_combos))}
    corpus = [json.dumps({"_id": d, "title": "", "text": korean(c, rng.randrange(3))}, ensure_ascii=False)
              for c, d in corpus_ids.items()]
    queries = [json.dumps({"_id": f"q{i}", "text": english(c, rng.randrange(2))}) for i, c in enumerate(query_combos)]
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\t{corpus_ids[c]}\t1" for i, c in enumerate(query_combos)]

    try:
        with staged_folder(args.output, TOOL, **rule, log=print) as out:
            os.makedirs(os.path.join(out, "heldout-retrieval", "qrels"))
            write_lines(os.path.join(out, "train.jsonl"), rows)
            write_lines(os.path.join(out, "heldout-sts.tsv"), sts)
            write_lines(os.path.join(out, "heldout-retrieval", "corpus.jsonl"), corpus)
            write_lines(os.path.join(out, "heldout-retrieval", "queries.jsonl"), queries)
            write_lines(os.path.join(out, "heldout-retrieval", "qrels", "test.tsv"), qrels)
    except OutputError as e:  # the folder changed while the tool ran
        raise SystemExit(f"error: {e}") from None
    out = args.output
    print(f"wrote {len(rows)} training rows, {args.sts_pairs} STS pairs, {len(queries)} queries over "
          f"{len(corpus)} documents to {out}")


if __name__ == "__main__":
    main()
