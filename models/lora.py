"""LoRA through peft: the one place adapters are added, merged and loaded (models/config.py `build_model` calls it).

    add_lora(backbone, rank, ...)       the backbone wrapped by peft: every base weight frozen, a rank-r adapter on
                                        each target module (LoRA's B starts at 0, so the model starts as its base)
    merged_state_dict(backbone, sd)     the base model's weights with every adapter added in (W + α/r · B A), from a
                                        state dict gathered beforehand (DeepSpeed ZeRO-3 included)
    load_adapter(base, folder)          a saved adapter folder applied to its base and merged

A saved adapter folder is peft's own (adapter_config.json naming the base model, adapter_model.safetensors) beside
the tokenizer and the sentence-transformers files, so `SentenceTransformer(folder)` and peft load it as well.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from cli_config import ConfigError

ADAPTER = "default"  # peft's name for the one adapter


def is_lora(backbone) -> bool:
    from peft import PeftModel

    return isinstance(backbone, PeftModel)


def _linear_like(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's dotted name ends with the target."""
    return name == target or name.endswith("." + target)


def _frozen_modules(backbone: nn.Module) -> list[str]:
    """Modules whose weights are frozen before LoRA (BERT's pooler: it never reaches an embedding)."""
    return [n for n, m in backbone.named_modules()
            if n and any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]


def check_targets(backbone: nn.Module, targets: list[str], modules_to_save: list[str]) -> None:
    """ConfigError naming the option unless every target names linear layers of the model and every module to save
    exists; the message lists the names that do."""
    frozen = _frozen_modules(backbone)
    names = [n for n, _ in backbone.named_modules()
             if n and not any(n == f or n.startswith(f + ".") for f in frozen)]
    linear = sorted({n.rsplit(".", 1)[-1] for n in names if _linear_like(backbone.get_submodule(n))})
    for target in targets:
        found = [n for n in names if _matches(n, target)]
        if not found:
            raise ConfigError("lora_target_modules", f"{' '.join(targets)}: {target!r} is not a module of "
                                                     f"{type(backbone).__name__}; its linear layers are named "
                                                     f"{', '.join(linear)}")
        other = [n for n in found if not _linear_like(backbone.get_submodule(n))]
        if other:
            kind = type(backbone.get_submodule(other[0])).__name__
            raise ConfigError("lora_target_modules", f"{' '.join(targets)}: {other[0]} is a {kind}, not a linear "
                                                     f"layer; LoRA here adapts linear layers ({', '.join(linear)}); "
                                                     "train other modules in full with --lora-modules-to-save")
    tops = sorted({n.split(".")[0] for n in names} | {n.rsplit(".", 1)[-1] for n in names})
    for module in modules_to_save:
        if not any(_matches(n, module) for n in names):
            raise ConfigError("lora_modules_to_save", f"{' '.join(modules_to_save)}: {module!r} is not a module of "
                                                      f"{type(backbone).__name__}; its modules include "
                                                      f"{', '.join(tops[:40])}")


def add_lora(backbone: nn.Module, *, rank: int, alpha: float, dropout: float, targets: list[str],
             modules_to_save: list[str]) -> nn.Module:
    """The backbone wrapped in a peft LoRA model (see the module docstring); ConfigError for targets it lacks."""
    from peft import LoraConfig, get_peft_model

    check_targets(backbone, targets, modules_to_save)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        exclude_modules=_frozen_modules(backbone) or None,
                        modules_to_save=list(modules_to_save) or None)
    base = getattr(backbone, "name_or_path", "") or ""
    model = get_peft_model(backbone, config)
    # the saved adapter names its base: a local folder by its absolute path, so the adapter loads from anywhere
    model.peft_config[ADAPTER].base_model_name_or_path = os.path.abspath(base) if os.path.isdir(base) else base
    return model


def merged_state_dict(backbone: nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The base model's own weight names and values with each adapter merged in: W + scaling · B A (transposed for
    fan-in-fan-out layers), computed in fp32 and stored in W's dtype; modules to save replace their originals.
    `state_dict`: the peft model's full state (as gathered under DeepSpeed); default its own."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    state = backbone.state_dict() if state_dict is None else state_dict
    layers = {n[len(prefix):]: m for n, m in backbone.named_modules() if isinstance(m, LoraLayer)}
    out = {}
    for key, value in state.items():
        name = key.removeprefix(prefix)
        if ".lora_" in name or ".original_module." in name:
            continue
        if f".modules_to_save.{ADAPTER}." in name:
            out[name.replace(f".modules_to_save.{ADAPTER}.", ".")] = value
            continue
        if ".base_layer." in name:
            module, _, param = name.partition(".base_layer.")
            if param == "weight":
                layer = layers[module]
                a = state[f"{prefix}{module}.lora_A.{ADAPTER}.weight"].float()  # [r, in]
                b = state[f"{prefix}{module}.lora_B.{ADAPTER}.weight"].float()  # [out, r]
                delta = (b @ a) * layer.scaling[ADAPTER]  # [out, in]
                value = (value.float() + (delta.T if layer.fan_in_fan_out else delta).to(value.device)).to(value.dtype)
            out[f"{module}.{param}"] = value
            continue
        out[name] = value
    return out


def load_adapter(base: nn.Module, folder: str) -> nn.Module:
    """`base` with the adapter saved in `folder` applied and merged (a plain transformers model)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder).merge_and_unload()
