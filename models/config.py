"""The model's options of train.py (ModelConfig): the backbone and how text becomes a vector."""
from __future__ import annotations

from dataclasses import dataclass

from cli_config import check_rules, one_of, opt, whole_at_least


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

    def check(self) -> None:
        from models.pooling import POOLING_MODES

        check_rules(self, {"pooling": one_of((None, *POOLING_MODES)),
                           "attn_implementation": one_of(("sdpa", "eager", "flash_attention_2")),
                           "query_max_len": (whole_at_least(1), "≥ 1"), "passage_max_len": (whole_at_least(1), "≥ 1")})
