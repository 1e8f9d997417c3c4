"""Our BiEncoder (or any folder it saved) as an mteb 2.x encoder.

mteb hands `encode` a DataLoader of `{"text": [...]}` batches plus the task's metadata and whether the texts are
queries or documents; for retrieval corpora mteb has already joined each document as `(title + " " + text).strip()`
(`mteb._create_dataloaders._corpus_to_dict`, the join its sentence-transformers wrapper sees). We collect the texts
and run `BiEncoder.encode` — the same code training's periodic evaluation uses — so both report identical numbers.

Prompts come from the model's saved settings and can be overridden: `query_prompt` (key "query"),
`passage_prompt` (key "document") and `task_prompts`, whose keys may be a task name ("SciFact"), a task type
("Retrieval", "STS"), or either suffixed with "-query"/"-document". The most specific key wins, in mteb's order:
task-promptType, task, type-promptType, type, promptType. This covers E5 ("query: "/"passage: "), BGE (a query
instruction for retrieval only: {"Retrieval-query": ...}) and INSTRUCTOR (one instruction per task or task type).

A model with an instruction format (decoder embedders, models/text_format.py) reads `task_prompts` as
instructions: queries and the texts of symmetric tasks (STS, classification, clustering, pair classification) are
written as the format filled with the task's instruction — the same precedence over task name and type, else the
model's default instruction — and documents get the passage prompt (no instruction), as E5-mistral and
bge-multilingual-gemma2 are evaluated.

Queries are truncated at `settings.query_max_len`, everything else (documents and symmetric tasks such as STS) at
`settings.passage_max_len`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from models.bi_encoder import BiEncoder
from models.encode import encode_precision
from models.loading import load_bi_encoder
from models.revision import checkpoint_revision
from models.settings import EncoderSettings
from models.text_format import fill

logger = logging.getLogger(__name__)

# Settings that only change how texts are prompted or truncated: they can be overridden on an in-memory model.
_ENCODING_OVERRIDES = ("query_prompt", "passage_prompt", "query_max_len", "passage_max_len", "query_instruction",
                       "query_instruction_format")


def model_prompts(settings: EncoderSettings) -> dict[str, str]:
    """mteb's prompt dictionary for `settings`: task/type keys plus "query" and "document" (empty ones dropped).
    With an instruction format, the instructions: task/type keys plus "query" for the default instruction."""
    if settings.query_instruction_format:
        instructions = {k: v for k, v in settings.task_prompts.items() if v}
        return {**instructions, PromptType.query.value: settings.query_instruction}
    prompts = {key: value for key, value in settings.task_prompts.items() if value}
    if settings.query_prompt:
        prompts[PromptType.query.value] = settings.query_prompt
    if settings.passage_prompt:
        prompts[PromptType.document.value] = settings.passage_prompt
    return prompts


def _default_name(path: str) -> str:
    """mteb wants "organisation/model": Hub ids already are; a folder becomes local/<parent>__<folder>."""
    if not os.path.isdir(path):
        return path if "/" in path else f"local/{path}"
    folder = Path(path).resolve()
    return f"local/{folder.parent.name}__{folder.name}"


class BiEncoderForMTEB(AbsEncoder):
    """mteb encoder around a BiEncoder: prompts by task/type/query-or-document, length-sorted batches, cosine.

    Args:
        model: a BiEncoder, or a folder / Hub id to load one from.
        revision: expected revision (from a ModelMeta); a mismatch with the loaded weights is logged.
        name: model name for mteb's result files (default: Hub id, or local/<parent>__<folder>).
        device: where to run; default: a loaded model goes to CUDA when available, else CPU; an in-memory model
            stays on its device.
        precision: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "fp32" or "bf16"; part of the revision.
        batch_size: used when mteb's encode_kwargs do not set one.
        task_prompts: merged over the saved `task_prompts` (same keys win).
        **overrides: EncoderSettings fields (None = keep the saved value). On an in-memory model only the prompt and
            length fields can be overridden; pooling/normalisation are part of the weights' meaning.
    """

    def __init__(self, model: BiEncoder | str, revision: str | None = None, *, name: str | None = None,
                 device: str | torch.device | None = None, precision: str = "auto", batch_size: int = 32,
                 task_prompts: dict[str, str] | None = None, **overrides):
        overrides = {k: v for k, v in overrides.items() if v is not None}
        self._path = None
        if isinstance(model, (str, os.PathLike)):
            self._path = str(model)
            model = load_bi_encoder(self._path, **overrides)
            settings = model.settings
        else:
            unsupported = sorted(set(overrides) - set(_ENCODING_OVERRIDES))
            if unsupported:
                raise ValueError(f"cannot override {', '.join(unsupported)} on an already built model; "
                                 f"only {', '.join(_ENCODING_OVERRIDES)}")
            settings = dataclasses.replace(model.settings, **overrides)
        if task_prompts:
            settings = dataclasses.replace(settings, task_prompts={**settings.task_prompts, **task_prompts})
        if device is None and self._path is None:
            device = next(model.parameters()).device  # an in-memory model stays where its owner put it
        self.model = model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        self.precision = encode_precision(precision, next(self.model.parameters()).device)
        self.settings = settings  # prompts and lengths used here; pooling/normalize live in model.settings
        self.model_prompts = model_prompts(settings)
        self.batch_size = batch_size
        self._name = name or (_default_name(self._path) if self._path else "local/bi-encoder")
        self._overrides = {**overrides, **({"task_prompts": task_prompts} if task_prompts else {})}
        self._meta: ModelMeta | None = None
        if revision is not None and revision != self.mteb_model_meta.revision:
            logger.warning("requested revision %s but the loaded weights/settings hash to %s",
                           revision, self.mteb_model_meta.revision)

    # ---------------------------------------------------------------- metadata
    @property
    def mteb_model_meta(self) -> ModelMeta:
        """Built on first use (hashing the weights takes a moment), then fixed for this wrapper's lifetime."""
        if self._meta is None:
            self._meta = self._build_meta()
        return self._meta

    @mteb_model_meta.setter
    def mteb_model_meta(self, meta: ModelMeta) -> None:  # ModelMeta.load_model assigns it
        self._meta = meta

    def _build_meta(self) -> ModelMeta:
        params = list(self.model.backbone.parameters())
        embeddings = self.model.backbone.get_input_embeddings()
        return ModelMeta(
            loader=_load_from_meta if self._path else None,
            loader_kwargs={"path": self._path, **self._overrides} if self._path else {},
            name=self._name,
            revision=checkpoint_revision(self.model, self.settings, self.precision),
            release_date=None,
            languages=None,
            n_parameters=sum(p.numel() for p in params),
            n_embedding_parameters=embeddings.weight.numel() if embeddings is not None else None,
            memory_usage_mb=round(sum(p.numel() * p.element_size() for p in params) / 2**20, 1),
            max_tokens=max(self.settings.query_max_len, self.settings.passage_max_len),
            embed_dim=self.model.dim,
            license=None,
            open_weights=None,
            public_training_code=None,
            public_training_data=None,
            framework=["PyTorch", "Sentence Transformers"],
            similarity_fn_name=ScoringFunction.COSINE,
            use_instructions=bool(self.model_prompts),
            training_datasets=None,
            modalities=["text"],
            model_type=["dense"],
        )

    # ---------------------------------------------------------------- encoding
    def prompt_for(self, task_name: str | None, task_type: str | None, prompt_type: PromptType | None) -> str:
        """The prompt mteb's precedence picks from `model_prompts` ("" when none applies)."""
        task = SimpleNamespace(name=task_name, type=task_type)
        key = get_prompt_name(self.model_prompts, task, prompt_type)  # type: ignore[arg-type]
        return self.model_prompts[key] if key else ""

    def input_form(self, task_name: str | None, task_type: str | None,
                   prompt_type: PromptType | None) -> tuple[str, int]:
        """(what surrounds a text, max length) for that task and side: with the text, all its embedding depends on.
        Without an instruction format that is the prompt put before the text; with one, the format and the
        instruction it is filled with (documents: the passage prompt), as `written` applies them."""
        max_length = self.settings.query_max_len if prompt_type == PromptType.query else self.settings.passage_max_len
        fmt = self.settings.query_instruction_format
        if not fmt:
            return self.prompt_for(task_name, task_type, prompt_type), max_length
        if prompt_type == PromptType.document:
            return f"document\0{self.settings.passage_prompt or ''}", max_length
        return f"format\0{fmt}\0{self.prompt_for(task_name, task_type, PromptType.query)}", max_length

    def encode_texts(self, texts: list[str], *, task_name: str | None = None, task_type: str | None = None,
                     prompt_type: PromptType | None = None, batch_size: int | None = None,
                     show_progress: bool = False) -> torch.Tensor:
        """Embed plain texts the way `encode` would for that task -> [N, D] fp32 (CPU), in input order."""
        prompt, max_length = self.input_form(task_name, task_type, prompt_type)
        prompt = "" if self.settings.query_instruction_format else prompt  # the format is applied by `written`
        return self.model.encode(self.written(list(texts), task_name, task_type, prompt_type),
                                 batch_size=batch_size or self.batch_size, prompt=prompt, max_length=max_length,
                                 show_progress=show_progress, precision=self.precision)

    def written(self, texts: list[str], task_name: str | None, task_type: str | None,
                prompt_type: PromptType | None) -> list[str]:
        """With an instruction format, the texts as the model reads them for that task: documents with the passage
        prompt, every other text (queries, symmetric tasks) as the format filled with the task's instruction (else
        the default one). Without one, the texts as they are (`encode` puts `prompt_for`'s prompt before them)."""
        fmt = self.settings.query_instruction_format
        if not fmt:
            return texts
        if prompt_type == PromptType.document:
            return [(self.settings.passage_prompt or "") + t for t in texts]
        instruction = self.prompt_for(task_name, task_type, PromptType.query)  # task, type, else the default
        return [fill(fmt, instruction, t) for t in texts]

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        """mteb's entry point: all texts of the DataLoader -> [N, D] float32 array in input order."""
        texts = collect_texts(inputs, task_metadata.name)
        embeddings = self.encode_texts(texts, task_name=task_metadata.name, task_type=task_metadata.type,
                                       prompt_type=prompt_type, batch_size=kwargs.get("batch_size"),
                                       show_progress=kwargs.get("show_progress_bar", True))
        return embeddings.numpy()


def collect_texts(inputs, task_name: str) -> list[str]:
    """The texts of mteb's DataLoader of `{"text": [...]}` batches, in order."""
    texts: list[str] = []
    for batch in inputs:
        if "text" not in batch:
            raise ValueError(f"{task_name}: only text inputs are supported, got {sorted(batch)}")
        texts.extend(batch["text"])
    return texts


def _load_from_meta(model_name: str, revision: str | None = None, *, path: str, device: str | None = None,
                    **overrides) -> BiEncoderForMTEB:
    """`ModelMeta.load_model` entry: rebuild the wrapper from the folder recorded in the metadata."""
    return BiEncoderForMTEB(path, revision, name=model_name, device=device, **overrides)
