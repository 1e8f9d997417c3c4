"""A model folder in sentence-transformers format: its encoder settings read, and a BiEncoder saved as one.

A saved folder is a plain Hugging Face model plus the sentence-transformers files, so `SentenceTransformer(folder)`
loads it, and an `embedding_config.json` that carries what sentence-transformers has no field for (separate
query/passage lengths, our pooling name, the instruction format). A LoRA model is saved as peft's adapter folder
(adapter_config.json naming the base model, adapter_model.safetensors; sentence-transformers loads the base and
applies it), or with merge=True as a plain folder of merged weights. The tokenizer saved appends EOS when the model
does (checked by loading it back: sentence-transformers never appends EOS itself). An instruction format is saved
as sentence-transformers prompts when it is a prefix of the text ('Instruct: {}\nQuery: {}' with the default
instruction gives the "query" prompt 'Instruct: ...\nQuery: ').
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch

from models.family import appends_eos
from models.pooling import POOLING_MODES
from models.settings import EncoderSettings
from models.text_format import prefix_of

SETTINGS_FILE = "embedding_config.json"
# Our pooling names <-> the sentence-transformers Pooling config keys (legacy keys: every ST version reads them).
_ST_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                    "last": "pooling_mode_lasttoken"}


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


def save_folder(model, folder: str, state_dict: dict | None = None, merge: bool = False) -> None:
    """A BiEncoder's weights (safetensors; a LoRA model's adapter, or with merge its merged weights), tokenizer, our
    settings, and the sentence-transformers files.

    `state_dict` lets a caller pass full weights gathered elsewhere (e.g. DeepSpeed ZeRO-3: the adapter is taken from
    it, never from the partitioned module, whose tensors there are empty). Weights keep the module's own names:
    transformers' default `save_original_format=True` renames LayerNorm weight/bias back to BERT's legacy gamma/beta
    when the model was built under DeepSpeed ZeRO-3's init, and only then.
    """
    from models.lora import is_lora, merged_state_dict

    os.makedirs(folder, exist_ok=True)
    backbone = model.backbone
    if is_lora(backbone) and not merge:
        backbone.save_pretrained(folder, state_dict=state_dict, save_embedding_layers=False)
    else:
        if is_lora(backbone):
            state_dict, backbone = merged_state_dict(backbone, state_dict), backbone.get_base_model()
        # save_pretrained empties a state_dict it is given, so its dtypes are read first
        dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()} if state_dict is not None else set()
        backbone.save_pretrained(folder, state_dict=state_dict, save_original_format=False)
        if len(dtypes) == 1:
            _set_config_dtype(folder, dtypes.pop())
    model.tokenizer.save_pretrained(folder)
    s = model.settings
    if s.append_eos:
        from transformers import AutoTokenizer

        if not appends_eos(AutoTokenizer.from_pretrained(folder)):
            raise RuntimeError(f"{folder}: the tokenizer saved there does not append EOS when loaded back, though the "
                               "model was trained with it; its embeddings would differ")
    _write_json(os.path.join(folder, SETTINGS_FILE), dataclasses.asdict(s))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if s.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    _write_json(os.path.join(folder, "modules.json"), modules)
    pooling_cfg = {"word_embedding_dimension": model.dim,
                   **{key: name == s.pooling for name, key in _ST_POOLING_KEYS.items()}}
    _write_json(os.path.join(folder, "1_Pooling", "config.json"), pooling_cfg)
    _write_json(os.path.join(folder, "sentence_bert_config.json"),
                {"max_seq_length": s.passage_max_len, "do_lower_case": False})
    _write_json(os.path.join(folder, "config_sentence_transformers.json"),
                {"prompts": st_prompts(s), "default_prompt_name": None, "similarity_fn_name": "cosine"})


def st_prompts(s: EncoderSettings) -> dict[str, str]:
    """sentence-transformers prompts (prefixes) for the settings: the prompts, or the instruction format filled with
    each instruction where that is a prefix of the text (those that are not are left out)."""
    if not s.query_instruction_format:
        return {**s.task_prompts, "query": s.query_prompt, "document": s.passage_prompt}
    prompts = {key: prefix_of(s.query_instruction_format, instruction) for key, instruction in s.task_prompts.items()}
    prompts["query"] = prefix_of(s.query_instruction_format, s.query_instruction)
    return {**{k: v for k, v in prompts.items() if v is not None}, "document": s.passage_prompt}


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
