"""A model's revision: a hash of what its embeddings depend on (weights, tokenizer, settings, precision).

mteb keys its result cache by it; the data-pipeline scripts key their corpus-embedding cache by it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import torch

from models.bi_encoder import BiEncoder
from models.settings import EncoderSettings


def checkpoint_revision(model: BiEncoder, settings: EncoderSettings, precision: str = "fp32") -> str:
    """16 hex digits of SHA-256 over the weights, the tokenizer's identity, the encoding settings and, when it is
    not fp32, the precision encoding runs in (bf16 moves scores in the 4th decimal).

    Hashing the weights in memory (not a file) also covers models that were never saved; any change to weights,
    prompts or lengths gives a new revision, so mteb's result cache cannot return an older checkpoint's scores.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())  # raw bytes of any dtype, bf16 included
    digest.update(f"{type(model.tokenizer).__name__}|{len(model.tokenizer)}".encode())
    digest.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    if precision != "fp32":
        digest.update(f"precision={precision}".encode())
    return digest.hexdigest()[:16]
