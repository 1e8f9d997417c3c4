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

Reduction of parameter gradients happens once per micro-batch, whatever the number of chunks:
  - DDP: every chunk but the last runs forward+backward under `no_sync`; the last backward all-reduces the
    accumulated sum (the usual gradient-accumulation pattern, so W·(chunks) all-reduces never happen).
  - DeepSpeed: every DeepSpeed backward is a complete micro-step, and ZeRO-2/3 reduce (and partition) gradients
    in each one, so one backward per chunk meant one reduction per chunk. Instead, every chunk but the last
    computes its parameter gradients with `torch.autograd.grad` into an fp32 accumulator, calling the engine's
    module directly under the engine's autocast (no DeepSpeed hook sees it), and the last chunk's surrogate also
    carries Σ_θ ⟨accumulated_θ, θ⟩, whose gradient is the accumulator: one `accelerator.backward` — boundary
    and `engine.step()` as for any micro-batch — reduces the whole gradient once. The accumulator is one fp32
    copy of the trainable parameters' gradients (what DDP holds anyway). ZeRO-3 also gathers each parameter
    for every forward and backward of every chunk; hold_zero3_parameters keeps them gathered from their first
    use in pass 1 until the last backward, so they are gathered once per step. (Calling the chunk backwards
    *inside* one outer backward is what breaks sentence-transformers' CachedMNRL (#3173) and Tevatron (#206)
    under ZeRO: its per-parameter "already reduced" bookkeeping sees the same parameter twice.)
  benchmarks/bench_zero.py counts the collectives of each set-up per step.

Loss scaling: outside DeepSpeed, step 2 goes through `accelerator.backward` (divides by the accumulation
steps, applies the fp16 scaler), so g is already scaled and the surrogates use plain `.backward()`. Under
DeepSpeed, g is unscaled; `engine.backward` scales the last surrogate, accumulator term included (it divides by
the accumulation steps and applies its own loss scale), and clips inside its step as before. Chunk gradients
taken with autograd.grad are computed at the fp16 loss scale, if any, and unscaled into the accumulator.
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
    pieces = [("query", c) for c in split_chunks(batch["query"], chunk)] + \
             [("passage", c) for c in split_chunks(batch["passage"], chunk)]
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        states, grads, loss, after_first_pass = _cache_embedding_grads(accelerator, model, compute_loss, batch,
                                                                       pieces, chunk)
        # 3. re-embed each chunk with grad, same dropout, and backprop the surrogate <g, e>
        for i, ((side, tokens), state) in enumerate(zip(pieces, states)):
            state.restore()
            g = grads[side].pop(0)
            with accelerator.no_sync(model) if i < len(pieces) - 1 else nullcontext():
                surrogate = (_embed(accelerator, model, side, tokens).float() * g.float()).sum()
                surrogate.backward()
    else:
        with hold_zero3_parameters(model) as held:  # ZeRO-3: each parameter gathered once for passes 1 to 3
            states, grads, loss, after_first_pass = _cache_embedding_grads(accelerator, model, compute_loss, batch,
                                                                           pieces, chunk)
            _backward_chunks_deepspeed(accelerator, model, pieces, states, grads, held)
    after_first_pass.restore()
    return loss


def _embed(accelerator, model, side: str, tokens: dict) -> torch.Tensor:
    with accelerator.autocast():
        return model(**{side: tokens})[0 if side == "query" else 1]  # [≤chunk, D]


def _cache_embedding_grads(accelerator, model, compute_loss, batch: dict, pieces: list, chunk: int):
    """Passes 1 and 2 -> (RNG state before each piece, ∂L/∂e split as the pieces, loss, RNG state after pass 1)."""
    device = accelerator.device
    # 1. embeddings without grad, written into one tensor per side (not kept as chunks and concatenated: at 65,536
    #    pairs, thousands of small long-lived chunks fragment the CPU heap by more than the embeddings weigh);
    #    remember each chunk's RNG state
    states, embeddings, filled = [], {}, {"query": 0, "passage": 0}
    with torch.no_grad():
        for side, tokens in pieces:
            states.append(RngState(device))
            e = _embed(accelerator, model, side, tokens)  # [≤chunk, D]
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
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        loss.backward()  # the loss has no parameters under DeepSpeed (train.py refuses such losses)
    else:
        accelerator.backward(loss)
    grads = {"query": list(q.grad.split(chunk)), "passage": list(p.grad.split(chunk))}
    # the loss's graph and the embeddings go on return (with the tiled loss, at 65,536 pairs they are what grows)
    return states, grads, loss.detach(), after_first_pass


HELD = "grad_cache"  # stands for a submodule holding every ZeRO-3 parameter gathered (see hold_zero3_parameters)


def _backward_chunks_deepspeed(accelerator, engine, pieces, states, grads, held) -> None:
    """Pass 3 under DeepSpeed: chunk gradients summed locally, then one engine backward that reduces the total
    (see the module docstring)."""
    from deepspeed.runtime.torch_autocast import autocast_if_enabled

    if engine.zero_optimization_partition_weights() and not held.params:
        # ZeRO-3 too big to hold gathered (deepspeed_grad_cache_warning): one micro-step per chunk, as ZeRO-3 keeps
        # only partitions of the gradients (an accumulator would be a whole copy); slow, every chunk communicates
        for i, ((side, tokens), state) in enumerate(zip(pieces, states)):
            state.restore()
            surrogate = (_embed(accelerator, engine, side, tokens).float() * grads[side].pop(0).float()).sum()
            if i < len(pieces) - 1:
                engine.set_gradient_accumulation_boundary(False)
                engine.backward(surrogate)
            else:
                accelerator.backward(surrogate)  # boundary = accelerator.sync_gradients, then engine.step()
        return
    module = engine.module
    trainable = [p for p in module.parameters() if p.requires_grad]
    scale = loss_scale(engine)  # fp16: chunk gradients in the loss scale's range, accumulated unscaled
    accumulated: list[torch.Tensor | None] = [None] * len(trainable)
    for i, ((side, tokens), state) in enumerate(zip(pieces, states)):
        state.restore()
        g = grads[side].pop(0)
        if i < len(pieces) - 1:  # not the engine's forward: it would hook its output into a DeepSpeed backward
            with autocast_if_enabled(engine):
                e = module(**{side: tokens})[0 if side == "query" else 1]  # [≤chunk, D]
            surrogate = (e.float() * g.float()).sum() * scale
            for j, grad in enumerate(torch.autograd.grad(surrogate, trainable, allow_unused=True)):
                if grad is None:  # not used by this chunk (e.g. a pooler)
                    continue
                grad = grad.float() / scale if scale != 1.0 else grad.float()
                if accumulated[j] is None:
                    accumulated[j] = grad
                else:
                    accumulated[j].add_(grad)
            continue
        surrogate = (_embed(accelerator, engine, side, tokens).float() * g.float()).sum()
        for j, p in enumerate(trainable):
            a, accumulated[j] = accumulated[j], None  # the graph holds it now, and frees it once it has been used
            if a is not None:
                surrogate = surrogate + (a * p.float()).sum()  # ∂/∂p = a: the other chunks' gradient
        held.release()  # ZeRO-3: the last backward partitions the parameters as usual, before engine.step()
        accelerator.backward(surrogate)  # DeepSpeed scales it, reduces once, steps at the boundary


def loss_scale(engine) -> float:
    """The factor engine.backward multiplies a loss by (fp16's dynamic loss scale; 1 for fp32 / bf16), without the
    division by the accumulation steps."""
    scale_if_loss = getattr(engine.optimizer, "scale_if_loss", None)
    if scale_if_loss is None:
        return 1.0
    one = torch.ones((), device=engine.device, requires_grad=True) * 1.0  # a loss-like tensor (it has a grad_fn)
    return float(scale_if_loss(one).detach())


class hold_zero3_parameters:
    """ZeRO-3: from now until release(), no parameter is partitioned again once gathered, so each one is gathered
    once per step instead of for every chunk's forward, re-forward and backward. ZeRO-3 frees a gathered parameter
    only when no submodule is marked active on it; HELD is that mark. Costs the full parameters in memory for the
    step (ZeRO-1/2 hold them always). A no-op for other stages, and when the model has more parameters than
    `stage3_max_live_parameters` allows gathered at once (GradCache then gathers per chunk: slow;
    deepspeed_grad_cache_warning says so at start-up)."""

    def __init__(self, engine):
        self.params = list(engine.module.parameters()) if zero3_can_hold(engine) else []

    def __enter__(self):
        for p in self.params:
            p.ds_active_sub_modules.add(HELD)
        return self

    def release(self) -> None:
        for p in self.params:
            p.ds_active_sub_modules.discard(HELD)
        self.params = []

    def __exit__(self, *exc):
        self.release()


def zero3_can_hold(engine) -> bool:
    if not engine.zero_optimization_partition_weights():
        return False
    numel = sum(p.ds_numel for p in engine.module.parameters())
    return numel <= engine.zero_max_live_parameters()


def deepspeed_grad_cache_warning(accelerator, model, chunk: int) -> str | None:
    """train.py's start-up line when GradCache runs under a DeepSpeed set-up that still communicates per chunk:
    ZeRO-3 with more parameters than its config lets stay gathered (`stage3_max_live_parameters`). None otherwise.
    `model`: the module (under ZeRO-3, transformers may have partitioned it at load: ds_numel is the full count)."""
    if not chunk or accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
    limit = int(float(zero.get("stage3_max_live_parameters", 1e9)))  # DeepSpeed's default
    numel = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    if zero.get("stage", 0) != 3 or numel <= limit:
        return None
    return (f"ZeRO-3 + GradCache is slow here: the model's {numel:,} parameters exceed stage3_max_live_parameters "
            f"({limit:,}), so they cannot stay gathered through the step and each is gathered again for every "
            f"chunk's forward, re-forward and backward; raise it if the full parameters fit in memory, or use ZeRO-2")
