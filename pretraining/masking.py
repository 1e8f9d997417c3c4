"""RetroMAE's masking of one text: the encoder's masked input and the decoder's per-row attention.

A text is its token ids with the tokenizer's special tokens, `[CLS] t1 ... tn [SEP]`. Special tokens are never
masked. Word pieces are grouped into words by the WordPiece convention: a piece spelled `##...` continues the word
before it. Whole-word masking picks words, not pieces, until it has covered round(ratio × maskable tokens) tokens
(at least 1): words are taken in a random order, and a word that would overshoot is passed over for a shorter one
(as transformers' whole-word-mask collator did), so the count is exact whenever single-piece words remain and
short by less than the shortest word left otherwise. A tokenizer without the `##` convention (SentencePiece, BPE)
gets token masking instead — every piece its own word — and `MaskingVocabulary` says so in `warning`.

Encoder: one whole-word mask at `encoder_ratio` (RetroMAE: 0.3); of the masked tokens 80% become [MASK], 10% a
random token of the vocabulary (never a special token), 10% stay; labels are the original ids there, -100 elsewhere.

Decoder (the enhanced decoding of the paper, section 3.2): its keys and values are the [CLS] vector at position 0
and the embeddings of the *unmasked* tokens elsewhere; row i (the query for position i) may attend to key j when
`visible[i, j]`. Each row draws its own whole-word mask at `decoder_ratio` (RetroMAE: 0.5) and sees the tokens
outside it, never its own position, and always position 0 — the sentence vector (for row 0 that is the vector
itself: row 0 has no label). So a row reconstructs its token from the sentence vector and a random half of the
context that never includes the token. Decoder labels: every token except position 0 and the last ([SEP]).

Every draw comes from the generator the caller passes (pretraining/batches.py seeds one per (seed, epoch, text)),
so a text's masks are a pure function of those three numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100  # label of a position without a target (torch's cross_entropy ignore_index)


@dataclass
class MaskingVocabulary:
    """What masking needs to know of a tokenizer, as lookup tables over token ids."""

    special: np.ndarray  # [V] bool: never masked
    continues_word: np.ndarray  # [V] bool: a `##` piece (all False without the convention)
    random_ids: np.ndarray  # the ids a random replacement draws from: every non-special token
    mask_id: int
    warning: str | None = None  # set when whole-word masking falls back to token masking

    @classmethod
    def of(cls, tokenizer) -> "MaskingVocabulary":
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{tokenizer.name_or_path}: the tokenizer has no mask token; masked-language "
                             "pretraining needs one")
        size = len(tokenizer)
        special = np.zeros(size, dtype=bool)
        special[[i for i in tokenizer.all_special_ids if i < size]] = True
        tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
        model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
        wordpiece = getattr(model, "continuing_subword_prefix", None) == "##"
        continues = np.array([wordpiece and t is not None and t.startswith("##") for t in tokens], dtype=bool)
        warning = None if wordpiece else (
            f"the tokenizer of {tokenizer.name_or_path} ({type(model or tokenizer).__name__}) does not mark word "
            "pieces with '##', so masking picks single tokens, not whole words")
        return cls(special, continues, np.flatnonzero(~special), int(tokenizer.mask_token_id), warning)


def words_of(ids: np.ndarray, vocab: MaskingVocabulary) -> np.ndarray:
    """[L] word number of each token (0, 1, ...), -1 for special tokens. A `##` piece joins the word before it
    when that is not a special token."""
    ids = np.asarray(ids)
    special = vocab.special[ids]
    starts = ~special & ~(vocab.continues_word[ids] & np.concatenate([[False], ~special[:-1]]))
    word = np.cumsum(starts) - 1
    return np.where(special, -1, word)


def target_count(maskable: int, ratio: float) -> int:
    """Tokens to mask: round(ratio × maskable), at least 1 (0 when there is nothing to mask)."""
    return 0 if maskable == 0 else max(1, int(np.floor(ratio * maskable + 0.5)))


def whole_word_masks(word: np.ndarray, ratio: float, rows: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` independent whole-word masks of one text -> [rows, L] bool (True = masked).

    word: `words_of` the text. Each row takes the words in its own random order and keeps every word that still
    fits in `target_count` tokens."""
    length = len(word)
    maskable = word >= 0
    n_words = int(word.max()) + 1 if maskable.any() else 0
    out = np.zeros((rows, length), dtype=bool)
    if n_words == 0:
        return out
    target = target_count(int(maskable.sum()), ratio)
    word_len = np.bincount(word[maskable], minlength=n_words)
    order = np.argsort(rng.random((rows, n_words)), axis=1)  # [rows, W] a random order of the words per row
    lens = word_len[order]
    taken = np.zeros((rows, n_words), dtype=bool)
    covered = np.zeros(rows, dtype=np.int64)
    for c in range(n_words):
        fits = covered + lens[:, c] <= target
        taken[:, c] = fits
        covered += np.where(fits, lens[:, c], 0)
        if (covered == target).all():
            break
    chosen = np.zeros((rows, n_words), dtype=bool)
    np.put_along_axis(chosen, order, taken, axis=1)  # back from random order to word numbers
    out[:, maskable] = chosen[:, word[maskable]]
    return out


def encoder_input(ids: np.ndarray, mask: np.ndarray, vocab: MaskingVocabulary,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(masked input ids [L], labels [L]): of the masked positions 80% [MASK], 10% a random non-special token,
    10% unchanged; labels hold the original id at masked positions and IGNORE elsewhere."""
    ids = np.asarray(ids, dtype=np.int64)
    draw = rng.random(len(ids))
    random_tokens = vocab.random_ids[rng.integers(0, len(vocab.random_ids), len(ids))]
    masked = ids.copy()
    masked[mask & (draw < 0.8)] = vocab.mask_id
    replace = mask & (draw >= 0.8) & (draw < 0.9)
    masked[replace] = random_tokens[replace]
    labels = np.where(mask, ids, IGNORE)
    return masked, labels


def decoder_rows(word: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """[L, L] bool: visible[i, j] = row i may attend to key j (module docstring): outside row i's own whole-word
    mask, never j = i, always j = 0."""
    length = len(word)
    visible = ~whole_word_masks(word, ratio, length, rng)
    visible[np.arange(length), np.arange(length)] = False
    visible[:, 0] = True
    return visible


def decoder_labels(ids: np.ndarray) -> np.ndarray:
    """[L]: the ids, except IGNORE at position 0 and at the last token."""
    labels = np.asarray(ids, dtype=np.int64).copy()
    labels[0] = IGNORE
    labels[-1] = IGNORE
    return labels


def mask_text(ids, vocab: MaskingVocabulary, rng: np.random.Generator, encoder_ratio: float,
              decoder_ratio: float | None) -> dict:
    """One text's masked item: input_ids (original), encoder_input_ids, encoder_labels, and unless decoder_ratio is
    None (plain MLM) decoder_labels and decoder_visible [L, L]."""
    ids = np.asarray(ids, dtype=np.int64)
    word = words_of(ids, vocab)
    masked, labels = encoder_input(ids, whole_word_masks(word, encoder_ratio, 1, rng)[0], vocab, rng)
    item = {"input_ids": ids, "encoder_input_ids": masked, "encoder_labels": labels}
    if decoder_ratio is not None:
        item["decoder_labels"] = decoder_labels(ids)
        item["decoder_visible"] = decoder_rows(word, decoder_ratio, rng)
    return item
