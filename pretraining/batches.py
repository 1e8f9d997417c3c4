"""Batches of masked texts: the dataset (one text masked per item), the sampler and the padding collator.

Item i of epoch e is masked with a numpy generator seeded by (seed, e, i) alone, so a resumed run — and every
DataLoader worker, in whatever order it reads — rebuilds exactly the masks of a run never stopped. The sampler is
train.py's planner (data/batch_planner.py): one global batch per step sliced per process, length buckets by tokens
(rounded up to 8), batches from one source with --same-dataset-batches, a resume state of (epoch, position, seed,
fingerprint of the texts); there is no duplicate-text check (a repeated text is no false negative here).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from data.batch_planner import BucketBatchSampler
from data.length_buckets import passage_key
from data.tables import DataError
from pretraining.masking import IGNORE, MaskingVocabulary, mask_text
from pretraining.texts import TokenizedTexts


class MaskedTexts(Dataset):
    """texts -> items of `masking.mask_text` plus their index; decoder_ratio None = plain MLM (no decoder rows)."""

    def __init__(self, texts: TokenizedTexts, vocab: MaskingVocabulary, *, seed: int, encoder_ratio: float,
                 decoder_ratio: float | None):
        self.texts, self.vocab, self.seed, self.epoch = texts, vocab, seed, 0
        self.encoder_ratio, self.decoder_ratio = encoder_ratio, decoder_ratio

    def __len__(self) -> int:
        return len(self.texts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def where(self, i: int) -> str:
        return self.texts.where(i)

    def __getitem__(self, i: int) -> dict:
        ids = self.texts.token_ids(i)
        if ids.max() >= len(self.vocab.special):
            raise DataError(f"{self.where(i)}: token id {ids.max()} is outside the tokenizer's "
                            f"{len(self.vocab.special)} tokens (a prepared corpus of another tokenizer, or damaged); "
                            "prepare it again")
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return {**mask_text(ids, self.vocab, rng, self.encoder_ratio, self.decoder_ratio), "index": i}


def collate(items: list[dict], pad_id: int) -> dict:
    """Items -> tensors padded to the longest text, rounded up to a multiple of 8:
    encoder_input_ids, attention_mask, encoder_labels, decoder_input_ids (the unmasked ids) [B, L], index [B], and
    with a decoder decoder_labels [B, L] and decoder_visible [B, L, L] (a padded row sees only position 0)."""
    n = [len(it["input_ids"]) for it in items]
    length = -(-max(n) // 8) * 8
    batch_size = len(items)

    def pad(key, value):
        out = np.full((batch_size, length), value, dtype=np.int64)
        for b, it in enumerate(items):
            out[b, :n[b]] = it[key]
        return torch.from_numpy(out)

    batch = {"encoder_input_ids": pad("encoder_input_ids", pad_id), "encoder_labels": pad("encoder_labels", IGNORE),
             "decoder_input_ids": pad("input_ids", pad_id),
             "attention_mask": torch.from_numpy(np.arange(length)[None, :] < np.array(n)[:, None]).long(),
             "index": torch.tensor([it["index"] for it in items])}
    if "decoder_visible" in items[0]:
        batch["decoder_labels"] = pad("decoder_labels", IGNORE)
        visible = np.zeros((batch_size, length, length), dtype=bool)
        visible[:, :, 0] = True
        for b, it in enumerate(items):
            visible[b, :n[b], :n[b]] = it["decoder_visible"]
        batch["decoder_visible"] = torch.from_numpy(visible)
    return batch


def build_text_sampler(texts: TokenizedTexts, *, batch_size: int, seed: int, rank: int, world_size: int,
                       length_buckets: bool, num_buckets: int, same_dataset: bool) -> BucketBatchSampler:
    return BucketBatchSampler(len(texts), batch_size, seed=seed, rank=rank, world_size=world_size,
                              length_keys=passage_key(texts.lengths()) if length_buckets else None,
                              num_buckets=num_buckets, file_index=texts.source, same_file=same_dataset,
                              file_names=texts.paths, content_digest=lambda: texts.content_digest)
