"""The model part of a training run: `ModelConfig` (its options, help and checks) and `build_model`.

A new backbone family's options (LoRA, EOS token, padding side) join here: a field in `ModelConfig`, its check in
`check`, its set-up in `build_model` (the family rules themselves: models/family.py; LoRA: models/lora.py; the
instruction format: models/text_format.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cli_config import ConfigError, check_rules, one_of, opt, whole_at_least
from models.bi_encoder import BiEncoder
from models.checks import adapter_base
from models.pooling import POOLING_MODES
from models.settings import EncoderSettings
from models.text_format import format_problem

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
    # decoder embedders (bge-multilingual-gemma2, E5-mistral, gte-Qwen2): EOS, instruction format
    append_eos: bool = opt(None, "end every query and passage with the EOS token, kept when truncating (max_len − 1 "
                                 "tokens + EOS): what last-token pooling of a decoder reads. Default: the model's "
                                 "saved setting, else on for decoder-only families (Llama, Mistral, Qwen2, Gemma2, "
                                 "...: a causal LM with no masked-LM form), off for BERT-like encoders")
    query_instruction_format: str = opt(None, "a query with its instruction, two {} slots (instruction, then query): "
                                              "'<instruct>{}\\n<query>{}' (bge-multilingual-gemma2), 'Instruct: "
                                              "{}\\nQuery: {}' (E5-mistral, gte-Qwen2); one {} when there is no "
                                              "instruction. Instead of --query-prompt; saved with the model (default: "
                                              "the saved one)")
    query_instruction: str = opt(None, "the default instruction of --query-instruction-format; a row's own `prompt` "
                                       "fills the format instead when the row has one (default: the saved one)")
    format_passages: bool = opt(None, "format passages with the instruction format too: symmetric data (STS, NLI, "
                                      "clustering pairs). Default: on for the sentence-pair losses (cosine, softmax), "
                                      "off for query → passage rows")
    # LoRA (peft): only the adapters train
    lora_rank: int = opt(0, "LoRA rank r: train rank-r adapters on the --lora-target-modules, every other weight "
                            "frozen; 0 = no LoRA (every weight trains)")
    lora_alpha: float = opt(None, "LoRA α: the adapters' output is scaled by α / r (default: 2 × rank)")
    lora_dropout: float = opt(0.1, "dropout on the LoRA adapters' inputs")
    lora_target_modules: list[str] = opt([], "modules LoRA adapts (names, or dotted suffixes of them); default: "
                                             "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj for decoder "
                                             "families, query key value dense for BERT-like encoders")
    lora_modules_to_save: list[str] = opt([], "modules trained in full beside the adapters and saved with them "
                                              "(e.g. embed_tokens)")
    merge_lora: bool = opt(False, "save the model with the adapters merged into its weights (a plain model folder) "
                                  "instead of an adapter folder that names its base model")

    def check(self) -> None:
        """Values wrong on their own -> ConfigError naming the key; folders and the Hub are checked on loading."""
        if not self.backbone:
            raise ConfigError("model", "is required (a local folder or Hub id)")
        check_rules(self, {"pooling": one_of((None, *POOLING_MODES)), "attn_implementation": one_of(ATTENTION),
                           "dtype": one_of(DTYPES), "query_max_len": (whole_at_least(1), "≥ 1"),
                           "passage_max_len": (whole_at_least(1), "≥ 1"), "lora_rank": (whole_at_least(0), "≥ 0"),
                           "lora_alpha": (lambda v: v is None or _finite(v) and v > 0, "a finite number > 0"),
                           "lora_dropout": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)")})
        self._check_lora()
        if self.query_instruction_format is not None:
            if self.query_prompt:
                raise ConfigError("query_prompt", f"{self.query_prompt!r}: --query-instruction-format writes the "
                                                  "whole query; put the prefix into the format instead")
            problem = format_problem(self.query_instruction_format, bool(self.query_instruction))
            if problem:
                raise ConfigError("query_instruction_format", f"{self.query_instruction_format!r}: {problem}")

    def _check_lora(self) -> None:
        if not self.lora_rank:
            for key in ("lora_target_modules", "lora_modules_to_save"):
                if getattr(self, key):
                    raise ConfigError(key, f"{' '.join(getattr(self, key))}: LoRA is off (--lora-rank 0); give "
                                           "--lora-rank")
            if self.merge_lora:
                raise ConfigError("merge_lora", "True: there is no LoRA adapter to merge (--lora-rank 0)")
            return
        if not self.merge_lora:
            if self.from_config:
                raise ConfigError("lora_rank", f"{self.lora_rank}: an adapter folder names the folder of its base "
                                               "weights, and the random ones of --from-config are saved nowhere; add "
                                               "--merge-lora (saves merged weights), or train without LoRA")
            if adapter_base(self.backbone) is not None:
                raise ConfigError("lora_rank", f"{self.lora_rank}: --model {self.backbone} is itself an adapter "
                                               "folder, so a new adapter would have no saved base to name; add "
                                               "--merge-lora (saves merged weights), or merge it first")


def _count(parameters) -> int:
    """Parameters counted whole (DeepSpeed ZeRO-3's partitions by their full size)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in parameters)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_lora_targets(cfg: ModelConfig) -> None:
    """Before any weights are read: the LoRA targets against an empty (meta-device) copy of the architecture;
    ConfigError naming the option, listing the module names that exist."""
    if not cfg.lora_rank:
        return
    from transformers import AutoConfig, AutoModel

    from models.checks import config_source
    from models.family import default_lora_targets
    from models.lora import check_targets

    config = AutoConfig.from_pretrained(cfg.from_config or config_source(cfg.backbone))
    with torch.device("meta"):
        empty = AutoModel.from_config(config)
    check_targets(empty, cfg.lora_target_modules or default_lora_targets(config), cfg.lora_modules_to_save)


def check_text_settings(settings: EncoderSettings) -> None:
    """The instruction settings a model ends up with (given, or saved with it): ConfigError naming the key."""
    fmt, instruction = settings.query_instruction_format, settings.query_instruction
    if instruction and not fmt:
        raise ConfigError("query_instruction", f"{instruction!r}: fills --query-instruction-format, which neither "
                                               "this run nor the model sets (a plain prefix is --query-prompt)")
    if fmt and (problem := format_problem(fmt, bool(instruction))):
        raise ConfigError("query_instruction_format", f"{fmt!r}: {problem}")


def build_model(cfg: ModelConfig, log=print) -> BiEncoder:
    """The BiEncoder a run starts from: pretrained weights, or random ones from `from_config` with the backbone's
    tokenizer; the settings given override the saved ones (None keeps them). The family's attention (SDPA where it
    runs), pad token, padding side and EOS, then LoRA when lora_rank > 0. ConfigError naming the key for what the
    model refuses (targets it lacks, a tokenizer without EOS)."""
    from transformers import AutoConfig

    from models.checks import config_source
    from models.family import TokenizerSetupError, attention_for, default_lora_targets
    from models.lora import add_lora

    settings = dict(pooling=cfg.pooling, normalize=cfg.normalize, query_prompt=cfg.query_prompt,
                    passage_prompt=cfg.passage_prompt, query_max_len=cfg.query_max_len,
                    passage_max_len=cfg.passage_max_len, query_instruction_format=cfg.query_instruction_format,
                    query_instruction=cfg.query_instruction, append_eos=cfg.append_eos)
    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)  # None: transformers' own choice
    config = AutoConfig.from_pretrained(cfg.from_config or config_source(cfg.backbone))
    attention, note = attention_for(config, cfg.attn_implementation)
    if note:
        log(note)
    try:
        if cfg.from_config:
            model = BiEncoder.from_config(config, cfg.backbone, attention, dtype, **settings)
        else:
            model = BiEncoder.from_pretrained(cfg.backbone, attention, dtype, **settings)
    except TokenizerSetupError as e:
        if e.field != "append_eos":
            raise ValueError(f"{cfg.backbone}: {e}") from None
        shown = cfg.append_eos if cfg.append_eos is not None else "on (the default for a decoder-only model)"
        raise ConfigError("append_eos", f"{shown}: {e} ({cfg.backbone}); give it one, or train with "
                                        "--no-append-eos") from None
    check_text_settings(model.settings)
    if cfg.lora_rank:
        targets = cfg.lora_target_modules or default_lora_targets(model.backbone.config)
        base_parameters = _count(model.backbone.parameters())
        model.backbone = add_lora(model.backbone, rank=cfg.lora_rank, alpha=cfg.lora_alpha or 2.0 * cfg.lora_rank,
                                  dropout=cfg.lora_dropout, targets=targets, modules_to_save=cfg.lora_modules_to_save)
        trained = _count(p for p in model.backbone.parameters() if p.requires_grad)
        log(f"LoRA rank {cfg.lora_rank} on {' '.join(targets)}: {trained:,} parameters train, "
            f"{100 * trained / base_parameters:.2f}% of the base model's {base_parameters:,}")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
