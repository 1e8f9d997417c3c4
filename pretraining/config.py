"""pretrain.py's options by part: the model, the texts, the objective (optimisation and output: training/config.py)."""
from __future__ import annotations

from dataclasses import dataclass

from cli_config import ConfigError, check_rules, number_above, one_of, opt, whole_at_least
from models.config import ATTENTION, DTYPES

OBJECTIVES = ("retromae", "mlm")
DEFAULT_ENCODER_RATIO = {"retromae": 0.3, "mlm": 0.15}  # RetroMAE's encoder; BERT's MLM


@dataclass
class MAEModelConfig:
    backbone: str = opt("", "model to pretrain (local folder or Hub id; with --from-config only its tokenizer)",
                        key="model")
    from_config: str = opt(None, "pretrain from random weights built from this config (path or Hub id)")
    max_len: int = opt(512, "max tokens per text, special tokens included (longer texts are cut)")
    gradient_checkpointing: bool = opt(False, "recompute the encoder's activations in backward to save memory")
    attn_implementation: str = opt("sdpa", "the encoder's attention: sdpa | eager | flash_attention_2")
    dtype: str = opt("auto", "dtype the weights are loaded in: auto | float32 | bfloat16 | float16")

    def check(self) -> None:
        if not self.backbone:
            raise ConfigError("model", "is required (a local folder or Hub id)")
        check_rules(self, {"max_len": (whole_at_least(3), "≥ 3 ([CLS], a token, [SEP])"),
                           "attn_implementation": one_of(ATTENTION), "dtype": one_of(DTYPES)})


@dataclass
class TextDataConfig:
    train_data: list[str] = opt([], "texts: .txt (one passage a line), .jsonl / .tsv / .csv / .parquet with a text "
                                    "column, a BEIR folder (its corpus.jsonl), or one prepared text corpus "
                                    "(python -m scripts.prepare_texts); each path is one source")
    text_field: str = opt("text", "the column holding the text (a row with a `title` too is read as title + text)")
    length_buckets: bool = opt(True, "batch texts of similar length together (less padding)")
    num_buckets: int = opt(0, "length buckets (0 = as many as the data allows, up to 64)")
    same_dataset_batches: bool = opt(False, "every batch from one source")
    num_workers: int = opt(0, "DataLoader worker processes (masking runs in them)")

    def check(self) -> None:
        if not self.train_data:
            raise ConfigError("train_data", "is required (text files, a BEIR folder or a prepared text corpus)")
        check_rules(self, {"num_buckets": (whole_at_least(0), "≥ 0"), "num_workers": (whole_at_least(0), "≥ 0")})


def _open_ratio(v) -> bool:
    return number_above(0)(v) and v < 1


@dataclass
class MAEConfig:
    objective: str = opt("retromae", "retromae: encoder MLM + a one-layer decoder that rebuilds the text from the "
                                     "[CLS] vector | mlm: encoder MLM only (BERT)")
    encoder_mask_ratio: float = opt(None, "share of the encoder's tokens masked, by whole words (default: 0.3 for "
                                          "retromae, 0.15 for mlm)")
    decoder_mask_ratio: float = opt(0.5, "share of the context each decoder row does not see, by whole words "
                                         "(retromae)")
    bow_weight: float = opt(0.0, "DupMAE: weight of the bag-of-words term on the encoder's max-pooled MLM logits "
                                 "(0 = off)")

    def check(self) -> None:
        check_rules(self, {
            "objective": one_of(OBJECTIVES),
            "encoder_mask_ratio": (lambda v: v is None or _open_ratio(v), "a number strictly between 0 and 1"),
            "decoder_mask_ratio": (_open_ratio, "a number strictly between 0 and 1"),
            "bow_weight": (number_above(0, inclusive=True), "a finite number ≥ 0 (0 = off)")})

    @property
    def encoder_ratio(self) -> float:
        return self.encoder_mask_ratio if self.encoder_mask_ratio is not None else DEFAULT_ENCODER_RATIO[self.objective]

    @property
    def decoder_ratio(self) -> float | None:
        """None for plain MLM: no decoder rows are drawn."""
        return self.decoder_mask_ratio if self.objective == "retromae" else None
