"""The string the tokenizer sees for a query or a passage: prompts, or an instruction format (decoder embedders).

One place, used by the collator, the length planner, a prepared corpus, evaluation encoding and the prompts saved
for sentence-transformers, so all of them count and embed the same text.

    prompts             query_prompt + text / passage_prompt + text (E5's "query: "; a row's `prompt` replaces
                        the query prompt)
    instruction format  format.format(instruction, text), e.g. '<instruct>{}\\n<query>{}' (bge-multilingual-gemma2)
                        or 'Instruct: {}\\nQuery: {}' (E5-mistral, gte-Qwen2); the instruction is the row's `prompt`
                        when it has one, else the default instruction. A format with one {} holds the text only.
                        Symmetric data (STS, NLI, clustering pairs: both sides the same kind of text) formats
                        passages the same way; otherwise passages get passage_prompt.
"""
from __future__ import annotations

import string
from dataclasses import dataclass


def format_slots(fmt: str) -> int | None:
    """How many `{}` slots a format has (literal braces are `{{` / `}}`), or None when it is not a format string
    of plain `{}` slots (a named or numbered field, a conversion, an unmatched brace)."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return None
    fields = [(name, spec, conv) for _, name, spec, conv in parsed if name is not None]
    if any(name != "" or spec or conv for name, spec, conv in fields):
        return None
    return len(fields)


def format_problem(fmt: str, has_instruction: bool) -> str | None:
    """What is wrong with an instruction format, or None: two `{}` slots (instruction, text), or one (the text) when
    no instruction is given."""
    slots = format_slots(fmt)
    if slots == 2 or (slots == 1 and not has_instruction):
        return None
    if slots is None:
        return "is not a format of plain {} slots (write a literal brace as {{ or }})"
    want = "two {} slots (the instruction, then the text)"
    if slots == 1:
        return f"has one {{}} slot, but an instruction is given: it needs {want}"
    return f"has {slots} {{}} slots; it needs {want}, or one {{}} (the text) when no instruction is given"


def fill(fmt: str, instruction: str | None, text: str) -> str:
    """The format filled with (instruction, text); a one-slot format takes the text alone and refuses an
    instruction (a row's `prompt` would have nowhere to go)."""
    if format_slots(fmt) == 1:
        if instruction:
            raise ValueError(f"the instruction format {fmt!r} has one {{}} slot (the text), so the instruction "
                             f"{instruction!r} (a row's `prompt`) has no place; give the format two slots")
        return fmt.format(text)
    return fmt.format(instruction or "", text)


@dataclass(frozen=True)
class TextFormat:
    """How queries and passages become the text the tokenizer sees (see the module docstring)."""

    query_prompt: str = ""
    passage_prompt: str = ""
    instruction_format: str = ""  # '' = prompts only
    instruction: str = ""  # the default instruction; a row's `prompt` replaces it
    format_passages: bool = False  # symmetric data: passages formatted as queries are

    @property
    def takes_instruction(self) -> bool:
        """Whether a row's `prompt` has a place: a prefix, or a format with an instruction slot."""
        return not self.instruction_format or format_slots(self.instruction_format) == 2

    def query(self, text: str, prompt: str | None = None) -> str:
        """A query, with the row's own `prompt` (None = the default)."""
        if not self.instruction_format:
            return (prompt if prompt is not None else self.query_prompt) + text
        return fill(self.instruction_format, prompt if prompt is not None else self.instruction, text)

    def passage(self, text: str, prompt: str | None = None) -> str:
        """A passage (a positive or negative); on symmetric data formatted as a query, with the row's `prompt`."""
        if self.format_passages and self.instruction_format:
            return self.query(text, prompt)
        return self.passage_prompt + text


def prefix_of(fmt: str, instruction: str) -> str | None:
    """The prefix that the format with this instruction puts before a text, when the format is exactly
    prefix + text (its text slot is last: a sentence-transformers prompt can express it), else None."""
    try:
        prefix = fill(fmt, instruction, "")
    except ValueError:
        return None
    return prefix if fill(fmt, instruction, "\0") == prefix + "\0" else None
