"""MultipleNegativesRankingLoss as in sentence-transformers (Henderson et al. 2017, arXiv:1705.00652).

    L = -1/n Σ_i log( e^{cos(a_i, p_i)/τ} / Σ_j e^{cos(a_i, c_j)/τ} ),   τ = 0.05

where c_j runs over every positive and hard negative of the batch. sentence-transformers writes it with
scale = 1/τ = 20; here it takes τ (train.py's one `--temperature`, τ = 1/scale) like every other loss, so a
sentence-transformers scale s is `--temperature 1/s`. It is InfoNCE at τ = 0.05, kept as its own name so the
sentence-transformers loss ladder (softmax → cosine → mnrl) can be rerun.
"""
from data.row_kind import RowKind
from losses.infonce import InfoNCELoss, tiled_infonce
from losses.registry import LossSpec, register


class MNRLoss(InfoNCELoss):
    default_temperature = 1 / 20  # sentence-transformers' scale = 20

    def __init__(self, temperature: float = default_temperature):
        super().__init__(temperature)


register(LossSpec(
    name="mnrl", make=lambda options, *, temperature, dim, build: MNRLoss(temperature), rows=RowKind.GROUPS,
    default_temperature=MNRLoss.default_temperature, tiled=tiled_infonce,  # the same formula: InfoNCE's tiled form
    summary="sentence-transformers' MultipleNegativesRankingLoss (InfoNCE at τ 0.05)"))
