"""GradCache: a contrastive step over a batch too big to hold activations for, with the exact same gradient.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (arXiv:2101.06983).
The loss L(e_1 … e_M) depends on the model only through the M embeddings e_m = f_θ(x_m), so

    ∂L/∂θ = Σ_m (∂L/∂e_m)ᵀ · ∂e_m/∂θ = ∂/∂θ Σ_m ⟨ g_m , f_θ(x_m) ⟩   with g_m = ∂L/∂e_m held constant.

Three passes, at most N sequences in memory with activations at any time (N = --grad-cache-chunk):
  1. embed every chunk of N sequences without grad (queries and passages chunked separately), recording the
     RNG state before each chunk;
  2. compute the loss on all embeddings (gathered across processes if on) and backprop it to the embeddings
     only: g = ∂L/∂e, [B, D] and [B*G, D];
  3. for each chunk, restore its RNG state (so dropout draws the same masks, as torch.utils.checkpoint does),
     re-embed it with grad and backprop the surrogate ⟨g_chunk, e_chunk⟩, which adds that chunk's share of
     ∂L/∂θ to the parameter gradients.

Reduction of parameter gradients happens once per step:
  - DDP: every chunk but the last runs forward+backward under `no_sync`; the last backward all-reduces the
    accumulated sum (the usual gradient-accumulation pattern, so W·(chunks) all-reduces never happen).
  - DeepSpeed: each chunk is a separate `engine.backward` with the gradient-accumulation boundary set to False
    for all but the last, which goes through `accelerator.backward` (boundary = end of the optimizer step,
    then `engine.step()`). Each backward is a complete DeepSpeed micro-step (prologue, hooks, epilogue), which
    is what ZeRO-1/2/3 support; what breaks sentence-transformers' CachedMNRL (#3173) and Tevatron (#206) is
    calling the chunk backwards *inside* one outer backward, where ZeRO's per-parameter "already reduced"
    bookkeeping sees the same parameter twice. ZeRO-2/3 reduce-scatter gradients at every backward (they
    cannot defer), so there the communication is once per chunk; ZeRO-1 and DDP communicate once per step.

Loss scaling: outside DeepSpeed, step 2 goes through `accelerator.backward` (divides by the accumulation
steps, applies the fp16 scaler), so g is already scaled and the surrogates use plain `.backward()`. Under
DeepSpeed, g is unscaled and `engine.backward` scales each surrogate (it divides by the accumulation steps
and applies its own loss scale).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from accelerate.utils import DistributedType


class RngState:
    """CPU and (if present) current-CUDA-device generator states, to replay dropout exactly."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


def split_chunks(tokens: dict, chunk: int) -> list[dict]:
    """{input_ids: [n, L], attention_mask: [n, L], ...} -> list of the same dicts with ≤ chunk rows each."""
    n = next(iter(tokens.values())).shape[0]
    return [{k: v[start:start + chunk] for k, v in tokens.items()} for start in range(0, n, chunk)]


def grad_cache_step(accelerator, model, compute_loss, batch: dict, chunk: int) -> torch.Tensor:
    """One micro-batch's forward and backward in chunks of `chunk` sequences; returns the loss (detached).

    `compute_loss(q [B, D], p [B*G, D]) -> scalar` is the whole loss, gathering included. The gradients that
    land on the parameters are those of `accelerator.backward(compute_loss(*model(batch)))`.
    """
    device = accelerator.device
    pieces = [("query", c) for c in split_chunks(batch["query"], chunk)] + \
             [("passage", c) for c in split_chunks(batch["passage"], chunk)]

    def embed(side: str, tokens: dict) -> torch.Tensor:
        with accelerator.autocast():
            return model(**{side: tokens})[0 if side == "query" else 1]  # [≤chunk, D]

    # 1. embeddings without grad, written into one tensor per side (not kept as chunks and concatenated: at 65,536
    #    pairs, thousands of small long-lived chunks fragment the CPU heap by more than the embeddings weigh);
    #    remember each chunk's RNG state
    states, embeddings, filled = [], {}, {"query": 0, "passage": 0}
    with torch.no_grad():
        for side, tokens in pieces:
            states.append(RngState(device))
            e = embed(side, tokens)  # [≤chunk, D]
            if side not in embeddings:
                rows = next(iter(batch[side].values())).shape[0]
                embeddings[side] = e.new_empty((rows, e.shape[1]))  # [B, D] or [B*G, D]
            embeddings[side][filled[side]:filled[side] + e.shape[0]] = e
            filled[side] += e.shape[0]
            del e
    after_first_pass = RngState(device)
    q = embeddings["query"].requires_grad_()  # [B, D]
    p = embeddings["passage"].requires_grad_()  # [B*G, D]

    # 2. loss on all embeddings, backprop to the embeddings (and to the loss's own parameters, if any)
    loss = compute_loss(q, p)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed:
        loss.backward()  # the loss has no parameters under DeepSpeed (train.py refuses such losses)
    else:
        accelerator.backward(loss)
    grads = {"query": list(q.grad.split(chunk)), "passage": list(p.grad.split(chunk))}
    loss = loss.detach()
    del q, p, embeddings  # the graph and the embeddings (with the tiled loss, at 65,536 pairs they are what grows)

    # 3. re-embed each chunk with grad, same dropout, and backprop the surrogate <g, e>
    for i, ((side, tokens), state) in enumerate(zip(pieces, states)):
        last = i == len(pieces) - 1
        state.restore()
        g = grads[side].pop(0)
        if deepspeed:
            if not last:
                model.set_gradient_accumulation_boundary(False)  # model is the DeepSpeedEngine
            surrogate = (embed(side, tokens).float() * g.float()).sum()
            if last:
                accelerator.backward(surrogate)  # boundary = accelerator.sync_gradients, then engine.step()
            else:
                model.backward(surrogate)
        else:
            with accelerator.no_sync(model) if not last else nullcontext():
                surrogate = (embed(side, tokens).float() * g.float()).sum()
                surrogate.backward()
    after_first_pass.restore()
    return loss
