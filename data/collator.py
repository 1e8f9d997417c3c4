"""Batch assembly: prompts, tokenisation and padding to the batch's longest sequence (multiple of 8)."""
from __future__ import annotations

import torch


class Collator:
    """list of GroupedDataset items -> {query: tokens [B, Lq], passage: tokens [B*G, Lp], teacher_scores?, labels?,
    index?: the items' dataset indices [B], so a bad batch can be traced to its file lines}."""

    def __init__(self, tokenizer, query_max_len: int = 64, passage_max_len: int = 256, query_prompt: str = "",
                 passage_prompt: str = ""):
        self.tokenizer = tokenizer
        self.query_max_len, self.passage_max_len = query_max_len, passage_max_len
        self.query_prompt, self.passage_prompt = query_prompt, passage_prompt

    def _tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, pad_to_multiple_of=8,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __call__(self, items: list[dict]) -> dict:
        # A row's own `prompt` (BGE data) replaces the query prompt for that row.
        queries = [(it["prompt"] if it["prompt"] is not None else self.query_prompt) + it["query"] for it in items]
        passages = [self.passage_prompt + t for it in items for t in it["passages"]]  # group-major, [B*G]
        batch = {"query": self._tokenize(queries, self.query_max_len),
                 "passage": self._tokenize(passages, self.passage_max_len)}
        if items[0]["teacher_scores"] is not None:
            batch["teacher_scores"] = torch.tensor([it["teacher_scores"] for it in items], dtype=torch.float32)  # [B, G]
        if items[0]["label"] is not None:
            batch["labels"] = torch.tensor([it["label"] for it in items])  # [B]
        if "index" in items[0]:
            batch["index"] = torch.tensor([it["index"] for it in items])  # [B]
        return batch
