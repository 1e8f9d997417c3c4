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

from models.checks import check_model_folder, check_tokenizer_folder, check_vocabulary
from models.pooling import POOLING_MODES, pool

SETTINGS_FILE = "embedding_config.json"
# Our pooling names <-> the sentence-transformers Pooling config keys (legacy keys: every ST version reads them).
_ST_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}
PRECISIONS = ("auto", "fp32", "bf16")


def encode_precision(precision: str, device: torch.device | str) -> str:
    """What `encode` runs in: "auto" is bf16 autocast on a CUDA device that supports it, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    cuda = torch.device(device).type == "cuda"
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"


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
        if getattr(backbone, "pooler", None) is not None:  # BERT's pooler never reaches an embedding: frozen, so DDP
            backbone.pooler.requires_grad_(False)          # does not wait for its gradients (and it is saved as is)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, name_or_path: str, attn_implementation: str | None = None, **overrides) -> "BiEncoder":
        """A local folder or Hub id. `overrides` are EncoderSettings fields; None means "keep the saved value".
        ValueError for a folder without config, weights or tokenizer files, or a tokenizer that cannot be the model's
        (models/checks.py)."""
        name_or_path = str(name_or_path)
        check_model_folder(name_or_path)
        settings = read_settings(name_or_path) if os.path.isdir(name_or_path) else EncoderSettings()
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        backbone = AutoModel.from_pretrained(name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        check_vocabulary(tokenizer, backbone, name_or_path)
        return cls(backbone, tokenizer, settings)

    @classmethod
    def from_config(cls, config: str | PretrainedConfig, tokenizer: str, attn_implementation: str | None = None,
                    **overrides) -> "BiEncoder":
        """Random weights from a config (path, Hub id or object): for pretraining from scratch."""
        if not isinstance(config, PretrainedConfig):
            config = AutoConfig.from_pretrained(str(config))
        check_tokenizer_folder(str(tokenizer))
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        backbone = AutoModel.from_config(config, **kwargs)
        settings = EncoderSettings(**{k: v for k, v in overrides.items() if v is not None})
        tokenizer_obj = AutoTokenizer.from_pretrained(str(tokenizer))
        check_vocabulary(tokenizer_obj, backbone, str(tokenizer))
        return cls(backbone, tokenizer_obj, settings)

    # ---------------------------------------------------------------- encoding
    @property
    def dim(self) -> int:
        return self.backbone.config.hidden_size

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
               show_progress: bool = False, chunk_size: int = 4096, precision: str = "auto",
               batch_tokens: int | None = None, truncate_dim: int | None = None) -> torch.Tensor:
        """Embed texts for evaluation -> [N, H] fp32 on CPU, in input order ([N, truncate_dim] when given: see
        `truncate_embeddings`).

        Texts go longest-first by characters, then in chunks of `chunk_size`; each chunk is tokenised once and its
        batches hold texts of similar *token* length (exact within the chunk, unlike sorting by characters), padded
        only to the batch's longest — to a multiple of 8 on CUDA for tensor cores, not at all beyond it on CPU,
        where every pad token costs full compute. A batch holds `batch_size` texts, or more when they are short: as
        many as fit in `batch_tokens` padded positions (default on CUDA: batch_size × max_length, i.e. the activation
        and attention memory of `batch_size` full-length texts). Short texts then go hundreds at a time, which keeps
        a GPU busy where 32-text batches of 15-token sentences leave it waiting on kernel launches. Default on CPU,
        and `batch_tokens=0`: exactly `batch_size` texts per batch (big batches ran slower on CPU: 414 vs 517
        STS-B sentences/s, benchmarks/README.md). Memory stays flat on large corpora. On CUDA the next chunk is
        tokenised in a thread while the GPU works, and results come back once per chunk rather than once per batch
        (each copy to the host waits for the GPU). `precision`: see `encode_precision` (bf16 = autocast: weights
        stay fp32, matrix products run in bf16).
        """
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        max_length = max_length or self.settings.passage_max_len
        check_truncate_dim(truncate_dim, self.dim)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        on_cuda = device.type == "cuda"
        by_chars = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunks = [by_chars[s:s + chunk_size] for s in range(0, len(texts), chunk_size)]

        def tokenize(chunk: list[int]) -> list[list[int]]:
            return self.tokenizer([prompt + texts[i] for i in chunk], truncation=True, max_length=max_length,
                                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]

        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        use_bf16 = encode_precision(precision, device) == "bf16"
        pad_id = self.tokenizer.pad_token_id or 0
        multiple = 8 if on_cuda else 1
        if batch_tokens is None:
            batch_tokens = batch_size * max_length if on_cuda else 0  # padded positions per batch
        progress = tqdm(total=len(texts), desc="encode", disable=not show_progress, leave=False)
        # Tokenising in a second thread only pays when the model runs elsewhere; on CPU it would take cores from it.
        prefetch = ThreadPoolExecutor(max_workers=1) if on_cuda else None
        pending = prefetch.submit(tokenize, chunks[0]) if prefetch and chunks else None
        # One autocast context around all batches, so the weights are cast to bf16 once, not once per batch.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for c, chunk in enumerate(chunks):
                ids = pending.result() if prefetch else tokenize(chunk)
                if prefetch and c + 1 < len(chunks):
                    pending = prefetch.submit(tokenize, chunks[c + 1])
                by_tokens = sorted(range(len(chunk)), key=lambda j: -len(ids[j]))  # stable: ties keep char order
                embeddings = []
                s = 0
                while s < len(chunk):
                    width = _round_up(len(ids[by_tokens[s]]), multiple)  # the batch's longest: sorted longest first
                    count = max(batch_size, batch_tokens // width)
                    rows = [ids[j] for j in by_tokens[s:s + count]]
                    s += len(rows)
                    input_ids, attention_mask = _pad(rows, pad_id, multiple, pin=on_cuda)
                    embeddings.append(self.embed(input_ids.to(device, non_blocking=True),
                                                 attention_mask.to(device, non_blocking=True)))
                    progress.update(len(rows))
                out[[chunk[j] for j in by_tokens]] = torch.cat(embeddings).float().cpu()  # [len(chunk), H]
        progress.close()
        if prefetch:
            prefetch.shutdown()
        self.train(was_training)
        return truncate_embeddings(out, truncate_dim, self.settings.normalize)

    def gradient_checkpointing_enable(self):
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---------------------------------------------------------------- saving
    def save(self, folder: str, state_dict: dict | None = None) -> None:
        """Weights (safetensors), tokenizer, our settings, and the sentence-transformers files.

        `state_dict` lets a caller pass full weights gathered elsewhere (e.g. DeepSpeed ZeRO-3). Weights keep the
        module's own names: transformers' default `save_original_format=True` renames LayerNorm weight/bias back to
        BERT's legacy gamma/beta when the model was built under DeepSpeed ZeRO-3's init, and only then.
        """
        os.makedirs(folder, exist_ok=True)
        # save_pretrained empties a state_dict it is given, so its dtypes are read first
        dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()} if state_dict is not None else set()
        self.backbone.save_pretrained(folder, state_dict=state_dict, save_original_format=False)
        if len(dtypes) == 1:
            _set_config_dtype(folder, dtypes.pop())
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


def check_truncate_dim(truncate_dim: int | None, dim: int) -> None:
    """ValueError naming `truncate_dim` unless it is None or 1 … dim."""
    if truncate_dim is not None and not 1 <= truncate_dim <= dim:
        raise ValueError(f"truncate_dim {truncate_dim}: must be from 1 to the model's dimension {dim}")


def truncate_embeddings(embeddings: torch.Tensor, truncate_dim: int | None, normalize: bool) -> torch.Tensor:
    """[N, H] -> [N, truncate_dim]: the first coordinates (Matryoshka, arXiv 2205.13147), re-normalised to unit length
    when the model normalises. sentence-transformers' `truncate_dim` cuts after its Normalize module and leaves the
    cut vectors shorter than 1; cosine does not care, but dot products and int8 ranges do. None: unchanged."""
    if truncate_dim is None or truncate_dim == embeddings.shape[-1]:
        return embeddings
    cut = embeddings[..., :truncate_dim]
    return nn.functional.normalize(cut, dim=-1) if normalize else cut.clone()


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


def _set_config_dtype(folder: str, dtype: torch.dtype) -> None:
    """config.json's dtype is the module's (save_pretrained reads it from the parameters); make it the dtype of the
    weights actually written, e.g. fp32 master weights saved from a DeepSpeed bf16 module, or `dtype="auto"`
    loading would round them to bf16."""
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    name = str(dtype).removeprefix("torch.")
    config.update({key: name for key in ("dtype", "torch_dtype") if key in config})
    _write_json(path, config)


def _pad(rows: list[list[int]], pad_id: int, multiple: int, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (input_ids [B, L], attention_mask [B, L]), right-padded to the longest rounded up to
    `multiple`. By hand because the ids are already tokenised lists; `tokenizer.pad` would want one dict per row."""
    lengths = torch.tensor([len(r) for r in rows])  # [B]
    width = _round_up(int(lengths.max()), multiple)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, L]
    for r, row in enumerate(rows):
        input_ids[r, :len(row)] = torch.tensor(row)
    attention_mask = (torch.arange(width) < lengths[:, None]).long()  # [B, L]
    if pin:
        input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
    return input_ids, attention_mask


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
