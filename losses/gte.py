"""GTE's improved InfoNCE with a bidirectional, enlarged partition (Li et al. 2023, arXiv:2308.03281, eq. 3).

    L = -1/n Σ_i log( e^{s(q_i, d_i)} / Z_i ),   s(a, b) = cos(a, b) / τ
    Z_i =   Σ_j      e^{s(q_i, d_j)}     "qd": query i against every passage of the batch
          + Σ_{j≠i}  e^{s(q_i, q_j)}     "qq": query i against every other query
          + Σ_j      e^{s(q_j, d_i)}     "dq": positive d_i against every query (j = i included, as in the paper)
          + Σ_{j∉M_i} e^{s(d_i, d_j)}    "dd": positive d_i against the other passages of the batch

How hard negatives enter: passages come in groups of G (1 positive + G-1 hard negatives). In "qd" the index j
runs over all N*G passages, hard negatives included; "qq" and "dq" run over the N queries only (queries have
no hard negatives). The paper writes eq. 3 for pairs, so it does not say which passages "dd" leaves out (M_i):
  exclude_own_group=True:  M_i = every passage of query i's group (d_i and its own hard negatives), as
                           sentence-transformers 6.2 does (MultipleNegativesRankingLoss with all four directions,
                           "joint" partition; its `doc_to_doc` mask covers the query's whole group);
  exclude_own_group=False: M_i = {d_i} only, so d_i is also pushed away from its own query's hard negatives.
With G = 1 both are the paper's formula. Hard negatives close to their positive (what mining produces) make
e^{s(d_i, own negatives)} the largest terms of Z_i at τ = 0.01, so "False" mostly pushes positives away from
their own negatives (tests/test_losses.py shows the gap on such embeddings).
Default True, by measurement (scripts/reproduce.py, MiniLM on KorNLI triplets, 3 seeds, τ 0.01): masked vs kept
KorSTS test 0.489 ± 0.027 vs 0.476 ± 0.020, KorNLI dev AP 0.312 ± 0.008 vs 0.306 ± 0.003, STS-B 0.861 vs 0.860 —
better on all three, though within the seed spread at those small sizes; and True is sentence-transformers'.
Terms can be switched off with `directions`; "qd" always stays (it holds the numerator's term).
τ defaults to 0.01 as in GTE.

Inputs as in `losses/infonce.py`: q [N, D], p [N*G, D] group-major, `rows` = queries owned by this process.
"""
from dataclasses import dataclass

import torch
from torch import nn

from cli_config import ConfigError, opt
from data.row_kind import RowKind
from losses.registry import LossSpec, register
from losses.similarity import cos_sim, local_rows
from losses.tiled import TiledGTELoss

DIRECTIONS = ("qd", "qq", "dq", "dd")


@dataclass
class GTEOptions:
    gte_directions: list = opt(list(DIRECTIONS), "gte partition terms to include (qd always)")
    gte_exclude_own_group: bool = opt(True, "gte 'dd' term: leave out every passage of the query's own group (as "
                                            "sentence-transformers); --no-gte-exclude-own-group leaves out d_i only")


class GTELoss(nn.Module):
    in_batch = True
    default_temperature = 0.01  # GTE (Li et al. 2023)

    def __init__(self, temperature: float = default_temperature, directions=DIRECTIONS,
                 exclude_own_group: bool = True):
        super().__init__()
        directions = tuple(directions)
        unknown = set(directions) - set(DIRECTIONS)
        if unknown or "qd" not in directions:
            raise ValueError(f"gte directions must include 'qd' and be among {DIRECTIONS}, got {directions}")
        self.temperature = temperature
        self.directions = directions
        self.exclude_own_group = exclude_own_group

    def forward(self, q, p, *, rows: slice | None = None, **_) -> torch.Tensor:
        n_queries, group = q.shape[0], p.shape[0] // q.shape[0]
        idx = local_rows(rows, n_queries).to(q.device)  # [n]
        pos_col = idx * group  # column of d_i among the passages, [n]
        d = p[pos_col]  # positives of the local queries, [n, D]
        arange = torch.arange(len(idx), device=q.device)
        qd = cos_sim(q[idx], p, 1 / self.temperature)  # [n, N*G]
        parts = [qd]
        if "qq" in self.directions:
            qq = cos_sim(q[idx], q, 1 / self.temperature)  # [n, N]
            parts.append(qq.index_put((arange, idx), torch.tensor(float("-inf"), dtype=qq.dtype, device=q.device)))
        if "dq" in self.directions:
            parts.append(cos_sim(d, q, 1 / self.temperature))  # [n, N]
        if "dd" in self.directions:
            dd = cos_sim(d, p, 1 / self.temperature)  # [n, N*G]
            passage_owner = torch.arange(p.shape[0], device=q.device) // group  # query of each passage, [N*G]
            if self.exclude_own_group:
                masked = passage_owner[None, :] == idx[:, None]  # query i's whole group, [n, N*G]
            else:
                masked = torch.zeros_like(dd, dtype=torch.bool).index_put((arange, pos_col), torch.tensor(True))
            parts.append(dd.masked_fill(masked, float("-inf")))
        log_z = torch.logsumexp(torch.cat(parts, dim=1), dim=1)  # [n]
        return (log_z - qd[arange, pos_col]).mean()


def check_gte(options: GTEOptions, group_size: int | None) -> None:
    directions = tuple(options.gte_directions)
    if set(directions) - set(DIRECTIONS) or "qd" not in directions:
        raise ConfigError("gte_directions", f"{' '.join(directions)}: must include qd and be among "
                                            f"{', '.join(DIRECTIONS)}")


register(LossSpec(
    name="gte", rows=RowKind.GROUPS, options=GTEOptions, default_temperature=GTELoss.default_temperature,
    make=lambda o, *, temperature, dim, build: GTELoss(temperature, o.gte_directions, o.gte_exclude_own_group),
    tiled=lambda loss, tile: TiledGTELoss(loss.temperature, loss.directions, tile, loss.exclude_own_group),
    check=check_gte, summary="GTE's improved InfoNCE: q→d, q→q, d→q and d→d in the partition"))
