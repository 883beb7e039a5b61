"""LlamaIndex glue: the query-side embedding call, the index's own retriever, and LlamaIndex's
``RetrieverEvaluator`` run on the queries :func:`~nudge_rag.evaluate` scores.

:func:`llamaindex_retriever_evaluator` lets users set LlamaIndex's numbers beside ours. Its
conventions differ (checked on llama-index-core 0.14.25):

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
ours (a test checks it). llama_index is imported only inside the functions that need it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nudge_rag._util import (
    check_positive_int,
    framework_of,
    from_class,
    gather_bounded,
    run_sync,
)
from nudge_rag.errors import ConfigError, require
from nudge_rag.integrations.base import (
    Pipeline,
    QueryEmbedder,
    document_embedder,
    framework_query_embedder,
    model_name,
)
from nudge_rag.integrations.options import retriever_options
from nudge_rag.integrations.retrievers import IdsFn, resolve_retriever
from nudge_rag.judged import JudgedQueries

__all__ = [
    "RetrieverEvaluatorResult",
    "allamaindex_retriever_evaluator",
    "as_llamaindex_embedding",
    "feedback_handler",
    "ids_retriever",
    "llamaindex_retriever_evaluator",
    "pipeline",
    "query_embedder",
]


def _is_base_embedding(model: Any) -> bool:
    return from_class(model, "llama_index.", "BaseEmbedding")


def query_embedder(model: Any, max_concurrency: int = 16) -> QueryEmbedder:
    """Embed queries with ``aget_query_embedding`` (the query-side call), ``max_concurrency`` at
    a time. LlamaIndex has no batched query-side call; text-side batching would embed queries as
    documents, which differs for models with query instructions."""
    return framework_query_embedder(
        model, _is_base_embedding(model), "aget_query_embedding", max_concurrency
    )


def pipeline(obj: Any, embed_model: Any = None, *, max_concurrency: int = 16) -> Pipeline:
    """A LlamaIndex ``VectorStoreIndex`` or vector store, as the finetuner sees it.

    The embedding model is ``embed_model``, else the index's own, else ``Settings.embed_model``
    when the application set one; ``Settings.llm``, when set, is the default LLM for query
    generation.
    """
    require("llama_index.core", "llamaindex")
    from llama_index.core import Settings

    is_index = from_class(obj, "llama_index.", "VectorStoreIndex")
    model = embed_model
    if model is None and is_index:
        model = getattr(obj, "_embed_model", None)
    if model is None:
        # The private attribute: the public property builds OpenAI's model when none was set.
        model = getattr(Settings, "_embed_model", None)
    if model is None:
        msg = (
            f"a bare LlamaIndex {type(obj).__name__} carries no embedding model: pass "
            "embed_model= (the one that embedded the stored nodes), set "
            "llama_index.core.Settings.embed_model, or pass the VectorStoreIndex"
        )
        raise ConfigError(msg)
    if framework_of(model) not in (None, "llamaindex"):
        msg = f"embed_model for a LlamaIndex store must be a LlamaIndex BaseEmbedding or one of ours; received {type(model).__name__}"
        raise ConfigError(msg)

    def make_retriever(k: int | None, adaptor: Any = None, **kwargs: Any) -> Any:
        k, kwargs = retriever_options("llamaindex", k, kwargs)
        if k is not None:
            kwargs["similarity_top_k"] = k
        if adaptor is not None:
            # the index's own retriever, with queries embedded through the adaptor
            kwargs["embed_model"] = adapted_embedding(model, adaptor)
        if is_index:
            return obj.as_retriever(**kwargs)
        from llama_index.core import VectorStoreIndex

        if not getattr(obj, "stores_text", True):
            return None  # its texts live in the index's docstore: only the index can retrieve
        index = VectorStoreIndex.from_vector_store(obj, embed_model=model)
        return index.as_retriever(**kwargs)

    expand = None
    if is_index:

        def expand(ids: list[str]) -> dict[str, list[str]]:
            """Source document ids (``ref_doc_id``) to the ids of their nodes."""
            out: dict[str, list[str]] = {}
            for i in ids:
                info = obj.docstore.get_ref_doc_info(i)
                if info is not None and info.node_ids:
                    out[i] = [str(n) for n in info.node_ids]
            return out

    method = "aget_text_embedding" if _is_base_embedding(model) else None
    return Pipeline(
        "llamaindex",
        obj,
        query_embedder(model, max_concurrency),
        make_retriever,
        document_embedder(model, method, max_concurrency),
        model_name(model),
        getattr(Settings, "_llm", None),
        expand,
        adapts_queries=is_index or bool(getattr(obj, "stores_text", True)),
    )


def adapted_embedding(model: Any, adaptor: Any) -> Any:
    """``model`` as a LlamaIndex ``BaseEmbedding`` whose query side goes through ``adaptor``
    (:class:`~nudge_rag.core.Adaptor`); the text side is the model's own."""
    if not _is_base_embedding(model):
        model = as_llamaindex_embedding(model)
    return _adapted_class()(model, adaptor, model_name=f"{model.model_name}+adaptor")


@functools.cache
def _adapted_class() -> type:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr

    class AdaptedQueryEmbedding(BaseEmbedding):
        """An embedding model whose query vectors pass through a nudge_rag query adaptor."""

        _inner: Any = PrivateAttr()
        _adaptor: Any = PrivateAttr()

        def __init__(self, inner: Any, adaptor: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._inner = inner
            self._adaptor = adaptor

        @classmethod
        def class_name(cls) -> str:
            return "NudgeRagAdaptedQueryEmbedding"

        def _adapt(self, vec: Any) -> list[float]:
            return [float(x) for x in self._adaptor.transform(np.asarray(vec, dtype=np.float32))]

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._adapt(self._inner.get_query_embedding(query))

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._adapt(await self._inner.aget_query_embedding(query))

        def _get_text_embedding(self, text: str) -> list[float]:
            return list(self._inner.get_text_embedding(text))

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return [list(v) for v in self._inner.get_text_embedding_batch(texts)]

    return AdaptedQueryEmbedding


def as_llamaindex_embedding(embedder: Any, *, model_name: str | None = None) -> Any:
    """Wrap an embedder of ours (``embed_documents`` / ``embed_queries``, e.g.
    :class:`~nudge_rag.embedding.LocalEmbedder`) as a LlamaIndex ``BaseEmbedding``."""
    require("llama_index.core", "llamaindex")
    cls = _embedding_class()
    name = model_name or str(getattr(embedder, "model_id", type(embedder).__name__))
    return cls(embedder, model_name=name)


@functools.cache
def _embedding_class() -> type:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr

    class NudgeRagEmbedding(BaseEmbedding):
        """A nudge_rag embedder as a LlamaIndex embedding model (batched on the text side)."""

        _inner: Any = PrivateAttr()

        def __init__(self, inner: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._inner = inner

        @classmethod
        def class_name(cls) -> str:
            return "NudgeRagEmbedding"

        def _get_query_embedding(self, query: str) -> list[float]:
            return [float(x) for x in self._inner.embed_queries([query])[0]]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return [float(x) for x in self._inner.embed_documents([text])[0]]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return [[float(x) for x in row] for row in self._inner.embed_documents(texts)]

    return NudgeRagEmbedding


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


def ids_retriever(ids_for: IdsFn) -> Any:
    """Wrap ``async query -> ids`` as a LlamaIndex ``BaseRetriever`` of empty ``TextNode``s
    (scored ``n, n-1, ...`` in rank order)."""
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
            return self._nodes(run_sync(ids_for(query_bundle.query_str)))

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
        k = check_positive_int(k, "k")
    max_concurrency = check_positive_int(max_concurrency, "max_concurrency")
    data = JudgedQueries.from_any(dataset, name="dataset", split=split)
    texts = data.texts
    if texts is None:
        msg = (
            "dataset: RetrieverEvaluator asks a retriever with query texts; these queries have none"
        )
        raise ConfigError(msg)
    if isinstance(retriever, BaseRetriever) and id_key is None:
        li_retriever = retriever  # exactly what a LlamaIndex user would pass
    else:
        li_retriever = ids_retriever(resolve_retriever(retriever, k, id_key)[1])
    evaluator = RetrieverEvaluator.from_metric_names(list(metrics), retriever=li_retriever)
    names = [m.metric_name for m in evaluator.metrics]

    async def one(i: int) -> tuple[dict[str, float], list[str]] | None:
        expected = [d for d, g in data.relevance[i].items() if g > 0]
        try:
            res = await evaluator.aevaluate(query=texts[i], expected_ids=expected)
        except ValueError as exc:
            # expected is never empty, so this message means the retrieval was empty.
            if _EMPTY_MSG in str(exc):
                return None
            raise
        return res.metric_vals_dict, list(res.retrieved_ids)

    outs = await gather_bounded(
        one,
        range(len(data)),
        max_concurrency,
        show_progress=show_progress,
        desc="RetrieverEvaluator",
        unit="query",
    )
    per = {m: _frozen_array((o[0][m] if o is not None else 0.0) for o in outs) for m in names}
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
    """Run LlamaIndex's own ``RetrieverEvaluator`` on the same queries :func:`~nudge_rag.evaluate`
    uses.

    A LlamaIndex retriever is passed to ``RetrieverEvaluator`` as is; any other retriever
    :func:`~nudge_rag.evaluate` accepts is wrapped in a LlamaIndex ``BaseRetriever`` that returns its ids.
    ``aevaluate(query, expected_ids)`` runs per query, ``max_concurrency`` at a time.

    LlamaIndex's conventions (see the module docstring): binary relevance (ids with grade > 0),
    no @k (the retriever's own top-k is the cutoff), and an error on an empty retrieval, which
    is scored 0 here and counted in ``n_empty``.

    Args:
        retriever: As for :func:`~nudge_rag.evaluate`.
        dataset: As for :func:`~nudge_rag.evaluate` (see
            :meth:`~nudge_rag.judged.JudgedQueries.from_any`).
        metrics: LlamaIndex metric names (``"hit_rate"``, ``"mrr"``, ``"precision"``,
            ``"recall"``, ``"ap"``, ``"ndcg"``).
        k: Top-k for retrievers built here (from an index, a vector store or a finetuner);
            no cutoff is applied to the lists.
        split, id_key, max_concurrency, show_progress: As for :func:`~nudge_rag.evaluate`.

    Returns:
        A :class:`RetrieverEvaluatorResult` (``.means`` holds LlamaIndex's mean metrics).

    Raises:
        DependencyError: llama-index-core is not installed.
        ConfigError: An unknown metric name, or a bad retriever / option.
        DatasetError: The dataset cannot be read.
    """
    return run_sync(
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


def _frozen_array(values: Any) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    arr.setflags(write=False)
    return arr


def feedback_handler(record: Any, *, source: str = "llamaindex", attach: bool = True) -> Any:
    """A LlamaIndex instrumentation event handler that logs every retrieval (query, node ids).

    Each ``RetrievalEndEvent`` is logged through ``record(query, [], shown=ids, source=source)``
    (the finetuner's :meth:`~nudge_rag.NudgeEmbeddingFinetuner.record`): impressions, which a
    later confirmation (``ft.record(query, cited_node_ids)``) turns into training data.

    Args:
        record: Called as ``record(query, ids, shown=..., source=...)``.
        source: The label logged with each retrieval.
        attach: Add the handler to LlamaIndex's root dispatcher (every retriever reports to it);
            remove it with ``get_dispatcher().event_handlers.remove(handler)``.
    """
    require("llama_index.core", "llamaindex")
    handler = _event_handler_class()()
    handler._record = record
    handler._source = source
    if attach:
        try:  # where LlamaIndex defines it since instrumentation became its own package
            from llama_index_instrumentation import get_dispatcher
        except ImportError:  # llama-index-core 0.12 before that split: defined in core
            from llama_index.core.instrumentation import (  # type: ignore[attr-defined]
                get_dispatcher,
            )

        get_dispatcher().add_event_handler(handler)
    return handler


@functools.cache
def _event_handler_class() -> type:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent

    class NudgeFeedbackEventHandler(BaseEventHandler):
        """Logs each retrieval's query and the ids of the nodes it returned."""

        _record: Any = PrivateAttr(default=None)
        _source: str = PrivateAttr(default="llamaindex")

        @classmethod
        def class_name(cls) -> str:
            return "NudgeFeedbackEventHandler"

        def handle(self, event: Any, **kwargs: Any) -> None:
            if not isinstance(event, RetrievalEndEvent) or self._record is None:
                return
            q = event.str_or_query_bundle
            text = q if isinstance(q, str) else getattr(q, "query_str", "")
            ids = [str(n.node.node_id) for n in event.nodes or []]
            if text and text.strip() and ids:
                self._record(text, [], shown=ids, source=self._source)

    return NudgeFeedbackEventHandler
