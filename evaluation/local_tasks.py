"""mteb tasks read from local files, so the hub evaluation also runs offline and in CI.

Each class subclasses mteb's `AbsTask*` and only replaces data loading; scores come from mteb's own evaluators
(STS correlations, pytrec_eval retrieval metrics, logistic-regression classification, bootstrapped k-means
V-measure, pair-classification average precision). Files are parsed and validated when the task is built (see
`task_files`), so a bad file fails before any encoding. A task is named after its file stem or folder name; its
dataset revision is a hash of the file contents, so changed data never shares a result with the old data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.clustering import AbsTaskClustering
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata

from evaluation.clustering_metrics import kmeans_scores
from evaluation.task_files import (
    TaskDataError,
    content_hash,
    read_beir,
    read_classification,
    read_labelled_texts,
    read_pair_classification,
    read_sts,
)

UNDETERMINED_LANGUAGE = "und-Zyyy"  # ISO 639-3 "undetermined" + ISO 15924 "undetermined script"


def local_task_metadata(*, name: str, path: Path, revision: str, task_type: str, category: str,
                        main_score: str, split: str) -> TaskMetadata:
    """The fields mteb needs to run and record a task; descriptive fields (domains, license, ...) stay empty."""
    return TaskMetadata(
        name=name,
        description=f"Local {task_type} task read from {path}",
        dataset={"path": str(path), "revision": revision},
        type=task_type,
        category=category,
        modalities=["text"],
        eval_splits=[split],
        eval_langs=[UNDETERMINED_LANGUAGE],
        main_score=main_score,
    )


class _LocalFileTask:
    """Mixin: per-instance metadata (set before AbsTask.__init__) and data that is rebuilt, not downloaded."""

    metadata: TaskMetadata
    path: Path

    def load_data(self, num_proc: int | None = None, *, timer: Any = None, **kwargs: Any) -> None:
        if not self.data_loaded:
            self.dataset = self._build_dataset()
            self.data_loaded = True

    def unload_data(self) -> None:
        # AbsTask.unload_data also drops instance metadata (to undo filtering); ours is the only metadata there is.
        self.dataset = None
        self.data_loaded = False

    def _build_dataset(self):
        raise NotImplementedError


def is_local_task(task) -> bool:
    """True for the tasks of this module (their data comes from files, not the Hub)."""
    return isinstance(task, _LocalFileTask)


def _label_ids(*label_lists: list[str]) -> dict[str, int]:
    """Label name -> integer id over all splits (sorted names), so every split shares one encoding."""
    return {name: i for i, name in enumerate(sorted({label for labels in label_lists for label in labels}))}


class LocalSTSTask(_LocalFileTask, AbsTaskSTS):
    """`sentence1, sentence2, score` pairs; main score cosine Spearman. The score range is taken from the file."""

    def __init__(self, path: str | Path, name: str | None = None, seed: int = 42):
        self.path = Path(path)
        self.pairs = read_sts(self.path)
        self.min_score, self.max_score = min(self.pairs.scores), max(self.pairs.scores)
        self.metadata = local_task_metadata(
            name=name or self.path.stem, path=self.path, revision=content_hash([self.path]), task_type="STS",
            category="t2t", main_score="cosine_spearman", split="test")
        super().__init__(seed=seed)

    def _build_dataset(self) -> DatasetDict:
        pairs = self.pairs
        return DatasetDict({"test": Dataset.from_dict(
            {"sentence1": pairs.sentence1, "sentence2": pairs.sentence2, "score": pairs.scores})})


class LocalRetrievalTask(_LocalFileTask, AbsTaskRetrieval):
    """A BEIR folder and one qrels split; main score nDCG@10. Only judged queries are encoded."""

    def __init__(self, folder: str | Path, split: str = "test", name: str | None = None, seed: int = 42):
        self.path = Path(folder)
        self.split = split
        self.data = read_beir(self.path, split)
        self.metadata = local_task_metadata(
            name=name or self.path.name, path=self.path, revision=content_hash(self.data.files),
            task_type="Retrieval", category="t2t", main_score="ndcg_at_10", split=split)
        super().__init__(seed=seed)

    def _build_dataset(self) -> dict:
        corpus, queries = self.data.corpus, self.data.queries
        return {"default": {self.split: {
            "corpus": Dataset.from_dict({"id": list(corpus), "title": [title for title, _ in corpus.values()],
                                         "text": [text for _, text in corpus.values()]}),
            "queries": Dataset.from_dict({"id": list(queries), "text": list(queries.values())}),
            "relevant_docs": {qid: dict(docs) for qid, docs in self.data.qrels.items()},  # mteb filters in place
            "top_ranked": None,
        }}}


class LocalClassificationTask(_LocalFileTask, AbsTaskClassification):
    """A folder with train and test tables; mteb's protocol (logistic regression on 8 examples per label,
    10 experiments) with its default settings; main score accuracy."""

    def __init__(self, folder: str | Path, name: str | None = None, seed: int = 42):
        self.path = Path(folder)
        self.data = read_classification(self.path)
        self.label_to_id = _label_ids(self.data.train.labels, self.data.test.labels)
        self.metadata = local_task_metadata(
            name=name or self.path.name, path=self.path,
            revision=content_hash([self.data.train_file, self.data.test_file]), task_type="Classification",
            category="t2c", main_score="accuracy", split="test")
        super().__init__(seed=seed)

    def _build_dataset(self) -> DatasetDict:
        return DatasetDict({split: Dataset.from_dict({"text": part.texts,
                                                      "label": [self.label_to_id[x] for x in part.labels]})
                            for split, part in (("train", self.data.train), ("test", self.data.test))})


class _EmbeddingRecorder:
    """Passes everything through to the encoder and keeps the last `encode` output for extra scores."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.embeddings = None

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def encode(self, *args, **kwargs):
        self.embeddings = self._encoder.encode(*args, **kwargs)
        return self.embeddings


class LocalClusteringTask(_LocalFileTask, AbsTaskClustering):
    """`text, label` rows; mteb's bootstrapped k-means V-measure (k = number of labels) as main score, plus
    clustering accuracy (Hungarian matching) and NMI of one k-means on the same embeddings."""

    max_fraction_of_documents_to_embed = None  # embed every row: local sets are small enough

    def __init__(self, path: str | Path, name: str | None = None, seed: int = 42):
        self.path = Path(path)
        self.data = read_labelled_texts(self.path)
        if len(set(self.data.labels)) < 2:
            raise TaskDataError(self.path, "clustering needs at least 2 distinct labels")
        self.label_to_id = _label_ids(self.data.labels)
        self.max_documents_per_cluster = len(self.data.texts)  # each bootstrap sample is as large as the data
        self.metadata = local_task_metadata(
            name=name or self.path.stem, path=self.path, revision=content_hash([self.path]),
            task_type="Clustering", category="t2c", main_score="v_measure", split="test")
        super().__init__(seed=seed)

    def _build_dataset(self) -> DatasetDict:
        return DatasetDict({"test": Dataset.from_dict(
            {"sentences": self.data.texts, "labels": [self.label_to_id[x] for x in self.data.labels]})})

    def _evaluate_subset(self, model, data_split: Dataset, **kwargs: Any) -> dict:
        recorder = _EmbeddingRecorder(model)
        scores = super()._evaluate_subset(recorder, data_split, **kwargs)
        scores.update(kmeans_scores(recorder.embeddings, data_split[self.label_column_name], seed=self.seed))
        return scores


class LocalPairClassificationTask(_LocalFileTask, AbsTaskPairClassification):
    """Sentence pairs labelled positive/negative (NLI: entailment vs the rest); main score max average precision
    over mteb's similarity functions."""

    def __init__(self, path: str | Path, name: str | None = None, seed: int = 42):
        self.path = Path(path)
        self.pairs = read_pair_classification(self.path)
        self.metadata = local_task_metadata(
            name=name or self.path.stem, path=self.path, revision=content_hash([self.path]),
            task_type="PairClassification", category="t2t", main_score="max_ap", split="test")
        super().__init__(seed=seed)

    def _build_dataset(self) -> DatasetDict:
        pairs = self.pairs
        return DatasetDict({"test": Dataset.from_dict(
            {"sentence1": pairs.sentence1, "sentence2": pairs.sentence2, "labels": pairs.labels})})


LOCAL_TASK_KINDS = {
    "sts": LocalSTSTask,
    "retrieval": LocalRetrievalTask,
    "classification": LocalClassificationTask,
    "clustering": LocalClusteringTask,
    "pair_classification": LocalPairClassificationTask,
}


def build_local_task(kind: str, path: str, split: str | None = None):
    """A local task of `kind` from `path`; `split` only applies to retrieval (qrels/<split>.tsv, default test)."""
    if kind not in LOCAL_TASK_KINDS:
        raise ValueError(f"unknown local task kind {kind!r}; choose one of {', '.join(LOCAL_TASK_KINDS)}")
    if split is not None and kind != "retrieval":
        raise ValueError(f"a split can only be chosen for retrieval tasks, not {kind!r} ({path}@{split})")
    if kind == "retrieval":
        return LocalRetrievalTask(path, split=split or "test")
    return LOCAL_TASK_KINDS[kind](path)
