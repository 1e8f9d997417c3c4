"""Tile-wise contrastive losses: infonce, gte and distill's in-batch terms without the N×M similarity matrix.

The idea of Inf-CL (Cheng et al. 2024, "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for
Contrastive Loss", arXiv:2410.17243). Every in-batch term of our losses is, per local query i, a log-partition
over a block of similarities minus a positive score:

    L = 1/n Σ_i ( lse_i − s_i⁺ ),   lse_i = log Σ_{j ∉ skip_i} e^{r_i · c_j},
    r_i = normalize(row_i) / τ,      c_j = normalize(col_j),      skip_i = [lo_i, hi_i)  (columns left out)

(infonce: rows = queries, columns = passages, no skip; gte adds three more blocks, combined by one more
log-sum-exp; distill's m3 term reuses infonce's lse.) Forward: the [n, m] matrix r·cᵀ is visited in tiles of
T rows × T columns, and each row keeps a running total, the online log-sum-exp

    lse_i ← log( e^{lse_i} + Σ_{j in tile} e^{r_i·c_j} ).

Backward: autograd hands over g_i = ∂L/∂lse_i; with P_ij = e^{r_i·c_j − lse_i} (0 for skipped j), recomputed
tile by tile from r and c (one more T×T product per tile, as in Inf-CL and FlashAttention),

    ∂L/∂r_i = Σ_j g_i P_ij c_j,        ∂L/∂c_j = Σ_i g_i P_ij r_i.

Each tile's rows and columns are normalised when the tile is used, so memory beyond the embeddings is their
gradients, the norms and lse [n], and a few T×T tiles — O((n+m)·D + T²) instead of the dense losses' [n, m]
logits, their softmax and its gradient (and the batch's normalised copies). Values and gradients equal the
dense losses in losses/{infonce,gte,distill}.py up to summation order (tests/test_tiled_loss.py).

Where we differ from Inf-CL: it splits the columns across GPUs and passes them around a ring; here the columns
are the already-gathered batch (training/gather.py) and tiling is within one process, so any loss with a
log-partition over rows × columns fits the same function. Precision: the dense losses compute in fp32; this
computes in fp32 too, or in float64 when given float64 (for the tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

DEFAULT_TILE = 4096  # 4096² fp32 = 64 MiB per tile matrix: nothing on a GPU; on CPU the benchmark uses 1024


EPS = 1e-12  # F.normalize's: x / max(‖x‖, EPS)


class _TiledLogSumExp(torch.autograd.Function):
    """(rows [n, D], cols [m, D], scale, skip_lo [n] | None, skip_hi [n] | None, pick_lo [n] | None, picks, tile)
    -> (lse [n], picked [n, picks]): lse_i over the columns not skipped, picked_ik = s_i,pick_lo_i+k.

    rows and cols are raw embeddings; each tile is normalised when it is used (2·T·D operations next to the
    tile product's T²·D), so not even normalised copies of the batch are kept: what is saved for backward is
    the inputs themselves, their norms and lse. The picked scores (the positives) come out of the same tiles, and
    their gradient goes back through the same tile products, so no [n, D] gather of positives is made either.
    """

    @staticmethod
    def forward(ctx, rows, cols, scale, skip_lo, skip_hi, pick_lo, picks, tile):
        dtype = torch.promote_types(rows.dtype, torch.float32)  # fp32, or float64 when given float64
        row_norm = rows.to(dtype).norm(dim=1).clamp_min(EPS)  # [n]
        col_norm = cols.to(dtype).norm(dim=1).clamp_min(EPS)  # [m]
        n, m = rows.shape[0], cols.shape[0]
        lse = torch.full((n,), float("-inf"), dtype=dtype, device=rows.device)  # [n]
        picked = torch.zeros((n, picks if pick_lo is not None else 0), dtype=dtype, device=rows.device)  # [n, K]
        with torch.autocast(rows.device.type, enabled=False):
            for r0 in range(0, n, tile):
                r = _unit_tile(rows, row_norm, r0, tile, dtype) * scale  # r_i = u_i / τ, [t_r, D]
                running = lse[r0:r0 + tile]  # view into lse, [t_r]
                for c0 in range(0, m, tile):
                    s = r @ _unit_tile(cols, col_norm, c0, tile, dtype).T  # [t_r, t_c]: the only similarities held
                    place = _pick_places(pick_lo, picks, r0, r.shape[0], c0, s.shape[1])
                    if place is not None:
                        where, inside = place
                        picked[r0:r0 + tile] += torch.where(inside, s.gather(1, where), 0.0)
                    skip = _skip_mask(skip_lo, skip_hi, r0, r.shape[0], c0, s.shape[1])
                    if skip is not None:
                        s = s.masked_fill(skip, float("-inf"))
                    torch.logaddexp(running, torch.logsumexp(s, dim=1), out=running)
        ctx.save_for_backward(rows, cols, row_norm, col_norm, lse, skip_lo, skip_hi, pick_lo)
        ctx.scale, ctx.tile, ctx.picks = scale, tile, picks
        return lse, picked

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse, grad_picked):
        rows, cols, row_norm, col_norm, lse, skip_lo, skip_hi, pick_lo = ctx.saved_tensors
        scale, tile, picks, dtype = ctx.scale, ctx.tile, ctx.picks, lse.dtype
        n, m = rows.shape[0], cols.shape[0]
        grad_lse, grad_picked = grad_lse.to(dtype), grad_picked.to(dtype)
        # gradients with respect to the unit vectors first, [n, D] and [m, D]
        grad_row_unit = torch.zeros(rows.shape, dtype=dtype, device=rows.device)
        grad_col_unit = torch.zeros(cols.shape, dtype=dtype, device=cols.device)
        with torch.autocast(rows.device.type, enabled=False):
            for r0 in range(0, n, tile):
                r = _unit_tile(rows, row_norm, r0, tile, dtype) * scale  # [t_r, D]
                for c0 in range(0, m, tile):
                    c = _unit_tile(cols, col_norm, c0, tile, dtype)  # [t_c, D]
                    weight = torch.exp(r @ c.T - lse[r0:r0 + tile, None])  # P_ij, [t_r, t_c]
                    skip = _skip_mask(skip_lo, skip_hi, r0, r.shape[0], c0, c.shape[0])
                    if skip is not None:
                        weight = weight.masked_fill(skip, 0.0)
                    weight.mul_(grad_lse[r0:r0 + tile, None])  # ∂L/∂s_ij through lse: g_i P_ij
                    place = _pick_places(pick_lo, picks, r0, r.shape[0], c0, c.shape[0])
                    if place is not None:  # + ∂L/∂s_ij through the picked scores
                        where, inside = place
                        weight.scatter_add_(1, where, torch.where(inside, grad_picked[r0:r0 + tile], 0.0))
                    grad_row_unit[r0:r0 + tile].addmm_(weight, c, alpha=scale)  # ∂s_ij/∂u_i = c_j / τ
                    grad_col_unit[c0:c0 + tile].addmm_(weight.T, r)  # ∂s_ij/∂c_j = r_i
            grad_rows = _through_normalize(grad_row_unit, rows, row_norm, tile)
            grad_cols = _through_normalize(grad_col_unit, cols, col_norm, tile)
        return grad_rows, grad_cols, None, None, None, None, None, None


def _pick_places(pick_lo, picks: int, r0: int, t_r: int, c0: int, t_c: int):
    """Where row r0+i's picked columns pick_lo_i + k fall in this tile: (column in tile [t_r, K] (clamped),
    inside [t_r, K] bool); None when nothing is picked."""
    if pick_lo is None:
        return None
    column = pick_lo[r0:r0 + t_r, None] + torch.arange(picks, device=pick_lo.device) - c0  # [t_r, K]
    inside = (column >= 0) & (column < t_c)
    return column.clamp(0, t_c - 1), inside


def _unit_tile(x, norm, start: int, tile: int, dtype):
    """Rows start..start+tile of x, normalised: [t, D]."""
    return x[start:start + tile].to(dtype) / norm[start:start + tile, None]


def _through_normalize(grad_unit, x, norm, tile: int):
    """∂L/∂x from ∂L/∂u for u = x / max(‖x‖, EPS), in place and tile by tile:
    (g − u (u·g)) / ‖x‖ where ‖x‖ > EPS, else g / EPS (the clamp is constant there)."""
    for start in range(0, x.shape[0], tile):
        g = grad_unit[start:start + tile]  # view, [t, D]
        norm_t = norm[start:start + tile, None]  # [t, 1]
        u = x[start:start + tile].to(g.dtype) / norm_t
        radial = torch.where(norm_t > EPS, (u * g).sum(dim=1, keepdim=True), torch.zeros_like(norm_t))
        g.sub_(u * radial).div_(norm_t)
    return grad_unit.to(x.dtype)


def _skip_mask(skip_lo, skip_hi, r0: int, t_r: int, c0: int, t_c: int):
    """[t_r, t_c] bool, True where column c0+k lies in row r0+i's skipped range; None when nothing is skipped."""
    if skip_lo is None:
        return None
    cols = torch.arange(c0, c0 + t_c, device=skip_lo.device)  # [t_c]
    lo, hi = skip_lo[r0:r0 + t_r, None], skip_hi[r0:r0 + t_r, None]  # [t_r, 1]
    return (cols >= lo) & (cols < hi)


def tiled_log_sum_exp(rows: torch.Tensor, cols: torch.Tensor, scale: float, tile: int,
                      skip: tuple[torch.Tensor, torch.Tensor] | None = None,
                      pick: tuple[torch.Tensor, int] | None = None):
    """rows [n, D], cols [m, D] raw embeddings, s_ij = scale · cos(rows_i, cols_j), never holding more than
    tile × tile of them; differentiable in rows and cols.

    skip = (lo [n], hi [n]): columns [lo_i, hi_i) are left out of row i's sum.
    Returns lse [n] = log Σ_{j not skipped} e^{s_ij}; with pick = (lo [n], K) also the scores s_i,lo_i+k,
    [n, K] (taken whether skipped or not): (lse, picked).
    """
    check_tile_size(tile)
    skip_lo, skip_hi = skip if skip is not None else (None, None)
    pick_lo, picks = pick if pick is not None else (None, 0)
    lse, picked = _TiledLogSumExp.apply(rows, cols, scale, skip_lo, skip_hi, pick_lo, picks, tile)
    return (lse, picked) if pick is not None else lse


def check_tile_size(tile, batch_queries: int | None = None) -> None:
    """ValueError unless 0 < tile (≤ batch_queries when given): a bigger tile is the dense loss with extra steps."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0:
        raise ValueError(f"the tile size must be a positive number of rows, got {tile!r}")
    if batch_queries is not None and tile > batch_queries:
        raise ValueError(f"tile size {tile} is larger than the global batch of {batch_queries} queries: one tile "
                         f"would hold the whole similarity matrix (the dense loss); lower it or leave it unset")


def _local(rows: slice | None, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(this process's queries [n, D] — q itself or a view, never a copy —, their indices in q [n])."""
    idx = torch.arange(q.shape[0], device=q.device)
    return (q, idx) if rows is None else (q[rows], idx[rows])


class TiledInfoNCELoss(nn.Module):
    """losses/infonce.py's InfoNCE, tiled: L = 1/n Σ_i ( log Σ_j e^{s(q_i, d_j)} − s(q_i, d_i⁺) )."""
    in_batch = True

    def __init__(self, temperature: float = 0.02, tile_size: int = DEFAULT_TILE):
        super().__init__()
        check_tile_size(tile_size)
        self.temperature, self.tile_size = temperature, tile_size

    def forward(self, q, p, *, rows: slice | None = None, **_) -> torch.Tensor:
        group = p.shape[0] // q.shape[0]
        q_local, idx = _local(rows, q)  # [n, D], [n]
        # log Σ_j e^{s(q_i, d_j)} [n] and s(q_i, d_i⁺) [n, 1] (query i's positive is passage i*G)
        log_z, positive = tiled_log_sum_exp(q_local, p, 1 / self.temperature, self.tile_size, pick=(idx * group, 1))
        return (log_z - positive[:, 0]).mean()


class TiledGTELoss(nn.Module):
    """losses/gte.py's four-direction GTE loss, tiled: each direction's log-partition is one tiled block, the
    blocks combine with one more log-sum-exp:  log Z_i = log Σ_blocks e^{lse_block,i}.

    Masks as the dense class: "qq" leaves out q_i itself; "dd" leaves out d_i itself, or with exclude_own_group
    every passage of query i's group (its positive and its hard negatives, columns [i·G, (i+1)·G)).
    """
    in_batch = True

    def __init__(self, temperature: float, directions, tile_size: int = DEFAULT_TILE, exclude_own_group: bool = False):
        super().__init__()
        if "qd" not in directions or set(directions) - {"qd", "qq", "dq", "dd"}:
            raise ValueError(f"gte directions must include 'qd' and be among qd, qq, dq, dd, got {directions}")
        check_tile_size(tile_size)
        self.temperature, self.directions, self.tile_size = temperature, tuple(directions), tile_size
        self.exclude_own_group = exclude_own_group

    def forward(self, q, p, *, rows: slice | None = None, **_) -> torch.Tensor:
        group, scale, tile = p.shape[0] // q.shape[0], 1 / self.temperature, self.tile_size
        q_local, idx = _local(rows, q)  # local queries [n, D], their indices among the N queries [n]
        pos_col = idx * group  # column of d_i among the passages, [n]
        d_local = p[::group] if rows is None else p[::group][rows]  # their positives, a view, [n, D]
        qd, positive = tiled_log_sum_exp(q_local, p, scale, tile, pick=(pos_col, 1))  # [n], s(q_i, d_i) [n, 1]
        blocks = [qd]
        if "qq" in self.directions:
            blocks.append(tiled_log_sum_exp(q_local, q, scale, tile, skip=(idx, idx + 1)))
        if "dq" in self.directions:
            blocks.append(tiled_log_sum_exp(d_local, q, scale, tile))
        if "dd" in self.directions:
            own_end = pos_col + (group if self.exclude_own_group else 1)
            blocks.append(tiled_log_sum_exp(d_local, p, scale, tile, skip=(pos_col, own_end)))
        log_z = torch.logsumexp(torch.stack(blocks), dim=0)  # [n]
        return (log_z - positive[:, 0]).mean()


class TiledDistillLoss(nn.Module):
    """losses/distill.py with its contrastive base tiled and, in mode "m3", the in-batch log-softmax tiled:
        log p_ig = s(q_i, d_ig) − log( Σ_{j outside i's group} e^{s(q_i, d_j)} + Σ_{k ≥ g} e^{s(q_i, d_ik)} ),
    the first sum tiled, the second over the group's G scores (members 0 … g-1 masked, as in the dense m3).
    Mode "kl" only scores each query's own G passages ([n, G]), so it runs as the dense code does.
    tiled_base: the tiled form of dense.base (its own registered one), None when it has no base."""

    def __init__(self, dense: nn.Module, tile_size: int = DEFAULT_TILE, tiled_base: nn.Module | None = None):
        super().__init__()
        check_tile_size(tile_size)
        if (dense.base is None) != (tiled_base is None):
            raise ValueError("the tiled base must be given exactly when the dense distill loss has a base")
        self.base = tiled_base
        self.weight, self.mode, self.tile_size = dense.weight, dense.mode, tile_size
        self.temperature, self.teacher_temperature = dense.temperature, dense.teacher_temperature
        self.in_batch = dense.in_batch
        self.kl = type(dense)(None, dense.weight, dense.temperature, dense.teacher_temperature, "kl")

    def forward(self, q, p, *, rows: slice | None = None, teacher_scores: torch.Tensor = None, **_) -> torch.Tensor:
        if teacher_scores is None:
            raise ValueError("distill loss needs teacher scores (pos_scores / neg_scores in the data)")
        if self.mode == "kl":
            weighted_kd = self.kl(q, p, rows=rows, teacher_scores=teacher_scores)  # λ · KL, [n, G] scores only
        else:
            group = p.shape[0] // q.shape[0]
            q_local, idx = _local(rows, q)  # [n, D], [n]
            start = idx * group  # query i's group: passages i*G … i*G+G-1
            # log Σ_{j outside the group} e^{s(q_i, d_j)} [n], and the group's own scores s(q_i, d_ig) [n, G]
            log_z_out, s_group = tiled_log_sum_exp(q_local, p, 1 / self.temperature, self.tile_size,
                                                   skip=(start, start + group), pick=(start, group))
            # member g's partition leaves out members 0 … g-1 (as the dense m3, FlagEmbedding's m3_kd_loss):
            # the other groups' passages plus members g … G-1
            own_tail = torch.logcumsumexp(s_group.flip(1), dim=1).flip(1)  # log Σ_{k ≥ g} e^{s_ik}, [n, G]
            log_z = torch.logaddexp(log_z_out[:, None], own_tail)  # [n, G]
            target = F.softmax(teacher_scores.to(s_group.dtype) / self.teacher_temperature, dim=-1)  # [n, G]
            kd = -(target * (s_group - log_z)).sum(dim=1).mean()
            weighted_kd = self.weight * kd
        base = self.base(q, p, rows=rows) if self.base is not None else 0.0
        return base + weighted_kd
