"""Shared by the offline data-pipeline scripts (scripts/mine_hard_negatives.py, score_with_teacher.py,
split_by_length.py, filter_consistency.py, prepare_nli.py) and benchmarks/bench_mining.py: corpus reading,
all-or-nothing output files, the on-disk corpus-embedding cache and exact inner-product top-k search.

Outputs are checked before any model loads (`check_output`: not a folder, not an input, an existing file only
with --overwrite), written to a temporary file beside the target and renamed into place only when complete, so a
run that stops on bad data or a crash never leaves a partial file under the final name; re-running with the same
inputs, seed and --overwrite rewrites the same file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from data.examples import DataError, Example
from data.document_text import mteb_document_text
from evaluation.task_files import read_table
from models.checks import check_model_folder, check_tokenizer_folder, find_model
from models.encode import encode_precision
from models.loading import load_bi_encoder
from models.revision import checkpoint_revision
from storage.files import atomic_outputs, check_output_file, write_jsonl  # noqa: F401 (re-exported)
from storage.folders import OutputError


# ------------------------------------------------------------------ output
def add_overwrite_flag(parser, what: str = "--output file") -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an existing {what}; without this flag an existing one is refused (never "
                             "overwritten), and with it the old one is replaced only once the new one is complete")


def check_output(path: str, inputs: list[tuple[str, str | None]], overwrite: bool, flag: str = "--output") -> None:
    """A script's output file checked before any model loads (storage/files.py); SystemExit `error: ...`.
    inputs: (flag, path) of everything the script reads."""
    try:
        check_output_file(path, inputs, overwrite=overwrite, flag=flag)
    except OutputError as e:
        raise SystemExit(f"error: {e}") from None


def check_model(name_or_path: str, flag: str, tokenizer_only: bool = False) -> None:
    """A --model / --teacher / --tokenizer checked before any work: a complete local folder (only its tokenizer
    files with tokenizer_only), a cached Hub id, or (online) a valid Hub id; SystemExit `error: ...` otherwise."""
    try:
        path = find_model(name_or_path, download=False)
        if path is not None:
            (check_tokenizer_folder if tokenizer_only else check_model_folder)(path)
    except ValueError as e:
        raise SystemExit(f"error: {flag} {e}") from None


def example_to_row(ex: Example) -> dict:
    """An Example as a BGE JSONL row (scores and prompt only when present)."""
    row = {"query": ex.query, "pos": ex.pos, "neg": ex.neg}
    if ex.pos_scores is not None:
        row["pos_scores"] = ex.pos_scores
    if ex.neg_scores is not None:
        row["neg_scores"] = ex.neg_scores
    if ex.prompt is not None:
        row["prompt"] = ex.prompt
    return row


# ------------------------------------------------------------------ corpus
def read_corpus(path: str | Path) -> list[str]:
    """Passages of a .jsonl/.tsv/.csv file with a `text` column (and optional `title`, joined like MTEB)."""
    rows = read_table(path, ("text",))
    texts = []
    for line, row in rows:
        title, text = row.get("title") or "", row["text"]
        if not isinstance(text, str) or not isinstance(title, str):
            raise DataError(f"{path}:{line}: fields 'title' and 'text' must be strings")
        texts.append(mteb_document_text(title, text))  # title + " " + text, as MTEB joins a BEIR document
    return texts


def group_texts(examples: list[Example]) -> list[str]:
    """Every positive and negative text of the rows: the corpus when no corpus file is given."""
    return [t for ex in examples for t in ex.pos + ex.neg]


def corpus_from(corpus_path: str | None, examples: list[Example], input_path: str) -> "Corpus":
    """The --corpus file's passages, else every pos/neg text of the input rows."""
    if corpus_path:
        return Corpus(read_corpus(corpus_path), corpus_path)
    return Corpus(group_texts(examples), f"the pos/neg texts of {input_path}")


class Corpus:
    """Unique, non-empty passages in first-seen order, with a text -> row lookup."""

    def __init__(self, texts: list[str], source: str):
        self.source = source
        self.index: dict[str, int] = {}
        for t in texts:
            if t.strip():
                self.index.setdefault(t, len(self.index))
        self.texts = list(self.index)
        self.duplicates = sum(1 for t in texts if t.strip()) - len(self.texts)
        if not self.texts:
            raise DataError(f"{source}: the corpus is empty (no non-empty passages)")

    def __len__(self) -> int:
        return len(self.texts)

    def describe(self) -> str:
        dup = f" ({self.duplicates} duplicate texts merged)" if self.duplicates else ""
        return f"corpus: {len(self)} passages from {self.source}{dup}"


# ------------------------------------------------------------------ encoding
def query_texts(examples: list[Example], settings) -> list[str]:
    """Queries as training writes them (data/collator.py): with the model's prompt or instruction format
    (EncoderSettings.text_format), a row's own `prompt` winning."""
    fmt = settings.text_format()
    return [fmt.query(ex.query, ex.prompt) for ex in examples]


def load_encoder(name_or_path: str):
    """A BiEncoder (folder or Hub id, read as evaluation reads it) on the GPU when there is one."""
    return load_bi_encoder(name_or_path).to("cuda" if torch.cuda.is_available() else "cpu")


def cache_dir_for(output: str, cache_dir: str | None, no_cache: bool) -> str | None:
    """--cache-dir, else <output folder>/.embedding_cache; None with --no-cache."""
    if no_cache:
        return None
    return cache_dir or str(Path(output).resolve().parent / ".embedding_cache")


def encode_passages_cached(model, texts: list[str], cache_dir: str | Path | None, batch_size: int = 64) -> torch.Tensor:
    """Passage embeddings [N, D] (fp32, CPU); cached on disk under a key of model revision + settings + texts.

    The key hashes the weights in memory (models/revision.py checkpoint_revision), the encoding settings
    and every text in order, so any change to model, prompt, length or corpus misses the cache.
    """
    if cache_dir is None:
        return model.encode(texts, batch_size, model.settings.passage_prompt, model.settings.passage_max_len,
                            show_progress=True)
    precision = encode_precision("auto", next(model.parameters()).device)  # what model.encode below runs in
    digest = hashlib.sha256(checkpoint_revision(model, model.settings, precision).encode())
    for t in texts:
        digest.update(t.encode())
        digest.update(b"\0")
    path = Path(cache_dir) / f"passages-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        emb = np.load(path)
        if emb.shape == (len(texts), model.dim):
            print(f"passage embeddings: reused cache {path}")
            return torch.from_numpy(emb)
    emb = model.encode(texts, batch_size, model.settings.passage_prompt, model.settings.passage_max_len,
                       show_progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, emb.numpy())
    os.replace(tmp, path)
    print(f"passage embeddings: cached in {path}")
    return emb


def passage_embeddings(model, texts: list[str], corpus: Corpus, corpus_emb: torch.Tensor,
                       batch_size: int = 64) -> torch.Tensor:
    """Embeddings [len(texts), D] of passages: corpus rows where the text is in the corpus, else encoded."""
    out = torch.empty(len(texts), corpus_emb.shape[1])
    missing = [i for i, t in enumerate(texts) if t not in corpus.index]
    found = [i for i, t in enumerate(texts) if t in corpus.index]
    if found:
        out[found] = corpus_emb[[corpus.index[texts[i]] for i in found]]
    if missing:
        out[missing] = model.encode([texts[i] for i in missing], batch_size, model.settings.passage_prompt,
                                    model.settings.passage_max_len)
    return out


# ------------------------------------------------------------------ search
SEARCH_BACKENDS = ("auto", "faiss", "faiss-gpu", "torch")


def search(queries: torch.Tensor, corpus: torch.Tensor, k: int, backend: str = "auto",
           chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k: queries [Q, D], corpus [N, D] -> (scores [Q, k], indices [Q, k]), best first.

    auto: faiss on the GPU when faiss has one, else torch top-k on CUDA in query chunks, else faiss CPU
    (IndexFlatIP). `torch` also runs on CPU (same results, used by the tests).
    """
    import faiss
    from tqdm.auto import tqdm

    if not 0 < k <= corpus.shape[0]:
        raise ValueError(f"k must be in 1..{corpus.shape[0]} (corpus size), got {k}")
    if backend == "auto":
        backend = ("faiss-gpu" if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
                   else "torch" if torch.cuda.is_available() else "faiss")
    if backend in ("faiss", "faiss-gpu"):
        index = faiss.IndexFlatIP(corpus.shape[1])
        if backend == "faiss-gpu":
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(np.ascontiguousarray(corpus.numpy(), dtype=np.float32))
        scores, ids = index.search(np.ascontiguousarray(queries.numpy(), dtype=np.float32), k)
        return scores, ids
    if backend != "torch":
        raise ValueError(f"search backend must be one of {SEARCH_BACKENDS}, got {backend!r}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    corpus_d = corpus.to(device, torch.float32)
    scores, ids = [], []
    for start in tqdm(range(0, queries.shape[0], chunk_size), desc="search", leave=False):
        sims = queries[start:start + chunk_size].to(device, torch.float32) @ corpus_d.T  # [C, N]
        top = sims.topk(k, dim=1)
        scores.append(top.values.cpu())
        ids.append(top.indices.cpu())
    return torch.cat(scores).numpy(), torch.cat(ids).numpy()


def parse_range(text: str) -> tuple[int, int]:
    """'10-100' -> (10, 100): 0-based ranks start (inclusive) to end (exclusive), as BGE's --range_for_sampling."""
    try:
        start, end = (int(x) for x in text.split("-"))
    except ValueError:
        raise ValueError(f"range must look like START-END, e.g. 10-100; got {text!r}") from None
    if not 0 <= start < end:
        raise ValueError(f"range {text!r}: need 0 <= START < END")
    return start, end
