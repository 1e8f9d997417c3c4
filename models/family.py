"""What a backbone family changes: decoder-only LLMs (Llama, Mistral, Qwen2, Gemma2, ...) against BERT-like encoders.

    is_decoder_only(config)        a causal LM without a bidirectional (masked-LM) form
    attention_for(config, asked)   SDPA asked of a family that cannot run it (Gemma2: logit soft-capping) -> flash
                                   attention 2 where installed and on CUDA, else eager; with the note to log
    set_up_tokenizer(tok, ...)     decoders: a missing pad token becomes unk, else eos; padding on the left. With
                                   append_eos: EOS ends every text (`add_eos`)
    default_lora_targets(config)   the seven projections of decoders, query/key/value/dense of BERT-likes

EOS is appended by the fast tokenizer's post-processor (the template that already adds BOS), not by our code: every
caller of the tokenizer then gets it — the collator, the length planner, a prepared corpus, `encode` and
sentence-transformers loading the saved folder (which never appends EOS itself) — and truncation reserves its slot,
so a text cut at max_len keeps max_len − 1 tokens and the EOS.
"""
from __future__ import annotations

import json

class TokenizerSetupError(ValueError):
    """A tokenizer that cannot be set up for its family; `field`: the EncoderSettings field it is about (append_eos),
    or None (nothing to pad with)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


DECODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ENCODER_LORA_TARGETS = ["query", "key", "value", "dense"]


def is_decoder_only(config) -> bool:
    """transformers has a causal-LM head for this model type and no masked-LM one (Llama, Mistral, Qwen2, Gemma2,
    GPT-2, ...), or the checkpoint names a *ForCausalLM architecture; BERT-likes have a masked-LM form."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if getattr(config, "is_encoder_decoder", False):
        return False
    kind = getattr(config, "model_type", "")
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return True
    return any(a.endswith("ForCausalLM") for a in getattr(config, "architectures", None) or [])


def default_lora_targets(config) -> list[str]:
    return list(DECODER_LORA_TARGETS if is_decoder_only(config) else ENCODER_LORA_TARGETS)


def attention_for(config, asked: str | None) -> tuple[str | None, str | None]:
    """(the attention implementation to load with, a note for the log or None). Only SDPA (train.py's default) is
    replaced, and only for a model class that declares it cannot run SDPA."""
    if asked != "sdpa":
        return asked, None
    from transformers import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError:
        return asked, None
    if getattr(cls, "_supports_sdpa", True):
        return asked, None
    choice = "eager"
    if getattr(cls, "_supports_flash_attn", False):
        import torch
        from transformers.utils import is_flash_attn_2_available

        if torch.cuda.is_available() and is_flash_attn_2_available():
            choice = "flash_attention_2"
    return choice, f"{cls.__name__} cannot run SDPA attention; using {choice} attention"


def set_up_tokenizer(tokenizer, decoder: bool, append_eos: bool) -> None:
    """Decoders: pad token (unk, else eos) and left padding; EOS appended when asked. TokenizerSetupError naming
    what is missing."""
    if decoder:
        if tokenizer.pad_token is None:
            fallback = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
            if fallback is None:
                raise TokenizerSetupError("the tokenizer has no pad, unk or eos token to pad with")
            tokenizer.pad_token = fallback
        tokenizer.padding_side = "left"
    if append_eos:
        add_eos(tokenizer)


def appends_eos(tokenizer) -> bool:
    """Whether the tokenizer ends every text with EOS, also when it truncates."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return False
    word = _a_word(tokenizer)
    short = tokenizer(word)["input_ids"]
    cut = tokenizer(" ".join([word] * 64), truncation=True, max_length=4)["input_ids"]
    return short[-1] == eos and cut[-1] == eos and len(cut) == 4


def _a_word(tokenizer) -> str:
    """The text of some ordinary token of the vocabulary (a tokenizer without unk cannot encode just any word)."""
    special = set(tokenizer.all_special_ids)
    for i in range(min(len(tokenizer), 2000)):
        text = tokenizer.decode([i]) if i not in special else ""
        if text.strip() and tokenizer(text, add_special_tokens=False)["input_ids"] == [i]:
            return text.strip()
    return "a"


def add_eos(tokenizer) -> None:
    """Make the fast tokenizer's post-processor end every text with EOS (nothing to do when it already does).
    TokenizerSetupError when the tokenizer has no EOS token or its post-processor cannot be extended."""
    from tokenizers import Tokenizer

    if tokenizer.eos_token is None:
        raise TokenizerSetupError("the tokenizer has no EOS token to append", "append_eos")
    if appends_eos(tokenizer):
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerSetupError(f"{type(tokenizer).__name__} is not a fast tokenizer, so EOS cannot be appended by "
                                  "its post-processor", "append_eos")
    spec = json.loads(backend.to_str())
    spec["post_processor"] = _with_eos(spec.get("post_processor"), tokenizer.eos_token, tokenizer.eos_token_id)
    backend.post_processor = Tokenizer.from_str(json.dumps(spec)).post_processor
    if not appends_eos(tokenizer):
        kind = (spec["post_processor"] or {}).get("type")
        raise TokenizerSetupError(f"the tokenizer's post-processor ({kind}) does not end texts with EOS after "
                                  "appending it", "append_eos")


def _with_eos(post: dict | None, eos: str, eos_id: int) -> dict:
    """A post-processor (JSON) that is `post` followed by EOS: added to its template, or a template after it."""
    special = {"id": eos, "ids": [eos_id], "tokens": [eos]}
    if post is None:
        post = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {}}
    if post["type"] == "TemplateProcessing":
        single = [*post["single"], {"SpecialToken": {"id": eos, "type_id": 0}}]
        pair = [*post["pair"], {"SpecialToken": {"id": eos, "type_id": 1}}]
        return {**post, "single": single, "pair": pair, "special_tokens": {**post["special_tokens"], eos: special}}
    if post["type"] == "Sequence":  # a template inside takes the EOS (two templates in a row split the text)
        processors = post["processors"]
        at = [i for i, p in enumerate(processors) if p["type"] == "TemplateProcessing"]
        if at:
            processors = [*processors[:at[-1]], _with_eos(processors[at[-1]], eos, eos_id), *processors[at[-1] + 1:]]
        else:
            processors = [*processors, _with_eos(None, eos, eos_id)]
        return {**post, "processors": processors}
    return {"type": "Sequence", "processors": [post, _with_eos(None, eos, eos_id)]}  # ByteLevel (Qwen2) and others
