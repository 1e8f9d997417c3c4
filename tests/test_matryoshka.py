"""Matryoshka (losses/matryoshka.py): the weighted sum over widths of the inner loss on truncated, re-normalised
embeddings, against float64 loop references (values and gradients), whatever the order of the widths; the same
through the tiled loss and GradCache (2 processes: tests/test_distributed.py, cases *_matryoshka); equal to
sentence-transformers' MatryoshkaLoss; bad widths and weights stopped at start by train.py naming the flag; the widths
saved with the model, read by SentenceTransformer(folder, truncate_dim=d) and by evaluate.py."""
from __future__ import annotations

import json
import os

import pytest
import torch
from accelerate import Accelerator

import train
from cli_config import ConfigError, build_config
from losses import build_loss
from losses.config import LossConfig
from losses.matryoshka import MatryoshkaLoss, shrink
from losses.tiled import TiledDistillLoss, TiledGTELoss, TiledInfoNCELoss
from models.bi_encoder import BiEncoder
from tests.helpers import minilm_path, tiny_bi_encoder
from tests.test_tiled_loss import _cos, _value_and_grads as value_and_grads, loop_gte, loop_infonce, loop_m3
from training.step import train_step

N, G, D, TAU, TAU_T = 3, 3, 8, 0.1, 0.7  # 3 queries × (1 positive + 2 hard negatives), 8 dimensions
DIMS, WEIGHTS = (8, 5, 3), (0.5, 2.0, 1.0)


def loop_kl(q, p, t, tau, tau_t, rows):
    """RocketQAv2's KL(teacher ‖ student) over each query's own G passages, in loops."""
    g = len(p) // len(q)
    total = []
    for k, i in enumerate(rows):
        teacher = torch.softmax(t[k] / tau_t, dim=0)
        s = torch.stack([_cos(q[i], p[i * g + h]) / tau for h in range(g)])
        total.append((teacher * (teacher.log() - torch.log_softmax(s, dim=0))).sum())
    return torch.stack(total).mean()


def loop_cosine(u, v, labels):
    return torch.stack([(_cos(a, b) - y) ** 2 for a, b, y in zip(u, v, labels)]).mean()


CASES = {  # name -> (build_loss kwargs, float64 loop reference (q, p, rows, teacher, labels) -> scalar)
    "infonce": (dict(name="infonce"), lambda q, p, rows, t, y: loop_infonce(q, p, TAU, rows)),
    "gte": (dict(name="gte"), lambda q, p, rows, t, y: loop_gte(q, p, TAU, rows, exclude_own_group=True)),
    "distill_kl_gte": (dict(name="distill", distill_base="gte", distill_weight=0.5),
                       lambda q, p, rows, t, y: loop_gte(q, p, TAU, rows, True)
                       + 0.5 * loop_kl(q, p, t, TAU, TAU_T, rows)),
    "distill_m3": (dict(name="distill", distill_base="none", distill_mode="m3"),
                   lambda q, p, rows, t, y: loop_m3(q, p, t, TAU, TAU_T, rows)),
    "cosine": (dict(name="cosine"), lambda q, p, rows, t, y: loop_cosine(q, p, y)),
}


def inner_loss(case: str):
    kwargs = dict(CASES[case][0])
    name = kwargs.pop("name")
    if name == "distill":
        kwargs["teacher_temperature"] = TAU_T
    return build_loss(name, dim=D, temperature=None if name == "cosine" else TAU, **kwargs)


def embeddings(case: str, seed: int = 0):
    """(q, p, teacher scores, labels), float64; cosine takes pairs (p has one row per query)."""
    gen = torch.Generator().manual_seed(seed)
    group = 1 if case == "cosine" else G
    q, p = torch.randn(N, D, generator=gen, dtype=torch.float64), torch.randn(N * group, D, generator=gen,
                                                                              dtype=torch.float64)
    return q, p, torch.randn(N, G, generator=gen, dtype=torch.float64), torch.rand(N, generator=gen,
                                                                                   dtype=torch.float64)


def assert_close_at_fp32(got, want):
    """Our losses compute in fp32 whatever the input: compare a float64 reference at fp32 precision."""
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-5, atol=1e-6)
    for g_got, g_want in zip(got[1:], want[1:]):
        torch.testing.assert_close(g_got.double(), g_want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the formula
@pytest.mark.parametrize("case", list(CASES))
def test_the_full_width_alone_is_the_inner_loss(case):
    q, p, t, y = embeddings(case)
    inner = inner_loss(case)
    whole = value_and_grads(lambda a, b: inner(a, b, teacher_scores=t, labels=y), q, p)
    wrapped = value_and_grads(lambda a, b: MatryoshkaLoss(inner, [D])(a, b, teacher_scores=t, labels=y), q, p)
    for a, b in zip(wrapped, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # fp32 rounding: normalised twice


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)], ids=["8 5 3", "3 8 5", "5 3 8"])
@pytest.mark.parametrize("rows", [None, slice(1, 3)], ids=["all rows", "rows 1-2 of gathered"])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_the_weighted_sum_of_per_width_loop_references(case, rows, order):
    """L = Σ_k w_k · L_inner(first d_k coordinates): the reference computes each width on its own (the loops'
    cosines re-normalise), whatever order the widths and their weights are given in."""
    if case == "cosine" and rows is not None:
        pytest.skip("cosine is not an in-batch loss: no gathered rows")
    q, p, t, y = embeddings(case)
    local = list(range(N))[rows or slice(None)]
    t_local = t[rows or slice(None)]
    ref_one = CASES[case][1]
    dims, weights = [DIMS[k] for k in order], [WEIGHTS[k] for k in order]
    loss = MatryoshkaLoss(inner_loss(case), dims, weights)
    assert loss.dims == DIMS and loss.weights == WEIGHTS  # sorted largest first, each weight with its width
    got = value_and_grads(lambda a, b: loss(a, b, rows=rows, teacher_scores=t_local, labels=y), q, p)
    want = value_and_grads(lambda a, b: sum(w * ref_one(a[:, :d], b[:, :d], local, t_local, y)
                                            for d, w in zip(dims, weights)), q, p)
    assert_close_at_fp32(got, want)
    # precondition: the widths' losses differ, so a weight paired with the wrong width would change the sum
    per_width = [ref_one(q[:, :d], p[:, :d], local, t_local, y).item() for d in DIMS]
    assert min(abs(a - b) for a in per_width for b in per_width if a is not b) > 1e-3, per_width


@pytest.mark.parametrize("case", ["gte", "distill_m3", "cosine"])
def test_weights_two_and_zero_give_exactly_twice_the_first_widths_gradient(case):
    q, p, t, y = embeddings(case, seed=1)
    inner = inner_loss(case)

    def grads(dims, weights):
        return value_and_grads(lambda a, b: MatryoshkaLoss(inner, dims, weights)(a, b, teacher_scores=t, labels=y),
                               q, p)

    first = grads([5], [1.0])
    doubled = grads([5, 3], [2.0, 0.0])
    assert torch.equal(doubled[1], 2 * first[1]) and torch.equal(doubled[2], 2 * first[2])
    assert doubled[0].item() == 2 * first[0].item()
    both = grads([5, 3], [1.0, 1.0])  # precondition: width 3 has a gradient of its own, which weight 0 removes
    assert (both[1] - first[1]).abs().max() > 1e-3


def test_equals_sentence_transformers_matryoshka_loss():
    """The peer itself: sentence-transformers' MatryoshkaLoss around its MultipleNegativesRankingLoss (scale 1/τ;
    with all four directions, our gte), fed the same embeddings by a model that returns them."""
    from sentence_transformers.base.losses.merged_forward import column_merging_disabled
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss as STMatryoshka
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    class GivenEmbeddings(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": features["embedding"]}

        def get_embedding_dimension(self):
            return D

    q, p, _, _ = embeddings("gte", seed=2)
    columns = [{"embedding": q}] + [{"embedding": p[k::G]} for k in range(G)]  # anchors, positives, negatives ...
    for ours, directions in (("mnrl", ("query_to_doc",)),
                             ("gte", ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"))):
        model = GivenEmbeddings()
        inner = MultipleNegativesRankingLoss(model, scale=1 / TAU, directions=directions, partition_mode="joint")
        with column_merging_disabled():
            theirs = STMatryoshka(model, inner, [3, 8, 5], [1.0, 0.5, 2.0])(columns, None).item()
        mine = MatryoshkaLoss(build_loss(ours, dim=D, temperature=TAU), [3, 8, 5], [1.0, 0.5, 2.0])(q, p).item()
        assert mine == pytest.approx(theirs, rel=1e-5), ours
        plain = build_loss(ours, dim=D, temperature=TAU)(q, p).item()
        assert abs(plain - theirs) > 1e-2  # precondition: the widths change the loss


def test_shrink_keeps_float64_and_renormalises():
    x = torch.randn(4, 6, dtype=torch.float64)
    s = shrink(x, 3)
    assert s.dtype == torch.float64 and s.shape == (4, 3)
    torch.testing.assert_close(s.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert shrink(x.to(torch.bfloat16), 3).dtype == torch.float32


# ---------------------------------------------------------------- composition: tiled, GradCache
TILED = {"infonce": TiledInfoNCELoss, "gte": TiledGTELoss, "distill": TiledDistillLoss}


@pytest.mark.parametrize("name", list(TILED))
def test_loss_config_wraps_the_tiled_form_and_it_equals_the_dense_one(name):
    """LossConfig.build: Matryoshka around the inner loss's registered tiled form (tiles of 2 over 3 queries)."""
    keys = dict(loss=name, temperature=TAU, matryoshka_dims=[5, 8, 3], matryoshka_weights=[2, 0.5, 1],
                loss_tile_size=2, **(dict(distill_base="gte", distill_mode="m3") if name == "distill" else {}))
    tiled, dense = build_config(LossConfig, keys).build(D, group_size=G, batch_queries=N)
    assert isinstance(tiled, MatryoshkaLoss) and isinstance(tiled.inner, TILED[name]) and tiled.tile_size == 2
    assert isinstance(dense, MatryoshkaLoss) and not isinstance(dense.inner, TILED[name])
    q, p, t, _ = embeddings(name)
    want = value_and_grads(lambda a, b: dense(a, b, teacher_scores=t), q.float(), p.float())
    got = value_and_grads(lambda a, b: tiled(a, b, teacher_scores=t), q.float(), p.float())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    untiled, same = build_config(LossConfig, {**keys, "loss_tile_size": None}).build(D, G, N)
    assert untiled is same  # without tiling, one wrapped loss (train.py logs no tiling)


@pytest.mark.parametrize("name", ["gte", "distill"])
def test_grad_cache_with_tiled_matryoshka_equals_the_dense_plain_step(name):
    """GradCache (chunks of 5) + tiled Matryoshka loss (tiles of 3, widths 64 32 16 of a 64-wide model) gives the
    parameter gradients of the plain step with the dense Matryoshka loss."""
    accelerator = Accelerator(cpu=True)
    model = tiny_bi_encoder(minilm_path()).eval()
    keys = dict(loss=name, temperature=0.05, matryoshka_dims=[64, 32, 16], matryoshka_weights=[1, 2, 0.5],
                **(dict(distill_base="gte", distill_mode="m3") if name == "distill" else {}))
    dense = build_config(LossConfig, keys).build(model.dim, 3, 4)[0]
    tiled = build_config(LossConfig, {**keys, "loss_tile_size": 3}).build(model.dim, 3, 4)[0]
    words = "the cat sat on a mat while dogs ran around green hills under blue skies".split()
    gen = torch.Generator().manual_seed(0)

    def enc(n, k):
        texts = [" ".join(words[int(i)] for i in torch.randint(len(words), (k,), generator=gen)) for _ in range(n)]
        return {k: v for k, v in model.tokenizer(texts, padding=True, return_tensors="pt").items()
                if k in ("input_ids", "attention_mask")}

    batch = {"query": enc(4, 5), "passage": enc(12, 9), "teacher_scores": torch.randn(4, 3, generator=gen)}
    plain = train_step(accelerator, model, dense, batch, gather=False)
    ref = {n: w.grad.clone() for n, w in model.named_parameters() if w.grad is not None}
    model.zero_grad()
    cached = train_step(accelerator, model, tiled, batch, gather=False, grad_cache_chunk=5)
    assert cached.item() == pytest.approx(plain.item(), rel=1e-6)
    assert len(ref) > 30
    for n, g in ref.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, atol=1e-5, rtol=1e-5, msg=n)
    plain_loss = build_loss(name, dim=model.dim, temperature=0.05, **{k: v for k, v in keys.items() if
                                                                       k.startswith("distill")})
    q, p = model(query=batch["query"], passage=batch["passage"])
    assert abs(plain_loss(q, p, teacher_scores=batch["teacher_scores"]).item() - plain.item()) > 1e-2  # precondition


# ---------------------------------------------------------------- bad input, at start
@pytest.mark.parametrize("flags, message", [
    (["--matryoshka-dims", "64", "16"], "--matryoshka-dims 64 16: must be at most the model's 32 dimensions (64 is "
                                        "more)"),
    (["--matryoshka-dims", "32", "0"], "--matryoshka-dims 32 0: must be whole numbers of dimensions ≥ 1 (0 is not)"),
    (["--matryoshka-dims", "32", "-8"], "--matryoshka-dims 32 -8: must be whole numbers of dimensions ≥ 1 (-8 is "
                                        "not)"),
    (["--matryoshka-dims", "32", "16", "16"], "--matryoshka-dims 32 16 16: each dimension once (16 given more than "
                                              "once)"),
    (["--matryoshka-dims", "32", "16", "--matryoshka-weights", "1"],
     "--matryoshka-weights 1: must be one weight per Matryoshka dimension (1 weight for 2 dimensions: 32 16)"),
    (["--matryoshka-dims", "32", "16", "--matryoshka-weights", "1", "2", "3"],
     "--matryoshka-weights 1 2 3: must be one weight per Matryoshka dimension (3 weights for 2 dimensions"),
    (["--matryoshka-dims", "32", "16", "--matryoshka-weights", "1", "nan"], "--matryoshka-weights 1 nan: must be "
                                                                            "finite numbers ≥ 0, at least one > 0"),
    (["--matryoshka-dims", "32", "16", "--matryoshka-weights", "0", "0"], "at least one > 0"),
    (["--matryoshka-weights", "1"], "--matryoshka-weights 1: weights the Matryoshka dimensions, which are not set"),
])
def test_train_py_stops_at_start_naming_the_flag(tiny_run, tmp_path, monkeypatch, flags, message):
    """Before the model loads (its width from config.json), nothing written."""
    from cli_config import parse_config
    from tests.helpers import train_args

    def no_model(*_, **__):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(train, "build_model", no_model)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        train.main(parse_config(train.TrainConfig, train_args(*tiny_run, str(out), *flags)))
    assert message in str(stop.value)
    assert not out.exists() or not any(out.iterdir())


def test_softmax_is_refused_by_name_and_cosine_is_accepted(tmp_path):
    with pytest.raises(ConfigError, match=r"matryoshka_dims 16: the softmax loss cannot score truncated embeddings: "
                                          r"its classifier reads \[u; v; \|u − v\|\] through a Linear of 3·D inputs"):
        build_config(LossConfig, dict(loss="softmax", matryoshka_dims=[16])).check(group_size=1)
    cosine = build_config(LossConfig, dict(loss="cosine", matryoshka_dims=[16, 8]))
    cosine.check(group_size=1)
    assert isinstance(cosine.build(32, 1, 4)[0], MatryoshkaLoss)


# ---------------------------------------------------------------- saved with the model
@pytest.fixture(scope="module")
def matryoshka_run(tiny_run, tmp_path_factory):
    from cli_config import parse_config
    from tests.helpers import train_args

    out = str(tmp_path_factory.mktemp("mrl") / "out")
    cfg = parse_config(train.TrainConfig, train_args(*tiny_run, out, "--loss", "gte", "--matryoshka-dims", "16", "32",
                                                     "8", "--max-steps", "2"))
    return out, train.main(cfg)


def test_the_widths_are_saved_and_logged(matryoshka_run, tiny_run, tmp_path, capsys):
    out, result = matryoshka_run
    assert result["steps"] == 2
    assert json.load(open(os.path.join(out, "embedding_config.json")))["matryoshka_dims"] == [32, 16, 8]
    assert BiEncoder.from_pretrained(out).settings.matryoshka_dims == [32, 16, 8]
    # a plain fine-tune of it records none: the widths describe the training that made the folder
    from cli_config import parse_config
    from tests.helpers import train_args

    plain = str(tmp_path / "plain")
    train.main(parse_config(train.TrainConfig, train_args(out, tiny_run[1], plain, "--max-steps", "1")))
    assert json.load(open(os.path.join(plain, "embedding_config.json")))["matryoshka_dims"] == []
    assert "loss infonce: Matryoshka" not in capsys.readouterr().out


def test_sentence_transformers_truncate_dim_gives_our_truncated_embeddings(matryoshka_run):
    """SentenceTransformer(folder, truncate_dim=d) cuts after its Normalize module without re-normalising: the same
    vectors up to their length (encode's normalize_embeddings=True re-normalises after the cut), the same cosines."""
    from sentence_transformers import SentenceTransformer

    out = matryoshka_run[0]
    ours = BiEncoder.from_pretrained(out).eval()
    texts = ["apple banana river", "a green house by the road", "cold warm blue window table"]
    for d in (16, 8):
        theirs = SentenceTransformer(out, device="cpu", truncate_dim=d)
        mine = ours.encode(texts, truncate_dim=d)  # [3, d], unit length
        cut = theirs.encode(texts, convert_to_tensor=True)
        assert cut.shape == (3, d) and (cut.norm(dim=1) < 0.999).all()  # the difference: not re-normalised
        torch.testing.assert_close(theirs.encode(texts, convert_to_tensor=True, normalize_embeddings=True), mine,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.similarity(cut, cut), mine @ mine.T, atol=1e-5, rtol=0)


def test_evaluate_py_truncate_dim_trained_reads_the_widths(matryoshka_run, tiny_run, tmp_path):
    import evaluate

    args = evaluate.parse_args(["--model", matryoshka_run[0], "--local-task", "sts=x.tsv", "--truncate-dim",
                                "trained", "4", "--output-dir", str(tmp_path / "e")])
    evaluate.check_model(args, matryoshka_run[0])
    assert args.truncate_dim == [16, 8, 4]  # below the full 32; 4 added
    args = evaluate.parse_args(["--model", tiny_run[0], "--local-task", "sts=x.tsv", "--truncate-dim", "trained",
                                "--output-dir", str(tmp_path / "e")])
    with pytest.raises(ValueError, match="--truncate-dim trained: .* records no Matryoshka widths below its full one"):
        evaluate.check_model(args, tiny_run[0])
