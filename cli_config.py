"""Fill a config dataclass — composed of part configs — from a YAML file and command-line flags (CLI wins).

A config is a dataclass whose fields are either options (a default and a help text, `opt(...)`) or parts: a nested
config dataclass (`part(ModelConfig)`), or a dict of them (`part(loss_options, each=True)`: one options dataclass
per registered loss). Every option is one flat key, `--key-name` on the command line and `key_name:` in YAML: the
field's name, or `opt(..., key="model")` where the attribute is named otherwise (`ModelConfig.backbone` is
`--model`). Keys are unique across parts, and they keep the order of the parts and their fields (`--help` lists
them so). Booleans get `--flag / --no-flag`, lists take several values. Defaults live in the dataclasses.

Written by hand because it is ~150 lines and the libraries that do it (HfArgumentParser, simple-parsing) pull their
own conventions into the config. YAML values are checked against the field's type before the config is built,
and a wrong one is named by file, line and key (`c.yaml:4: save_steps: 1.7 is not a whole number`): argparse
checks the flags' types, nothing checked the file's. `config.sources` maps each key set from the file to its
`file:line`, so range checks (`ConfigError`, raised by a part with the key it is about) can say where a value came
from (`option_name`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml


# ------------------------------------------------------------------ declaring a config
def opt(default, help: str, **metadata):
    """An option: its default and --help text (`key=` when its flag / YAML key is not the attribute's name)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def part(factory: Callable[[], Any], each: bool = False):
    """A part of a composed config: a config dataclass (`factory` is its class), or with each=True a dict of them
    (`factory` makes the dict: e.g. one options dataclass per registered loss)."""
    return field(default_factory=factory, metadata={"part": "dict" if each else "one"})


class ConfigError(ValueError):
    """A value a config part refuses. `key` is the option's flat key (its flag is --key-with-dashes); `message`
    starts with the value ("0: must be ≥ 1"), so a command line prints `--batch-size 0: must be ≥ 1`
    (`describe_error`) and a library caller reads `batch_size 0: must be ≥ 1`."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key} {message}")


def number_above(low: float, inclusive: bool = False):
    """A finite real number > low (≥ low when inclusive)."""
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and (v >= low if inclusive else v > low))


def whole_at_least(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def one_of(choices) -> tuple:
    """(allowed, what it must be) for a choice among `choices` (None allowed when listed)."""
    return (lambda v: v in choices), f"one of {', '.join(c for c in choices if c is not None)}"


def check_rules(config, rules: dict) -> None:
    """rules: {attribute: (allowed(value) -> bool, what it must be)}; ConfigError for the first value refused."""
    for key, (allowed, must_be) in rules.items():
        value = getattr(config, key)
        if not allowed(value):
            raise ConfigError(key, f"{value}: must be {must_be}")


@dataclass(frozen=True)
class Option:
    key: str  # flat key: YAML key, --flag with dashes
    path: tuple  # attribute names / dict keys from the top config down to the field
    field: dataclasses.Field
    hint: Any  # the field's type


def options(config) -> list[Option]:
    """Every option of a config instance, parts expanded, in declaration order."""
    out = []

    def walk(obj, path):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            kind = f.metadata.get("part")
            if kind == "one":
                walk(getattr(obj, f.name), path + (f.name,))
            elif kind == "dict":
                for name, each in getattr(obj, f.name).items():
                    walk(each, path + (f.name, name))
            else:
                out.append(Option(f.metadata.get("key", f.name), path + (f.name,), f, hints[f.name]))

    walk(config, ())
    keys = [o.key for o in out]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"{type(config).__name__}: option keys declared twice: {', '.join(repeated)}")
    return out


def _owner(config, path: tuple):
    obj = config
    for step in path[:-1]:
        obj = obj[step] if isinstance(obj, dict) else getattr(obj, step)
    return obj


def get_option(config, option: Option):
    return getattr(_owner(config, option.path), option.path[-1])


def flat(config) -> dict:
    """{key: value} of every option, in declaration order: the form runs are recorded in (train_config.json,
    checkpoints) and compared in, the same keys a flat config had."""
    return {o.key: get_option(config, o) for o in options(config)}


def build_config(cls, values: dict | None = None, **more):
    """cls() with the options given by flat key set (library callers and tests: `TrainConfig.of(lr=1e-4)`);
    TypeError naming an unknown key."""
    config = cls()
    by_key = {o.key: o for o in options(config)}
    for key, value in {**(values or {}), **more}.items():
        if key not in by_key:
            raise TypeError(f"{cls.__name__}: unknown option {key!r}")
        setattr(_owner(config, by_key[key].path), by_key[key].path[-1], value)
    return config


# ------------------------------------------------------------------ YAML values by type
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


def check_value(value, option: Option):
    """A YAML value converted to the option's type; ValueError when it has another type."""
    kind, elem = _field_kind(option.hint)
    if value is None:
        if option.field.default is None:
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


# ------------------------------------------------------------------ YAML + flags
def parse_config(cls, argv: list[str] | None = None, description: str = ""):
    config = cls()
    declared = options(config)
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="YAML file with any of the options below (flags given here win)")
    for o in declared:
        kind, elem = _field_kind(o.hint)
        kwargs = {"dest": o.key, "default": argparse.SUPPRESS,
                  "help": f"{o.field.metadata.get('help', '')} (default: {get_option(config, o)})"}
        flag = "--" + o.key.replace("_", "-")
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
        by_key = {o.key: o for o in declared}
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            where = f"{config_file}:{lines.get(str(key), '?')}"
            if name not in by_key:
                raise SystemExit(f"{where}: unknown option {key!r}")
            try:
                values[name] = check_value(value, by_key[name])
            except ValueError as e:
                raise SystemExit(f"{where}: {key}: {e}") from None
            sources[name] = where
    values.update(args)
    config = build_config(cls, values)
    config.sources = {k: v for k, v in sources.items() if k not in args}  # keys whose value the file set
    return config


def describe_error(config, error: ConfigError) -> str:
    """A part's ConfigError as the command line says it: `--batch-size 0: must be ≥ 1`, naming the YAML file and
    line when the value came from --config."""
    return f"{option_name(config, error.key)} {error.message}"


def option_name(config, key: str) -> str:
    """How the user set option `key`: `--save-steps`, or `--save-steps (c.yaml:4: save_steps)` from a file."""
    flag = "--" + key.replace("_", "-")
    where = getattr(config, "sources", {}).get(key)
    return f"{flag} ({where}: {key})" if where else flag


def strip_launcher_args(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher appends --local_rank=N; the rank is also in the environment (LOCAL_RANK)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--local_rank", "--local-rank"):
            skip = True
        elif not a.startswith(("--local_rank=", "--local-rank=")):
            out.append(a)
    return out
