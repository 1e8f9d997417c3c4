"""Texts built from several fields, the same way wherever they are built (evaluation, mining, benchmarks)."""
from __future__ import annotations


def mteb_document_text(title: str, text: str) -> str:
    """A retrieval document as mteb gives it to encoders (`mteb._create_dataloaders._corpus_to_dict`)."""
    return (title + " " + text).strip() if title else text.strip()
