"""MultipleNegativesRankingLoss as in sentence-transformers (Henderson et al. 2017, arXiv:1705.00652).

    L = -1/n Σ_i log( e^{scale·cos(a_i, p_i)} / Σ_j e^{scale·cos(a_i, c_j)} ),   scale = 20

where c_j runs over every positive and hard negative of the batch. It is InfoNCE with τ = 1/scale = 0.05; it
is kept as its own name so the sentence-transformers loss ladder (softmax → cosine → mnrl) can be rerun.
"""
from losses.infonce import InfoNCELoss


class MNRLoss(InfoNCELoss):
    def __init__(self, scale: float = 20.0):
        super().__init__(temperature=1.0 / scale)
