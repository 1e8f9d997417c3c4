"""Pooling token states into one vector per sequence: mean (masked), cls, last-token."""
import torch

POOLING_MODES = ("mean", "cls", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden: [B, L, H], attention_mask: [B, L] (1 = real token) -> [B, H]."""
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
        summed = (hidden * mask).sum(dim=1)  # [B, H]
        counts = mask.sum(dim=1).clamp(min=1e-9)  # [B, 1]
        return summed / counts
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        # Position of the last real token; works for right and left padding alike.
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLING_MODES}")
