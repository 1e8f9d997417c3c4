"""Each loss against a plain float64 reference written with loops (values and gradients)."""
import math

import pytest
import torch

from losses import CosineLoss, DistillLoss, GTELoss, InfoNCELoss


def _cos(a, b):
    return float(sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))


def ref_infonce(q, p, tau):
    n, g = len(q), len(p) // len(q)
    total = 0.0
    for i in range(n):
        z = sum(math.exp(_cos(q[i], p[j]) / tau) for j in range(len(p)))
        total += -math.log(math.exp(_cos(q[i], p[i * g]) / tau) / z)
    return total / n


def ref_gte(q, p, tau):
    n, g = len(q), len(p) // len(q)
    total = 0.0
    for i in range(n):
        d = p[i * g]
        z = sum(math.exp(_cos(q[i], p[j]) / tau) for j in range(len(p)))
        z += sum(math.exp(_cos(q[i], q[j]) / tau) for j in range(n) if j != i)
        z += sum(math.exp(_cos(q[j], d) / tau) for j in range(n))
        z += sum(math.exp(_cos(d, p[j]) / tau) for j in range(len(p)) if j != i * g)
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
@pytest.mark.parametrize("name", ["infonce", "gte"])
def test_contrastive_matches_reference(name, group):
    torch.manual_seed(0)
    n, dim, tau = 3, 5, 0.5
    q = torch.randn(n, dim, dtype=torch.float64)
    p = torch.randn(n * group, dim, dtype=torch.float64)
    loss_fn = InfoNCELoss(tau) if name == "infonce" else GTELoss(tau)
    ref = (lambda a, b: ref_infonce(a, b, tau)) if name == "infonce" else (lambda a, b: ref_gte(a, b, tau))
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
    ref = lambda a, b: ref_kl(a, b, t.tolist(), tau, tau_t)
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
