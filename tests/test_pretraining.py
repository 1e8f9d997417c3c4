"""pretraining/: the masks (ratios, special tokens, whole words, 80/10/10), the enhanced decoder (no leak of a row's
own token, the [CLS] bottleneck, one layer of parameters, it learns from the sentence vector), the loss, and the text
readers. Each property test has a negative control beside it: the same check run on a broken variant (the masking or
decoder with its protection removed) must fail, so the check can fail.

The model is a random 2-layer BERT (hidden 64) with MiniLM's tokenizer and BERT's MLM head (tests/helpers.py's tiny
size), so every code path is the real one and a forward takes milliseconds.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from data.tables import DataError
from models.settings import EncoderSettings
from pretraining.batches import MaskedTexts, collate
from pretraining.masking import (IGNORE, MaskingVocabulary, decoder_rows, encoder_input, mask_text, target_count,
                                 whole_word_masks, words_of)
from pretraining.model import MAEModel
from pretraining.objective import mae_loss
from pretraining.texts import tokenize_texts
from tests.helpers import WORDS, minilm_path

LONG_WORDS = "unbelievably pretraining tokenization retromae hyperparameters microbiology".split()  # several pieces


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return MaskingVocabulary.of(tokenizer)


def sentences(n: int, seed: int = 0, words=tuple(WORDS) + tuple(LONG_WORDS)) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, rng.integers(3, 30))) for _ in range(n)]


def ids_of(tokenizer, texts, max_len=64) -> list[np.ndarray]:
    return [np.array(x) for x in tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]]


def words_whole(mask: np.ndarray, word: np.ndarray) -> bool:
    """Every word masked with all its pieces or none of them."""
    return all(len(set(mask[word == w].tolist())) == 1 for w in np.unique(word[word >= 0]))


# ---------------------------------------------------------------- masks
def test_words_follow_the_wordpiece_convention(tokenizer, vocab):
    ids = np.array(tokenizer("unbelievably pretraining cat")["input_ids"])
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert pieces[1:-1] == ["un", "##bel", "##ie", "##va", "##bly", "pre", "##train", "##ing", "cat"]  # precondition
    assert words_of(ids, vocab).tolist() == [-1, 0, 0, 0, 0, 0, 1, 1, 1, 2, -1]


def test_mask_counts_are_the_ratio_within_rounding(tokenizer, vocab):
    """count ≤ round(ratio × maskable) and short of it by less than the text's longest word (a word that would
    overshoot is passed over); with single-piece words only, exact."""
    rng = np.random.default_rng(0)
    for ids in ids_of(tokenizer, sentences(200)):
        word = words_of(ids, vocab)
        longest = np.bincount(word[word >= 0]).max()
        for ratio in (0.15, 0.3, 0.5):
            target = target_count(int((word >= 0).sum()), ratio)
            counts = whole_word_masks(word, ratio, 20, rng).sum(axis=1)
            assert (counts <= target).all() and (target - counts < longest).all(), (ratio, target, counts)
    single = ids_of(tokenizer, sentences(50, words=WORDS))
    for ids in single:
        word = words_of(ids, vocab)
        assert np.bincount(word[word >= 0]).max() == 1  # precondition: every word one piece
        assert (whole_word_masks(word, 0.3, 20, rng).sum(1) == target_count(int((word >= 0).sum()), 0.3)).all()


def test_masks_never_touch_special_tokens_and_keep_words_whole(tokenizer, vocab):
    rng = np.random.default_rng(1)
    texts = ids_of(tokenizer, sentences(100))
    assert any(not words_whole(np.arange(len(ids)) % 2 == 0, words_of(ids, vocab)) for ids in texts)  # the check bites
    for ids in texts:
        item = mask_text(ids, vocab, rng, 0.3, 0.5)
        word = words_of(ids, vocab)
        enc_mask = item["encoder_labels"] != IGNORE
        assert not enc_mask[[0, -1]].any() and not vocab.special[ids[enc_mask]].any()
        assert words_whole(enc_mask, word)
        hidden = ~item["decoder_visible"]
        others = ~np.eye(len(ids), dtype=bool)  # a row's own position is hidden by rule, not by its mask
        assert not hidden[:, 0].any() and not (hidden[:-1, -1]).any()  # [CLS] vector and [SEP] never masked
        for r in range(1, len(ids) - 1):
            assert words_whole(hidden[r][others[r]], word[others[r]])


def test_decoder_rows_see_cls_never_themselves_and_draw_their_own_masks(tokenizer, vocab):
    ids = ids_of(tokenizer, ["the cat sat on the green table near a small river and a cold stone"])[0]
    visible = decoder_rows(words_of(ids, vocab), 0.5, np.random.default_rng(0))
    n = len(ids)
    assert visible[:, 0].all()
    assert not visible[np.arange(1, n), np.arange(1, n)].any()
    assert len({row.tobytes() for row in visible[1:-1]}) > n // 2  # rows differ: one mask per row, not one for all
    maskable = n - 2
    seen = visible[1:-1, 1:-1].sum(1) + 1  # + the row's own position
    assert (np.abs((maskable - seen) - 0.5 * maskable) <= 1).all()  # about half the context hidden per row


def test_encoder_replacement_is_80_10_10_over_many_draws(tokenizer, vocab):
    rng = np.random.default_rng(2)
    counts = np.zeros(3)
    for ids in ids_of(tokenizer, sentences(400)) * 8:
        mask = whole_word_masks(words_of(ids, vocab), 0.3, 1, rng)[0]
        masked, labels = encoder_input(ids, mask, vocab, rng)
        at = labels != IGNORE
        assert (labels[at] == ids[at]).all() and (masked[~at] == ids[~at]).all()
        counts += [(masked[at] == vocab.mask_id).sum(), ((masked[at] != vocab.mask_id) & (masked[at] != ids[at])).sum(),
                   (masked[at] == ids[at]).sum()]
        assert not vocab.special[masked[at & (masked != vocab.mask_id)]].any()  # random tokens are never special
    n = counts.sum()
    assert n > 20_000  # precondition: enough draws for a ±0.015 band (5 binomial standard deviations)
    share = counts / n
    assert np.allclose(share, [0.8, 0.1, 0.1], atol=0.015), share


def test_masks_are_a_function_of_seed_epoch_and_index(tokenizer, vocab):
    texts = tokenize_texts_from(tokenizer, sentences(10))
    a = MaskedTexts(texts, vocab, seed=3, encoder_ratio=0.3, decoder_ratio=0.5)
    b = MaskedTexts(texts, vocab, seed=3, encoder_ratio=0.3, decoder_ratio=0.5)
    _ = [b[i] for i in (9, 2, 5)]  # another order first
    assert all((a[4][k] == b[4][k]).all() for k in ("encoder_input_ids", "decoder_visible"))
    b.set_epoch(1)
    assert not all((a[4][k] == b[4][k]).all() for k in ("encoder_input_ids", "decoder_visible"))


def tokenize_texts_from(tokenizer, texts, tmp=None):
    import tempfile

    folder = tmp or tempfile.mkdtemp()
    path = f"{folder}/t.txt"
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")
    return tokenize_texts([path], tokenizer, 64, progress=False)


def test_a_tokenizer_without_wordpiece_masks_single_tokens_with_a_warning():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(sentences(200), trainers.BpeTrainer(
        vocab_size=60, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    vocab = MaskingVocabulary.of(tok)
    assert "does not mark word pieces with '##'" in vocab.warning
    ids = np.array([tok.cls_token_id, *tok("unbelievably pretraining")["input_ids"], tok.sep_token_id])
    assert len(ids) > 4  # precondition: the words split into several pieces
    assert words_of(ids, vocab).tolist() == [-1, *range(len(ids) - 2), -1]  # every piece its own word


# ---------------------------------------------------------------- the model
def tiny_mae(tokenizer, seed: int = 0, decoder: bool = True, dropout: float = 0.0) -> MAEModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return MAEModel(BertForMaskedLM(config), tokenizer, EncoderSettings(pooling="cls"), decoder=decoder)


def batch_of(tokenizer, vocab, texts, seed=0, decoder_ratio=0.5) -> dict:
    rng = np.random.default_rng(seed)
    items = [{**mask_text(ids, vocab, rng, 0.3, decoder_ratio), "index": i}
             for i, ids in enumerate(ids_of(tokenizer, texts))]
    return collate(items, tokenizer.pad_token_id)


def test_the_decoder_adds_exactly_one_encoder_layer_of_parameters(tokenizer):
    model = tiny_mae(tokenizer)
    plain = tiny_mae(tokenizer, decoder=False)
    layer = sum(p.numel() for p in model.backbone.encoder.layer[0].parameters())
    added = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert added == layer == sum(p.numel() for p in model.decoder.parameters())
    shapes = sorted(tuple(p.shape) for p in model.decoder.parameters())
    assert shapes == sorted(tuple(p.shape) for p in model.backbone.encoder.layer[0].parameters())
    assert model.head.predictions.decoder.weight is model.backbone.embeddings.word_embeddings.weight  # shared


def decoder_logits(model, cls, ids, visible):
    with torch.no_grad():
        return model.head(model.decode(cls, ids, visible))


def test_changing_token_i_never_changes_the_decoder_logits_at_row_i(tokenizer, vocab):
    """Eval mode, a fixed sentence vector: replacing token i leaves row i's logits bit-identical, while the rows that
    see position i change (so the token does reach the decoder). Negative control: with row i allowed to see its own
    position, row i changes too."""
    model = tiny_mae(tokenizer).eval()
    batch = batch_of(tokenizer, vocab, sentences(4, seed=5))
    ids, visible = batch["decoder_input_ids"], batch["decoder_visible"]
    cls = torch.randn(ids.shape[0], model.dim)
    base = decoder_logits(model, cls, ids, visible)
    length = int(batch["attention_mask"][0].sum())
    for i in range(1, length - 1):
        changed = ids.clone()
        changed[0, i] = tokenizer.convert_tokens_to_ids("zebra") if ids[0, i] != tokenizer.convert_tokens_to_ids(
            "zebra") else tokenizer.convert_tokens_to_ids("apple")
        out = decoder_logits(model, cls, changed, visible)
        assert torch.equal(out[0, i], base[0, i]), i
        seers = visible[0, :, i].nonzero().flatten().tolist()
        assert seers and all(not torch.equal(out[0, j], base[0, j]) for j in seers), (i, seers)
        assert torch.equal(out[1:], base[1:])  # other texts untouched
        leaky = visible.clone()
        leaky[0, i, i] = True  # the protection removed
        assert not torch.equal(decoder_logits(model, cls, changed, leaky)[0, i],
                               decoder_logits(model, cls, ids, leaky)[0, i]), i


def test_the_decoder_loss_reaches_the_encoder_only_through_cls(tokenizer, vocab, monkeypatch):
    """Gradient of the decoder CE alone w.r.t. the encoder's last hidden states: non-zero at position 0 ([CLS]),
    exactly zero at every other position. Negative control: a decoder whose key/value stream were the encoder's
    token states (the bottleneck bypassed) gets gradients there."""
    batch = batch_of(tokenizer, vocab, sentences(4, seed=6))

    def grad_at_hidden(model):
        captured = {}
        model.backbone.register_forward_hook(lambda m, a, out: captured.update(h=out.last_hidden_state))
        out = model(batch)
        loss = F.cross_entropy(out["decoder_logits"], out["decoder_targets"])
        (g,) = torch.autograd.grad(loss, captured["h"])
        return g.abs().sum(-1)  # [B, L]

    g = grad_at_hidden(tiny_mae(tokenizer).eval())
    assert (g[:, 0] > 0).all() and (g[:, 1:] == 0).all()

    bypass = tiny_mae(tokenizer).eval()
    states = {}
    bypass.backbone.register_forward_hook(lambda m, a, out: states.update(h=out.last_hidden_state))
    monkeypatch.setattr(bypass, "key_value_stream", lambda cls, ids: torch.cat([cls[:, None], states["h"][:, 1:]], 1))
    g = grad_at_hidden(bypass)
    assert (g[:, 1:] > 0).any()


EIGHT = [f"{a} {b} {c}" for a in ("red", "blue") for b in ("cat", "dog") for c in ("sits", "runs")]


def decoder_ce(model, batch, zero_cls: bool) -> torch.Tensor:
    """The decoder CE with the sentence vector of the *unmasked* text (this isolates the decoder's path), or zeros."""
    hidden = model.encode(batch["decoder_input_ids"], batch["attention_mask"])
    cls = torch.zeros_like(hidden[:, 0]) if zero_cls else hidden[:, 0]
    decoded = model.decode(cls, batch["decoder_input_ids"], batch["decoder_visible"])
    at = batch["decoder_labels"] != IGNORE
    return F.cross_entropy(model.head(decoded[at]), batch["decoder_labels"][at])


@pytest.mark.parametrize("zero_cls", [False, True], ids=["sentence vector", "sentence vector zeroed"])
def test_the_decoder_learns_8_sentences_from_the_sentence_vector(tokenizer, vocab, zero_cls):
    """Overfitting 8 sentences: the decoder CE falls near 0 when it gets the encoder's [CLS] vector, and stays high
    when that vector is zeroed. The 8 sentences are every choice of 3 independent two-way words, so a row's context
    says nothing about its own word: without the sentence vector no decoder can beat ln 2 = 0.69 per token."""
    assert all(len(tokenizer(t)["input_ids"]) == 5 for t in EIGHT)  # precondition: one piece per word
    model = tiny_mae(tokenizer, seed=1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(200):
        loss = decoder_ce(model, batch_of(tokenizer, vocab, EIGHT, seed=step), zero_cls)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():  # fresh decoder masks
        ce = float(np.mean([decoder_ce(model, batch_of(tokenizer, vocab, EIGHT, seed=s), zero_cls).item()
                            for s in range(1000, 1010)]))
    if zero_cls:
        assert ce > 0.6, ce
    else:
        assert ce < 0.05, ce


def test_the_loss_is_decoder_ce_plus_encoder_ce(tokenizer, vocab):
    model = tiny_mae(tokenizer).eval()
    batch = batch_of(tokenizer, vocab, sentences(3, seed=8))
    with torch.no_grad():
        out = model(batch)
        loss, parts = mae_loss(out)
        hidden = model.encode(batch["encoder_input_ids"], batch["attention_mask"])
        logits = model.head(hidden)  # every position, then the labelled ones
        enc = F.cross_entropy(logits.flatten(0, 1), batch["encoder_labels"].flatten(), ignore_index=IGNORE)
        dec_logits = model.head(model.decode(hidden[:, 0], batch["decoder_input_ids"], batch["decoder_visible"]))
        dec = F.cross_entropy(dec_logits.flatten(0, 1), batch["decoder_labels"].flatten(), ignore_index=IGNORE)
    assert torch.allclose(parts["encoder_loss"], enc) and torch.allclose(parts["decoder_loss"], dec)
    assert torch.allclose(loss, enc + dec)
    # decoder labels: every real token but the first and the last
    n = batch["attention_mask"].sum(1)
    assert ((batch["decoder_labels"] != IGNORE).sum(1) == n - 2).all()


def test_the_bag_of_words_term_matches_a_plain_loop(tokenizer, vocab):
    model = tiny_mae(tokenizer).eval()
    model.bow = True
    batch = batch_of(tokenizer, vocab, sentences(3, seed=9))
    with torch.no_grad():
        out = model(batch)
        _, parts = mae_loss(out, bow_weight=0.5)
        logits = model.head(model.encode(batch["encoder_input_ids"], batch["attention_mask"])).double()
    want = 0.0
    for b in range(3):
        n = int(batch["attention_mask"][b].sum())
        pooled = logits[b, 1:n].max(dim=0).values  # positions after [CLS], [SEP] included (DupMAE)
        body = batch["decoder_input_ids"][b, 1:n - 1].tolist()
        log_p = torch.log_softmax(pooled, -1)
        want += -sum(log_p[t] for t in body) / len(body)
    assert abs(parts["bow_loss"].item() - want / 3) < 1e-4


# ---------------------------------------------------------------- texts
def test_empty_texts_are_counted_and_skipped_with_their_lines(tokenizer, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first passage\n\n   \nsecond passage\n\t\n", encoding="utf-8")
    texts = tokenize_texts([str(path)], tokenizer, 32, progress=False)
    assert len(texts) == 2 and texts.where(1) == f"{path}:4"
    assert texts.report.skipped == {"empty or whitespace only": 3}
    assert f"{path}:2" in texts.report.summary()
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="blank.txt: no text to train on"):
        tokenize_texts([str(tmp_path / "blank.txt")], tokenizer, 32, progress=False)


def test_jsonl_texts_name_the_line_of_a_row_without_text_and_beir_rows_get_their_title(tokenizer, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"_id": "1", "title": "Cats", "text": "sit on mats"}) + "\n"
                    + json.dumps({"_id": "2", "body": "no text field"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c.jsonl:2: field 'text' missing"):
        tokenize_texts([str(path)], tokenizer, 32, progress=False)
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "1", "title": "Cats", "text": "sit on mats"}) + "\n",
                                       encoding="utf-8")
    texts = tokenize_texts([str(beir)], tokenizer, 32, progress=False)
    assert tokenizer.decode(texts.token_ids(0), skip_special_tokens=True) == "cats sit on mats"
    assert texts.where(0) == f"{beir / 'corpus.jsonl'}:1"
