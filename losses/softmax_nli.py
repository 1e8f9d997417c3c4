"""Softmax classification loss on sentence pairs (Sentence-BERT, Reimers & Gurevych 2019, arXiv:1908.10084).

    logits = W · [u; v; |u − v|] + b,   W: [C, 3D]     L = CrossEntropy(logits, y)

u, v are the two sentences' embeddings and y the NLI class (0 entailment, 1 neutral, 2 contradiction).
The classifier head is trained with the encoder and thrown away at save time, as in sentence-transformers.
Inputs: q [n, D] first sentences, p [n, D] second sentences, labels [n] long. Not an in-batch loss.
"""
import torch
import torch.nn.functional as F
from torch import nn

from data.row_kind import RowKind
from losses.registry import LossSpec, register


class SoftmaxNLILoss(nn.Module):
    in_batch = False

    def __init__(self, dim: int, num_labels: int = 3):
        super().__init__()
        self.classifier = nn.Linear(3 * dim, num_labels)

    def forward(self, q, p, *, labels: torch.Tensor = None, **_) -> torch.Tensor:
        features = torch.cat([q, p, (q - p).abs()], dim=-1).to(self.classifier.weight.dtype)  # [n, 3D]
        return F.cross_entropy(self.classifier(features), labels.long())


register(LossSpec(
    name="softmax", make=lambda options, *, temperature, dim, build: SoftmaxNLILoss(dim), rows=RowKind.NLI_PAIRS,
    summary="Sentence-BERT's softmax classifier on NLI pairs"))
