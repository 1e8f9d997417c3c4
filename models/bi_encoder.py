"""The bi-encoder: one Hugging Face backbone shared by queries and passages, pooled into one vector each.

The model only encodes; losses score (see `losses/`) and `train.py` orchestrates. A saved folder is a plain
Hugging Face model plus the sentence-transformers files, so `SentenceTransformer(folder)` loads it, and an
`embedding_config.json` that carries what sentence-transformers has no field for (separate query/passage
lengths, our pooling name).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig

from models.pooling import POOLING_MODES, pool

SETTINGS_FILE = "embedding_config.json"
# Our pooling names <-> the sentence-transformers Pooling config keys (legacy keys: every ST version reads them).
_ST_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


@dataclass
class EncoderSettings:
    """How text becomes a vector; saved with the weights so a checkpoint evaluates with no extra flags."""

    pooling: str = "mean"
    normalize: bool = True
    query_max_len: int = 64
    passage_max_len: int = 256
    query_prompt: str = ""
    passage_prompt: str = ""
    # Prompts by MTEB task name or task type (e.g. {"STS": "...", "SciFact-query": "..."}); used by evaluation.
    task_prompts: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")


def read_settings(folder: str) -> EncoderSettings:
    """Settings of a saved folder: ours if present, else what its sentence-transformers files say, else defaults."""
    ours = os.path.join(folder, SETTINGS_FILE)
    if os.path.isfile(ours):
        with open(ours, encoding="utf-8") as f:
            return EncoderSettings(**json.load(f))
    settings = EncoderSettings()
    pooling_file = os.path.join(folder, "1_Pooling", "config.json")
    if os.path.isfile(pooling_file):
        with open(pooling_file, encoding="utf-8") as f:
            cfg = json.load(f)
        mode = cfg.get("pooling_mode")
        modes = [name for name, key in _ST_POOLING_KEYS.items() if cfg.get(key)]
        if mode == "lasttoken":
            mode = "last"
        settings.pooling = mode if mode in POOLING_MODES else (modes[0] if modes else "mean")
    modules_file = os.path.join(folder, "modules.json")
    if os.path.isfile(modules_file):
        with open(modules_file, encoding="utf-8") as f:
            settings.normalize = any(m.get("type", "").endswith("Normalize") for m in json.load(f))
    sbert_file = os.path.join(folder, "sentence_bert_config.json")
    if os.path.isfile(sbert_file):
        with open(sbert_file, encoding="utf-8") as f:
            max_len = json.load(f).get("max_seq_length")
        if max_len:
            settings.passage_max_len = int(max_len)
            settings.query_max_len = min(settings.query_max_len, int(max_len))
    st_file = os.path.join(folder, "config_sentence_transformers.json")
    if os.path.isfile(st_file):
        with open(st_file, encoding="utf-8") as f:
            prompts = json.load(f).get("prompts") or {}
        settings.query_prompt = prompts.pop("query", settings.query_prompt)
        settings.passage_prompt = prompts.pop("document", prompts.pop("passage", settings.passage_prompt))
        settings.task_prompts = prompts
    return settings


class BiEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, settings: EncoderSettings | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.settings = settings or EncoderSettings()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, name_or_path: str, attn_implementation: str | None = None, **overrides) -> "BiEncoder":
        """A local folder or Hub id. `overrides` are EncoderSettings fields; None means "keep the saved value"."""
        name_or_path = str(name_or_path)
        settings = read_settings(name_or_path) if os.path.isdir(name_or_path) else EncoderSettings()
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        backbone = AutoModel.from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        return cls(backbone, tokenizer, settings)

    @classmethod
    def from_config(cls, config: str | PretrainedConfig, tokenizer: str, attn_implementation: str | None = None,
                    **overrides) -> "BiEncoder":
        """Random weights from a config (path, Hub id or object): for pretraining from scratch."""
        if not isinstance(config, PretrainedConfig):
            config = AutoConfig.from_pretrained(str(config))
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        backbone = AutoModel.from_config(config, **kwargs)
        settings = EncoderSettings(**{k: v for k, v in overrides.items() if v is not None})
        return cls(backbone, AutoTokenizer.from_pretrained(str(tokenizer)), settings)

    # ---------------------------------------------------------------- encoding
    @property
    def dim(self) -> int:
        return self.backbone.config.hidden_size

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Pad to the batch's longest sequence, rounded up to a multiple of 8 (tensor-core friendly)."""
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                              pad_to_multiple_of=8, return_tensors="pt")

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """input_ids, attention_mask: [B, L] -> embeddings [B, H] (L2-normalised if settings.normalize)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state  # [B, L, H]
        emb = pool(hidden, attention_mask, self.settings.pooling)  # [B, H]
        if self.settings.normalize:
            emb = nn.functional.normalize(emb.float(), dim=-1)
        return emb

    def forward(self, query: dict | None = None, passage: dict | None = None):
        """One call for both sides, so DDP sees a single forward per step. Returns (q [B, H], p [B*G, H])."""
        q = self.embed(**query) if query is not None else None
        p = self.embed(**passage) if passage is not None else None
        return q, p

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64, prompt: str = "", max_length: int | None = None,
               show_progress: bool = False) -> torch.Tensor:
        """Embed texts for evaluation -> [N, H] fp32 on CPU, in input order.

        Batches hold texts of similar *token* length, longest first (exact, unlike sorting by characters), padded
        only to the batch's longest — to a multiple of 8 on CUDA for tensor cores, not at all beyond it on CPU,
        where every pad token costs full compute. bf16 autocast on CUDA; fp32 elsewhere.
        """
        from tqdm.auto import tqdm

        max_length = max_length or self.settings.passage_max_len
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        texts = [prompt + t for t in texts]
        # Truncated token counts, tokenised in chunks with the ids discarded so memory stays flat on large corpora
        # (one extra tokenizer pass, ~1% of encoding time); longest first, stable.
        lengths: list[int] = []
        for chunk_start in range(0, len(texts), 4096):
            ids = self.tokenizer(texts[chunk_start:chunk_start + 4096], truncation=True, max_length=max_length,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            lengths.extend(len(x) for x in ids)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        pad_multiple = 8 if device.type == "cuda" else None
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="encode", disable=not show_progress, leave=False):
            idx = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                                   pad_to_multiple_of=pad_multiple, return_token_type_ids=False, return_tensors="pt")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                emb = self.embed(batch["input_ids"].to(device, non_blocking=True),
                                 batch["attention_mask"].to(device, non_blocking=True))
            out[idx] = emb.float().cpu()
        self.train(was_training)
        return out

    def gradient_checkpointing_enable(self):
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---------------------------------------------------------------- saving
    def save(self, folder: str, state_dict: dict | None = None) -> None:
        """Weights (safetensors), tokenizer, our settings, and the sentence-transformers files.

        `state_dict` lets a caller pass full weights gathered elsewhere (e.g. DeepSpeed ZeRO-3).
        """
        os.makedirs(folder, exist_ok=True)
        self.backbone.save_pretrained(folder, state_dict=state_dict)
        self.tokenizer.save_pretrained(folder)
        s = self.settings
        _write_json(os.path.join(folder, SETTINGS_FILE), dataclasses.asdict(s))
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if s.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
        _write_json(os.path.join(folder, "modules.json"), modules)
        pooling_cfg = {"word_embedding_dimension": self.dim, **{key: name == s.pooling for name, key in _ST_POOLING_KEYS.items()}}
        _write_json(os.path.join(folder, "1_Pooling", "config.json"), pooling_cfg)
        _write_json(os.path.join(folder, "sentence_bert_config.json"), {"max_seq_length": s.passage_max_len, "do_lower_case": False})
        prompts = {**s.task_prompts, "query": s.query_prompt, "document": s.passage_prompt}
        _write_json(os.path.join(folder, "config_sentence_transformers.json"),
                    {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
