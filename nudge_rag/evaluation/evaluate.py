"""Evaluate any retriever on a set of judged queries: graded NDCG@k, Recall@k, MRR@k, hit rate.

::

    retriever (LlamaIndex, LangChain, ours, or a callable)      dataset (ours, LlamaIndex JSON,
          │                                                      BEIR folder, or (query, ids) pairs)
          └──── ranked ids per query, max_concurrency at a time ───┘
                    └─ per-query metrics (trec_eval conventions) ─▶ EvaluationResult
                                                                      └─ compare(before, after)

:func:`evaluate` accepts

* a LlamaIndex retriever (``aretrieve(query)`` → ``NodeWithScore`` list; ids are ``node_id``);
* a LangChain retriever, or any runnable (``ainvoke(query)`` → ``Document`` list; ids are
  ``doc.id``);
* a LlamaIndex ``VectorStoreIndex`` or LangChain ``VectorStore`` (``as_retriever`` is called with
  top-k = ``k``), or a :class:`~nudge_rag.NudgeEmbeddingFinetuner` (its ``retriever(k)``);
* a plain callable ``query -> ranked ids`` (sync or async). Items may be ids, ``(id, score)``
  pairs, nodes, documents or dicts.

With ``id_key=``, an item's id is read from ``metadata[id_key]`` when it is there (falling back to
the node / document id): use it when the store's ids are not the ids of the dataset.

:func:`llamaindex_retriever_evaluator` runs LlamaIndex's own ``RetrieverEvaluator`` on the same
queries, so users can set its numbers beside ours. Its conventions differ (checked on
llama-index-core 0.14.25):

* relevance is binary: ``expected_ids`` is a list; grades are dropped (ids with grade > 0 kept);
* there is no @k: every metric reads the whole retrieved list, so the cutoff is the retriever's
  own top-k (``similarity_top_k``, default 2 in LlamaIndex);
* every metric raises ``ValueError("Retrieved ids and expected ids must be provided")`` when the
  retriever returns nothing; the bridge scores such a query 0 and counts it in ``n_empty``;
* ``RetrieverEvaluator.aevaluate_dataset`` needs an ``EmbeddingQAFinetuneDataset``, which core no
  longer ships; the bridge calls ``aevaluate(query, expected_ids)`` per query instead;
* its ``ndcg`` is binary with ideal DCG over ``len(expected_ids)`` positions (not capped at the
  number retrieved) and counts a repeated id twice; its ``precision`` and ``recall`` work on sets.

With the retriever's top-k equal to ``k`` and no repeated ids, its ``hit_rate`` and ``mrr`` equal
ours (a test checks it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from nudge_rag.errors import ConfigError, DatasetError, require
from nudge_rag.evaluation.datasets import QADataset, load_beir
from nudge_rag.evaluation.metrics import (
    MetricMeans,
    RankingMetrics,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
)

__all__ = [
    "Comparison",
    "EvalQueries",
    "EvaluationResult",
    "MetricDelta",
    "RetrieverEvaluatorResult",
    "aevaluate",
    "allamaindex_retriever_evaluator",
    "compare",
    "evaluate",
    "llamaindex_retriever_evaluator",
    "retrieved_id",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
IdsFn = Callable[[str], Coroutine[Any, Any, list[str]]]

#: Metric names, in display order: (field of EvaluationResult, label prefix).
_METRICS: tuple[tuple[str, str], ...] = (
    ("ndcg", "NDCG"),
    ("recall", "Recall"),
    ("mrr", "MRR"),
    ("hit_rate", "Hit rate"),
)


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------


def _grades(ids: Any, where: str) -> dict[str, float]:
    """Relevant ids in any accepted shape -> ``{id: grade}``."""
    if isinstance(ids, (str, int)) and not isinstance(ids, bool):
        return {str(ids): 1.0}
    if isinstance(ids, Mapping):
        out: dict[str, float] = {}
        for d, g in ids.items():
            try:
                grade = float(g)
            except (TypeError, ValueError) as exc:
                msg = f"{where}: expected numeric relevance grades, received {g!r} for id {d!r}"
                raise DatasetError(msg) from exc
            if not math.isfinite(grade):
                msg = f"{where}: expected finite relevance grades, received {g!r} for id {d!r}"
                raise DatasetError(msg)
            out[str(d)] = grade
        return out
    if isinstance(ids, Iterable):
        return {str(d): 1.0 for d in ids}
    msg = (
        f"{where}: expected relevant ids as a list of ids or a dict of id -> grade, "
        f"received {type(ids).__name__}"
    )
    raise DatasetError(msg)


@dataclass(frozen=True)
class EvalQueries:
    """Judged queries ready to evaluate: ids, texts and graded relevance, in order.

    Build one from any accepted dataset shape with :meth:`from_any`.

    Attributes:
        query_ids: Query ids.
        queries: Query texts.
        relevance: Per query, ``{record id: grade}`` (grade > 0 is relevant).
    """

    query_ids: tuple[str, ...]
    queries: tuple[str, ...]
    relevance: tuple[dict[str, float], ...]

    def __len__(self) -> int:
        return len(self.query_ids)

    @classmethod
    def from_any(cls, dataset: Any, *, split: str | None = None) -> EvalQueries:
        """Normalise a dataset to judged queries.

        Args:
            dataset: A :class:`~nudge_rag.evaluation.QADataset`; anything with ``queries``
                (id -> text) and ``relevant_docs`` (id -> ids or id -> {id: grade}), such as
                LlamaIndex's ``EmbeddingQAFinetuneDataset`` or a dict with those keys; a path to
                that JSON file; a BEIR folder; or a sequence of ``(query, ids)`` pairs where ids
                is a list of ids, one id or a dict ``{id: grade}``.
            split: For a BEIR folder, the qrels file to use (``"test"``, ``"dev"``...). Default:
                the only qrels file, else ``"test"``.

        Queries with no id of grade > 0 are dropped (with a log warning): they would score 0
        whatever the retriever does.

        Raises:
            DatasetError: The dataset cannot be read, lacks keys, names an undefined query, or
                holds no query with a relevant id.
        """
        if isinstance(dataset, EvalQueries):
            return dataset
        if isinstance(dataset, (str, os.PathLike)):
            ids, texts, rels = _from_path(Path(dataset).expanduser(), split)
        elif isinstance(dataset, Mapping) or (
            hasattr(dataset, "queries") and hasattr(dataset, "relevant_docs")
        ):
            ids, texts, rels = _from_qa(dataset)
        elif isinstance(dataset, Sequence) and not isinstance(dataset, (bytes, bytearray)):
            ids, texts, rels = _from_pairs(dataset)
        else:
            msg = (
                "dataset: expected a QADataset, an object or dict with 'queries' and "
                "'relevant_docs', a path to such a JSON file, a BEIR folder, or a list of "
                f"(query, ids) pairs; received {type(dataset).__name__}"
            )
            raise DatasetError(msg)
        keep = [i for i, r in enumerate(rels) if any(g > 0 for g in r.values())]
        if len(keep) < len(ids):
            logger.warning(
                "dropped %d of %d queries that have no relevant id (grade > 0)",
                len(ids) - len(keep),
                len(ids),
            )
        if not keep:
            msg = f"dataset: expected at least one query with a relevant id, received {len(ids)} queries and none has one"
            raise DatasetError(msg)
        return cls(
            query_ids=tuple(ids[i] for i in keep),
            queries=tuple(texts[i] for i in keep),
            relevance=tuple(rels[i] for i in keep),
        )


_Parsed = tuple[list[str], list[str], list[dict[str, float]]]


def _from_path(path: Path, split: str | None) -> _Parsed:
    if path.is_file():
        return _from_qa(QADataset.from_json(path))
    if not path.is_dir():
        msg = f"dataset: expected a QA dataset JSON file or a BEIR folder, received {str(path)!r}, which does not exist"
        raise DatasetError(msg)
    if split is None:
        qdir = path / "qrels"
        have = sorted(p.stem for p in qdir.glob("*.tsv")) if qdir.is_dir() else []
        if len(have) == 1:
            split = have[0]
        elif "test" in have:
            split = "test"
        else:
            msg = f"split: expected the qrels split to evaluate on (one of {have}) for BEIR folder {str(path)!r}, received None"
            raise DatasetError(msg)
    data = load_beir(path, qrels=split)
    judged = data.qrels[split]
    ids = list(judged)
    return (
        ids,
        [data.queries[q] for q in ids],
        [{d: float(g) for d, g in judged[q].items()} for q in ids],
    )


def _from_qa(dataset: Any) -> _Parsed:
    if isinstance(dataset, Mapping):
        missing = [k for k in ("queries", "relevant_docs") if k not in dataset]
        if missing:
            msg = f"dataset: expected keys 'queries' and 'relevant_docs', missing {missing} (keys: {sorted(map(str, dataset))})"
            raise DatasetError(msg)
        queries, relevant = dataset["queries"], dataset["relevant_docs"]
    else:
        queries, relevant = dataset.queries, dataset.relevant_docs
    if not isinstance(queries, Mapping) or not isinstance(relevant, Mapping):
        msg = (
            "dataset: expected 'queries' and 'relevant_docs' to be dicts keyed by query id, "
            f"received {type(queries).__name__} and {type(relevant).__name__}"
        )
        raise DatasetError(msg)
    ids: list[str] = []
    texts: list[str] = []
    rels: list[dict[str, float]] = []
    for qid, docs in relevant.items():
        if qid not in queries:
            msg = f"dataset: relevant_docs names query {qid!r}, which is not in queries"
            raise DatasetError(msg)
        ids.append(str(qid))
        texts.append(str(queries[qid]))
        rels.append(_grades(docs, f"dataset.relevant_docs[{qid!r}]"))
    return ids, texts, rels


def _from_pairs(pairs: Sequence[Any]) -> _Parsed:
    ids: list[str] = []
    texts: list[str] = []
    rels: list[dict[str, float]] = []
    for i, item in enumerate(pairs):
        if (
            isinstance(item, (str, bytes))
            or not isinstance(item, Sequence)
            or len(item) != 2
            or not isinstance(item[0], str)
        ):
            msg = f"dataset[{i}]: expected a (query text, relevant ids) pair, received {item!r:.80}"
            raise DatasetError(msg)
        ids.append(f"q{i}")
        texts.append(item[0])
        rels.append(_grades(item[1], f"dataset[{i}][1]"))
    return ids, texts, rels


# ---------------------------------------------------------------------------------------------
# retrievers
# ---------------------------------------------------------------------------------------------


def retrieved_id(item: Any, id_key: str | None = None) -> str:
    """The id of one retrieved item: an id, ``(id, score)``, node, ``NodeWithScore``, ``Document``
    or dict (including LangChain's serialised ``{"lc": 1, "kwargs": {...}}`` form).

    With ``id_key``, ``metadata[id_key]`` wins when present.

    Raises:
        ConfigError: The item carries no id (the message says which ``id_key`` would help).
    """
    if isinstance(item, str):
        return item
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return str(item)
    if isinstance(item, tuple) and len(item) == 2:
        return retrieved_id(item[0], id_key)
    if isinstance(item, Mapping):
        if "lc" in item and isinstance(item.get("kwargs"), Mapping):
            item = item["kwargs"]
        meta = item.get("metadata") or {}
        if id_key is not None and isinstance(meta, Mapping) and meta.get(id_key) is not None:
            return str(meta[id_key])
        for key in ("id", "node_id", "id_", "_id"):
            if isinstance(item.get(key), (str, int)):
                return str(item[key])
    else:
        node = getattr(item, "node", None)
        if node is not None and hasattr(item, "score"):  # LlamaIndex NodeWithScore
            return retrieved_id(node, id_key)
        meta = getattr(item, "metadata", None)
        if id_key is not None and isinstance(meta, Mapping) and meta.get(id_key) is not None:
            return str(meta[id_key])
        for attr in ("node_id", "id"):
            value = getattr(item, attr, None)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
    hint = (
        f"metadata has no {id_key!r}"
        if id_key is not None
        else "pass id_key= to read the id from the item's metadata"
    )
    msg = f"retrieved item: expected an id, a node or a document with an id, received {type(item).__name__} without one ({hint})"
    raise ConfigError(msg)


def _ids_of(result: Any, id_key: str | None) -> list[str]:
    if result is None:
        return []
    if isinstance(result, (str, Mapping)):
        msg = f"retriever: expected a ranked list of ids, nodes or documents, received {type(result).__name__}"
        raise ConfigError(msg)
    return [retrieved_id(item, id_key) for item in result]


async def _call_any(fn: Callable[[str], Any], query: str) -> Any:
    """Call a sync or async callable; sync ones run in a worker thread."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - a callable object's async __call__
    ):
        return await fn(query)
    out = await asyncio.to_thread(fn, query)
    if inspect.isawaitable(out):
        out = await out
    return out


def _resolve_retriever(retriever: Any, k: int | None, id_key: str | None) -> tuple[str, IdsFn]:
    """``(kind, async query -> ranked ids)`` for any supported retriever."""
    from nudge_rag.finetuner import NudgeEmbeddingFinetuner
    from nudge_rag.stores import VectorStoreAdapter

    if isinstance(retriever, NudgeEmbeddingFinetuner):
        inner = retriever.retriever(k)
        if isinstance(inner, VectorStoreAdapter):
            embed = retriever._resolve().embed_queries  # the pipeline's query-side call
            adapter, top = inner, k or 10

            async def via_store(query: str) -> list[str]:
                vec = (await embed([query]))[0]
                hits = await asyncio.to_thread(adapter.search, np.asarray(vec), top)
                return [h[0] for h in hits]

            return "nudge-finetuner", via_store
        return _resolve_retriever(inner, k, id_key)
    if isinstance(retriever, VectorStoreAdapter):
        msg = (
            f"retriever: a bare store adapter ({retriever.name}) cannot embed queries; pass the "
            "NudgeEmbeddingFinetuner, the framework's retriever, or a callable query -> ids"
        )
        raise ConfigError(msg)

    if hasattr(retriever, "aretrieve"):
        kind, call = "llamaindex", retriever.aretrieve
    elif hasattr(retriever, "ainvoke"):
        kind, call = "langchain", retriever.ainvoke
    elif hasattr(retriever, "as_retriever"):
        mods = [c.__module__ or "" for c in type(retriever).__mro__]
        top = k or 10
        if any(m.startswith("llama_index") for m in mods):
            return _resolve_retriever(retriever.as_retriever(similarity_top_k=top), k, id_key)
        return _resolve_retriever(retriever.as_retriever(search_kwargs={"k": top}), k, id_key)
    elif hasattr(retriever, "retrieve"):
        kind, call = "sync-retriever", retriever.retrieve
    elif hasattr(retriever, "invoke"):
        kind, call = "sync-runnable", retriever.invoke
    elif callable(retriever):
        kind, call = "callable", retriever
    else:
        msg = (
            "retriever: expected a LlamaIndex retriever (aretrieve), a LangChain retriever "
            "(ainvoke), an index or vector store (as_retriever), a NudgeEmbeddingFinetuner, or a "
            f"callable query -> ranked ids; received {type(retriever).__name__}"
        )
        raise ConfigError(msg)

    async def ids_for(query: str) -> list[str]:
        return _ids_of(await _call_any(call, query), id_key)

    return kind, ids_for


def _check_concurrency(max_concurrency: object) -> int:
    if (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        msg = f"max_concurrency: expected an integer >= 1, received {max_concurrency!r}"
        raise ConfigError(msg)
    return max_concurrency


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        msg = f"k: expected an integer >= 1, received {k!r}"
        raise ConfigError(msg)
    return int(k)


async def _gather_bounded(
    fn: Callable[[Any], Awaitable[T]],
    items: Sequence[Any],
    max_concurrency: int,
    show_progress: bool,
    desc: str,
) -> list[T]:
    """``fn(item)`` for every item, at most ``max_concurrency`` in flight, results in order."""
    sem = asyncio.Semaphore(max_concurrency)
    bar = _progress_bar(len(items), desc) if show_progress else None

    async def one(q: Any) -> T:
        async with sem:
            out = await fn(q)
        if bar is not None:
            bar.update(1)
        return out

    try:
        return list(await asyncio.gather(*(one(q) for q in items)))
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the local extra
        logger.info("tqdm is not installed: no progress bar (pip install tqdm)")
        return None
    return tqdm(total=total, desc=desc, unit="query")


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also inside a running loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


def _n_queries(n: int) -> str:
    return f"{n} query" if n == 1 else f"{n} queries"


def _frozen(a: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(a), dtype=np.float64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Retrieval quality over judged queries: means and per-query values at cutoff ``k``.

    Attributes:
        name: A label (used by :func:`compare` and the plot).
        k: Cutoff.
        ndcg: Mean graded NDCG@k (linear gains, as ``trec_eval``'s ``ndcg_cut``).
        recall: Mean Recall@k.
        mrr: Mean reciprocal rank within the top k.
        hit_rate: Share of queries with a relevant id in the top k.
        per_query: The four metrics per query, ``(n_queries,)`` read-only float64 arrays.
        query_ids: Query ids, in the order of ``per_query``.
        retrieved: The ids each query retrieved, as returned (all of them, not only the top k).
        n_empty: Queries for which the retriever returned nothing (they score 0).
        seconds: Wall time of the retrieval.

    Example:
        >>> res = evaluate(lambda q: ["d1", "d2"], [("what is a cat", ["d2"])], k=10)
        >>> print(res.summary())
        1 query, k=10
          NDCG@10      0.6309
          Recall@10    1.0000
          MRR@10       0.5000
          Hit rate@10  1.0000
    """

    name: str
    k: int
    ndcg: float
    recall: float
    mrr: float
    hit_rate: float
    per_query: RankingMetrics
    query_ids: tuple[str, ...]
    retrieved: tuple[tuple[str, ...], ...]
    n_empty: int
    seconds: float

    @property
    def n_queries(self) -> int:
        return len(self.query_ids)

    @property
    def means(self) -> MetricMeans:
        """The four means as a :class:`~nudge_rag.evaluation.MetricMeans`."""
        return MetricMeans(self.ndcg, self.recall, self.mrr, self.hit_rate)

    def metrics(self) -> dict[str, float]:
        """``{"ndcg@10": ..., "recall@10": ..., "mrr@10": ..., "hit_rate@10": ...}``."""
        return {f"{m}@{self.k}": float(getattr(self, m)) for m, _ in _METRICS}

    def summary(self) -> str:
        """A few readable lines: the means at k."""
        head = f"{self.name}: " if self.name else ""
        empty = f" ({self.n_empty} empty retrievals)" if self.n_empty else ""
        lines = [f"{head}{_n_queries(self.n_queries)}, k={self.k}{empty}"]
        width = max(len(f"{label}@{self.k}") for _, label in _METRICS)
        for m, label in _METRICS:
            lines.append(f"  {f'{label}@{self.k}':<{width}}  {getattr(self, m):.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self, *, per_query: bool = True) -> dict[str, Any]:
        """A JSON-serialisable dict: means, and (by default) per-query values and retrieved ids."""
        out: dict[str, Any] = {
            "name": self.name,
            "k": self.k,
            "n_queries": self.n_queries,
            "n_empty": self.n_empty,
            "seconds": self.seconds,
            "metrics": self.metrics(),
        }
        if per_query:
            pq = self.per_query
            out["per_query"] = {
                "query_ids": list(self.query_ids),
                "ndcg": pq.ndcg.tolist(),
                "recall": pq.recall.tolist(),
                "mrr": pq.mrr.tolist(),
                "hit_rate": pq.hit.tolist(),
                "retrieved": [list(r) for r in self.retrieved],
            }
        return out


class MetricDelta(NamedTuple):
    """One metric before and after, with per-query wins, losses and ties."""

    metric: str
    before: float
    after: float
    delta: float
    wins: int
    losses: int
    ties: int


@dataclass(frozen=True, eq=False)
class Comparison:
    """Two evaluations of the same queries side by side (see :func:`compare`).

    Attributes:
        before: The baseline.
        after: The candidate.
        rows: One :class:`MetricDelta` per metric (NDCG, recall, MRR, hit rate). A *win* is a
            query whose value rose by more than 1e-12, a *loss* one whose value fell.
    """

    before: EvaluationResult
    after: EvaluationResult
    rows: tuple[MetricDelta, ...]

    def __getitem__(self, metric: str) -> MetricDelta:
        for row in self.rows:
            if row.metric == metric:
                return row
        msg = f"metric: expected one of {[r.metric for r in self.rows]}, received {metric!r}"
        raise KeyError(msg)

    @property
    def ndcg(self) -> MetricDelta:
        return self["ndcg"]

    @property
    def recall(self) -> MetricDelta:
        return self["recall"]

    @property
    def mrr(self) -> MetricDelta:
        return self["mrr"]

    @property
    def hit_rate(self) -> MetricDelta:
        return self["hit_rate"]

    def table(self) -> str:
        """A plain-text table: metric, before, after, change, wins / losses / ties."""
        k = self.after.k
        b, a = self.before.name or "before", self.after.name or "after"
        labels = [f"{label}@{k}" for _, label in _METRICS]
        w = max(len(x) for x in [*labels, "metric"])
        wb, wa = max(len(b), 7), max(len(a), 7)
        head = f"{'metric':<{w}}  {b:>{wb}}  {a:>{wa}}  {'change':>8}  {'wins':>5} {'losses':>6} {'ties':>5}"
        lines = [_n_queries(self.after.n_queries), head, "-" * len(head)]
        for (_, label), row in zip(_METRICS, self.rows, strict=True):
            lines.append(
                f"{f'{label}@{k}':<{w}}  {row.before:>{wb}.4f}  {row.after:>{wa}.4f}  "
                f"{row.delta:>+8.4f}  {row.wins:>5} {row.losses:>6} {row.ties:>5}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"k", "n_queries", "before", "after", "metrics": [...]}``."""
        return {
            "k": self.after.k,
            "n_queries": self.after.n_queries,
            "before": self.before.name,
            "after": self.after.name,
            "metrics": [row._asdict() for row in self.rows],
        }


def compare(before: EvaluationResult, after: EvaluationResult) -> Comparison:
    """Compare two evaluations of the same queries at the same ``k``.

    Queries are matched by id (their order may differ).

    Raises:
        ConfigError: The two results are not :class:`EvaluationResult`, differ in ``k``, or
            evaluated different queries.
    """
    for arg, value in (("before", before), ("after", after)):
        if not isinstance(value, EvaluationResult):
            msg = f"{arg}: expected an EvaluationResult (from evaluate()), received {type(value).__name__}"
            raise ConfigError(msg)
    if before.k != after.k:
        msg = f"after: expected the same k as before ({before.k}), received k={after.k}"
        raise ConfigError(msg)
    if set(before.query_ids) != set(after.query_ids) or before.n_queries != after.n_queries:
        only_b = sorted(set(before.query_ids) - set(after.query_ids))[:5]
        only_a = sorted(set(after.query_ids) - set(before.query_ids))[:5]
        msg = (
            "after: expected the same queries as before; "
            f"only in before: {only_b}, only in after: {only_a} "
            f"({before.n_queries} vs {after.n_queries} queries)"
        )
        raise ConfigError(msg)
    pos = {q: i for i, q in enumerate(after.query_ids)}
    order = np.array([pos[q] for q in before.query_ids], dtype=np.int64)
    rows = []
    for (m, _), fieldname in zip(_METRICS, ("ndcg", "recall", "mrr", "hit"), strict=True):
        vb = getattr(before.per_query, fieldname)
        va = getattr(after.per_query, fieldname)[order]
        diff = va - vb
        rows.append(
            MetricDelta(
                metric=m,
                before=float(getattr(before, m)),
                after=float(getattr(after, m)),
                delta=float(getattr(after, m)) - float(getattr(before, m)),
                wins=int(np.sum(diff > 1e-12)),
                losses=int(np.sum(diff < -1e-12)),
                ties=int(np.sum(np.abs(diff) <= 1e-12)),
            )
        )
    return Comparison(before=before, after=after, rows=tuple(rows))


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


async def aevaluate(
    retriever: Any,
    dataset: Any,
    k: int = 10,
    *,
    split: str | None = None,
    id_key: str | None = None,
    name: str = "",
    max_concurrency: int = 8,
    show_progress: bool = False,
) -> EvaluationResult:
    """Async :func:`evaluate` (same arguments)."""
    k = _check_k(k)
    max_concurrency = _check_concurrency(max_concurrency)
    data = EvalQueries.from_any(dataset, split=split)
    kind, ids_for = _resolve_retriever(retriever, k, id_key)
    logger.info("evaluating a %s retriever on %d queries at k=%d", kind, len(data), k)
    t0 = time.perf_counter()
    retrieved = await _gather_bounded(
        ids_for, data.queries, max_concurrency, show_progress, f"evaluate {name}".strip()
    )
    seconds = time.perf_counter() - t0
    return _score(data, retrieved, k, name, seconds, warn_short=kind != "callable")


def _score(
    data: EvalQueries,
    retrieved: Sequence[Sequence[str]],
    k: int,
    name: str,
    seconds: float,
    *,
    warn_short: bool = True,
) -> EvaluationResult:
    rels: Sequence[Mapping[Hashable, float]] = data.relevance  # type: ignore[assignment]
    per = RankingMetrics(
        ndcg=_frozen(ndcg_at_k(r, g, k) for r, g in zip(retrieved, rels, strict=True)),
        recall=_frozen(recall_at_k(r, g, k) for r, g in zip(retrieved, rels, strict=True)),
        mrr=_frozen(mrr_at_k(r, g, k) for r, g in zip(retrieved, rels, strict=True)),
        hit=_frozen(hit_rate_at_k(r, g, k) for r, g in zip(retrieved, rels, strict=True)),
    )
    n_empty = sum(1 for r in retrieved if not r)
    longest = max((len(r) for r in retrieved), default=0)
    if warn_short and 0 < longest < k:
        logger.warning(
            "the retriever returned at most %d ids per query, fewer than k=%d: the metrics are "
            "@%d in effect; set its top-k (similarity_top_k= / search_kwargs={'k': %d}) to k",
            longest, k, longest, k,
        )  # fmt: skip
    if n_empty:
        logger.warning("%d of %d queries retrieved nothing (they score 0)", n_empty, len(data))
    means = per.mean()
    return EvaluationResult(
        name=name,
        k=k,
        ndcg=means.ndcg,
        recall=means.recall,
        mrr=means.mrr,
        hit_rate=means.hit,
        per_query=per,
        query_ids=data.query_ids,
        retrieved=tuple(tuple(r) for r in retrieved),
        n_empty=n_empty,
        seconds=seconds,
    )


def evaluate(
    retriever: Any,
    dataset: Any,
    k: int = 10,
    *,
    split: str | None = None,
    id_key: str | None = None,
    name: str = "",
    max_concurrency: int = 8,
    show_progress: bool = False,
) -> EvaluationResult:
    """Run every query of ``dataset`` through ``retriever`` and score the rankings at ``k``.

    Metrics follow ``trec_eval`` / BEIR (see :mod:`nudge_rag.evaluation.metrics`): graded NDCG
    with linear gains, recall over all relevant ids, MRR and hit rate within the top ``k``. A
    retriever that returns nothing for a query scores 0 on it (never raises). Works in a
    notebook (a running event loop) too; use :func:`aevaluate` from async code.

    Args:
        retriever: A LlamaIndex retriever, a LangChain retriever / runnable, an index or vector
            store (``as_retriever`` is called with top-k = ``k``), a
            :class:`~nudge_rag.NudgeEmbeddingFinetuner`, or a callable ``query -> ranked ids``
            (sync callables run in worker threads).
        dataset: See :meth:`EvalQueries.from_any`: a ``QADataset``, LlamaIndex's
            ``EmbeddingQAFinetuneDataset`` (or its JSON path), a BEIR folder (with ``split``),
            or ``[(query, [ids] | {id: grade}), ...]``.
        k: Cutoff, >= 1. The retriever's own top-k should be at least ``k`` (a warning is
            logged otherwise).
        split: BEIR qrels split (``"test"`` by default when there are several).
        id_key: Read ids from ``metadata[id_key]`` when present (else the node / document id).
        name: A label for summaries, comparisons and plots (``"before"``, ``"nudge-n"``...).
        max_concurrency: Queries in flight at once, >= 1.
        show_progress: Show a tqdm progress bar.

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        ConfigError: ``k`` or ``max_concurrency`` is not an integer >= 1, the retriever is of an
            unknown kind, or returns items without ids.
        DatasetError: The dataset cannot be read (see :meth:`EvalQueries.from_any`).

    Example:
        >>> res = evaluate(my_retriever, "val_dataset.json", k=10)  # doctest: +SKIP
        >>> res.ndcg, res.per_query.ndcg[:3]                        # doctest: +SKIP
        (0.712..., array([1.  , 0.63, 0.  ]))
    """
    return _run_sync(
        aevaluate(
            retriever,
            dataset,
            k,
            split=split,
            id_key=id_key,
            name=name,
            max_concurrency=max_concurrency,
            show_progress=show_progress,
        )
    )


# ---------------------------------------------------------------------------------------------
# LlamaIndex's RetrieverEvaluator on the same queries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RetrieverEvaluatorResult:
    """What LlamaIndex's ``RetrieverEvaluator`` reports, over the same queries as ours.

    Attributes:
        means: Metric name (LlamaIndex's: ``"hit_rate"``, ``"mrr"``...) -> mean over queries.
        per_query: Metric name -> ``(n_queries,)`` read-only float64 array.
        query_ids: Query ids, in order.
        retrieved: The ids LlamaIndex saw per query.
        n_empty: Queries with an empty retrieval (LlamaIndex raises on those; scored 0 here).
    """

    means: dict[str, float]
    per_query: dict[str, np.ndarray]
    query_ids: tuple[str, ...]
    retrieved: tuple[tuple[str, ...], ...]
    n_empty: int

    def summary(self) -> str:
        empty = f" ({self.n_empty} empty retrievals scored 0)" if self.n_empty else ""
        lines = [f"LlamaIndex RetrieverEvaluator, {len(self.query_ids)} queries{empty}"]
        w = max(len(m) for m in self.means)
        lines += [f"  {m:<{w}}  {v:.4f}" for m, v in self.means.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        return {
            "means": dict(self.means),
            "n_queries": len(self.query_ids),
            "n_empty": self.n_empty,
            "per_query": {m: v.tolist() for m, v in self.per_query.items()},
            "query_ids": list(self.query_ids),
        }


_EMPTY_MSG = "Retrieved ids and expected ids must be provided"


def _as_llamaindex_retriever(ids_for: IdsFn) -> Any:
    """Wrap ``async query -> ids`` as a LlamaIndex ``BaseRetriever`` of empty ``TextNode``s."""
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    class _IdsRetriever(BaseRetriever):
        def _nodes(self, ids: list[str]) -> list[NodeWithScore]:
            n = len(ids)
            return [
                NodeWithScore(node=TextNode(id_=i, text=""), score=float(n - r))
                for r, i in enumerate(ids)
            ]

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return self._nodes(_run_sync(ids_for(query_bundle.query_str)))

        async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return self._nodes(await ids_for(query_bundle.query_str))

    return _IdsRetriever()


async def allamaindex_retriever_evaluator(
    retriever: Any,
    dataset: Any,
    metrics: Sequence[str] = ("hit_rate", "mrr"),
    *,
    k: int | None = None,
    split: str | None = None,
    id_key: str | None = None,
    max_concurrency: int = 8,
    show_progress: bool = False,
) -> RetrieverEvaluatorResult:
    """Async :func:`llamaindex_retriever_evaluator` (same arguments)."""
    require("llama_index.core", "llamaindex")
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.evaluation import RetrieverEvaluator
    from llama_index.core.evaluation.retrieval.metrics import METRIC_REGISTRY

    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRIC_REGISTRY]
    if unknown or not metrics:
        msg = f"metrics: expected names from {sorted(METRIC_REGISTRY)}, received {list(metrics)}"
        raise ConfigError(msg)
    if k is not None:
        k = _check_k(k)
    max_concurrency = _check_concurrency(max_concurrency)
    data = EvalQueries.from_any(dataset, split=split)
    if isinstance(retriever, BaseRetriever) and id_key is None:
        li_retriever = retriever  # exactly what a LlamaIndex user would pass
    else:
        li_retriever = _as_llamaindex_retriever(_resolve_retriever(retriever, k, id_key)[1])
    evaluator = RetrieverEvaluator.from_metric_names(list(metrics), retriever=li_retriever)
    names = [m.metric_name for m in evaluator.metrics]

    async def one(i: int) -> tuple[dict[str, float], list[str]] | None:
        expected = [d for d, g in data.relevance[i].items() if g > 0]
        try:
            res = await evaluator.aevaluate(query=data.queries[i], expected_ids=expected)
        except ValueError as exc:
            # expected is never empty, so this message means the retrieval was empty.
            if _EMPTY_MSG in str(exc):
                return None
            raise
        return res.metric_vals_dict, list(res.retrieved_ids)

    outs = await _gather_bounded(
        one,
        range(len(data)),
        max_concurrency,
        show_progress,
        "RetrieverEvaluator",
    )
    per = {m: _frozen((o[0][m] if o is not None else 0.0) for o in outs) for m in names}
    return RetrieverEvaluatorResult(
        means={m: float(v.mean()) for m, v in per.items()},
        per_query=per,
        query_ids=data.query_ids,
        retrieved=tuple(tuple(o[1]) if o is not None else () for o in outs),
        n_empty=sum(1 for o in outs if o is None),
    )


def llamaindex_retriever_evaluator(
    retriever: Any,
    dataset: Any,
    metrics: Sequence[str] = ("hit_rate", "mrr"),
    *,
    k: int | None = None,
    split: str | None = None,
    id_key: str | None = None,
    max_concurrency: int = 8,
    show_progress: bool = False,
) -> RetrieverEvaluatorResult:
    """Run LlamaIndex's own ``RetrieverEvaluator`` on the same queries :func:`evaluate` uses.

    A LlamaIndex retriever is passed to ``RetrieverEvaluator`` as is; any other retriever
    :func:`evaluate` accepts is wrapped in a LlamaIndex ``BaseRetriever`` that returns its ids.
    ``aevaluate(query, expected_ids)`` runs per query, ``max_concurrency`` at a time.

    LlamaIndex's conventions (see the module docstring): binary relevance (ids with grade > 0),
    no @k (the retriever's own top-k is the cutoff), and an error on an empty retrieval, which
    is scored 0 here and counted in ``n_empty``.

    Args:
        retriever: As for :func:`evaluate`.
        dataset: As for :func:`evaluate`.
        metrics: LlamaIndex metric names (``"hit_rate"``, ``"mrr"``, ``"precision"``,
            ``"recall"``, ``"ap"``, ``"ndcg"``).
        k: Top-k for retrievers built here (from an index, a vector store or a finetuner);
            no cutoff is applied to the lists.
        split, id_key, max_concurrency, show_progress: As for :func:`evaluate`.

    Returns:
        A :class:`RetrieverEvaluatorResult` (``.means`` holds LlamaIndex's mean metrics).

    Raises:
        DependencyError: llama-index-core is not installed.
        ConfigError: An unknown metric name, or a bad retriever / option.
        DatasetError: The dataset cannot be read.
    """
    return _run_sync(
        allamaindex_retriever_evaluator(
            retriever,
            dataset,
            metrics,
            k=k,
            split=split,
            id_key=id_key,
            max_concurrency=max_concurrency,
            show_progress=show_progress,
        )
    )
