"""models/text_format.py: the exact strings an instruction format gives (a row's prompt, symmetric data), the same
strings reaching the collator and the length planner, and the formats refused before training (issue 27)."""
from __future__ import annotations

import dataclasses

import pytest

import train
from cli_config import ConfigError
from data.collator import Collator
from data.examples import Example
from data.row_kind import RowKind
from data.sampler_inputs import length_keys
from models.config import ModelConfig, check_text_settings
from models.family import set_up_tokenizer
from models.settings import EncoderSettings
from models.text_format import TextFormat, fill, format_slots
from tests.helpers import save_tiny_decoder, tiny_tokenizer, write_tiny_rows

GEMMA = "<instruct>{}\n<query>{}"  # bge-multilingual-gemma2
E5 = "Instruct: {}\nQuery: {}"  # E5-mistral, gte-Qwen2
DEFAULT = "given a query retrieve passages that answer the query"


def test_formats_give_exact_strings():
    fmt = TextFormat(instruction_format=GEMMA, instruction=DEFAULT)
    assert fmt.query("apple river") == f"<instruct>{DEFAULT}\n<query>apple river"
    assert DEFAULT == "given a query retrieve passages that answer the query"
    assert fmt.query("apple river", "find similar text") == "<instruct>find similar text\n<query>apple river"
    assert fmt.passage("stone cloud") == "stone cloud"  # query -> passage data: passages as they are
    assert TextFormat(passage_prompt="passage: ", instruction_format=E5, instruction=DEFAULT).passage("stone") == \
        "passage: stone"
    symmetric = dataclasses.replace(fmt, format_passages=True)  # STS / NLI / clustering pairs: both sides formatted
    assert symmetric.passage("stone cloud") == "<instruct>given a query retrieve passages that answer the query\n" \
                                               "<query>stone cloud"
    assert symmetric.passage("stone cloud", "find similar text") == "<instruct>find similar text\n<query>stone cloud"
    e5 = TextFormat(instruction_format=E5, instruction="retrieve similar text")
    assert e5.query("dog") == "Instruct: retrieve similar text\nQuery: dog"
    # one slot: the text alone
    assert TextFormat(instruction_format="Query: {}").query("dog") == "Query: dog"
    # without an instruction format nothing changes: prefixes, a row's prompt replacing the query's
    plain = TextFormat(query_prompt="query: ", passage_prompt="passage: ", format_passages=True)
    assert (plain.query("dog"), plain.query("dog", "q2: "), plain.passage("cat")) == ("query: dog", "q2: dog",
                                                                                      "passage: cat")


def test_a_rows_prompt_fills_the_format_with_no_default_instruction():
    """FlagEmbedding formats a query only when a global instruction is set, so a row's `prompt` is silently dropped
    without one; here it fills the format."""
    fmt = TextFormat(instruction_format=GEMMA)  # no default instruction
    assert fmt.query("apple", "find similar text") == "<instruct>find similar text\n<query>apple"
    assert fmt.query("apple") == "<instruct>\n<query>apple"

    def flagembedding(query, prompt, instruction=None):  # their rule, written out (the comparison can fail)
        return GEMMA.format(prompt or instruction, query) if instruction is not None else query

    assert flagembedding("apple", "find similar text") != fmt.query("apple", "find similar text")


def test_the_collator_and_the_length_planner_see_the_formatted_texts():
    tokenizer = tiny_tokenizer("llama")
    set_up_tokenizer(tokenizer, decoder=True, append_eos=True)  # as a decoder model's: unk pads, on the left, EOS
    fmt = TextFormat(instruction_format=E5, instruction="retrieve similar text", format_passages=True)
    items = [{"query": "apple river", "prompt": None, "passages": ["stone cloud", "dog cat"], "teacher_scores": None,
              "label": None},
             {"query": "green", "prompt": "find similar text", "passages": ["paper", "light small house"],
              "teacher_scores": None, "label": None}]
    batch = Collator(tokenizer, 32, 32, text_format=fmt)(items)
    want_q = [fmt.query("apple river"), fmt.query("green", "find similar text")]
    want_p = [fmt.passage(t, it["prompt"]) for it in items for t in it["passages"]]
    for side, texts in (("query", want_q), ("passage", want_p)):
        got = [[i for i, m in zip(ids, mask) if m] for ids, mask in zip(batch[side]["input_ids"].tolist(),
                                                                          batch[side]["attention_mask"].tolist())]
        assert got == tokenizer(texts)["input_ids"]  # exactly the formatted strings, nothing else
    assert want_p[2] == "Instruct: find similar text\nQuery: paper"  # a symmetric row's passages take its prompt
    examples = [Example(it["query"], [it["passages"][0]], [it["passages"][1]], prompt=it["prompt"]) for it in items]
    keys = length_keys(examples, tokenizer, 32, 32, text_format=fmt, progress=False)
    assert keys[:, 1].tolist() == [len(x) for x in tokenizer(want_q)["input_ids"]]


def test_pair_losses_format_passages_by_default():
    assert RowKind.SCORED_PAIRS.formats_passages(None) and RowKind.NLI_PAIRS.formats_passages(None)
    assert not RowKind.GROUPS.formats_passages(None) and RowKind.GROUPS.formats_passages(True)
    assert not RowKind.NLI_PAIRS.formats_passages(False)


@pytest.mark.parametrize("change, key, message", [
    (dict(query_instruction_format="Query: {}", query_instruction=DEFAULT), "query_instruction_format",
     "'Query: {}': has one {} slot, but an instruction is given: it needs two {} slots (the instruction, then the "
     "text)"),
    (dict(query_instruction_format="{}{}{}"), "query_instruction_format", "'{}{}{}': has 3 {} slots"),
    (dict(query_instruction_format="Query:"), "query_instruction_format", "'Query:': has 0 {} slots"),
    (dict(query_instruction_format="{instruction}: {}"), "query_instruction_format",
     "'{instruction}: {}': is not a format of plain {} slots"),
    (dict(query_instruction_format=E5, query_prompt="query: "), "query_prompt",
     "'query: ': --query-instruction-format writes the whole query"),
])
def test_bad_formats_are_refused_naming_the_key(change, key, message):
    ModelConfig(backbone="m", query_instruction_format=E5, query_instruction=DEFAULT).check()  # precondition: fine
    ModelConfig(backbone="m", query_instruction_format="Query: {}").check()  # one slot, no instruction: fine
    with pytest.raises(ConfigError) as e:
        ModelConfig(backbone="m", **change).check()
    assert e.value.key == key and e.value.message.startswith(message), e.value.message


def test_what_the_slot_check_prevents():
    """Without the check, a one-slot format given an instruction drops the text silently, and three slots fail at the
    first batch: the failure the refusal above exists for."""
    assert "Query: {}".format(DEFAULT, "apple") == f"Query: {DEFAULT}"  # noqa: F523 - the query is gone, no error
    with pytest.raises(IndexError):
        "{}{}{}".format(DEFAULT, "apple")  # noqa: F524
    assert format_slots("Query: {}") == 1 and format_slots(E5) == 2
    with pytest.raises(ValueError, match="has one {} slot"):
        fill("Query: {}", "find similar text", "apple")  # a row's prompt with nowhere to go


def test_an_instruction_without_a_format_is_refused():
    check_text_settings(EncoderSettings(query_instruction_format=E5, query_instruction=DEFAULT))  # precondition
    with pytest.raises(ConfigError, match="^query_instruction 'x': fills --query-instruction-format, which neither"):
        check_text_settings(EncoderSettings(query_instruction="x"))


def test_train_py_refuses_a_bad_format_by_flag_and_a_rows_prompt_a_one_slot_format_cannot_hold(tmp_path):
    model = save_tiny_decoder(str(tmp_path / "m"), "llama")
    data = write_tiny_rows(str(tmp_path / "train.jsonl"))  # every fourth row has a prompt
    base = ["--model", model, "--train-data", data, "--loss", "infonce", "--group-size", "3", "--batch-size", "4",
            "--max-steps", "1", "--report-to", "none", "--pooling", "last"]
    with pytest.raises(SystemExit, match=r"^--query-instruction-format '\{\}\{\}\{\}': has 3 \{\} slots"):
        train.main(train.parse_config(train.TrainConfig, [*base, "--output-dir", str(tmp_path / "a"),
                                                          "--query-instruction-format", "{}{}{}"]))
    with pytest.raises(SystemExit, match=r"^data error: .*train.jsonl:1: field 'prompt' 'find similar text': "
                                         r"--query-instruction-format 'Query: \{\}' has one \{\} slot"):
        train.main(train.parse_config(train.TrainConfig, [*base, "--output-dir", str(tmp_path / "b"),
                                                          "--query-instruction-format", "Query: {}"]))
