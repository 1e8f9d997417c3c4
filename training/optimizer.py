"""AdamW with decoupled weight decay on weight matrices only, and a linear warm-up then linear decay to 0."""
from __future__ import annotations

import math

import torch
from transformers import get_linear_schedule_with_warmup

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")  # BERT / RoBERTa / Llama names


def build_optimizer(named_parameters, *, lr: float, weight_decay: float, warmup_ratio: float, total_steps: int):
    """named_parameters: (name, parameter) pairs; frozen ones are left out. -> (optimizer, scheduler)."""
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    groups = [{"params": [p for n, p in named if not n.endswith(NO_DECAY)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if n.endswith(NO_DECAY)], "weight_decay": 0.0}]
    # an empty group (LoRA adapters have no biases or norms) is left out: DeepSpeed drops it, and the schedule, built
    # here with one learning rate per group, would then have one too many
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler
