"""LLM-judged triplets for clustering (pipelines/cluster_triplets, scripts/llm_triplets.py).

Sampling and the oracles are checked against plain transcriptions on constructed data; the causal-LM judge on a
tiny random GPT-2 against an unbatched log-probability computed by hand; the HTTP judge against stub
OpenAI-compatible servers on 127.0.0.1 (answering, failing, slow, absent); the cache by counting questions.
"""
from __future__ import annotations

import csv
import json
import math
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from pipelines.cluster_triplets import cli, finetune_and_score
from pipelines.cluster_triplets.cache import JudgementCache
from pipelines.cluster_triplets.causal_lm_judge import CausalLMJudge
from pipelines.cluster_triplets.convert import training_rows, write_rows
from pipelines.cluster_triplets.http_judge import HTTPJudge
from pipelines.cluster_triplets.judges import (DEFAULT_TEMPLATE, EmbeddingJudge, GoldOracle, JudgeError, NoisyOracle,
                                          check_template, gold_answer, parse_choice, render_prompt)
from pipelines.cluster_triplets.run_judge import judge_triplets
from pipelines.cluster_triplets.sampling import (Triplet, closest_entropy, kmeans_clusters, rank_by_entropy,
                                            sample_triplets, soft_assignment)
from pipelines.cluster_triplets.texts import read_clustering_texts
from data.examples import DataError, load_examples
from tests.helpers import REPO, minilm_path, subprocess_env, tiny_bi_encoder



# ------------------------------------------------------------------ constructed data
def four_blobs(per: int = 10, seed: int = 0):
    """4 tight clusters on a line at x = 0, 10, 20, 30 (2-D), texts 'c<cluster> item <i>', labels = cluster."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
    emb = np.concatenate([c + rng.normal(scale=1.0, size=(per, 2)) for c in centres])
    labels = [f"c{c}" for c in range(4) for _ in range(per)]
    texts = [f"c{c} item {i}" for c in range(4) for i in range(per)]
    return emb.astype(np.float32), texts, labels


def write_csv(path, texts, labels):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return str(path)


TOPICS = {"weather": ["rain", "sun", "snow", "wind", "storm"], "music": ["guitar", "piano", "song", "drum", "violin"],
          "food": ["bread", "soup", "rice", "apple", "cheese"], "sport": ["football", "tennis", "swim", "golf", "run"]}


def topic_texts():
    """40 short sentences of our own, 10 per topic label."""
    texts, labels = [], []
    for label, words in TOPICS.items():
        for i in range(10):
            texts.append(f"{words[i % 5]} and {words[(i + 2) % 5]} number {i}")
            labels.append(label)
    return texts, labels


# ------------------------------------------------------------------ sampling
def test_soft_assignment_and_entropy_equal_a_plain_transcription():
    rng = np.random.default_rng(1)
    x, mu = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    q = soft_assignment(x, mu)
    closest, ent = closest_entropy(q, m=3)
    for i in range(7):
        kernel = [1.0 / (1.0 + sum((x[i, d] - mu[j, d]) ** 2 for d in range(3))) for j in range(4)]
        total = sum(kernel)
        probs = [v / total for v in kernel]
        np.testing.assert_allclose(q[i], probs, rtol=1e-12)
        top = sorted(range(4), key=lambda j: -probs[j])[:3]
        assert list(closest[i]) == top
        p = [probs[j] / sum(probs[j] for j in top) for j in top]
        assert ent[i] == pytest.approx(-sum(v * math.log(v) for v in p), rel=1e-12)


def test_entropy_ranks_the_point_between_two_clusters_first():
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 40.0]])
    # x positions from the midpoint of clusters 0 and 1 outwards: the closer to x = 2, the more uncertain
    points = np.array([[3.9, 0.0], [2.0, 0.0], [0.1, 0.0], [2.5, 0.0], [1.0, 0.0]])
    _, ent = closest_entropy(soft_assignment(points, centres), m=2)
    assert list(rank_by_entropy(ent)) == [1, 3, 4, 0, 2] or list(rank_by_entropy(ent)) == [1, 3, 4, 2, 0]
    assert ent[1] == pytest.approx(math.log(2))  # equidistant: the two closest clusters are a coin flip
    assert ent[0] == pytest.approx(ent[2])  # mirror images
    # ties keep row order
    assert list(rank_by_entropy(np.array([0.5, 0.7, 0.5]))) == [1, 0, 2]


def test_triplets_take_anchors_by_entropy_and_one_choice_from_each_of_the_two_closest_clusters():
    emb, texts, _ = four_blobs()
    s = sample_triplets(emb, texts, k=4, num_triplets=25, seed=3)
    assert len(s.triplets) == 25 and not s.skipped
    centres = np.stack([emb[s.clusters == c].mean(0) for c in range(4)])
    for t in s.triplets:
        dist = [float(((emb[t.anchor] - centres[c]) ** 2).sum()) for c in range(4)]
        two_closest = set(sorted(range(4), key=lambda c: dist[c])[:2])
        assert {int(s.clusters[t.a]), int(s.clusters[t.b])} == two_closest
        assert len({t.anchor, t.a, t.b}) == 3
    anchors = [t.anchor for t in s.triplets]
    assert anchors == list(rank_by_entropy(s.entropy)[:25])  # most uncertain first, one triplet each
    # both A/B orders occur (the closest cluster is not always "A")
    first_is_closest = [int(s.clusters[t.a]) == int(s.closest[t.anchor][0]) for t in s.triplets]
    assert 0 < sum(first_is_closest) < 25


def test_random_anchor_baseline_keeps_the_choice_rule_but_not_the_entropy_order():
    emb, texts, _ = four_blobs()
    s = sample_triplets(emb, texts, k=4, num_triplets=25, seed=3, anchors="random")
    anchors = [t.anchor for t in s.triplets]
    assert anchors != list(rank_by_entropy(s.entropy)[:25])
    assert len(set(anchors)) == 25
    for t in s.triplets:
        assert {int(s.clusters[t.a]), int(s.clusters[t.b])} == set(int(c) for c in s.closest[t.anchor])


def test_more_triplets_than_texts_sweep_again_and_the_shortfall_is_counted():
    emb, texts, _ = four_blobs(per=3)
    s = sample_triplets(emb, texts, k=4, num_triplets=30, seed=0)
    assert len(s.triplets) == 30 and len(set(s.triplets)) == 30  # 12 anchors, several sweeps, no repeats
    s = sample_triplets(emb, texts, k=4, num_triplets=10_000, seed=0)
    assert len(s.triplets) < 10_000
    assert any("short of --num-triplets" in why for why in s.skipped)


def test_sampling_is_a_function_of_the_seed():
    emb, texts, _ = four_blobs()
    assert sample_triplets(emb, texts, 4, 20, seed=5).triplets == sample_triplets(emb, texts, 4, 20, seed=5).triplets
    assert sample_triplets(emb, texts, 4, 20, seed=5).triplets != sample_triplets(emb, texts, 4, 20, seed=6).triplets


def test_bad_k_and_bad_files_are_refused(tmp_path):
    emb, texts, labels = four_blobs(per=2)
    with pytest.raises(ValueError, match="larger than the 8 texts"):
        kmeans_clusters(emb, 9)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        sample_triplets(emb, texts, 1, 5)
    with pytest.raises(DataError, match="clustering needs at least 2 distinct labels"):
        read_clustering_texts(write_csv(tmp_path / "one.csv", texts, ["same"] * len(texts)))
    bad = tmp_path / "empty-text.csv"
    write_csv(bad, ["fine", "", "also fine"], ["a", "b", "a"])
    with pytest.raises(DataError, match=r"empty-text.csv:3: field 'text'"):
        read_clustering_texts(str(bad))
    assert read_clustering_texts(write_csv(tmp_path / "ok.csv", texts, labels)).labels == labels


# ------------------------------------------------------------------ prompt, replies, oracles
def test_template_checks_and_reply_parsing():
    for bad, why in [("", "empty"), ("   ", "empty"), ("{anchor} vs {a}", r"lacks \{b\}"),
                     ("{anchor} {a} {b} {extra}", r"unknown field\(s\) \{extra\}"), ("{anchor {a} {b}", "format")]:
        with pytest.raises(ValueError, match=why):
            check_template(bad)
    assert "Query: q\nA: x\nB: y" in render_prompt(check_template(DEFAULT_TEMPLATE), "q", "x", "y", "topic")
    for reply, want in [("A", "A"), (" b.", "B"), ("(B)", "B"), ("Answer: A", "A"), ("The answer is B", "B"),
                        ("B) the second", "B"), ("A customer would", None), ("Both", None), ("", None),
                        ("neither", None), ("AB", None), ("tie", None)]:
        assert parse_choice(reply) == want, reply


def test_gold_oracle_answers_the_choice_sharing_the_anchor_label():
    labels = ["x", "x", "y", "y"]
    assert gold_answer(labels, Triplet(0, 1, 2)) == "A"
    assert gold_answer(labels, Triplet(0, 2, 1)) == "B"
    assert gold_answer(labels, Triplet(2, 0, 1)) == "neither"
    assert gold_answer(labels, Triplet(2, 3, 3)) == "both"
    assert GoldOracle(labels).answer([""] * 2, [Triplet(0, 1, 2), Triplet(2, 0, 1)]) == ["A", "neither"]


@pytest.mark.parametrize("agreement", [1.0, 0.9, 0.7, 0.6, 0.0])
def test_noisy_oracle_flips_exactly_the_set_fraction_of_decidable_answers(agreement):
    rng = np.random.default_rng(0)
    labels = [str(v) for v in rng.integers(0, 3, size=300)]
    triplets = [Triplet(*map(int, rng.choice(300, size=3, replace=False))) for _ in range(500)]
    gold = GoldOracle(labels).answer([""] * 500, triplets)
    noisy = NoisyOracle(labels, agreement, seed=1).answer([""] * 500, triplets)
    decidable = [i for i, g in enumerate(gold) if g in ("A", "B")]
    assert len(decidable) > 100  # precondition: enough decidable triplets to measure a fraction
    flipped = [i for i in decidable if noisy[i] != gold[i]]
    assert len(flipped) == round((1 - agreement) * len(decidable))
    assert all(noisy[i] == ("B" if gold[i] == "A" else "A") for i in flipped)
    assert all(noisy[i] == gold[i] for i in range(500) if i not in decidable)  # both / neither untouched
    _, report = judge_triplets(NoisyOracle(labels, agreement, seed=1), triplets, [str(i) for i in range(300)],
                               DEFAULT_TEMPLATE, labels=labels, progress=False)
    assert report.agreement == pytest.approx(1 - len(flipped) / len(decidable))
    assert report.unreadable == 500 - len(decidable)


def test_embedding_judge_picks_the_more_similar_choice():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert EmbeddingJudge(emb).answer(["", ""], [Triplet(0, 1, 2), Triplet(0, 2, 1)]) == ["A", "B"]


# ------------------------------------------------------------------ cache and conversion
class CountingJudge:
    """Answers A for even anchors, a non-answer for anchors divisible by 5, B otherwise; counts questions."""

    name, batch_size = "counting", 3

    def __init__(self):
        self.asked = 0

    def answer(self, prompts, triplets):
        self.asked += len(prompts)
        return ["maybe" if t.anchor % 5 == 0 else "A" if t.anchor % 2 == 0 else "B" for t in triplets]


def test_cache_means_a_second_run_asks_nothing(tmp_path):
    texts = [f"text {i}" for i in range(20)]
    triplets = [Triplet(i, (i + 1) % 20, (i + 2) % 20) for i in range(10)]
    judge, path = CountingJudge(), tmp_path / "judgements.jsonl"
    cache = JudgementCache(path)
    first, report = judge_triplets(judge, triplets[:6], texts, DEFAULT_TEMPLATE, cache=cache, progress=False)
    cache.close()
    assert judge.asked == 6 and report.asked == 6 and len(JudgementCache(path)) == 6
    cache = JudgementCache(path)
    again, report = judge_triplets(judge, triplets, texts, DEFAULT_TEMPLATE, cache=cache, progress=False)
    assert judge.asked == 10 and report.from_cache == 6 and report.asked == 4  # only the 4 new ones
    assert [j.reply for j in again[:6]] == [j.reply for j in first]
    judge_triplets(judge, triplets, texts, DEFAULT_TEMPLATE, cache=JudgementCache(path), progress=False)
    assert judge.asked == 10
    # another judge, template or perspective is another key
    judge_triplets(judge, triplets, texts, DEFAULT_TEMPLATE, perspective="topic", cache=JudgementCache(path),
                   progress=False)
    assert judge.asked == 20
    assert report.unreadable == 2  # anchors 0 and 5 replied "maybe": counted, not guessed


def test_cache_ignores_a_torn_last_line_and_rejects_other_garbage(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"key": "k1", "reply": "A"}) + "\n" + '{"key": "k2", "re')
    cache = JudgementCache(path)
    assert cache.get("k1") == "A" and cache.torn_lines == 1
    cache.put("k3", "B")
    cache.close()
    assert JudgementCache(path).get("k3") == "B"
    path.write_text("garbage\n" + json.dumps({"key": "k1", "reply": "A"}) + "\n")
    with pytest.raises(ValueError, match=r"j.jsonl:1: not a judgement record"):
        JudgementCache(path)


def test_conversion_to_training_rows_and_train_py_reads_them(tmp_path):
    texts = [f"text {i}" for i in range(12)]
    triplets = [Triplet(i, i + 1, i + 2) for i in range(0, 10, 1)]
    judgements, _ = judge_triplets(CountingJudge(), triplets, texts, DEFAULT_TEMPLATE, progress=False)
    rows = training_rows(judgements, texts)
    assert len(rows) == 8  # anchors 0 and 5: no answer, left out
    assert rows[0] == {"query": "text 1", "pos": ["text 3"], "neg": ["text 2"]}  # anchor 1 odd -> "B" = t.b
    assert rows[1] == {"query": "text 2", "pos": ["text 3"], "neg": ["text 4"]}  # anchor 2 even -> "A" = t.a
    with_self = training_rows(judgements, texts, self_pairs=True)
    assert with_self[:8] == rows
    assert with_self[8:] == [{"query": t, "pos": [t], "neg": []}
                             for t in (f"text {i}" for i in (1, 2, 3, 4, 6, 7, 8, 9))]
    path = tmp_path / "triplets.jsonl"
    write_rows(path, with_self)
    examples = load_examples([str(path)])[0]
    assert [(e.query, e.pos, e.neg) for e in examples] == [(r["query"], r["pos"], r["neg"]) for r in with_self]


# ------------------------------------------------------------------ causal LM judge
@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory) -> str:
    """A random 2-layer GPT-2 with MiniLM's (WordPiece) tokenizer: plumbing only, its answers mean nothing."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_causal_lm_judge_scores_letters_like_an_unbatched_forward(tiny_causal_lm):
    judge = CausalLMJudge(tiny_causal_lm, batch_size=4, device="cpu")
    prompts = [render_prompt(DEFAULT_TEMPLATE, *texts) for texts in
               [("my card is lost", "where is my card", "exchange rate"),
                ("hi", "a much longer second choice here", "b"), ("refund please", "money back", "top up failed"),
                ("x", "y", "z"), ("pin blocked", "unlock pin", "fees")]]
    scores = judge.letter_logprobs(prompts)  # batched, right-padded
    model, tok = judge.model, judge.tokenizer
    for i, prompt in enumerate(prompts):
        for j, letter in enumerate((" A", " B")):
            ids = tok(prompt)["input_ids"]
            answer = tok(letter, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids + answer])).logits[0].double(), -1)
            want = sum(float(logp[len(ids) - 1 + n, answer[n]]) for n in range(len(answer)))
            assert float(scores[i, j]) == pytest.approx(want, abs=1e-4)
    replies = judge.answer(prompts, [Triplet(0, 1, 2)] * len(prompts))
    assert replies == ["A" if a > b else "B" for a, b in scores.tolist()]


def test_causal_lm_judge_runs_through_the_judging_loop(tiny_causal_lm, tmp_path):
    texts, labels = topic_texts()
    triplets = [Triplet(i, (i + 3) % 40, (i + 17) % 40) for i in range(12)]
    judge = CausalLMJudge(tiny_causal_lm, batch_size=5, device="cpu")
    judgements, report = judge_triplets(judge, triplets, texts, DEFAULT_TEMPLATE, labels=labels,
                                        cache=JudgementCache(tmp_path / "c.jsonl"), progress=False)
    assert report.asked == 12 and all(j.choice in ("A", "B") for j in judgements)
    assert report.compared > 0 and 0 <= report.agreement <= 1


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import AutoConfig

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    folder = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    for path in (str(folder), minilm_path()):
        assert AutoConfig.from_pretrained(path).model_type == "bert"  # precondition: a readable encoder config
        with pytest.raises(JudgeError, match="is not a causal language model"):
            CausalLMJudge(path, device="cpu")
    with pytest.raises(JudgeError, match="cannot read its config"):
        CausalLMJudge(str(tmp_path / "missing"), device="cpu")


# ------------------------------------------------------------------ HTTP judge against loopback stubs
class Stub:
    """An OpenAI-compatible chat/completions server on 127.0.0.1 (random free port) whose behaviour the test sets.

    plan(n) -> (status, reply text, delay seconds) for the n-th request (0-based)."""

    def __init__(self, plan):
        self.plan, self.requests, self.lock = plan, [], threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    n = len(stub.requests)
                    stub.requests.append((self.path, dict(self.headers), body))
                status, text, delay = stub.plan(n, body)
                time.sleep(delay)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}
                                     if status == 200 else {"error": text}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def answer_by_anchor(body) -> str:
    """'A' when the anchor's word count is even, else 'B' (a deterministic 'LLM')."""
    prompt = body["messages"][0]["content"]
    anchor = prompt.split("Query: ", 1)[1].split("\n", 1)[0]
    return "A" if len(anchor.split()) % 2 == 0 else "B"


def http_judge(url, **kw) -> HTTPJudge:
    kw = {"concurrency": 3, "max_retries": 2, "backoff": 0.01, "timeout": 5.0, **kw}
    return HTTPJudge(url, "stub-model", **kw)


def questions(n=9):
    texts = [("one two" if i % 2 else "one two three") + f" {i}" for i in range(n + 2)]
    return texts, [Triplet(i, i + 1, i + 2) for i in range(n)]


def test_http_judge_answers_through_a_stub_server(tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_KEY", "secret-123")
    texts, triplets = questions()
    with Stub(lambda n, body: (200, answer_by_anchor(body), 0)) as stub:
        judgements, report = judge_triplets(http_judge(stub.url, api_key_env="STUB_KEY"), triplets, texts,
                                            DEFAULT_TEMPLATE, cache=JudgementCache(tmp_path / "c.jsonl"),
                                            progress=False)
    assert len(stub.requests) == 9 and report.asked == 9
    path, headers, body = stub.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer secret-123"
    assert body["model"] == "stub-model" and body["temperature"] == 0
    assert [j.choice for j in judgements] == [answer_by_anchor({"messages": [{"content": render_prompt(
        DEFAULT_TEMPLATE, texts[t.anchor], texts[t.a], texts[t.b])}]}) for t in triplets]


def test_http_judge_retries_server_errors_then_succeeds():
    texts, triplets = questions(4)
    failures = {}

    def plan(n, body):  # every question fails twice with 503, then is answered
        key = body["messages"][0]["content"]
        failures[key] = failures.get(key, 0) + 1
        return (503, "overloaded", 0) if failures[key] <= 2 else (200, "A", 0)

    with Stub(plan) as stub:
        judgements, report = judge_triplets(http_judge(stub.url, max_retries=2), triplets, texts, DEFAULT_TEMPLATE,
                                            progress=False)
    assert len(stub.requests) == 12 and all(j.choice == "A" for j in judgements)


def test_http_judge_gives_up_after_bounded_retries_and_keeps_what_it_got(tmp_path):
    texts, triplets = questions(6)
    cache_path = tmp_path / "c.jsonl"
    with Stub(lambda n, body: (200, "B", 0) if n < 3 else (500, "internal error", 0)) as stub:
        judge = http_judge(stub.url, concurrency=1, max_retries=2)
        with pytest.raises(JudgeError, match=r"HTTP 500 .*after 3 attempts"):
            judge_triplets(judge, triplets, texts, DEFAULT_TEMPLATE, cache=JudgementCache(cache_path),
                           progress=False)
    assert len(stub.requests) == 3 + 3  # 3 answered, then one question tried 1 + 2 times, nothing after
    assert len(JudgementCache(cache_path)) == 3  # answers received before the failure are cached


def test_http_judge_resumes_from_the_cache_after_a_failure(tmp_path):
    texts, triplets = questions(6)
    cache_path = tmp_path / "c.jsonl"
    state = {"healthy": False}

    def plan(n, body):
        return (200, "B", 0) if state["healthy"] or n < 2 else (502, "bad gateway", 0)

    with Stub(plan) as stub:
        with pytest.raises(JudgeError):
            judge_triplets(http_judge(stub.url, concurrency=1, max_retries=1), triplets, texts, DEFAULT_TEMPLATE,
                           cache=JudgementCache(cache_path), progress=False)
        before = len(stub.requests)
        state["healthy"] = True
        judgements, report = judge_triplets(http_judge(stub.url, concurrency=1), triplets, texts, DEFAULT_TEMPLATE,
                                            cache=JudgementCache(cache_path), progress=False)
    assert report.from_cache == 2 and report.asked == 4 and len(stub.requests) == before + 4
    assert all(j.choice == "B" for j in judgements)


def test_http_judge_times_out_on_a_slow_server():
    texts, triplets = questions(2)
    with Stub(lambda n, body: (200, "A", 1.0)) as stub:
        start = time.monotonic()
        with pytest.raises(JudgeError, match=r"(?i)timed? ?out.*after 2 attempts"):
            judge_triplets(http_judge(stub.url, timeout=0.2, max_retries=1, concurrency=2), triplets, texts,
                           DEFAULT_TEMPLATE, progress=False)
        assert time.monotonic() - start < 5  # bounded: 2 attempts × 0.2 s, not the server's 1 s per answer


def test_http_judge_reports_an_unreachable_endpoint():
    with socket.socket() as s:  # a free port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    texts, triplets = questions(1)
    with pytest.raises(JudgeError, match=rf"127.0.0.1:{port}/v1/chat/completions: .*Connection ?Refused.* after 3"):
        judge_triplets(http_judge(f"http://127.0.0.1:{port}/v1"), triplets, texts, DEFAULT_TEMPLATE, progress=False)


def test_http_judge_does_not_retry_a_client_error():
    texts, triplets = questions(1)
    with Stub(lambda n, body: (401, "bad key", 0)) as stub:
        with pytest.raises(JudgeError, match="HTTP 401 .*not retried"):
            judge_triplets(http_judge(stub.url), triplets, texts, DEFAULT_TEMPLATE, progress=False)
    assert len(stub.requests) == 1


# ------------------------------------------------------------------ the chain (scripts/llm_triplets.py)
@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-encoder")
    tiny_bi_encoder(passage_max_len=32, query_max_len=32).save(str(folder))
    return str(folder)


def run_in_process(command, log_file):
    """train.py's / evaluate.py's main in this process (what the command line runs, without a new Python)."""
    import evaluate
    import train
    from cli_config import parse_config

    argv = [str(a) for a in command[2:]]
    if command[1].endswith("train.py"):
        train.main(parse_config(train.TrainConfig, argv))
    else:
        evaluate.main(argv)


def test_run_once_runs_a_command_once_and_reports_a_failure(tmp_path):
    ok = [sys.executable, "-c", "print('hello')"]
    assert finetune_and_score.run_once(ok, tmp_path / "a.done.json", tmp_path / "a.log") is True
    assert (tmp_path / "a.log").read_text().strip() == "hello"
    assert finetune_and_score.run_once(ok, tmp_path / "a.done.json", tmp_path / "a.log") is False  # finished before
    # another command
    assert finetune_and_score.run_once(ok + ["x"], tmp_path / "a.done.json", tmp_path / "a.log") is True
    bad = [sys.executable, "-c", "import sys; print('went wrong'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"(?s)failed \(exit 3\).*went wrong"):
        finetune_and_score.run_once(bad, tmp_path / "b.done.json", tmp_path / "b.log")
    assert not (tmp_path / "b.done.json").exists()


def test_script_with_the_http_judge_end_to_end_writes_training_rows(tiny_encoder, tmp_path):
    texts, labels = topic_texts()
    data = write_csv(tmp_path / "topics.csv", texts, labels)
    with Stub(lambda n, body: (200, answer_by_anchor(body), 0)) as stub:
        args = ["--model", tiny_encoder, "--input", data, "--output-dir", tmp_path / "out", "--judge", "http",
                "--judge-url", stub.url, "--judge-api-model", "stub", "--num-triplets", 12, "--no-train"]
        res = subprocess.run([sys.executable, "-m", "scripts.llm_triplets", *map(str, args)], cwd=REPO,
                             env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert len(stub.requests) == 12
        again = cli.main([str(a) for a in args])  # same run again: everything from the cache
        assert len(stub.requests) == 12 and again["from_cache"] == 12 and again["asked"] == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["rows"] == 12 - report["unreadable"]
    assert len(load_examples([str(tmp_path / "out" / "triplets.jsonl")])[0]) == report["rows"]


def test_script_bad_inputs_stop_before_any_work(tiny_encoder, tmp_path, monkeypatch, capsys):
    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before the inputs were checked")

    monkeypatch.setattr(finetune_and_score, "embed_texts", no_embedding)
    texts, labels = topic_texts()
    data = write_csv(tmp_path / "topics.csv", texts, labels)
    common = ["--model", tiny_encoder, "--input", data, "--output-dir", str(tmp_path / "out"), "--no-train"]
    cases = [
        (["--judge", "oracle", "--prompt-template", ""], "--prompt-template: the prompt template is empty"),
        (["--judge", "oracle", "--k", "41"], "--k 41 must be between 2 and the 40 texts"),
        (["--judge", "causal-lm", "--judge-model", minilm_path()], "is not a causal language model"),
        (["--judge", "http", "--judge-url", "localhost:1", "--judge-api-model", "m"], "expected an http:// or https://"),
        (["--judge", "oracle", "--eval-file", str(tmp_path / "missing.csv")], "missing.csv: file not found"),
    ]
    one = write_csv(tmp_path / "one.csv", texts, ["same"] * 40)
    cases.append((["--judge", "oracle", "--input", one], "clustering needs at least 2 distinct labels"))
    for extra, message in cases:
        with pytest.raises(SystemExit) as stop:
            cli.main(common + extra)
        captured = capsys.readouterr()
        assert message in f"{stop.value.code} {captured.err}", (extra, stop.value.code, captured.err[-500:])


def test_script_chains_train_and_evaluate_with_the_causal_lm_judge(tiny_encoder, tiny_causal_lm, tmp_path, capsys):
    """The whole loop on a tiny random bi-encoder and a tiny random GPT-2 judge: plumbing, the numbers mean nothing."""
    texts, labels = topic_texts()
    data = write_csv(tmp_path / "topics.csv", texts, labels)
    out = tmp_path / "out"
    args = ["--model", tiny_encoder, "--input", data, "--output-dir", str(out), "--judge", "causal-lm",
            "--judge-model", tiny_causal_lm, "--judge-device", "cpu", "--num-triplets", "16", "--self-pairs",
            "--train-args", "--batch-size 4 --max-steps 2 --group-size 2"]
    report = cli.main(args, runner=run_in_process)
    printed = capsys.readouterr().out
    for side in ("base", "tuned"):
        assert set(report[side]) == {"cluster_accuracy", "nmi", "v_measure"}
    assert report["asked"] == 16 and report["rows"] > 16 - report["unreadable"]  # + self-pairs
    assert "| base |" in printed and "| fine-tuned (causal-lm:" in printed
    assert (out / "model" / "embedding_config.json").is_file()
    assert json.loads((out / "eval-tuned.done.json").read_text())["command"][1].endswith("evaluate.py")

    def nothing_to_run(command, log_file):
        raise AssertionError(f"ran again: {command[:2]}")

    again = cli.main(args, runner=nothing_to_run)  # a rerun asks nothing and trains nothing
    assert again["asked"] == 0 and again["tuned"] == report["tuned"]


def test_script_refuses_an_output_dir_it_did_not_write_and_resumes_in_its_own(tiny_encoder, tmp_path, monkeypatch):
    """OUTPUT_DIR is the chain's working folder: judgements, triplets, train.py's and evaluate.py's outputs go there.
    A folder holding someone else's files (or inside an input) is refused before the first embedding; the chain's
    own folder is resumed, as before."""
    from scripts import llm_triplets

    texts, labels = topic_texts()
    data = write_csv(tmp_path / "topics.csv", texts, labels)
    args = ["--model", tiny_encoder, "--input", data, "--judge", "oracle", "--num-triplets", "8", "--no-train"]
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    real_embed_texts = finetune_and_score.embed_texts

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before the output folder was checked")

    monkeypatch.setattr(finetune_and_score, "embed_texts", no_embedding)
    with pytest.raises(SystemExit, match=r"^error: --output-dir .*theirs: is a folder that scripts.llm_triplets did "
                                         r"not write \(1 entry: notes.txt\)"):
        llm_triplets.main(args + ["--output-dir", str(theirs)])
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    with pytest.raises(SystemExit, match=r"^error: --output-dir .*chain: lies inside --model "):
        llm_triplets.main(args + ["--output-dir", f"{tiny_encoder}/chain"])
    monkeypatch.setattr(finetune_and_score, "embed_texts", real_embed_texts)
    out = tmp_path / "out"
    first = llm_triplets.main(args + ["--output-dir", str(out)])  # precondition: a new folder is written
    (out / ".eval-base.abc123.partial").mkdir()  # what a killed evaluate.py leaves: the chain's own, too
    again = llm_triplets.main(args + ["--output-dir", str(out)])  # its own folder: resumed from the cache
    assert again["from_cache"] == first["asked"] == 8 and again["asked"] == 0
