"""Checks on a model before it is loaded or used: what would otherwise fail late, or worse, silently.

    check_model_folder(path)               a local model folder has config.json, weights and tokenizer files
                                           (without them transformers builds a 5-token tokenizer that maps every word
                                           to [UNK], and the model trains and scores on nothing, exit 0); an adapter
                                           folder (LoRA) has its adapter and tokenizer files, and its base model can
                                           be found (a local folder, or a Hub id that is cached or can be downloaded)
    adapter_base(path)                     the base model an adapter folder names, or None for any other folder
    check_tokenizer_folder(path)           the tokenizer files alone (a --from-config run takes only those)
    check_vocabulary(tokenizer, backbone)  after loading: a tokenizer of < 100 tokens on a big embedding is refused
    max_input_length(config)               the longest input, in tokens (special tokens included), the backbone can
                                           take, or None when it has no hard limit
    check_max_lengths(config_or_folder, query_max_len=..., passage_max_len=...)
                                           MaxLengthError naming the field when a length exceeds that limit (before
                                           any weights are read), else the notes on soft limits exceeded
    embedding_width(config_or_folder)      the width of its embeddings (hidden size, from config.json)
    find_model(name_or_path)               a local folder for a folder or Hub id, or ValueError in one line

Position limits by family: learned absolute positions (BERT, DistilBERT, ELECTRA, ALBERT, DeBERTa with
position_biased_input, GPT-2's n_positions) take max_position_embeddings tokens; RoBERTa-likes (XLM-R, CamemBERT,
MPNet, Longformer, ...) number positions from padding_idx + 1, so they take max_position_embeddings − pad_token_id − 1
(514 − 2 = 512). Rotary / ALiBi / relative models (Llama, Qwen2, Mistral, Gemma, ModernBERT, T5, DeBERTa-v3) have
no table to index past: max_position_embeddings is only the trained context, so a longer length is not refused —
check_max_lengths returns a note instead.
"""
from __future__ import annotations

import json
import os

CONFIG_FILE = "config.json"
ADAPTER_CONFIG = "adapter_config.json"  # peft's adapter folder: adapter_model.* instead of the weights, no config.json
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# the vocabulary files of transformers' tokenizers (each class's vocab_files_names): any one of them, or a
# sentencepiece / tiktoken model
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "bpe.codes", "dict.txt", "prophetnet.tokenizer")
TOKENIZER_SUFFIXES = (".model", ".spm", ".tiktoken")
BYTE_TOKENIZERS = ("ByT5Tokenizer", "CanineTokenizer", "PerceiverTokenizer")  # no vocabulary file at all
TINY_VOCABULARY = 100
# RoBERTa-style position ids start at padding_idx + 1 (create_position_ids_from_input_ids)
PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet",
                        "data2vec-text", "ibert", "markuplm", "roberta-prelayernorm", "xmod", "luke", "lilt",
                        "layoutlmv3")
RELATIVE_TYPES = ("t5", "mt5", "umt5", "longt5", "bloom", "mpt", "jina_bert")  # no position table at all
ROTARY_KEYS = ("rope_parameters", "rope_theta", "rope_scaling", "rotary_dim", "rotary_pct", "rotary_emb_base")


class MaxLengthError(ValueError):
    """A max length beyond what the backbone can encode; `field`, `value`, `limit` and `reason` for a CLI's message
    (which names its flag instead of the field)."""

    def __init__(self, field: str, value: int, limit: int, reason: str):
        self.field, self.value, self.limit, self.reason = field, value, limit, reason
        super().__init__(f"{field} {value}: {reason}")


def _tokenizer_problem(path: str) -> str | None:
    names = os.listdir(path)
    if any(n in TOKENIZER_FILES or n.endswith(TOKENIZER_SUFFIXES) for n in names):
        return None
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            if json.load(f).get("tokenizer_class") in BYTE_TOKENIZERS:
                return None
    except (OSError, ValueError, AttributeError):
        pass
    return ("no tokenizer files (tokenizer.json, vocab.txt, vocab.json, *.model, ...); without them transformers "
            "builds a tokenizer of a few special tokens that turns every word into [UNK]")


def check_tokenizer_folder(path: str) -> None:
    """ValueError naming the folder unless it holds a tokenizer's vocabulary files (a Hub id is not checked here)."""
    if not os.path.isdir(path):
        return
    problem = _tokenizer_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}; copy the tokenizer files into the folder")


def check_model_folder(path: str) -> None:
    """ValueError naming the folder and what it lacks (config.json, weights, tokenizer files) unless it is a loadable
    model folder; a path that is not a local folder (a Hub id) is left to the download."""
    if not os.path.isdir(path):
        return
    if adapter_base(path) is not None:
        return _check_adapter_folder(path)
    missing = []
    config = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config):
        missing.append(f"no {CONFIG_FILE}")
    else:
        try:
            with open(config, encoding="utf-8") as f:
                if not isinstance(json.load(f), dict):
                    raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            missing.append(f"{CONFIG_FILE} is not readable JSON ({e})")
    if not any(os.path.isfile(os.path.join(path, n)) for n in WEIGHT_FILES):
        missing.append(f"no weights ({', '.join(WEIGHT_FILES)})")
    problem = _tokenizer_problem(path)
    if problem:
        missing.append(problem)
    if missing:
        raise ValueError(f"{path}: not a complete model folder: {'; '.join(missing)}")


def adapter_base(path: str) -> str | None:
    """The base model (folder or Hub id) an adapter folder's adapter_config.json names; "" when it names none;
    None for a folder that is not an adapter folder (it has a config.json of its own, or no adapter_config.json)."""
    file = os.path.join(path, ADAPTER_CONFIG)
    if not os.path.isfile(file) or os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return None
    try:
        with open(file, encoding="utf-8") as f:
            return str(json.load(f).get("base_model_name_or_path") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _check_adapter_folder(path: str) -> None:
    """ValueError naming the folder and what it lacks, or naming the base model when it cannot be found."""
    base = adapter_base(path)
    missing = [] if base else [f"{ADAPTER_CONFIG} is not readable JSON naming base_model_name_or_path"]
    if not any(os.path.isfile(os.path.join(path, n)) for n in ADAPTER_WEIGHTS):
        missing.append(f"no adapter weights ({', '.join(ADAPTER_WEIGHTS)})")
    problem = _tokenizer_problem(path)
    if problem:
        missing.append(problem)
    if missing:
        raise ValueError(f"{path}: not a complete adapter folder: {'; '.join(missing)}")
    try:
        found = find_model(base, download=False)  # None: a Hub id, not cached, and the Hub can be reached
        if found is not None:
            check_model_folder(found)
    except ValueError as e:
        raise ValueError(f"{path}: a LoRA adapter whose base model {base} cannot be found: {e}") from None


def config_source(path: str) -> str:
    """Where a model's config.json is: the folder itself, or an adapter folder's base model."""
    base = adapter_base(path) if os.path.isdir(path) else None
    return path if base is None else (find_model(base, download=False) or base)


def check_vocabulary(tokenizer, backbone, where: str = "the model") -> None:
    """After loading: refuse a tokenizer of fewer than 100 tokens on an embedding with many more rows (the
    tokenizer files were missing and transformers built one from the special tokens alone)."""
    embeddings = backbone.get_input_embeddings()
    rows = embeddings.weight.shape[0] if embeddings is not None else None
    if rows is not None and len(tokenizer) < TINY_VOCABULARY and rows >= 10 * len(tokenizer):
        raise ValueError(f"{where}: its tokenizer has only {len(tokenizer)} tokens while the embedding has {rows} "
                         "rows; the tokenizer's vocabulary files are missing or wrong, so every word would become "
                         "[UNK]")


def _config(config_or_folder):
    if isinstance(config_or_folder, (str, os.PathLike)):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(config_source(str(config_or_folder)))  # reads config.json only
    return config_or_folder


def _is_rotary(config) -> bool:
    return any(getattr(config, key, None) is not None for key in ROTARY_KEYS) or \
        getattr(config, "position_embedding_type", None) in ("rotary", "alibi")


def max_input_length(config_or_folder) -> tuple[int | None, str]:
    """(the longest input in tokens the backbone can take, None when there is no hard limit; why, for messages)."""
    config = _config(config_or_folder)
    kind = getattr(config, "model_type", "") or type(config).__name__
    mpe = getattr(config, "max_position_embeddings", None)
    if kind in RELATIVE_TYPES or _is_rotary(config):
        return None, f"{kind} has no position table (max_position_embeddings {mpe} is its trained context)"
    if kind.startswith("deberta") and not getattr(config, "position_biased_input", True):
        return None, f"{kind} uses relative positions only"
    if mpe is None:
        n = getattr(config, "n_positions", None)
        return (n, f"{kind} has n_positions {n}") if n else (None, f"{kind} sets no position limit")
    if kind in PADDING_OFFSET_TYPES:
        pad = getattr(config, "pad_token_id", None) or 0
        return mpe - pad - 1, f"{kind} has max_position_embeddings {mpe}, of which {pad + 1} precede the first token"
    return mpe, f"{kind} has max_position_embeddings {mpe}"


def embedding_width(config_or_folder) -> int:
    """The width of the embeddings a BiEncoder on this backbone makes (its hidden size; config.json only)."""
    return _config(config_or_folder).hidden_size


def check_max_lengths(config_or_folder, *, query_max_len: int | None = None,
                      passage_max_len: int | None = None) -> list[str]:
    """MaxLengthError (a ValueError naming the field, value and limit) for a length the backbone cannot encode;
    -> notes for lengths beyond a rotary model's trained context (allowed). None = not checked. Reads config.json
    only when given a folder."""
    limit, why = max_input_length(config_or_folder)
    lengths = {"query_max_len": query_max_len, "passage_max_len": passage_max_len}
    notes = []
    for field, value in lengths.items():
        if value is None:
            continue
        if limit is not None and value > limit:
            raise MaxLengthError(field, value, limit, f"more than the {limit} tokens the model can encode ({why}); "
                                                      f"use at most {limit}")
        trained = getattr(_config(config_or_folder), "max_position_embeddings", None)
        if limit is None and trained and value > trained:
            notes.append(f"{field} {value} is beyond the {trained} positions the model was trained on ({why}); "
                         "it encodes, but quality past them is untested")
    return notes


def find_model(name_or_path: str, *, download: bool = True) -> str | None:
    """A local folder for `name_or_path`: the folder itself, or the Hub snapshot (downloaded when `download`, else
    only looked up in the local cache: None when it is not there yet and the Hub is reachable).
    ValueError in one line for a missing path, an invalid Hub id, or a Hub id that is offline and not cached or
    does not exist."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    path = str(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{path}: is a file, not a model folder")
    offline = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        return snapshot_download(path, local_files_only=offline or not download)
    except HFValidationError:
        raise ValueError(f"{path}: no such folder") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{path}: no such folder, and no such model on the Hub (or it is private)") from None
    except LocalEntryNotFoundError:
        if offline:
            raise ValueError(f"{path}: no such local folder; the Hub is offline (HF_HUB_OFFLINE is set) and the local "
                             "Hub cache has no copy of it; pass a local folder") from None
        if not download:
            return None
        raise ValueError(f"{path}: no such folder, and it could not be downloaded from the Hub") from None
    except OSError as e:  # connection errors, disk errors
        raise ValueError(f"{path}: could not be downloaded from the Hub ({type(e).__name__}: {e})") from None


def check_model_sources(backbone: str, from_config: str | None) -> None:
    """SystemExit naming the flag when --model / --from-config is neither a local folder nor a Hub id that can be
    downloaded (train.py and pretrain.py, before anything loads)."""
    from data.examples import hub_offline, looks_like_hub_id

    for flag, path in (("--model", backbone), ("--from-config", from_config)):
        if path and not os.path.exists(path):
            if not looks_like_hub_id(path):
                raise SystemExit(f"{flag} {path}: no such folder")
            if hub_offline():
                raise SystemExit(f"{flag} {path}: no such local folder, and the Hub is offline (HF_HUB_OFFLINE is "
                                 f"set), so it cannot be downloaded; pass a local folder")
