"""Each loss against a plain float64 reference written with loops (values and gradients)."""
import math

import pytest
import torch

from losses import CosineLoss, DistillLoss, GTELoss, InfoNCELoss, MNRLoss, SoftmaxNLILoss


def _cos(a, b):
    return float(sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))


def ref_infonce(q, p, tau):
    n, g = len(q), len(p) // len(q)
    total = 0.0
    for i in range(n):
        z = sum(math.exp(_cos(q[i], p[j]) / tau) for j in range(len(p)))
        total += -math.log(math.exp(_cos(q[i], p[i * g]) / tau) / z)
    return total / n


def ref_gte(q, p, tau, exclude_own_group=True):
    """GTE eq. 3 with hard negatives. exclude_own_group: sentence-transformers 6.2's MultipleNegativesRankingLoss,
    directions (query_to_doc, query_to_query, doc_to_query, doc_to_doc), partition "joint", read from its source:
      query_to_doc   q_i against every document of the batch, its own hard negatives included
      query_to_query q_i against every query except q_i
      doc_to_query   d_i against every query, q_i included
      doc_to_doc     d_i against every document except the positive and hard negatives of query i
    Otherwise doc_to_doc leaves out d_i only."""
    n, g = len(q), len(p) // len(q)
    total = 0.0
    for i in range(n):
        d = p[i * g]
        own_group = range(i * g, i * g + g) if exclude_own_group else [i * g]
        z = sum(math.exp(_cos(q[i], p[j]) / tau) for j in range(len(p)))
        z += sum(math.exp(_cos(q[i], q[j]) / tau) for j in range(n) if j != i)
        z += sum(math.exp(_cos(q[j], d) / tau) for j in range(n))
        z += sum(math.exp(_cos(d, p[j]) / tau) for j in range(len(p)) if j not in own_group)
        total += -math.log(math.exp(_cos(q[i], d) / tau) / z)
    return total / n


def ref_kl(q, p, t, tau, tau_t):
    n, g = len(q), len(p) // len(q)
    total = 0.0
    for i in range(n):
        s = [_cos(q[i], p[i * g + k]) / tau for k in range(g)]
        zs, zt = sum(math.exp(x) for x in s), sum(math.exp(x / tau_t) for x in t[i])
        for k in range(g):
            pt = math.exp(t[i][k] / tau_t) / zt
            total += pt * (math.log(pt) - (s[k] - math.log(zs)))
    return total / n


def _numeric_grad(ref, q, p, eps=1e-6):
    grads = []
    for m in (q, p):
        gm = torch.zeros_like(m)
        for idx in range(m.numel()):
            flat = m.view(-1)
            old = flat[idx].item()
            flat[idx] = old + eps
            up = ref(q.tolist(), p.tolist())
            flat[idx] = old - eps
            down = ref(q.tolist(), p.tolist())
            flat[idx] = old
            gm.view(-1)[idx] = (up - down) / (2 * eps)
        grads.append(gm)
    return grads


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("name", ["infonce", "gte", "gte_keep_own_group"])
def test_contrastive_matches_reference(name, group):
    torch.manual_seed(0)
    n, dim, tau = 3, 5, 0.5
    q = torch.randn(n, dim, dtype=torch.float64)
    p = torch.randn(n * group, dim, dtype=torch.float64)
    exclude = name == "gte"
    loss_fn = InfoNCELoss(tau) if name == "infonce" else GTELoss(tau, exclude_own_group=exclude)
    ref = (lambda a, b: ref_infonce(a, b, tau)) if name == "infonce" else (lambda a, b: ref_gte(a, b, tau, exclude))
    qv, pv = q.clone().requires_grad_(), p.clone().requires_grad_()
    # the loss computes in fp32; compare to the float64 reference at fp32 precision
    value = loss_fn(qv, pv)
    value.backward()
    assert value.item() == pytest.approx(ref(q.tolist(), p.tolist()), rel=1e-5)
    gq, gp = _numeric_grad(ref, q.clone(), p.clone())
    torch.testing.assert_close(qv.grad, gq, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pv.grad, gp, atol=1e-5, rtol=1e-4)


def test_distill_kl_matches_reference():
    torch.manual_seed(1)
    n, g, dim, tau, tau_t = 2, 3, 4, 0.5, 2.0
    q, p = torch.randn(n, dim, dtype=torch.float64), torch.randn(n * g, dim, dtype=torch.float64)
    t = torch.randn(n, g, dtype=torch.float64)
    loss = DistillLoss(None, 1.0, tau, tau_t, "kl")
    qv, pv = q.clone().requires_grad_(), p.clone().requires_grad_()
    value = loss(qv, pv, teacher_scores=t)
    value.backward()

    def ref(a, b):
        return ref_kl(a, b, t.tolist(), tau, tau_t)
    assert value.item() == pytest.approx(ref(q.tolist(), p.tolist()), rel=1e-5, abs=1e-7)
    gq, gp = _numeric_grad(ref, q.clone(), p.clone())
    torch.testing.assert_close(qv.grad, gq, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pv.grad, gp, atol=1e-5, rtol=1e-4)


def test_cosine_loss_value():
    u, v = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0.5, 0.5])
    assert CosineLoss()(u, v, labels=labels).item() == pytest.approx(((1 - 0.5) ** 2 + (0 - 0.5) ** 2) / 2)


def test_rows_select_local_queries():
    torch.manual_seed(2)
    q, p = torch.randn(4, 6), torch.randn(8, 6)
    full = InfoNCELoss(0.1)(q, p)
    halves = (InfoNCELoss(0.1)(q, p, rows=slice(0, 2)) + InfoNCELoss(0.1)(q, p, rows=slice(2, 4))) / 2
    assert full.item() == pytest.approx(halves.item(), rel=1e-6)


def ref_m3(q, p, t, tau, tau_t):
    """FlagEmbedding's m3_kd_loss (AbsEmbedderModel.distill_loss), written out: for member k of query i's group,
    cross-entropy of s(q_i, ·) over every passage of the batch except members 0…k-1 of i's own group (it adds
    finfo.min to those columns), weighted by the teacher probability p_ik; summed over k, averaged over i."""
    n, g = len(q), len(p) // len(q)
    total = 0.0
    for i in range(n):
        zt = sum(math.exp(x / tau_t) for x in t[i])
        for k in range(g):
            earlier = range(i * g, i * g + k)
            z = sum(math.exp(_cos(q[i], p[j]) / tau) for j in range(len(p)) if j not in earlier)
            total -= math.exp(t[i][k] / tau_t) / zt * (_cos(q[i], p[i * g + k]) / tau - math.log(z))
    return total / n


def ref_softmax_nli(u, v, weight, bias, labels):
    total = 0.0
    for a, b, y in zip(u, v, labels):
        features = list(a) + list(b) + [abs(x - z) for x, z in zip(a, b)]
        logits = [sum(w * f for w, f in zip(row, features)) + c for row, c in zip(weight, bias)]
        total += -(logits[y] - math.log(sum(math.exp(x) for x in logits)))
    return total / len(u)


def ref_cosine(u, v, labels):
    return sum((_cos(a, b) - y) ** 2 for a, b, y in zip(u, v, labels)) / len(u)


def _check_value_and_grads(loss_value, qv, pv, ref, q, p):
    loss_value.backward()
    assert loss_value.item() == pytest.approx(ref(q.tolist(), p.tolist()), rel=1e-5, abs=1e-7)
    gq, gp = _numeric_grad(ref, q.clone(), p.clone())
    torch.testing.assert_close(qv.grad, gq, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pv.grad, gp, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("group", [2, 3])
def test_distill_m3_matches_reference(group):
    torch.manual_seed(3)
    n, dim, tau, tau_t = 3, 4, 0.5, 0.7
    q, p = torch.randn(n, dim, dtype=torch.float64), torch.randn(n * group, dim, dtype=torch.float64)
    t = torch.randn(n, group, dtype=torch.float64)
    qv, pv = q.clone().requires_grad_(), p.clone().requires_grad_()
    value = DistillLoss(None, 1.0, tau, tau_t, "m3")(qv, pv, teacher_scores=t)
    _check_value_and_grads(value, qv, pv, lambda a, b: ref_m3(a, b, t.tolist(), tau, tau_t), q, p)


def test_distill_adds_weighted_kd_to_its_base():
    torch.manual_seed(4)
    q, p, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randn(3, 2)
    both = DistillLoss(GTELoss(0.5), 0.3, 0.5, 1.0, "kl")(q, p, teacher_scores=t).item()
    expected = ref_gte(q.tolist(), p.tolist(), 0.5) + 0.3 * ref_kl(q.tolist(), p.tolist(), t.tolist(), 0.5, 1.0)
    assert both == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="teacher scores"):
        DistillLoss(None)(q, p)


@pytest.mark.parametrize("group", [1, 2])
def test_mnrl_is_infonce_with_scale_20(group):
    torch.manual_seed(5)
    assert MNRLoss().temperature == 1 / 20
    q, p = torch.randn(3, 4, dtype=torch.float64), torch.randn(3 * group, 4, dtype=torch.float64)
    qv, pv = q.clone().requires_grad_(), p.clone().requires_grad_()
    _check_value_and_grads(MNRLoss()(qv, pv), qv, pv, lambda a, b: ref_infonce(a, b, 1 / 20), q, p)


def test_softmax_nli_matches_reference():
    torch.manual_seed(6)
    n, dim = 4, 3
    u, v = torch.randn(n, dim, dtype=torch.float64), torch.randn(n, dim, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 2])
    loss_fn = SoftmaxNLILoss(dim).double()
    weight, bias = loss_fn.classifier.weight.tolist(), loss_fn.classifier.bias.tolist()
    uv, vv = u.clone().requires_grad_(), v.clone().requires_grad_()

    def ref(a, b):
        return ref_softmax_nli(a, b, weight, bias, labels.tolist())
    _check_value_and_grads(loss_fn(uv, vv, labels=labels), uv, vv, ref, u, v)


def test_cosine_loss_matches_reference():
    torch.manual_seed(7)
    u, v = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0.1, 0.9, 0.5, 0.0], dtype=torch.float64)
    uv, vv = u.clone().requires_grad_(), v.clone().requires_grad_()
    _check_value_and_grads(CosineLoss()(uv, vv, labels=labels), uv, vv,
                           lambda a, b: ref_cosine(a, b, labels.tolist()), u, v)


def test_build_loss_names_and_errors():
    from losses import REGISTRY, build_loss

    for name in REGISTRY:
        assert isinstance(build_loss(name, dim=8), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown loss 'triplet'"):
        build_loss("triplet", dim=8)
    with pytest.raises(ValueError, match="distill_base mnrl: must be one of infonce, gte, none"):
        build_loss("distill", dim=8, distill_base="mnrl")
    with pytest.raises(ValueError, match="group_size 1: the distill loss needs ≥ 2 passages per query"):
        build_loss("distill", dim=8, group_size=1)


def test_gte_equals_sentence_transformers_with_hard_negatives():
    """The peer itself: sentence-transformers' four-direction joint MNRL on the same embeddings (its columns are
    (anchor, positive, negative_1, ...); ours are group-major). Both masking choices are checked against it."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(8)
    n, group, dim, tau = 4, 3, 6, 0.5
    q, p = torch.randn(n, dim, dtype=torch.float64), torch.randn(n * group, dim, dtype=torch.float64)
    st = MultipleNegativesRankingLoss(None, scale=1 / tau, directions=(
        "query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), partition_mode="joint")
    columns = [q] + [p[k::group] for k in range(group)]  # positives, then the first negatives, ...
    st_value = st.compute_loss_from_embeddings(columns, None).item()
    assert GTELoss(tau, exclude_own_group=True)(q, p).item() == pytest.approx(st_value, rel=1e-5)
    assert abs(GTELoss(tau, exclude_own_group=False)(q, p).item() - st_value) > 1e-3  # the choice matters here


def test_gte_own_group_mask_matters_for_close_hard_negatives():
    """Mined hard negatives close to their positive: keeping them in d_i's "dd" term dominates Z_i at τ 0.01."""
    torch.manual_seed(9)
    n, dim = 8, 32
    q = torch.randn(n, dim, dtype=torch.float64)
    pos = q + 0.5 * torch.randn(n, dim, dtype=torch.float64)
    neg = pos + 0.1 * torch.randn(n, dim, dtype=torch.float64)  # each negative next to its own positive
    p = torch.stack([pos, neg], dim=1).reshape(2 * n, dim)
    masked, kept = GTELoss(0.01, exclude_own_group=True)(q, p), GTELoss(0.01, exclude_own_group=False)(q, p)
    assert masked.item() == pytest.approx(ref_gte(q.tolist(), p.tolist(), 0.01, True), rel=1e-5)
    assert kept.item() == pytest.approx(ref_gte(q.tolist(), p.tolist(), 0.01, False), rel=1e-5)
    assert kept.item() > masked.item() + 1


def test_distill_m3_mask_changes_the_value():
    """Precondition of the m3 reference test: FlagEmbedding's mask changes the value (G ≥ 2)."""
    torch.manual_seed(10)
    q, p, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randn(3, 2)
    ours = DistillLoss(None, 1.0, 0.5, 1.0, "m3")(q, p, teacher_scores=t).item()
    unmasked = 0.0
    for i in range(3):
        z = sum(math.exp(_cos(q[i].tolist(), p[j].tolist()) / 0.5) for j in range(6))
        pt = torch.softmax(t[i].double(), 0).tolist()
        unmasked -= sum(pt[k] * (_cos(q[i].tolist(), p[2 * i + k].tolist()) / 0.5 - math.log(z)) for k in range(2))
    assert abs(ours - unmasked / 3) > 1e-3


@pytest.mark.parametrize("mode", ["kl", "m3"])
def test_distill_refuses_one_passage_per_query(mode):
    q, p, t = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 1)
    with pytest.raises(ValueError, match="≥ 2 passages per query"):
        DistillLoss(None, 1.0, 0.5, 1.0, mode)(q, p, teacher_scores=t)


def test_distill_temperature_defaults_to_its_base():
    from losses import build_loss

    assert build_loss("distill", dim=8, distill_base="gte").temperature == GTELoss.default_temperature
    assert build_loss("distill", dim=8, distill_base="infonce").temperature == InfoNCELoss.default_temperature
    assert build_loss("distill", dim=8, distill_base="none").temperature == 0.02
    assert build_loss("distill", dim=8, distill_base="gte", temperature=0.1).base.temperature == 0.1


def test_build_loss_uses_each_papers_temperature():
    from losses import build_loss, loss_temperature

    assert [loss_temperature(build_loss(name, dim=8)) for name in ("gte", "infonce", "mnrl", "softmax")] == [
        0.01, 0.02, 0.05, None]
    assert loss_temperature(build_loss("gte", dim=8, temperature=0.02)) == 0.02


@pytest.mark.parametrize("name", ["gte", "distill_kl", "distill_m3"])
def test_losses_run_with_float64_default_dtype(name):
    """The -inf masks take the similarity's dtype, not the default one."""
    torch.manual_seed(11)
    q, p, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randn(3, 2)
    loss_fn = GTELoss(0.5) if name == "gte" else DistillLoss(GTELoss(0.5), 1.0, 0.5, 1.0, name.split("_")[1])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        value = loss_fn(q, p, teacher_scores=t.double())
    finally:
        torch.set_default_dtype(previous)
    assert torch.isfinite(value)
