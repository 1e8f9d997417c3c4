"""models/family.py on tiny random Gemma2, Qwen2, Mistral and Llama models with tokenizers built here (issue 27):
EOS at the end of every text (also truncated) for every consumer, pad token and left padding, padding that does not
change an embedding, SDPA replaced for Gemma2, and the inputs refused before training (no EOS token; a prepared
corpus without EOS for an EOS run)."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

import train
from cli_config import ConfigError
from data.collator import Collator
from data.examples import Example
from data.prepared import PreparedCorpus, prepare
from data.row_kind import RowKind
from data.sampler_inputs import length_keys, token_counts
from models import family
from models.config import ModelConfig, build_model
from models.family import appends_eos
from tests.helpers import (DECODER_FAMILIES, minilm_path, save_tiny_decoder, tiny_decoder_config, tiny_tokenizer,
                           write_tiny_rows)

FAMILIES = list(DECODER_FAMILIES)
TEXTS = ["apple banana river", "stone cloud music train paper light green small house dog", "cat",
         "window table road blue cold warm apple"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {f: save_tiny_decoder(str(root / f), f) for f in FAMILIES}


def real_ids(batch: dict) -> list[list[int]]:
    return [[i for i, m in zip(ids, mask) if m] for ids, mask in zip(batch["input_ids"].tolist(),
                                                                      batch["attention_mask"].tolist())]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_text_ends_with_eos_for_every_consumer_also_truncated(folders, name):
    plain = AutoTokenizer.from_pretrained(folders[name])
    assert not appends_eos(plain)  # precondition: the family's tokenizer does not append EOS by itself
    model = build_model(ModelConfig(backbone=folders[name], pooling="last"), log=lambda _: None)
    tok, eos = model.tokenizer, model.tokenizer.eos_token_id
    assert model.settings.append_eos and tok.padding_side == "left"
    long_text = " ".join(["apple"] * 40)
    items = [{"query": t, "prompt": None, "passages": [long_text, t], "teacher_scores": None, "label": None}
             for t in TEXTS]
    batch = Collator(tok, 8, 16)(items)
    for side, limit in (("query", 8), ("passage", 16)):
        rows = real_ids(batch[side])
        assert all(r[-1] == eos for r in rows), side  # the last real token of every row, truncated or not
        assert max(len(r) for r in rows) == limit  # the long passage is cut to max_len − 1 tokens + EOS
        assert batch[side]["attention_mask"][:, -1].all()  # padded on the left: the last position is real
    # the length planner counts the tokens the collator makes
    keys = length_keys([Example(t, [long_text], [t]) for t in TEXTS], tok, 8, 16, progress=False)
    assert keys[:, 1].tolist() == [len(r) for r in real_ids(batch["query"])]
    assert token_counts(tok, [long_text], 16) == [16]
    # the saved folder's tokenizer, as sentence-transformers and evaluation load it
    from sentence_transformers import SentenceTransformer

    saved = os.path.join(folders[name] + "-saved")
    model.save(saved)
    assert appends_eos(AutoTokenizer.from_pretrained(saved))
    st = SentenceTransformer(saved, device="cpu")
    features = st.tokenize(TEXTS + [long_text])
    assert all(r[-1] == eos for r in real_ids(features))


@pytest.mark.parametrize("name", FAMILIES)
def test_left_and_right_padding_give_each_texts_own_embedding(folders, name):
    model = build_model(ModelConfig(backbone=folders[name], pooling="last"), log=lambda _: None)
    model.eval()
    tok = model.tokenizer
    with torch.no_grad():
        alone = torch.cat([model.embed(**{k: v for k, v in tok([t], return_tensors="pt").items()
                                          if k in ("input_ids", "attention_mask")}) for t in TEXTS])
        out = {}
        for side in ("left", "right"):
            tok.padding_side = side
            enc = tok(TEXTS, padding=True, pad_to_multiple_of=8, return_tensors="pt")
            assert (enc["attention_mask"] == 0).any()  # precondition: the batch is padded
            out[side] = model.embed(enc["input_ids"], enc["attention_mask"])
        tok.padding_side = "left"
        torch.testing.assert_close(out["left"], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["right"], alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode(TEXTS, batch_size=4), alone, atol=1e-5, rtol=1e-5)  # evaluation path
        # the comparison can fail: right padding read at the last position (a pad) is another vector
        hidden = model.backbone(**{k: v for k, v in enc.items() if k != "token_type_ids"}).last_hidden_state
        wrong = torch.nn.functional.normalize(hidden[:, -1], dim=-1)
        assert (wrong - alone).abs().max() > 1e-3


def test_pad_token_falls_back_to_unk_then_eos():
    for name, want in (("llama", "<unk>"), ("mistral", "<unk>"), ("qwen2", "<|endoftext|>"), ("gemma2", "<pad>")):
        tok = tiny_tokenizer(name)
        had_pad = tok.pad_token is not None
        assert had_pad == (name == "gemma2")  # precondition: only Gemma ships a pad token
        family.set_up_tokenizer(tok, decoder=True, append_eos=False)
        assert tok.pad_token == want and tok.padding_side == "left", name


def test_encoders_keep_their_tokenizer_and_decoders_are_told_apart():
    model = build_model(ModelConfig(backbone=minilm_path()), log=lambda _: None)
    plain = AutoTokenizer.from_pretrained(minilm_path())
    assert model.settings.append_eos is False and model.tokenizer.padding_side == "right"
    assert model.tokenizer(TEXTS)["input_ids"] == plain(TEXTS)["input_ids"]
    decoders = [t for t in ("llama", "mistral", "qwen2", "gemma2", "gemma3_text", "gpt2", "phi3", "qwen3")
                if family.is_decoder_only(AutoConfig.for_model(t))]
    assert decoders == ["llama", "mistral", "qwen2", "gemma2", "gemma3_text", "gpt2", "phi3", "qwen3"]
    assert not any(family.is_decoder_only(AutoConfig.for_model(t)) for t in ("bert", "xlm-roberta", "modernbert",
                                                                              "t5", "deberta-v2"))


def test_a_tiny_gemma2_from_config_trains_with_no_attention_flag(tmp_path, capsys):
    config_dir, tokenizer_dir = str(tmp_path / "config"), str(tmp_path / "tokenizer")
    tokenizer = tiny_tokenizer("gemma2")
    tokenizer.save_pretrained(tokenizer_dir)
    config = tiny_decoder_config("gemma2", len(tokenizer))
    config.save_pretrained(config_dir)
    with pytest.raises(ValueError, match="does not support an attention implementation through torch.nn.functional"):
        AutoModel.from_config(config, attn_implementation="sdpa")  # precondition: what users got as a traceback
    data = write_tiny_rows(str(tmp_path / "train.jsonl"), rows=24)
    cfg = train.parse_config(train.TrainConfig, ["--model", tokenizer_dir, "--from-config", config_dir, "--train-data",
                                                 data, "--loss", "infonce", "--group-size", "2", "--batch-size", "4",
                                                 "--max-steps", "2", "--report-to", "none", "--pooling", "last",
                                                 "--output-dir", str(tmp_path / "out")])
    assert cfg.model.attn_implementation == "sdpa"  # the default, no flag given
    assert train.main(cfg)["steps"] == 2
    out = capsys.readouterr().out
    assert out.count("Gemma2Model cannot run SDPA attention; using eager attention") == 1


def test_an_eos_run_on_a_tokenizer_without_eos_is_refused(tmp_path, monkeypatch):
    folder = save_tiny_decoder(str(tmp_path / "m"), "llama", eos=False)
    data = write_tiny_rows(str(tmp_path / "train.jsonl"), rows=24)
    args = ["--model", folder, "--train-data", data, "--loss", "infonce", "--group-size", "2", "--batch-size", "4",
            "--max-steps", "1", "--report-to", "none", "--pooling", "last"]
    loaded = []
    monkeypatch.setattr(AutoModel, "from_pretrained", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    with pytest.raises(SystemExit, match=r"^--append-eos on \(the default for a decoder-only model\): the tokenizer "
                                         r"has no EOS token to append \(.*m\); give it one, or train with "
                                         r"--no-append-eos$"):
        train.main(train.parse_config(train.TrainConfig, [*args, "--output-dir", str(tmp_path / "a")]))
    with pytest.raises(SystemExit, match="^--append-eos True: the tokenizer has no EOS token"):
        train.main(train.parse_config(train.TrainConfig, [*args, "--append-eos", "--output-dir", str(tmp_path / "b")]))
    assert not loaded  # refused before any weights were read
    monkeypatch.undo()
    # precondition: without EOS the same model builds; with the refusal removed it would train without EOS
    assert build_model(ModelConfig(backbone=folder, append_eos=False), log=lambda _: None).settings.append_eos is False
    monkeypatch.setattr(family, "add_eos", lambda tokenizer: None)
    model = build_model(ModelConfig(backbone=folder), log=lambda _: None)
    assert model.settings.append_eos and not appends_eos(model.tokenizer)
    with pytest.raises(ConfigError):  # the library form names the key
        monkeypatch.undo()
        build_model(ModelConfig(backbone=folder), log=lambda _: None)


def test_a_prepared_corpus_counts_eos_and_one_made_without_it_is_refused(folders, tmp_path, monkeypatch):
    folder = folders["qwen2"]
    data = write_tiny_rows(str(tmp_path / "train.jsonl"), rows=24)
    with_eos = prepare([data], folder, str(tmp_path / "eos"), query_max_len=64, passage_max_len=128, log=lambda _: None,
                       progress=False, num_proc=1)
    without = prepare([data], folder, str(tmp_path / "no-eos"), query_max_len=64, passage_max_len=128,
                      append_eos=False, log=lambda _: None, progress=False, num_proc=1)
    assert with_eos["settings"]["append_eos"] is True and without["settings"]["append_eos"] is False
    model = build_model(ModelConfig(backbone=folder, pooling="last", query_max_len=64, passage_max_len=128),
                        log=lambda _: None)
    examples = [Example(**{k: v for k, v in row.items()}) for row in _rows(data)]
    raw = length_keys(examples, model.tokenizer, 64, 128, progress=False)
    corpus = PreparedCorpus(str(tmp_path / "eos"))
    corpus.check_settings(model.tokenizer, model.settings, RowKind.GROUPS)  # the same settings: accepted
    from data.length_buckets import unpack_length_keys

    p, q = unpack_length_keys(corpus.array("length_keys"))
    assert q.tolist() == raw[:, 1].tolist() and p.tolist() == raw[:, 0].tolist()  # the same tokens, EOS included
    args = ["--model", folder, "--train-data", str(tmp_path / "no-eos"), "--loss", "infonce", "--group-size", "2",
            "--batch-size", "4", "--max-steps", "1", "--report-to", "none", "--pooling", "last", "--query-max-len",
            "64", "--passage-max-len", "128", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        train.main(train.parse_config(train.TrainConfig, args))
    assert "\n  --append-eos: False in the corpus, True in this run" in str(e.value), str(e.value)
    # the refusal can fail: without it, the corpus's lengths are not the ones this run's collator makes
    q_no, _ = unpack_length_keys(PreparedCorpus(str(tmp_path / "no-eos")).array("length_keys"))[::-1]
    assert (q_no != raw[:, 1]).all()


def _rows(path: str) -> list[dict]:
    import json

    with open(path, encoding="utf-8") as f:
        return [{k: v for k, v in json.loads(line).items()} for line in f]
