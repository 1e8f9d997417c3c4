"""The masked auto-encoding loss, over the logits pretraining/model.py returns at labelled positions.

    RetroMAE (arXiv 2205.12035, eq. 8):  L = CE(decoder logits, every token but [CLS] and the last)
                                           + CE(encoder logits, the encoder's masked tokens)          (1 : 1)
    plain MLM (BERT):                    L = CE(encoder logits, the encoder's masked tokens)
    DupMAE's bag-of-words term (arXiv 2211.08769), added with weight w when w > 0:
                                         L += w · mean over texts of −Σ_t q(t) log softmax(max_i logits_i)(t)
where each CE is the mean over its labelled positions in the batch, q is the text's tokens as a distribution
(repeats counted) and max_i runs over the text's positions after [CLS] (the encoder's MLM logits).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mae_loss(out: dict, bow_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """-> (loss, its terms by name: encoder_loss, decoder_loss (with a decoder), bow_loss (with bow))."""
    parts = {"encoder_loss": F.cross_entropy(out["encoder_logits"].float(), out["encoder_targets"])}
    loss = parts["encoder_loss"]
    if "decoder_logits" in out:
        parts["decoder_loss"] = F.cross_entropy(out["decoder_logits"].float(), out["decoder_targets"])
        loss = loss + parts["decoder_loss"]
    if "bow_logits" in out:
        log_p = F.log_softmax(out["bow_logits"].float(), dim=-1)  # [B, V]
        parts["bow_loss"] = -(out["bow_targets"] * log_p).sum(dim=-1).mean()
        loss = loss + bow_weight * parts["bow_loss"]
    return loss, parts
