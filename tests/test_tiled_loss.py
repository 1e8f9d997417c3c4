"""Tiled losses (losses/tiled.py) equal the dense ones and a float64 loop reference, values and gradients; they
never build the batch × batch matrix; bad tile sizes and losses without a tiled form are refused.
(2-process gathering: tests/test_distributed.py, cases */tiled.)"""
import pytest
import torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode

import train
from losses import CosineLoss, DistillLoss, GTELoss, InfoNCELoss, MNRLoss, SoftmaxNLILoss, build_loss
from losses import choose_tiling, tiled_form
from losses.tiled import DEFAULT_TILE, TiledDistillLoss, TiledGTELoss, TiledInfoNCELoss, tiled_log_sum_exp
from tests.helpers import make_tiny_run_files, minilm_path, tiny_bi_encoder
from training.step import train_step


# ---------------------------------------------------------------- float64 loop references (autograd through loops)
def _cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def _log(terms):
    return torch.log(torch.stack(terms).sum())


def loop_infonce(q, p, tau, rows):
    g = len(p) // len(q)
    total = []
    for i in rows:
        z = [torch.exp(_cos(q[i], p[j]) / tau) for j in range(len(p))]
        total.append(_log(z) - _cos(q[i], p[i * g]) / tau)
    return torch.stack(total).mean()


def loop_gte(q, p, tau, rows, exclude_own_group=False, directions=("qd", "qq", "dq", "dd")):
    """GTE eq. 3 with hard negatives; "dd" leaves out d_i (or, with exclude_own_group, all of query i's group)."""
    n, g = len(q), len(p) // len(q)
    total = []
    for i in rows:
        d = p[i * g]
        own = range(i * g, (i + 1) * g) if exclude_own_group else [i * g]
        z = [torch.exp(_cos(q[i], p[j]) / tau) for j in range(len(p))]
        if "qq" in directions:
            z += [torch.exp(_cos(q[i], q[j]) / tau) for j in range(n) if j != i]
        if "dq" in directions:
            z += [torch.exp(_cos(q[j], d) / tau) for j in range(n)]
        if "dd" in directions:
            z += [torch.exp(_cos(d, p[j]) / tau) for j in range(len(p)) if j not in own]
        total.append(_log(z) - _cos(q[i], d) / tau)
    return torch.stack(total).mean()


def loop_m3(q, p, t, tau, tau_t, rows):
    """FlagEmbedding's m3_kd_loss: -1/n Σ_i Σ_g p_ig log( e^{s(q_i, d_ig)} / Σ_{j not among members 0 … g-1 of
    i's group} e^{s(q_i, d_j)} ); t = teacher scores of the local rows [n, G]."""
    g = len(p) // len(q)
    total = []
    for k, i in enumerate(rows):
        teacher = torch.softmax(t[k] / tau_t, dim=0)
        term = 0
        for h in range(g):
            earlier = {i * g + e for e in range(h)}
            log_z = _log([torch.exp(_cos(q[i], p[j]) / tau) for j in range(len(p)) if j not in earlier])
            term = term - teacher[h] * (_cos(q[i], p[i * g + h]) / tau - log_z)
        total.append(term)
    return torch.stack(total).mean()


def _value_and_grads(fn, q, p):
    q, p = q.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
    value = fn(q, p)
    gq, gp = torch.autograd.grad(value, (q, p))
    return value.detach(), gq, gp


N, G, D, TAU = 7, 3, 6, 0.1  # 7 queries, 21 passages: tiles of 3 / 4 leave a short last tile on both sides


def _embeddings(dtype, group=G, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=gen, dtype=dtype), torch.randn(N * group, D, generator=gen, dtype=dtype)


@pytest.mark.parametrize("rows", [None, slice(2, 5)], ids=["all rows", "rows 2-4 of gathered"])
@pytest.mark.parametrize("group", [1, G])
@pytest.mark.parametrize("case", ["infonce", "gte", "gte_own_group", "gte_qd_dd", "distill_m3"])
def test_tiled_float64_equals_loop_reference(case, group, rows):
    q, p = _embeddings(torch.float64, group)
    local = list(range(N))[rows or slice(None)]
    teacher = torch.randn(len(local), group, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tile = 4
    if case == "infonce":
        loss, ref = TiledInfoNCELoss(TAU, tile), lambda a, b: loop_infonce(a, b, TAU, local)
    elif case.startswith("gte"):
        own, directions = case == "gte_own_group", ("qd", "dd") if case == "gte_qd_dd" else ("qd", "qq", "dq", "dd")
        loss = TiledGTELoss(TAU, directions, tile, exclude_own_group=own)
        ref = lambda a, b: loop_gte(a, b, TAU, local, own, directions)  # noqa: E731
    else:
        loss = TiledDistillLoss(DistillLoss(None, 1.0, TAU, 0.7, "m3"), tile)
        ref = lambda a, b: loop_m3(a, b, teacher, TAU, 0.7, local)  # noqa: E731
    got = _value_and_grads(lambda a, b: loss(a, b, rows=rows, teacher_scores=teacher), q, p)
    want = _value_and_grads(ref, q, p)
    assert got[0].dtype == torch.float64
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for g_got, g_want in zip(got[1:], want[1:]):
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)


DENSE = {  # name -> build_loss kwargs
    "infonce": dict(name="infonce"),
    "mnrl": dict(name="mnrl"),
    "gte": dict(name="gte"),
    "gte_qd_qq": dict(name="gte", gte_directions=("qd", "qq")),
    "distill_kl_infonce": dict(name="distill", distill_base="infonce", distill_mode="kl", distill_weight=0.5),
    "distill_m3_gte": dict(name="distill", distill_base="gte", distill_mode="m3"),
    "distill_m3_alone": dict(name="distill", distill_base="none", distill_mode="m3"),
}


@pytest.mark.parametrize("tile", [1, 3, 4, N])
@pytest.mark.parametrize("rows", [None, slice(3, 7)], ids=["all rows", "rows 3-6 of gathered"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(DENSE))
def test_tiled_equals_dense_loss_code(case, dtype, rows, tile):
    kwargs = dict(DENSE[case])
    name = kwargs.pop("name")
    dense = build_loss(name, dim=D, temperature=TAU, **kwargs)
    tiled = tiled_form(name, dense, tile)
    q, p = _embeddings(dtype)
    local = list(range(N))[rows or slice(None)]
    teacher = torch.randn(len(local), G, generator=torch.Generator().manual_seed(2))
    want = _value_and_grads(lambda a, b: dense(a, b, rows=rows, teacher_scores=teacher), q, p)
    got = _value_and_grads(lambda a, b: tiled(a, b, rows=rows, teacher_scores=teacher), q, p)
    # the dense losses compute in fp32 whatever the input; float64 tiled stays float64: compare at fp32 precision
    torch.testing.assert_close(got[0].to(want[0].dtype), want[0], rtol=2e-6, atol=2e-6)
    for g_got, g_want in zip(got[1:], want[1:]):
        torch.testing.assert_close(g_got.to(g_want.dtype), g_want, rtol=1e-5, atol=2e-6)


def test_dense_gte_own_group_option_when_present():
    """Issue 15 adds GTELoss(exclude_own_group=...); once it exists, the tiled form carries it and equals it."""
    try:
        dense = GTELoss(TAU, exclude_own_group=True)
    except TypeError:
        pytest.skip("GTELoss has no exclude_own_group option yet (issue 15)")
    tiled = tiled_form("gte", dense, 3)
    assert tiled.exclude_own_group is True
    q, p = _embeddings(torch.float32)
    want, got = _value_and_grads(dense, q, p), _value_and_grads(tiled, q, p)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)


def test_log_sum_exp_with_a_fully_skipped_row():
    """One row whose every column is skipped: lse = -inf, and its gradient is 0, not nan (gte's "qq" with a single
    query)."""
    rows, cols = torch.randn(2, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    lse = tiled_log_sum_exp(rows, cols, 1.0, 3, skip=(torch.tensor([0, 1]), torch.tensor([4, 2])))
    assert lse[0].item() == float("-inf")
    torch.logsumexp(torch.stack([lse, torch.zeros(2)]), dim=0).sum().backward()
    assert torch.isfinite(rows.grad).all() and torch.isfinite(cols.grad).all() and rows.grad[0].abs().sum() == 0


# ---------------------------------------------------------------- memory: no tensor of the batch × batch size
class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", ["infonce", "gte", "distill"])
def test_no_tensor_as_large_as_the_similarity_matrix(name):
    """64 queries × 128 passages: the dense loss makes tensors of 64·128 = 8,192 elements; the tiled one, forward
    and backward, nothing bigger than the passages' embeddings (128 × 8) or a tile (16 × 16)."""
    n, group, dim, tile = 64, 2, 8, 16
    kwargs = dict(distill_base="gte", distill_mode="m3") if name == "distill" else {}
    dense = build_loss(name, dim=dim, temperature=TAU, **kwargs)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(n, dim, generator=gen, requires_grad=True)
    p = torch.randn(n * group, dim, generator=gen, requires_grad=True)
    teacher = torch.randn(n, group, generator=gen)
    sizes = {}
    for label, loss in (("dense", dense), ("tiled", tiled_form(name, dense, tile))):
        with _LargestTensor() as probe:
            loss(q, p, teacher_scores=teacher).backward()
        sizes[label] = probe.largest
    assert sizes["dense"] >= n * n * group  # the probe sees the matrix when there is one
    assert sizes["tiled"] <= max(n * group * dim, tile * tile), sizes


# ---------------------------------------------------------------- GradCache and train.py
@pytest.mark.parametrize("name", ["infonce", "gte", "distill"])
def test_grad_cache_with_tiled_loss_equals_dense_plain_step(name):
    """GradCache (chunks 5, 5, 2) + tiled loss (tiles of 3 over 4 queries × 12 passages) gives the parameter
    gradients of the plain step with the dense loss."""
    accelerator = Accelerator(cpu=True)
    model = tiny_bi_encoder(minilm_path()).eval()
    kwargs = dict(distill_base="gte", distill_mode="m3") if name == "distill" else {}
    dense = build_loss(name, dim=model.dim, temperature=0.05, **kwargs)
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
    cached = train_step(accelerator, model, tiled_form(name, dense, 3), batch, gather=False, grad_cache_chunk=5)
    assert cached.item() == pytest.approx(plain.item(), rel=1e-6)
    assert len(ref) > 30
    for n, g in ref.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, atol=1e-5, rtol=1e-5, msg=n)


def test_train_py_tiled_loss_same_losses(tmp_path, capsys):
    model_dir, data = make_tiny_run_files(str(tmp_path), minilm_path(), rows=24)
    args = dict(model=model_dir, train_data=[data], loss="gte", group_size=3, batch_size=4, max_steps=3,
                log_steps=1, lr=1e-3, report_to="none")
    dense = train.main(train.TrainConfig.of(**args, output_dir=str(tmp_path / "dense")))
    assert "similarities at a time" not in capsys.readouterr().out
    tiled = train.main(train.TrainConfig.of(**args, output_dir=str(tmp_path / "tiled"), loss_tile_size=3))
    assert "loss gte: tiled, 3 × 3 similarities" in capsys.readouterr().out
    assert [h["loss"] for h in tiled["history"]] == pytest.approx([h["loss"] for h in dense["history"]], rel=1e-5)


# ---------------------------------------------------------------- choice and bad input
def test_automatic_choice():
    gte = GTELoss(0.05)
    assert choose_tiling("gte", gte, None, tile_above=16, batch_queries=16) is gte  # not above: dense
    auto = choose_tiling("gte", gte, None, tile_above=16, batch_queries=17)
    assert isinstance(auto, TiledGTELoss) and auto.tile_size == 17  # min(DEFAULT_TILE, batch)
    big = choose_tiling("gte", gte, None, tile_above=16, batch_queries=65536)
    assert big.tile_size == DEFAULT_TILE
    assert choose_tiling("gte", gte, None, tile_above=0, batch_queries=65536) is gte  # 0 = never automatically
    cosine = CosineLoss()
    assert choose_tiling("cosine", cosine, None, tile_above=16, batch_queries=65536) is cosine  # nothing to tile
    assert isinstance(choose_tiling("mnrl", MNRLoss(), 8, tile_above=16, batch_queries=8), TiledInfoNCELoss)
    assert isinstance(tiled_form("infonce", InfoNCELoss(0.05), 8), TiledInfoNCELoss)


@pytest.mark.parametrize("tile", [0, -3, 2.5, True])
def test_bad_tile_size_is_refused(tile):
    with pytest.raises(ValueError, match="must be a positive number of rows"):
        tiled_form("infonce", InfoNCELoss(0.05), tile)


def test_tile_larger_than_the_batch_is_refused():
    with pytest.raises(ValueError, match="tile size 64 is larger than the global batch of 32 queries"):
        choose_tiling("infonce", InfoNCELoss(0.05), 64, tile_above=16384, batch_queries=32)
    at_limit = choose_tiling("infonce", InfoNCELoss(0.05), 32, tile_above=16384, batch_queries=32)
    assert at_limit.tile_size == 32  # the limit
    with pytest.raises(ValueError, match="must be ≥ 0"):
        choose_tiling("infonce", InfoNCELoss(0.05), None, tile_above=-1, batch_queries=32)


@pytest.mark.parametrize("loss, name", [(CosineLoss(), "cosine"), (SoftmaxNLILoss(8), "softmax"),
                                        (DistillLoss(None, mode="kl"), "distill")])
def test_loss_without_tiled_form_is_refused_by_name(loss, name):
    with pytest.raises(ValueError, match=f"loss '{name}'.*no tiled form"):
        tiled_form(name, loss, 4)


def test_train_py_refuses_bad_tiling_before_training(tmp_path):
    model_dir, data = make_tiny_run_files(str(tmp_path), minilm_path(), rows=8)
    base = dict(model=model_dir, train_data=[data], group_size=3, batch_size=4, report_to="none",
                output_dir=str(tmp_path / "o"))
    with pytest.raises(SystemExit, match="--loss-tile-size 0: the tile size must be a positive number of rows, got 0"):
        train.main(train.TrainConfig.of(**base, loss_tile_size=0))
    with pytest.raises(SystemExit, match="tile size 5 is larger than the global batch of 4 queries"):
        train.main(train.TrainConfig.of(**base, loss_tile_size=5))
    scored = tmp_path / "scored.jsonl"
    scored.write_text("".join(f'{{"sentence1": "a cat {i}", "sentence2": "a dog {i}", "score": {i % 5}}}\n'
                              for i in range(8)))
    with pytest.raises(SystemExit, match="--loss-tile-size 2: loss 'cosine' has no tiled form"):
        train.main(train.TrainConfig.of(**{**base, "train_data": [str(scored)], "group_size": 1}, loss="cosine",
                                     loss_tile_size=2))
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # stopped before training
