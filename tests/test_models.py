"""models/config.py: ModelConfig keeps train.py's model options (names, defaults, help), checks its own values naming
the field, and build_model builds what train.py's load_model built; the dtype it loads in."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from cli_config import ConfigError
from models.bi_encoder import BiEncoder
from models.config import ModelConfig, build_model
from models.encode import encode
from tests.helpers import tiny_bi_encoder

# train.py's TrainConfig "# model" options before ModelConfig (commit 445cf8b): (flag / YAML key, default, help)
TRAIN_CONFIG_MODEL_OPTIONS = [
    ("model", "", "backbone: local folder or Hub id (weights, or tokenizer only with --from-config)"),
    ("from_config", None, "build the backbone with random weights from this config (path or Hub id)"),
    ("pooling", None, "mean | cls | last (default: the model's saved pooling, else mean)"),
    ("normalize", None, "L2-normalise embeddings (default: the model's saved setting, else on)"),
    ("query_prompt", None, "prefix for queries, e.g. 'query: ' (E5); a row's own `prompt` wins"),
    ("passage_prompt", None, "prefix for passages, e.g. 'passage: ' (E5)"),
    ("query_max_len", 64, "max tokens per query"),
    ("passage_max_len", 256, "max tokens per passage"),
    ("gradient_checkpointing", False, "recompute activations in backward to save memory"),
    ("attn_implementation", "sdpa", "sdpa | eager | flash_attention_2"),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("tiny-model"))
    tiny_bi_encoder(query_max_len=16, passage_max_len=32).save(folder)
    return folder


# options added after dtype (issue 27: decoder embedders, LoRA), with defaults that change nothing for earlier runs
ADDED_AFTER_DTYPE = [("append_eos", None), ("query_instruction_format", None), ("query_instruction", None),
                     ("format_passages", None), ("lora_rank", 0), ("lora_alpha", None), ("lora_dropout", 0.1),
                     ("lora_target_modules", dataclasses.MISSING), ("lora_modules_to_save", dataclasses.MISSING),
                     ("merge_lora", False)]


def test_model_config_has_train_configs_model_options_in_order_and_one_new_dtype():
    fields = dataclasses.fields(ModelConfig)
    got = [(f.metadata.get("key", f.name), f.default, f.metadata["help"]) for f in fields]
    n = len(TRAIN_CONFIG_MODEL_OPTIONS)
    assert got[:n] == TRAIN_CONFIG_MODEL_OPTIONS
    assert fields[0].name == "backbone"  # read from the key `model`
    assert got[n][:2] == ("dtype", "auto")  # the new option; auto = what loading did before it existed
    assert [g[:2] for g in got[n + 1:]] == ADDED_AFTER_DTYPE


def test_check_names_the_field_never_a_flag(saved):
    ModelConfig(backbone=saved).check()  # precondition: the defaults pass
    ModelConfig(backbone=saved, pooling="cls", attn_implementation="eager", dtype="bfloat16", query_max_len=1).check()
    for change, key, message in [
        ({"backbone": ""}, "model", "is required (a local folder or Hub id)"),
        ({"pooling": "max"}, "pooling", "max: must be one of mean, cls, last"),
        ({"attn_implementation": "flash"}, "attn_implementation",
         "flash: must be one of sdpa, eager, flash_attention_2"),
        ({"dtype": "fp32"}, "dtype", "fp32: must be one of auto, float32, bfloat16, float16"),
        ({"query_max_len": 0}, "query_max_len", "0: must be ≥ 1"),
        ({"passage_max_len": True}, "passage_max_len", "True: must be ≥ 1"),
    ]:
        with pytest.raises(ConfigError) as e:
            dataclasses.replace(ModelConfig(backbone=saved), **change).check()
        assert (e.value.key, e.value.message) == (key, message)  # the option's key, never a flag
        assert "--" not in str(e.value)


def same_module(a: BiEncoder, b: BiEncoder) -> None:
    assert a.settings == b.settings
    assert repr(a) == repr(b)
    assert a.backbone.config.to_dict() == b.backbone.config.to_dict()  # attention implementation included
    assert a.backbone.is_gradient_checkpointing == b.backbone.is_gradient_checkpointing
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)
    assert ([n for n, p in a.named_parameters() if p.requires_grad]
            == [n for n, p in b.named_parameters() if p.requires_grad])


def test_build_model_builds_what_train_py_built(saved):
    """The reference is load_model's body before it moved to models/config.py, written out."""
    options = dict(pooling="cls", normalize=False, query_prompt="q: ", passage_prompt="p: ", query_max_len=8,
                   passage_max_len=24)
    ours = build_model(ModelConfig(backbone=saved, attn_implementation="eager", gradient_checkpointing=True, **options))
    before = BiEncoder.from_pretrained(saved, "eager", **options)
    before.gradient_checkpointing_enable()
    same_module(ours, before)
    assert ours.backbone.config._attn_implementation == "eager" and ours.backbone.is_gradient_checkpointing
    # defaults: the saved settings with train.py's max lengths (64 / 256 override the saved 16 / 32)
    same_module(build_model(ModelConfig(backbone=saved)),
                BiEncoder.from_pretrained(saved, "sdpa", query_max_len=64, passage_max_len=256))
    with pytest.raises(AssertionError):  # the comparison sees a difference in settings
        same_module(build_model(ModelConfig(backbone=saved)), BiEncoder.from_pretrained(saved, "sdpa"))

    torch.manual_seed(1)  # (the saved model's weights are seed 0's)
    scratch = build_model(ModelConfig(backbone=saved, from_config=saved, pooling="last"))
    torch.manual_seed(1)
    same_module(scratch, BiEncoder.from_config(saved, saved, "sdpa", pooling="last", query_max_len=64,
                                               passage_max_len=256))
    assert not torch.equal(scratch.state_dict()["backbone.embeddings.word_embeddings.weight"],
                           ours.state_dict()["backbone.embeddings.word_embeddings.weight"])  # random, not loaded


def test_dtype_auto_keeps_the_checkpoints_dtype_and_the_others_set_it(saved, tmp_path):
    bf16 = str(tmp_path / "bf16")
    model = BiEncoder.from_pretrained(saved)
    model.save(bf16, state_dict={k: v.to(torch.bfloat16) for k, v in model.backbone.state_dict().items()})

    def dtypes(**options):
        return {p.dtype for p in build_model(ModelConfig(**options)).parameters()}

    assert dtypes(backbone=saved) == {torch.float32}
    assert dtypes(backbone=bf16) == {torch.bfloat16}  # auto: config.json's dtype, as transformers loads by default
    assert dtypes(backbone=bf16, dtype="float32") == {torch.float32}
    assert dtypes(backbone=saved, dtype="bfloat16") == {torch.bfloat16}
    assert dtypes(backbone=saved, from_config=bf16) == {torch.bfloat16}  # from_config: the config's dtype
    assert dtypes(backbone=saved, from_config=bf16, dtype="float32") == {torch.float32}
    assert dtypes(backbone=saved, from_config=saved, dtype="float16") == {torch.float16}


def test_the_encode_method_is_the_encode_function(saved):
    model = BiEncoder.from_pretrained(saved)
    texts = ["a short one", "a somewhat longer sentence of words", "x", ""]
    assert torch.equal(model.encode(texts, 2, "q: ", 6), encode(model, texts, batch_size=2, prompt="q: ", max_length=6))
    assert not torch.equal(model.encode(texts, 2, "q: ", 6), encode(model, texts, batch_size=2, max_length=6))
