"""In-process evaluation for train.py: STS Spearman and retrieval nDCG@10 without mteb's task machinery.

It encodes through `BiEncoderForMTEB.encode_texts` — the same prompts, lengths and `BiEncoder.encode` the mteb path
uses — and scores with the same functions mteb calls (sklearn's paired cosine + scipy's Spearman for STS; mteb's
cosine matrix + pytrec_eval's nDCG@10 for retrieval), so its numbers equal `evaluate.py`'s for the same file.
No result files, no weight hashing, no dataset objects: cheap enough to run every few hundred steps.
"""
from __future__ import annotations

from pathlib import Path

import pytrec_eval
import torch
from mteb.similarity_functions import cos_sim
from mteb.types import PromptType
from scipy.stats import spearmanr
from sklearn.metrics.pairwise import paired_cosine_distances

from evaluation.mteb_encoder import BiEncoderForMTEB
from evaluation.task_files import read_beir, read_sts
from models.bi_encoder import BiEncoder

RETRIEVAL_DEPTH = 100  # documents kept per query; nDCG@10 only reads the first 10


def mteb_document_text(title: str, text: str) -> str:
    """A retrieval document as mteb gives it to encoders (`mteb._create_dataloaders._corpus_to_dict`)."""
    return (title + " " + text).strip() if title else text.strip()


def sts_spearman(model: BiEncoder, path: str | Path, batch_size: int = 32) -> float:
    """Spearman correlation between gold scores and cosine similarity of the pairs in an STS file."""
    pairs = read_sts(path)
    encoder = BiEncoderForMTEB(model)
    name = Path(path).stem  # the local task's name, so task-name prompts resolve as in evaluate.py
    first, second = (encoder.encode_texts(texts, task_name=name, task_type="STS", batch_size=batch_size)
                     for texts in (pairs.sentence1, pairs.sentence2))
    cosine = 1 - paired_cosine_distances(first.numpy(), second.numpy())
    return float(spearmanr(pairs.scores, cosine)[0])


def retrieval_ndcg10(model: BiEncoder, beir_dir: str | Path, split: str = "test", batch_size: int = 32) -> float:
    """Mean nDCG@10 over the judged queries of a BEIR folder, full-corpus cosine search."""
    data = read_beir(beir_dir, split)
    encoder = BiEncoderForMTEB(model)
    name = Path(beir_dir).name
    query_ids, doc_ids = list(data.queries), list(data.corpus)
    queries = encoder.encode_texts(list(data.queries.values()), task_name=name, task_type="Retrieval",
                                   prompt_type=PromptType.query, batch_size=batch_size)
    documents = encoder.encode_texts([mteb_document_text(t, x) for t, x in data.corpus.values()], task_name=name,
                                     task_type="Retrieval", prompt_type=PromptType.document, batch_size=batch_size)
    top = torch.topk(cos_sim(queries, documents), k=min(RETRIEVAL_DEPTH, len(doc_ids)), dim=1)
    run = {qid: {doc_ids[j]: float(s) for s, j in zip(scores.tolist(), idx.tolist())}
           for qid, scores, idx in zip(query_ids, top.values, top.indices)}
    per_query = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.10"}).evaluate(run)
    return sum(q["ndcg_cut_10"] for q in per_query.values()) / len(per_query)
