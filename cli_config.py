"""Fill a config dataclass from a YAML file and command-line flags (CLI wins). Defaults live in the dataclass.

Every field becomes `--field-name`; its help text is the field's `help` metadata. Booleans get
`--flag / --no-flag`, lists take several values. Written by hand because it is 40 lines and the libraries
that do it (HfArgumentParser, simple-parsing) pull their own conventions into the config.

YAML values are checked against the field's type before the config is built, and a wrong one is named by file,
line and key (`c.yaml:4: save_steps: 1.7 is not a whole number`): argparse checks the flags' types, nothing
checked the file's. `config.sources` maps each field set from the file to its `file:line`, so later range checks
can name where a value came from.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

import yaml


def opt(default, help: str):
    """A config field with its --help text."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


class ConfigError(ValueError):
    """A config value wrong on its own, found by a part's `check()`. `field` is the dataclass attribute, `message`
    what its value must be ("must be ≥ 1"); the command line names its flag and the value (`option_name`)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def _field_kind(tp):
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (list, tuple) or tp in (list, tuple):
        return "list", (args[0] if args and args[0] is not Ellipsis else str)
    if origin is typing.Union or (origin is not None and type(None) in typing.get_args(tp)):
        return _field_kind(args[0]) if args else ("scalar", str)
    return ("bool", bool) if tp is bool else ("scalar", tp)


def _scalar(value, tp):
    """value as a `tp` (int, float, str, bool), or raise ValueError saying what it is not."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not a whole number")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not text (quote it)")


def check_value(value, field: dataclasses.Field, hint):
    """A YAML value converted to the field's type; ValueError when it has another type."""
    kind, elem = _field_kind(hint)
    if value is None:
        if field.default is None:
            return None
        raise ValueError("is empty (null)")
    if kind == "list":
        if isinstance(value, str):
            value = [value]  # `train_data: a.jsonl` = [a.jsonl]
        if not isinstance(value, list):
            raise ValueError(f"{value!r} is not a list")
        return [_scalar(v, elem) for v in value]
    return _scalar(value, elem)


def _key_lines(text: str) -> dict[str, int]:
    """Top-level key -> its 1-based line in a YAML mapping (composed only: no tag is constructed)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


def read_yaml(path: str) -> tuple[dict, dict[str, int]]:
    """(mapping, key -> line) of a YAML config; SystemExit naming the file (and line) when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"--config {path}: cannot read it ({e})") from None
    try:
        lines, loaded = _key_lines(text), yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e)
        raise SystemExit(f"{where}: not a valid YAML config: {problem}") from None
    if loaded is None:
        return {}, {}
    if not isinstance(loaded, dict):
        raise SystemExit(f"{path}: a YAML config is a mapping of option: value, got {type(loaded).__name__}")
    return loaded, lines


def parse_config(cls, argv: list[str] | None = None, description: str = ""):
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="YAML file with any of the options below (flags given here win)")
    for f in dataclasses.fields(cls):
        kind, elem = _field_kind(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{f.metadata.get('help', '')} (default: {default})"}
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif kind == "list":
            parser.add_argument(flag, nargs="+", type=elem, **kwargs)
        else:
            parser.add_argument(flag, type=elem, **kwargs)
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    values, sources = {}, {}
    config_file = args.pop("config", None)
    if config_file:
        loaded, lines = read_yaml(config_file)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            where = f"{config_file}:{lines.get(str(key), '?')}"
            if name not in fields:
                raise SystemExit(f"{where}: unknown option {key!r}")
            try:
                values[name] = check_value(value, fields[name], hints[name])
            except ValueError as e:
                raise SystemExit(f"{where}: {key}: {e}") from None
            sources[name] = where
    values.update(args)
    try:
        config = cls(**values)
    except TypeError as e:
        raise SystemExit(f"config: {e}") from None
    config.sources = {k: v for k, v in sources.items() if k not in args}  # fields whose value the file set
    return config


def option_name(config, name: str) -> str:
    """How the user set field `name`: `--save-steps`, or `--save-steps (c.yaml:4: save_steps)` from a file."""
    flag = "--" + name.replace("_", "-")
    where = getattr(config, "sources", {}).get(name)
    return f"{flag} ({where}: {name})" if where else flag
