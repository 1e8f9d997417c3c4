"""Batch assembly: prompts or the instruction format, tokenisation and padding to the batch's longest sequence
(multiple of 8; on the tokenizer's padding side, the left for decoders)."""
from __future__ import annotations

import torch

from models.text_format import TextFormat


class Collator:
    """list of dataset items -> {query: tokens [B, Lq], passage: tokens [B*G, Lp], teacher_scores?, labels?,
    index?: the items' dataset indices [B], so a bad batch can be traced to its file lines}.

    Texts are written by `text_format` (models/text_format.py; default: the two prompts). Items of a pretokenized
    prepared corpus carry `query_ids` / `passage_ids` (the ids this tokenizer gives the formatted, truncated texts):
    those are only padded; a passage without ids (a random negative) is tokenised."""

    def __init__(self, tokenizer, query_max_len: int = 64, passage_max_len: int = 256, query_prompt: str = "",
                 passage_prompt: str = "", text_format: TextFormat | None = None):
        self.tokenizer = tokenizer
        self.query_max_len, self.passage_max_len = query_max_len, passage_max_len
        self.format = text_format or TextFormat(query_prompt, passage_prompt)

    def _tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, pad_to_multiple_of=8,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer.pad({"input_ids": ids}, padding=True, pad_to_multiple_of=8, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __call__(self, items: list[dict]) -> dict:
        # A row's own `prompt` (BGE data) replaces the query prompt, or fills the instruction format, for that row.
        queries = [self.format.query(it["query"], it["prompt"]) for it in items]
        passages = [self.format.passage(t, it["prompt"]) for it in items for t in it["passages"]]  # group-major, [B*G]
        if "query_ids" in items[0]:
            ids = [x for it in items for x in it["passage_ids"]]
            missing = [j for j, x in enumerate(ids) if x is None]
            if missing:
                filled = self.tokenizer([passages[j] for j in missing], truncation=True,
                                        max_length=self.passage_max_len)["input_ids"]
                for j, x in zip(missing, filled):
                    ids[j] = x
            batch = {"query": self._pad([it["query_ids"] for it in items]), "passage": self._pad(ids)}
        else:
            batch = {"query": self._tokenize(queries, self.query_max_len),
                     "passage": self._tokenize(passages, self.passage_max_len)}
        if items[0]["teacher_scores"] is not None:
            batch["teacher_scores"] = torch.tensor([it["teacher_scores"] for it in items],
                                                   dtype=torch.float32)  # [B, G]
        if items[0]["label"] is not None:
            batch["labels"] = torch.tensor([it["label"] for it in items])  # [B]
        if "index" in items[0]:
            batch["index"] = torch.tensor([it["index"] for it in items])  # [B]
        return batch
