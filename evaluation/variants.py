"""Truncated (Matryoshka) and quantized variants of one evaluation, from one encode.

`evaluate.py --truncate-dim 256 128 --quantize int8 binary --rescore-multiplier 4` scores every task with the full
float32 embeddings (the baseline) and with each variant, each dimension × {float32, int8, binary}, and reports each
variant's retention = score / baseline score.

Through mteb 2.x: its evaluators call an encoder's `encode` and score what comes back. `EmbeddingCache` keeps the
full-width embedding of every (prompt, max length, text) it is asked for, so texts are encoded once, in the
baseline's pass; each variant is one more `mteb.evaluate`, with a `VariantEncoder` answering from the cache:
- truncation: the first d coordinates, re-normalised where the model normalises (`truncate_embeddings`);
- quantized STS: mteb's cosine of the dequantized int8 vectors, or of the ±1 sign vectors for binary
  (= 1 − 2·Hamming/d, so its Spearman is that of Hamming similarity); int8 ranges from both columns of the task
  together, as sentence-transformers' EmbeddingSimilarityEvaluator calibrates. It takes the cosine of the raw codes
  and of {0, 1} bit vectors; we differ because dequantized vectors estimate the float cosine, while raw codes weigh
  each dimension by 1 / its step, and {0, 1} vectors count agreeing 1-bits but not agreeing 0-bits;
- quantized retrieval: mteb's search with `QuantizedIndex` as its index backend (evaluation/quantization.py: corpus
  calibrated and quantized, quantized first stage, optional float rescoring), scored by mteb's pytrec_eval metrics.
  It returns the top 100 per query, sentence-transformers' published setting (top 100, multiplier 4: 400
  rescored), so metrics deeper than @100 do not compare with the float rows (mteb keeps 1000). The first stage's
  top 100 is always reported; with --rescore-multiplier, the rescored ranking too. Reranking tasks are refused at
  start (their type); a Retrieval task that brings its own candidate lists fails at its search.
Each variant's result file lies under results/<model>/<revision>/experiments/<variant>/, mteb's experiment folders.
mteb's own CompressionWrapper is not used: it calibrates each encode call on its own rows (queries on queries) and
scores codes against codes, without rescoring. The cache holds every text's full embedding for the whole run (a
1M-document corpus at 768 dims: about 3 GB).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.search_wrappers import SearchEncoderWrapper

from evaluation.mteb_encoder import BiEncoderForMTEB, collect_texts
from evaluation.quantization import quantized_search, quantized_view
from models.encode import truncate_embeddings

QUANTIZABLE_TYPES = ("Retrieval", "STS")  # mteb task types --quantize has a meaning for
RESCORE_TYPES = ("Retrieval",)
QUANTIZED_TOP_K = 100


@dataclass(frozen=True)
class Variant:
    dim: int | None = None  # None: the model's full width
    precision: str = "float32"  # or int8, binary
    rescore_multiplier: int | None = None

    def applies_to(self, task) -> bool:
        if self.precision == "float32":
            return True
        return task.metadata.type in (RESCORE_TYPES if self.rescore_multiplier else QUANTIZABLE_TYPES)

    def describe(self, full_dim: int) -> dict:
        """The summary.json fields naming this variant."""
        fields = {"dim": self.dim or full_dim, "precision": self.precision}
        if self.rescore_multiplier:  # retrieval only
            fields.update(rescore_multiplier=self.rescore_multiplier,
                          rescored=QUANTIZED_TOP_K * self.rescore_multiplier)
        return fields

    def experiment_kwargs(self) -> dict:
        """mteb's experiment_kwargs: they name the variant's result folder (empty for the baseline)."""
        kwargs = {"embed_dim": self.dim, "quantize": None if self.precision == "float32" else self.precision,
                  "rescore_multiplier": self.rescore_multiplier}
        return {key: value for key, value in kwargs.items() if value is not None}


BASELINE = Variant()


def plan_variants(truncate_dims: list[int], precisions: list[str], rescore_multiplier: int | None) -> list[Variant]:
    """The baseline first (its pass fills the cache), then each dimension in float32, then each dimension ×
    precision, unrescored and, with a multiplier, rescored."""
    dims = [None, *truncate_dims]
    variants = [Variant(dim) for dim in dims]
    for dim in dims:
        for precision in precisions:
            variants.append(Variant(dim, precision))
            if rescore_multiplier:
                variants.append(Variant(dim, precision, rescore_multiplier))
    return variants


def quantize_problem(tasks, precisions: list[str]) -> str | None:
    """Why --quantize cannot apply to these tasks (those of other types, by name), or None."""
    if not precisions:
        return None
    others = [f"{t.metadata.name} ({t.metadata.type})" for t in tasks if t.metadata.type not in QUANTIZABLE_TYPES]
    if not others:
        return None
    return (f"scores {' and '.join(QUANTIZABLE_TYPES)} tasks only; it has no meaning for {', '.join(others)}: "
            "evaluate those in a run without --quantize")


class EmbeddingCache:
    """Full-width float32 embeddings by (prompt, max length, text): each text of a run is encoded once. It also
    remembers which texts each (task, split, subset) encoded, the calibration set of a quantized STS task."""

    def __init__(self, encoder: BiEncoderForMTEB):
        self.encoder = encoder
        self._rows: dict[tuple[str, int], dict[str, np.ndarray]] = {}  # (prompt, max length) -> text -> [D]
        self._groups: dict[tuple[str, str, str], dict[tuple[tuple[str, int], str], None]] = {}

    def embed(self, texts: list[str], *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
              batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
        """[N, D] float32 in input order; texts not seen before in this form are encoded in one call."""
        form = self.encoder.input_form(task_metadata.name, task_metadata.type, prompt_type)
        rows = self._rows.setdefault(form, {})
        missing = list(dict.fromkeys(t for t in texts if t not in rows))
        if missing:
            encoded = self.encoder.encode_texts(missing, task_name=task_metadata.name, task_type=task_metadata.type,
                                                prompt_type=prompt_type, batch_size=batch_size,
                                                show_progress=show_progress).numpy()
            rows.update(zip(missing, encoded))
        self._groups.setdefault((task_metadata.name, hf_split, hf_subset), {}).update(
            dict.fromkeys((form, t) for t in texts))
        if not texts:
            return np.zeros((0, self.encoder.model.dim), dtype=np.float32)
        return np.stack([rows[t] for t in texts])

    def group(self, task_name: str, hf_split: str, hf_subset: str) -> np.ndarray:
        """Every embedding that (task, split, subset) has encoded so far: after the baseline's pass, all of them."""
        keys = self._groups.get((task_name, hf_split, hf_subset))
        if not keys:
            raise RuntimeError(f"{task_name} {hf_split}/{hf_subset}: nothing encoded yet to calibrate on; the "
                               "baseline's pass must run first")
        return np.stack([self._rows[form][text] for form, text in keys])


def variant_meta(meta, variant: Variant):
    """The model's ModelMeta for a variant: its embed_dim and experiment_kwargs (mteb's result folder) set."""
    if variant == BASELINE:
        return meta
    return meta.model_copy(update={"embed_dim": variant.dim or meta.embed_dim,
                                   "experiment_kwargs": variant.experiment_kwargs()})


class VariantEncoder(AbsEncoder):
    """An mteb encoder answering from an `EmbeddingCache`: truncated, and with `quantize_pairs` what an STS pair's
    similarity sees after quantization (`quantized_view`). Retrieval quantizes in `QuantizedIndex` instead."""

    def __init__(self, cache: EmbeddingCache, variant: Variant, quantize_pairs: bool = False):
        self.cache = cache
        self.variant = variant
        self.quantize_pairs = quantize_pairs and variant.precision != "float32"
        self.model_prompts = cache.encoder.model_prompts
        self.mteb_model_meta = variant_meta(cache.encoder.mteb_model_meta, variant)

    def _cut(self, embeddings: np.ndarray) -> np.ndarray:
        normalize = self.cache.encoder.model.settings.normalize
        return truncate_embeddings(torch.from_numpy(embeddings), self.variant.dim, normalize).numpy()

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
               **kwargs) -> np.ndarray:
        texts = collect_texts(inputs, task_metadata.name)
        embeddings = self._cut(self.cache.embed(texts, task_metadata=task_metadata, hf_split=hf_split,
                                                hf_subset=hf_subset, prompt_type=prompt_type,
                                                batch_size=kwargs.get("batch_size"),
                                                show_progress=kwargs.get("show_progress_bar", True)))
        if self.quantize_pairs:
            calibration = self._cut(self.cache.group(task_metadata.name, hf_split, hf_subset))
            embeddings = quantized_view(embeddings, self.variant.precision, calibration)
        return embeddings


class QuantizedIndex:
    """mteb's index backend (IndexEncoderSearchProtocol) over a quantized corpus: `quantized_search`."""

    def __init__(self, precision: str, rescore_multiplier: int | None = None, top_k: int = QUANTIZED_TOP_K):
        self.precision, self.rescore_multiplier, self.top_k = precision, rescore_multiplier, top_k
        self._parts: list[np.ndarray] = []

    def add_documents(self, embeddings, idxs: list[str]) -> None:
        self._parts.append(np.asarray(embeddings, dtype=np.float32))

    def search(self, embeddings, top_k: int, similarity_fn=None, top_ranked=None, query_idx_to_id=None):
        if top_ranked is not None:
            raise ValueError("--quantize: reranking tasks (a candidate list per query) are not supported; evaluate "
                             "them without --quantize")
        scores, indices = quantized_search(np.asarray(embeddings), np.concatenate(self._parts), self.precision,
                                           min(top_k, self.top_k), self.rescore_multiplier)
        return scores.tolist(), indices.tolist()

    def clear(self) -> None:
        self._parts = []


def evaluate_variants(encoder: BiEncoderForMTEB, tasks, variants: list[Variant], *, cache,
                      encode_kwargs: dict) -> dict[Variant, list]:
    """{variant: mteb TaskResults of the tasks it applies to}; one `mteb.evaluate` per variant (and kind of task,
    for quantized ones). The baseline alone runs on `encoder` as it is, without a cache."""
    import mteb

    def run(model, chosen):
        if not chosen:
            return []
        return mteb.evaluate(model, chosen, cache=cache, overwrite_strategy="always",
                             encode_kwargs=encode_kwargs).task_results

    if variants == [BASELINE]:
        return {BASELINE: run(encoder, tasks)}
    embeddings = EmbeddingCache(encoder)
    results = {}
    for variant in variants:
        chosen = [task for task in tasks if variant.applies_to(task)]
        if variant.precision == "float32":
            results[variant] = run(VariantEncoder(embeddings, variant), chosen)
            continue
        index = QuantizedIndex(variant.precision, variant.rescore_multiplier)
        search = SearchEncoderWrapper(VariantEncoder(embeddings, variant), index_backend=index)
        results[variant] = (run(VariantEncoder(embeddings, variant, quantize_pairs=True),
                                [t for t in chosen if t.metadata.type == "STS"])
                            + run(search, [t for t in chosen if t.metadata.type in RESCORE_TYPES]))
    return results
