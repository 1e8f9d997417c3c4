"""The computed memory budget of Gemma2-9B + LoRA r 32 on one 80 GB GPU (issue 27): computed, not measured.

    python -m benchmarks.lora_budget

Parameter counts are exact: the architecture is built from Gemma2-9B's published config on the meta device (no
memory) and wrapped by peft as configs/train/bge-multilingual-gemma2-lora.yaml does. Activation bytes per token are
an estimate from the tensors a decoder layer saves for backward (listed below); they are what a GPU measurement
must confirm (`torch.cuda.max_memory_allocated`).
"""
from __future__ import annotations

GB = 1e9
GPU = 80 * GB
RESERVED = 3 * GB  # CUDA context, cuBLAS workspace, allocator slack (a rule of thumb)
GEMMA2_9B = dict(vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=256)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LENGTH, GROUP = 512, 8  # the recipe: 512-token queries and passages, 1 positive + 7 negatives


def counts() -> tuple[int, int]:
    """(parameters of Gemma2-9B, of its rank-32 adapters on the seven projections)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, Gemma2Config

    with torch.device("meta"):
        model = AutoModel.from_config(Gemma2Config(**GEMMA2_9B), attn_implementation="eager")
    base = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=TARGETS))
    return base, sum(p.numel() for p in model.parameters() if p.requires_grad)


def activation_bytes_per_token() -> tuple[float, float]:
    """(bytes kept per token for the whole forward with checkpointing, bytes per token of the one layer being
    recomputed in backward), bf16 activations, eager attention at 512 tokens."""
    h, i, heads, hd = 3584, 14336, 16, 256
    kept = GEMMA2_9B["num_hidden_layers"] * h * 2  # each layer's input, bf16
    attention = (4 * 2 + 4) * heads * LENGTH  # eager, soft-capped: 4 bf16 score tensors and an fp32 softmax per row
    projections = (heads * hd * 2 + 2 * 8 * hd) * 2 + heads * hd * 2 + h * 2  # q, k, v (+ rotated), output, o_proj
    mlp = 4 * i * 2 + i * 2  # gate, up, activation, product; down_proj's input
    lora = 5 * (h * 2 + h) + (heads * hd * 2 + heads * hd) + (i * 2 + i)  # dropout copies and masks of 7 inputs
    norms = 4 * h * 4 + 4 * h * 2  # four RMSNorms computed in fp32, residual sums
    return kept, attention + projections + mlp + lora + norms


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # no options; --help says what it is
    base, adapter = counts()
    weights = base * 2  # bf16
    adapter_state = adapter * 4 * 4  # fp32 weights (peft keeps adapters in fp32), gradients, Adam m and v
    kept, layer = activation_bytes_per_token()
    per_token = kept + layer
    free = GPU - RESERVED - weights - adapter_state
    tokens = free / per_token
    per_query = LENGTH * (1 + GROUP)  # a query and its 8 passages, at full length
    print(f"Gemma2-9B: {base:,} parameters, bf16 weights {weights / GB:.1f} GB")
    print(f"LoRA r 32 on {' '.join(TARGETS)}: {adapter:,} parameters ({100 * adapter / base:.2f}%); fp32 weights, "
          f"gradients and Adam moments {adapter_state / GB:.2f} GB")
    print(f"activations with gradient checkpointing: {kept / 1e3:.0f} kB per token kept (42 layer inputs) + "
          f"{layer / 1e3:.0f} kB per token for the layer recomputed in backward = {per_token / 1e3:.0f} kB per token")
    print(f"left for activations on 80 GB after {RESERVED / GB:.0f} GB reserved: {free / GB:.1f} GB = "
          f"{tokens:,.0f} tokens = {tokens / per_query:.1f} queries, each with its {GROUP} passages (1 positive + "
          f"{GROUP - 1} negatives), all {LENGTH} tokens long")
    for chunk in (32, 64):
        chunk_bytes = chunk * LENGTH * per_token
        rest = free - chunk_bytes
        # per query: 9 embeddings and their gradients in fp32; the dense loss: a B × 8B similarity matrix, ~4 copies
        emb, sim = (1 + GROUP) * 3584 * 4 * 2, GROUP * 4 * 4
        queries = (-emb + (emb ** 2 + 4 * sim * rest) ** 0.5) / (2 * sim)
        print(f"GradCache chunks of {chunk} sequences: {chunk_bytes / GB:.1f} GB of activations; the remaining "
              f"{rest / GB:.1f} GB hold {queries:,.0f} queries (embeddings + dense similarity matrix), "
              f"{rest / emb:,.0f} with the tiled loss")


if __name__ == "__main__":
    main()
