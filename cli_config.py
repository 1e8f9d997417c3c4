"""Fill a config dataclass from a YAML file and command-line flags (CLI wins). Defaults live in the dataclass.

Every field becomes `--field-name`; its help text is the field's `help` metadata. Booleans get
`--flag / --no-flag`, lists take several values. Written by hand because it is 40 lines and the libraries
that do it (HfArgumentParser, simple-parsing) pull their own conventions into the config.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

import yaml


def _field_kind(tp):
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (list, tuple) or tp in (list, tuple):
        return "list", (args[0] if args and args[0] is not Ellipsis else str)
    if origin is typing.Union or (origin is not None and type(None) in typing.get_args(tp)):
        return _field_kind(args[0]) if args else ("scalar", str)
    return ("bool", bool) if tp is bool else ("scalar", tp)


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
    values = {}
    config_file = args.pop("config", None)
    if config_file:
        with open(config_file, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key in loaded:
            if key.replace("-", "_") not in names:
                raise SystemExit(f"{config_file}: unknown option {key!r}")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update(args)
    try:
        return cls(**values)
    except TypeError as e:
        raise SystemExit(f"config: {e}") from None
