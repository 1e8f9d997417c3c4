"""pretrain.py end to end: exact resume after SIGKILL (tests/test_resume.py's kill helpers), SIGTERM, non-finite
steps, a prepared text corpus equal to its raw files, the saved encoder fine-tuned by train.py, and the bad inputs
of the README's table. Each refusal was also seen to fail with its check removed (the issue's report)."""
from __future__ import annotations

import json
import math
import os
import random
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

import pretrain
from cli_config import parse_config
from pretraining.prepared import prepare_texts
from tests.helpers import (TORCHRUN, WORDS, check_sigterm_saves_then_exits_143, losses,
                           make_tiny_run_files, minilm_path, subprocess_env)
from tests.test_resume import kill_after_checkpoint, run

ENV = subprocess_env()


def write_texts(path: str, n: int, seed: int = 0, blank_every: int = 0) -> str:
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(" ".join(rnd.choice(WORDS + ["unbelievably", "pretraining"]) for _ in range(rnd.randint(3, 18))))
            f.write("\n" + ("   \n" if blank_every and i % blank_every == 0 else ""))
    return path


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """(model folder: random 2-layer BERT with dropout 0.1 and no MLM head, 96 texts with blank lines)."""
    folder = str(tmp_path_factory.mktemp("pretrain"))
    model, _ = make_tiny_run_files(folder, minilm_path(), rows=1, dropout=0.1)
    return model, write_texts(os.path.join(folder, "texts.txt"), 96, blank_every=10)


@pytest.fixture(scope="module")
def prepared_text_run(text_run, tmp_path_factory):
    model, texts = text_run
    folder = str(tmp_path_factory.mktemp("prepared") / "texts")
    prepare_texts([texts], model, folder, max_len=24, progress=False, log=lambda *a: None)
    return model, folder


def args(run_files: tuple[str, str], out: str, *extra: str) -> list[str]:
    model, data = run_files
    return ["pretrain.py", "--model", model, "--train-data", data, "--max-len", "24", "--batch-size", "4",
            "--max-steps", "30", "--lr", "1e-3", "--report-to", "none", "--save-steps", "4", "--save-total-limit", "2",
            "--mixed-precision", "no", "--output-dir", out, *extra]


CASES = {
    "one process, dropout, 2 DataLoader workers, epoch boundary, log window across the checkpoint":
        ([], ["--num-workers", "2", "--log-steps", "3"]),
    "one process, gradient accumulation 2, DupMAE term": ([], ["--gradient-accumulation-steps", "2",
                                                               "--bow-weight", "0.5", "--log-steps", "1"]),
    "2 processes": (TORCHRUN, ["--log-steps", "1"]),
    "2 processes, DeepSpeed ZeRO-2": (TORCHRUN, ["--deepspeed", "configs/deepspeed/zero2.json", "--log-steps", "1"]),
    "prepared text corpus, one process": ([], ["--log-steps", "1"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_then_resume_equals_the_uninterrupted_run(request, tmp_path, case):
    launcher, extra = CASES[case]
    files = request.getfixturevalue("prepared_text_run" if case.startswith("prepared") else "text_run")
    python = launcher or [sys.executable]
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    run([*python, *args(files, whole, *extra)])
    kill_after_checkpoint([*python, *args(files, killed, *extra)], killed, step=8, workers=2 if launcher else 0)
    res = run([*python, *args(files, killed, *extra, "--resume-from-checkpoint", "latest")])
    assert f"resumed from {os.path.join(killed, 'checkpoint-8')}: step 8," in res.stdout + res.stderr
    assert losses(killed) == losses(whole)  # every logged loss, bit for bit
    logs = [json.load(open(os.path.join(o, "train_log.json"))) for o in (whole, killed)]
    assert [h.get("decoder_loss") for h in logs[0]] == [h.get("decoder_loss") for h in logs[1]]
    assert all("decoder_loss" in h and "encoder_loss" in h for h in logs[0])
    want = load_file(os.path.join(whole, "model.safetensors"))
    have = load_file(os.path.join(killed, "model.safetensors"))
    assert want.keys() == have.keys()
    for k in want:
        assert (have[k] == want[k]).all(), k


def test_a_prepared_text_corpus_trains_like_its_raw_files(text_run, prepared_text_run, tmp_path):
    raw, prepared = str(tmp_path / "raw"), str(tmp_path / "prepared")
    for files, out in ((text_run, raw), (prepared_text_run, prepared)):
        pretrain.main(parse_config(pretrain.PretrainConfig, args(files, out, "--max-steps", "6", "--save-steps", "0",
                                                                 "--log-steps", "1")[1:]))
    assert losses(raw) == losses(prepared)
    a, b = (load_file(os.path.join(o, "model.safetensors")) for o in (raw, prepared))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_encoder_alone_is_saved_and_fine_tunes_with_train_py(text_run, tmp_path):
    out = str(tmp_path / "mae")
    pretrain.main(parse_config(pretrain.PretrainConfig, args(text_run, out, "--max-steps", "3", "--save-steps",
                                                             "0")[1:]))
    weights = load_file(os.path.join(out, "model.safetensors"))
    assert weights and not [k for k in weights if k.startswith(("decoder", "head", "cls", "predictions"))]
    base = load_file(os.path.join(text_run[0], "model.safetensors"))
    assert set(weights) == set(base) - {"pooler.dense.weight", "pooler.dense.bias"}  # the encoder's own keys
    assert json.load(open(os.path.join(out, "embedding_config.json")))["pooling"] == "cls"
    from models.bi_encoder import BiEncoder

    loaded = BiEncoder.from_pretrained(out)  # as train.py's --model loads it: every pretrained tensor, pooling cls
    state = loaded.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items()) and loaded.settings.pooling == "cls"
    batch = loaded.tokenizer(["red cat sits"], return_tensors="pt")
    with torch.no_grad():
        cls = loaded.backbone(**batch).last_hidden_state[:, 0]
        assert torch.allclose(loaded.embed(**batch), torch.nn.functional.normalize(cls, dim=-1), atol=1e-6)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"q {w}", "pos": [f"p {w} {v}"]}) + "\n"
                             for w in WORDS for v in WORDS[:2]), encoding="utf-8")
    import train

    tuned = str(tmp_path / "tuned")
    train.main(parse_config(train.TrainConfig, ["--model", out, "--train-data", str(pairs), "--batch-size", "4",
                                                "--group-size", "1", "--max-steps", "2", "--report-to", "none",
                                                "--output-dir", tuned]))
    assert json.load(open(os.path.join(tuned, "embedding_config.json")))["pooling"] == "cls"  # kept from pretraining


def test_sigterm_saves_a_checkpoint_at_the_next_step_and_exits_143(text_run, tmp_path):
    out = str(tmp_path / "out")
    check_sigterm_saves_then_exits_143([sys.executable, *args(text_run, out, "--max-steps", "500", "--save-steps", "2",
                                                              "--save-total-limit", "0")], out, tmp_path / "log")


def test_non_finite_steps_are_skipped_and_the_run_stops_after_max_bad_steps(text_run, tmp_path, capsys):
    """--lr 1e10: the first update blows the weights up, every later loss is NaN and skipped; after 3 in a row the
    run stops with exit 1 and writes no model."""
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit) as e:
        pretrain.main(parse_config(pretrain.PretrainConfig, args(text_run, out, "--lr", "1e10", "--warmup-ratio", "0",
                                                                 "--save-steps", "0")[1:]))
    assert "optimizer steps in a row" in str(e.value) and "--max-bad-steps 3" in str(e.value)
    assert "update skipped" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "model.safetensors"))


# ---------------------------------------------------------------- bad input
def refused(run_files, out, *extra) -> str:
    with pytest.raises(SystemExit) as e:
        pretrain.main(parse_config(pretrain.PretrainConfig, args(run_files, out, *extra)[1:]))
    return str(e.value)


@pytest.mark.parametrize("flag, value", [("--encoder-mask-ratio", "1.0"), ("--encoder-mask-ratio", "0"),
                                         ("--encoder-mask-ratio", "nan"), ("--decoder-mask-ratio", "1.5"),
                                         ("--decoder-mask-ratio", "-0.2")])
def test_a_mask_ratio_outside_0_1_is_refused_with_its_flag(text_run, tmp_path, flag, value):
    assert refused(text_run, str(tmp_path / "o"), flag, value) == \
        f"{flag} {float(value)}: must be a number strictly between 0 and 1"


def test_a_max_len_beyond_the_position_table_is_refused(text_run, tmp_path):
    message = refused(text_run, str(tmp_path / "o"), "--max-len", "1000")
    assert message.startswith("--max-len 1000: more than the 512 tokens"), message


def test_other_options_pretraining_does_not_use_are_refused(text_run, tmp_path):
    assert refused(text_run, str(tmp_path / "o"), "--grad-cache-chunk", "2").startswith("--grad-cache-chunk 2: ")
    sts = tmp_path / "sts.tsv"
    sts.write_text("sentence1\tsentence2\tscore\na\tb\t1\n")
    assert refused(text_run, str(tmp_path / "o"), "--eval-sts", str(sts)).startswith(f"--eval-sts {sts}: ")


def test_texts_that_are_all_empty_are_refused_naming_the_file(text_run, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n", encoding="utf-8")
    message = refused((text_run[0], str(blank)), str(tmp_path / "o"))
    assert message.startswith(f"data error: {blank}: no text to train on"), message


def test_a_model_without_an_mlm_head_gets_a_fresh_one_said_in_the_log(text_run, tmp_path, capsys):
    out = str(tmp_path / "mae")
    pretrain.main(parse_config(pretrain.PretrainConfig, args(text_run, out, "--max-steps", "1", "--save-steps",
                                                             "0")[1:]))
    text = capsys.readouterr().out
    assert "has no trained MLM head" in text and "a fresh head" in text
    assert "10 skipped: empty or whitespace only" in text  # blank lines: counted and skipped
    assert "does not mark word pieces" not in text  # MiniLM's WordPiece: whole words, no warning
    # a checkpoint with its head: no note (the note is about the head, not said always)
    with_head = str(tmp_path / "with-head")
    tokenizer = AutoTokenizer.from_pretrained(text_run[0])
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64)).save_pretrained(with_head)
    tokenizer.save_pretrained(with_head)
    pretrain.main(parse_config(pretrain.PretrainConfig, args((with_head, text_run[1]), str(tmp_path / "mae2"),
                                                             "--max-steps", "1", "--save-steps", "0")[1:]))
    assert "has no trained MLM head" not in capsys.readouterr().out


def bpe_model(folder: str, texts: str) -> str:
    """A 1-layer BERT whose tokenizer is byte-pair encoding trained on the run's texts: pieces carry no '##'."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train([texts], trainers.BpeTrainer(vocab_size=80, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                                              "[MASK]"]))
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_tokenizer_without_wordpiece_pieces_trains_with_token_masking_and_a_warning(text_run, tmp_path, capsys):
    model = bpe_model(str(tmp_path / "bpe"), text_run[1])
    pieces = AutoTokenizer.from_pretrained(model).tokenize("unbelievably pretraining")
    assert len(pieces) > 2 and not any(p.startswith("##") for p in pieces)  # precondition: split, no '##'
    out = str(tmp_path / "mae")
    pretrain.main(parse_config(pretrain.PretrainConfig, args((model, text_run[1]), out, "--max-steps", "2",
                                                             "--save-steps", "0")[1:]))
    assert (f"warning: the tokenizer of {model} (BPE) does not mark word pieces with '##', so masking picks single "
            "tokens, not whole words") in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "model.safetensors"))


def test_plain_mlm_trains_the_encoder_only_at_bert_s_ratio(text_run, tmp_path, capsys):
    out = str(tmp_path / "mlm")
    pretrain.main(parse_config(pretrain.PretrainConfig, args(text_run, out, "--objective", "mlm", "--max-steps", "2",
                                                             "--save-steps", "0", "--log-steps", "1")[1:]))
    assert "objective mlm (encoder masks 0.15)" in capsys.readouterr().out
    log = json.load(open(os.path.join(out, "train_log.json")))
    assert all("decoder_loss" not in h and math.isclose(h["loss"], h["encoder_loss"], rel_tol=1e-6) for h in log)
