"""models/checks.py: incomplete model folders, tokenizers that cannot be the model's, and position limits by family.

Each refusal sits next to the same call on the complete folder / a length at the limit, which works; the position
limits are checked against real forwards of tiny models of each family (the limit encodes, one more token fails).
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoModel

from models.bi_encoder import BiEncoder
from models.checks import MaxLengthError, check_max_lengths, check_model_folder, max_input_length
from models.loading import load_bi_encoder
from tests.helpers import tiny_bi_encoder


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_bi_encoder().save(str(folder))
    return str(folder)


def copy_without(folder: str, target, *names: str) -> str:
    shutil.copytree(folder, target)
    for name in names:
        os.remove(os.path.join(target, name))
    return str(target)


def test_a_model_folder_without_tokenizer_files_is_refused_before_loading(saved_model, tmp_path):
    assert BiEncoder.from_pretrained(saved_model).tokenizer.vocab_size > 30000  # precondition: the full folder loads
    # the folder: config and weights, tokenizer_config.json, but no vocabulary (BiEncoder.save writes it
    # as tokenizer.json)
    no_vocab = copy_without(saved_model, tmp_path / "no-vocab", "tokenizer.json")
    for load in (BiEncoder.from_pretrained, load_bi_encoder):
        with pytest.raises(ValueError, match=r"no-vocab: not a complete model folder: no tokenizer files "
                                             r"\(tokenizer.json, vocab.txt"):
            load(no_vocab)
    no_config = copy_without(saved_model, tmp_path / "no-config", "config.json")
    with pytest.raises(ValueError, match=r"no-config: not a complete model folder: no config.json$"):
        check_model_folder(no_config)
    no_weights = copy_without(saved_model, tmp_path / "no-weights", "model.safetensors")
    with pytest.raises(ValueError, match=r"no weights \(model.safetensors"):
        check_model_folder(no_weights)
    check_model_folder(saved_model)  # and the complete folder passes


def test_a_tokenizer_of_five_tokens_on_a_big_embedding_is_refused_after_loading(saved_model, tmp_path):
    """The issue's 5-token case with a vocabulary file present (so the file check passes): every word is [UNK]."""
    folder = copy_without(saved_model, tmp_path / "five", "tokenizer.json")
    (tmp_path / "five" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"five: its tokenizer has only 5 tokens while the embedding has 30522 rows"):
        BiEncoder.from_pretrained(folder)
    assert len(BiEncoder.from_pretrained(saved_model).tokenizer) == 30522  # precondition: the real vocabulary


def tiny_backbone(model_type: str, **config):
    kwargs = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    if model_type == "gpt2":
        kwargs = dict(n_embd=32, n_layer=1, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
    return AutoModel.from_config(CONFIG_MAPPING[model_type](**kwargs, **config)).eval()


def encodes(model, length: int) -> bool:
    ids = torch.full((1, length), 5)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except (RuntimeError, IndexError):  # the position table indexed past its end
        return False
    return True


@pytest.mark.parametrize("model_type, config, limit", [
    ("bert", dict(max_position_embeddings=64), 64),
    ("electra", dict(max_position_embeddings=64), 64),
    ("xlm-roberta", dict(max_position_embeddings=66), 64),  # positions start at padding_idx + 1 = 2
    ("mpnet", dict(max_position_embeddings=66), 64),
    ("deberta-v2", dict(max_position_embeddings=64, position_biased_input=True), 64),
    ("gpt2", dict(n_positions=64), 64),
])
def test_the_position_limit_is_the_longest_input_a_family_encodes(model_type, config, limit):
    model = tiny_backbone(model_type, **config)
    assert max_input_length(model.config)[0] == limit
    assert encodes(model, limit) and not encodes(model, limit + 1)  # the limit is exact: one more token fails


@pytest.mark.parametrize("model_type, config", [
    ("llama", dict(max_position_embeddings=64)),  # rotary: the table is the trained context, not a hard limit
    ("deberta-v2", dict(max_position_embeddings=64, position_biased_input=False)),  # relative positions only
])
def test_rotary_and_relative_models_have_no_hard_limit(model_type, config):
    model = tiny_backbone(model_type, **config)
    assert max_input_length(model.config)[0] is None
    assert encodes(model, 65)  # beyond max_position_embeddings: it encodes
    notes = check_max_lengths(model.config, passage_max_len=100)  # allowed, with a note on the trained context
    assert len(notes) == 1 and "beyond the 64 positions the model was trained on" in notes[0]


def test_check_max_lengths_names_the_field_the_value_and_the_limit(saved_model):
    assert check_max_lengths(saved_model, query_max_len=512, passage_max_len=512) == []  # at the limit: fine
    with pytest.raises(MaxLengthError, match=r"^passage_max_len 1000: more than the 512 tokens the model can "
                                             r"encode \(bert has max_position_embeddings 512\)") as e:
        check_max_lengths(saved_model, query_max_len=64, passage_max_len=1000)
    assert (e.value.field, e.value.value, e.value.limit) == ("passage_max_len", 1000, 512)
    xlmr = CONFIG_MAPPING["xlm-roberta"](max_position_embeddings=514, pad_token_id=1)  # XLM-R / bge-m3's layout
    with pytest.raises(MaxLengthError, match=r"^query_max_len 513: more than the 512 tokens"):
        check_max_lengths(xlmr, query_max_len=513)
