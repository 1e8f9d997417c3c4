"""How text becomes a vector: the settings a BiEncoder carries and saves with its weights."""
from __future__ import annotations

from dataclasses import dataclass, field

from models.pooling import POOLING_MODES
from models.text_format import TextFormat


@dataclass
class EncoderSettings:
    """How text becomes a vector; saved with the weights so a checkpoint evaluates with no extra flags."""

    pooling: str = "mean"
    normalize: bool = True
    query_max_len: int = 64
    passage_max_len: int = 256
    query_prompt: str = ""
    passage_prompt: str = ""
    # Prompts by MTEB task name or task type (e.g. {"STS": "...", "SciFact-query": "..."}); used by evaluation.
    # With an instruction format they are the instructions that fill it.
    task_prompts: dict = field(default_factory=dict)
    # Decoder embedders (models/text_format.py): queries as query_instruction_format.format(instruction, query)
    query_instruction_format: str = ""
    query_instruction: str = ""
    # The tokenizer appends EOS to every text (models/family.py); None = the backbone family's default
    append_eos: bool | None = None

    def __post_init__(self):
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")

    def text_format(self, format_passages: bool = False) -> TextFormat:
        """How queries and passages are written for the tokenizer; format_passages: symmetric data."""
        return TextFormat(self.query_prompt or "", self.passage_prompt or "", self.query_instruction_format or "",
                          self.query_instruction or "", format_passages)
