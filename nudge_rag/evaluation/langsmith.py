"""Our retrieval metrics as a LangSmith custom evaluator, for LangChain users.

LangChain has no retrieval metrics of its own. LangSmith's ``evaluate(target, data=...,
evaluators=[...])`` accepts plain functions ``(run, example) -> {"key": ..., "score": ...}``;
:func:`langsmith_evaluator` builds one that scores the documents the run retrieved against the
relevant ids the example holds. The langsmith package is not needed to build or call it.

Example:
    >>> from types import SimpleNamespace
    >>> ndcg = langsmith_evaluator("ndcg", k=10)
    >>> run = SimpleNamespace(outputs={"documents": ["d3", "d1"]})
    >>> example = SimpleNamespace(outputs={"relevant_ids": ["d1"]})
    >>> ndcg(run, example)  # doctest: +ELLIPSIS
    {'key': 'ndcg@10', 'score': 0.6309...}

With LangSmith (``target`` returns ``{"documents": retriever.invoke(inputs["question"])}``)::

    from langsmith import evaluate
    evaluate(target, data="my-dataset",
             evaluators=[langsmith_evaluator("ndcg"), langsmith_evaluator("recall")])
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal

from nudge_rag._util import check_positive_int
from nudge_rag.errors import ConfigError, DatasetError
from nudge_rag.evaluation.metrics import (
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)
from nudge_rag.integrations.retrievers import retrieved_id
from nudge_rag.judged import parse_relevance

__all__ = ["LangSmithMetric", "langsmith_evaluator"]

LangSmithMetric = Literal["ndcg", "recall", "mrr", "hit_rate", "precision"]

_FUNCS: dict[str, Callable[[Sequence[Hashable], Mapping[Hashable, float], int], float]] = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "mrr": mrr_at_k,
    "hit_rate": hit_rate_at_k,
    "precision": precision_at_k,
}


def _outputs(obj: Any, what: str) -> Any:
    """``obj.outputs`` (a LangSmith Run / Example) or ``obj["outputs"]`` (a dict)."""
    if isinstance(obj, Mapping):
        return obj.get("outputs", obj)
    if hasattr(obj, "outputs"):
        return obj.outputs
    msg = f"{what}: expected an object with .outputs (a LangSmith Run / Example) or a dict, received {type(obj).__name__}"
    raise ConfigError(msg)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def langsmith_evaluator(
    metric: LangSmithMetric = "ndcg",
    k: int = 10,
    id_key: str | None = None,
    *,
    output_key: str | None = None,
    reference_key: str = "relevant_ids",
) -> Callable[[Any, Any], dict[str, Any]]:
    """A LangSmith custom evaluator ``(run, example) -> {"key": "<metric>@<k>", "score": float}``.

    Args:
        metric: ``"ndcg"`` (graded, linear gains), ``"recall"``, ``"mrr"``, ``"hit_rate"`` or
            ``"precision"``, all at ``k`` and with the conventions of :func:`~nudge_rag.
            evaluation.evaluate`.
        k: Cutoff, >= 1.
        id_key: Read a document's id from ``metadata[id_key]`` when present (else ``doc.id``).
        output_key: Key of ``run.outputs`` holding the retrieved documents (LangChain
            ``Document`` objects, their dict / serialised forms, nodes, or ids). Default:
            ``"documents"`` if present, else the first list among the outputs (or the outputs
            themselves when they are a list).
        reference_key: Key of ``example.outputs`` holding the relevant ids: a list of ids, one
            id, or a dict ``{id: grade}``.

    Returns:
        A function LangSmith's ``evaluate(..., evaluators=[...])`` accepts. It scores an empty
        retrieval 0, and raises :class:`~nudge_rag.errors.DatasetError` when the run or example
        lacks the keys it reads (LangSmith records that as the evaluator's error).

    Raises:
        ConfigError: Unknown metric, or ``k`` not an integer >= 1.
    """
    if metric not in _FUNCS:
        msg = f"metric: expected one of {sorted(_FUNCS)}, received {metric!r}"
        raise ConfigError(msg)
    k = check_positive_int(k, "k")
    func = _FUNCS[metric]
    key = f"{metric}@{k}"

    def retrieved(run: Any) -> list[str]:
        out = _outputs(run, "run")
        if out is None:
            return []
        if _is_list(out):
            docs = out
        elif isinstance(out, Mapping):
            if output_key is not None:
                if output_key not in out:
                    msg = f"run.outputs: expected key {output_key!r} (output_key), found keys {sorted(map(str, out))}"
                    raise DatasetError(msg)
                docs = out[output_key]
            elif "documents" in out:
                docs = out["documents"]
            else:
                lists = [v for v in out.values() if _is_list(v)]
                if not lists:
                    msg = f"run.outputs: expected a list of retrieved documents (key 'documents' or any list), found keys {sorted(map(str, out))}; pass output_key="
                    raise DatasetError(msg)
                docs = lists[0]
        else:
            msg = f"run.outputs: expected a dict or a list of documents, received {type(out).__name__}"
            raise DatasetError(msg)
        if docs is None:
            return []
        if not _is_list(docs):
            msg = f"run.outputs: expected a list of retrieved documents, received {type(docs).__name__}"
            raise DatasetError(msg)
        return [retrieved_id(d, id_key) for d in docs]

    def relevance(example: Any) -> dict[str, float]:
        ref = _outputs(example, "example")
        if not isinstance(ref, Mapping) or reference_key not in ref:
            found = sorted(map(str, ref)) if isinstance(ref, Mapping) else type(ref).__name__
            msg = f"example.outputs: expected key {reference_key!r} (reference_key) with the relevant ids, found {found}"
            raise DatasetError(msg)
        return parse_relevance(ref[reference_key], f"example.outputs[{reference_key!r}]")

    def evaluator(run: Any, example: Any) -> dict[str, Any]:
        ranked = retrieved(run)
        grades = relevance(example)
        return {"key": key, "score": float(func(ranked, grades, k))}  # type: ignore[arg-type]

    evaluator.__name__ = f"nudge_rag_{metric}_at_{k}"
    evaluator.__qualname__ = evaluator.__name__
    evaluator.__doc__ = f"LangSmith evaluator: {metric}@{k} of run.outputs against example.outputs[{reference_key!r}]."
    return evaluator
