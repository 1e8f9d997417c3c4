"""The model part of a training run: `ModelConfig` (its options, help and checks) and `build_model`.

A new backbone family's options (LoRA, EOS token, padding side) join here: a field in `ModelConfig`, its check in
`check`, its set-up in `build_model`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cli_config import ConfigError, check_rules, one_of, opt, whole_at_least
from models.bi_encoder import BiEncoder
from models.pooling import POOLING_MODES

ATTENTION = ("sdpa", "eager", "flash_attention_2")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    backbone: str = opt("", "backbone: local folder or Hub id (weights, or tokenizer only with --from-config)",
                        key="model")
    from_config: str = opt(None, "build the backbone with random weights from this config (path or Hub id)")
    pooling: str = opt(None, "mean | cls | last (default: the model's saved pooling, else mean)")
    normalize: bool = opt(None, "L2-normalise embeddings (default: the model's saved setting, else on)")
    query_prompt: str = opt(None, "prefix for queries, e.g. 'query: ' (E5); a row's own `prompt` wins")
    passage_prompt: str = opt(None, "prefix for passages, e.g. 'passage: ' (E5)")
    query_max_len: int = opt(64, "max tokens per query")
    passage_max_len: int = opt(256, "max tokens per passage")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory")
    attn_implementation: str = opt("sdpa", "sdpa | eager | flash_attention_2")
    dtype: str = opt("auto", "dtype the backbone's weights are loaded in: auto (the one its config.json names, "
                             "else float32: transformers' default) | float32 | bfloat16 | float16")

    def check(self) -> None:
        """Values wrong on their own -> ConfigError naming the key; folders and the Hub are checked on loading."""
        if not self.backbone:
            raise ConfigError("model", "is required (a local folder or Hub id)")
        check_rules(self, {"pooling": one_of((None, *POOLING_MODES)), "attn_implementation": one_of(ATTENTION),
                           "dtype": one_of(DTYPES), "query_max_len": (whole_at_least(1), "≥ 1"),
                           "passage_max_len": (whole_at_least(1), "≥ 1")})


def build_model(cfg: ModelConfig) -> BiEncoder:
    """The BiEncoder a run starts from: pretrained weights, or random ones from `from_config` with the backbone's
    tokenizer; the settings given override the saved ones (None keeps them)."""
    settings = dict(pooling=cfg.pooling, normalize=cfg.normalize, query_prompt=cfg.query_prompt,
                    passage_prompt=cfg.passage_prompt, query_max_len=cfg.query_max_len,
                    passage_max_len=cfg.passage_max_len)
    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)  # None: transformers' own choice
    if cfg.from_config:
        model = BiEncoder.from_config(cfg.from_config, cfg.backbone, cfg.attn_implementation, dtype, **settings)
    else:
        model = BiEncoder.from_pretrained(cfg.backbone, cfg.attn_implementation, dtype, **settings)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
