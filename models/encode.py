"""Embedding a list of texts for evaluation and data tools: batches of similar token length, results in input order."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

PRECISIONS = ("auto", "fp32", "bf16")


def encode_precision(precision: str, device: torch.device | str) -> str:
    """What `encode` runs in: "auto" is bf16 autocast on a CUDA device that supports it, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    cuda = torch.device(device).type == "cuda"
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"


@torch.inference_mode()
def encode(model, texts: list[str], batch_size: int = 64, prompt: str = "", max_length: int | None = None,
           show_progress: bool = False, chunk_size: int = 4096, precision: str = "auto",
           batch_tokens: int | None = None, truncate_dim: int | None = None) -> torch.Tensor:
    """Embed texts with a BiEncoder for evaluation -> [N, H] fp32 on CPU, in input order ([N, truncate_dim] when
    given: see `truncate_embeddings`).

    Texts go longest-first by characters, then in chunks of `chunk_size`; each chunk is tokenised once and its
    batches hold texts of similar *token* length (exact within the chunk, unlike sorting by characters), padded
    only to the batch's longest — to a multiple of 8 on CUDA for tensor cores, not at all beyond it on CPU,
    where every pad token costs full compute. A batch holds `batch_size` texts, or more when they are short: as
    many as fit in `batch_tokens` padded positions (default on CUDA: batch_size × max_length, i.e. the activation
    and attention memory of `batch_size` full-length texts). Short texts then go hundreds at a time, which keeps
    a GPU busy where 32-text batches of 15-token sentences leave it waiting on kernel launches. Default on CPU,
    and `batch_tokens=0`: exactly `batch_size` texts per batch (big batches ran slower on CPU: 414 vs 517
    STS-B sentences/s, benchmarks/README.md). Memory stays flat on large corpora. On CUDA the next chunk is
    tokenised in a thread while the GPU works, and results come back once per chunk rather than once per batch
    (each copy to the host waits for the GPU). `precision`: see `encode_precision` (bf16 = autocast: weights
    stay fp32, matrix products run in bf16).
    """
    max_length = max_length or model.settings.passage_max_len
    check_truncate_dim(truncate_dim, model.dim)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    by_chars = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = [by_chars[s:s + chunk_size] for s in range(0, len(texts), chunk_size)]

    def tokenize(chunk: list[int]) -> list[list[int]]:
        return model.tokenizer([prompt + texts[i] for i in chunk], truncation=True, max_length=max_length,
                               return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    out = torch.empty(len(texts), model.dim, dtype=torch.float32)
    use_bf16 = encode_precision(precision, device) == "bf16"
    pad_id = model.tokenizer.pad_token_id or 0
    left = getattr(model.tokenizer, "padding_side", "right") == "left"  # decoders (models/family.py)
    multiple = 8 if on_cuda else 1
    if batch_tokens is None:
        batch_tokens = batch_size * max_length if on_cuda else 0  # padded positions per batch
    progress = tqdm(total=len(texts), desc="encode", disable=not show_progress, leave=False)
    # Tokenising in a second thread only pays when the model runs elsewhere; on CPU it would take cores from it.
    prefetch = ThreadPoolExecutor(max_workers=1) if on_cuda else None
    pending = prefetch.submit(tokenize, chunks[0]) if prefetch and chunks else None
    # One autocast context around all batches, so the weights are cast to bf16 once, not once per batch.
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        for c, chunk in enumerate(chunks):
            ids = pending.result() if prefetch else tokenize(chunk)
            if prefetch and c + 1 < len(chunks):
                pending = prefetch.submit(tokenize, chunks[c + 1])
            by_tokens = sorted(range(len(chunk)), key=lambda j: -len(ids[j]))  # stable: ties keep char order
            embeddings = []
            s = 0
            while s < len(chunk):
                width = _round_up(len(ids[by_tokens[s]]), multiple)  # the batch's longest: sorted longest first
                count = max(batch_size, batch_tokens // width)
                rows = [ids[j] for j in by_tokens[s:s + count]]
                s += len(rows)
                input_ids, attention_mask = _pad(rows, pad_id, multiple, pin=on_cuda, left=left)
                embeddings.append(model.embed(input_ids.to(device, non_blocking=True),
                                              attention_mask.to(device, non_blocking=True)))
                progress.update(len(rows))
            out[[chunk[j] for j in by_tokens]] = torch.cat(embeddings).float().cpu()  # [len(chunk), H]
    progress.close()
    if prefetch:
        prefetch.shutdown()
    model.train(was_training)
    return truncate_embeddings(out, truncate_dim, model.settings.normalize)


def _pad(rows: list[list[int]], pad_id: int, multiple: int, pin: bool,
         left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (input_ids [B, L], attention_mask [B, L]), padded (on the right, or the left as the
    tokenizer of a decoder pads) to the longest rounded up to `multiple`. By hand because the ids are already
    tokenised lists; `tokenizer.pad` would want one dict per row."""
    lengths = torch.tensor([len(r) for r in rows])  # [B]
    width = _round_up(int(lengths.max()), multiple)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, L]
    for r, row in enumerate(rows):
        if left:
            input_ids[r, width - len(row):] = torch.tensor(row)
        else:
            input_ids[r, :len(row)] = torch.tensor(row)
    positions = torch.arange(width)
    attention_mask = (positions >= width - lengths[:, None] if left else positions < lengths[:, None]).long()  # [B, L]
    if pin:
        input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
    return input_ids, attention_mask


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def check_truncate_dim(truncate_dim: int | None, dim: int) -> None:
    """ValueError naming `truncate_dim` unless it is None or 1 … dim."""
    if truncate_dim is not None and not 1 <= truncate_dim <= dim:
        raise ValueError(f"truncate_dim {truncate_dim}: must be from 1 to the model's dimension {dim}")


def truncate_embeddings(embeddings: torch.Tensor, truncate_dim: int | None, normalize: bool) -> torch.Tensor:
    """[N, H] -> [N, truncate_dim]: the first coordinates (Matryoshka, arXiv 2205.13147), re-normalised to unit length
    when the model normalises. sentence-transformers' `truncate_dim` cuts after its Normalize module and leaves the
    cut vectors shorter than 1; cosine does not care, but dot products and int8 ranges do. None: unchanged."""
    if truncate_dim is None or truncate_dim == embeddings.shape[-1]:
        return embeddings
    cut = embeddings[..., :truncate_dim]
    return torch.nn.functional.normalize(cut, dim=-1) if normalize else cut.clone()
