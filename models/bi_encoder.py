"""The bi-encoder: one Hugging Face backbone shared by queries and passages, pooled into one vector each.

The model only encodes; losses score (see `losses/`) and `train.py` orchestrates. Saving in sentence-transformers
format and reading such a folder's settings: `models/st_folder.py`; evaluation encoding: `models/encode.py`;
building one from the training command's options: `models/config.py`.
"""
from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from models.checks import adapter_base, check_model_folder, check_tokenizer_folder, check_vocabulary, find_model
from models.encode import encode as encode_texts
from models.family import is_decoder_only, set_up_tokenizer
from models.pooling import pool
from models.settings import EncoderSettings
from models.st_folder import read_settings, save_folder


class BiEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, settings: EncoderSettings | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.settings = set_up_text(backbone.config, tokenizer, settings or EncoderSettings())
        if getattr(backbone, "pooler", None) is not None:  # BERT's pooler never reaches an embedding: frozen, so DDP
            backbone.pooler.requires_grad_(False)          # does not wait for its gradients (and it is saved as is)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, name_or_path: str, attn_implementation: str | None = None,
                        dtype: torch.dtype | None = None, **overrides) -> "BiEncoder":
        """A local folder or Hub id; an adapter folder (LoRA) is loaded onto its base model and merged. `overrides`
        are EncoderSettings fields; None means "keep the saved value". `dtype` None: transformers' default, the dtype
        in the checkpoint's config.json (fp32 when it names none). ValueError for a folder without config, weights or
        tokenizer files, an adapter whose base cannot be found, or a tokenizer that cannot be the model's
        (models/checks.py); TokenizerSetupError (a ValueError) for one that cannot append EOS, before any weights
        are read."""
        from models.lora import load_adapter

        name_or_path = str(name_or_path)
        check_model_folder(name_or_path)
        settings = read_settings(name_or_path) if os.path.isdir(name_or_path) else EncoderSettings()
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        base = adapter_base(name_or_path) if os.path.isdir(name_or_path) else None
        source = name_or_path if base is None else find_model(base)
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        settings = set_up_text(config, tokenizer, settings)  # before the weights: a tokenizer without EOS stops here
        backbone = AutoModel.from_pretrained(source, config=config, **_backbone_kwargs(attn_implementation, dtype))
        if base is not None:
            backbone = load_adapter(backbone, name_or_path)
        check_vocabulary(tokenizer, backbone, name_or_path)
        return cls(backbone, tokenizer, settings)

    @classmethod
    def from_config(cls, config: str | PretrainedConfig, tokenizer: str, attn_implementation: str | None = None,
                    dtype: torch.dtype | None = None, **overrides) -> "BiEncoder":
        """Random weights from a config (path, Hub id or object): for pretraining from scratch. `dtype` None: the
        config's own dtype (fp32 when it names none)."""
        if not isinstance(config, PretrainedConfig):
            config = AutoConfig.from_pretrained(str(config))
        check_tokenizer_folder(str(tokenizer))
        settings = EncoderSettings(**{k: v for k, v in overrides.items() if v is not None})
        tokenizer_obj = AutoTokenizer.from_pretrained(str(tokenizer))
        settings = set_up_text(config, tokenizer_obj, settings)
        backbone = AutoModel.from_config(config, **_backbone_kwargs(attn_implementation, dtype))
        check_vocabulary(tokenizer_obj, backbone, str(tokenizer))
        return cls(backbone, tokenizer_obj, settings)

    # ---------------------------------------------------------------- encoding
    @property
    def dim(self) -> int:
        return self.backbone.config.hidden_size

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """input_ids, attention_mask: [B, L] -> embeddings [B, H] (L2-normalised if settings.normalize)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        hidden = out.last_hidden_state  # [B, L, H]
        emb = pool(hidden, attention_mask, self.settings.pooling)  # [B, H]
        if self.settings.normalize:
            emb = nn.functional.normalize(emb.float(), dim=-1)
        return emb

    def forward(self, query: dict | None = None, passage: dict | None = None):
        """One call for both sides, so DDP sees a single forward per step. Returns (q [B, H], p [B*G, H])."""
        q = self.embed(**query) if query is not None else None
        p = self.embed(**passage) if passage is not None else None
        return q, p

    def encode(self, texts: list[str], *args, **kwargs) -> torch.Tensor:
        """Embed texts for evaluation -> [N, H] fp32 on CPU, in input order; arguments: `models.encode.encode`."""
        return encode_texts(self, texts, *args, **kwargs)

    def gradient_checkpointing_enable(self):
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---------------------------------------------------------------- saving
    def save(self, folder: str, state_dict: dict | None = None, merge: bool = False) -> None:
        """Weights (an adapter folder for a LoRA model, unless merge), tokenizer, settings and the
        sentence-transformers files: `models.st_folder.save_folder`."""
        save_folder(self, folder, state_dict, merge=merge)


def set_up_text(config, tokenizer, settings: EncoderSettings) -> EncoderSettings:
    """The backbone family's text side (models/family.py): `append_eos` None becomes on for decoder-only models,
    off for encoders; decoders pad on the left (with unk, else eos, when they have no pad token); the tokenizer
    appends EOS when on. `use_cache` off (no generation here). -> settings with append_eos decided."""
    decoder = is_decoder_only(config)
    if settings.append_eos is None:
        settings = dataclasses.replace(settings, append_eos=decoder)
    if tokenizer is not None:
        set_up_tokenizer(tokenizer, decoder, settings.append_eos)
    if getattr(config, "use_cache", None):
        config.use_cache = False
    return settings


def _backbone_kwargs(attn_implementation: str | None, dtype: torch.dtype | None) -> dict:
    """Only what was asked for, so an unset option keeps transformers' own default."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return {**kwargs, "dtype": dtype} if dtype is not None else kwargs
