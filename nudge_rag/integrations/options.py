"""The retriever options a user may pass, checked before anything is read or written.

``finetune(similarity_top_k=..., retriever_kwargs=...)``, ``update(...)`` and
``retriever(k, **options)`` hand these on to the framework's ``as_retriever``. Each framework
spells the top-k its own way, and neither refuses a name it does not know until it is too late
(LangChain's retriever ignores unknown fields, LlamaIndex passes them to the store's query), so
the options are checked here, before a fine-tune writes the store:

- the top-k: ``similarity_top_k`` (LlamaIndex's name, and ours) or ``k`` in both frameworks, and
  ``search_kwargs={"k": ...}`` in LangChain; spellings that disagree are refused;
- the other options: those the framework's retriever takes (LlamaIndex ``filters``,
  ``vector_store_query_mode``, ``vector_store_kwargs``, ...; LangChain ``search_type``,
  ``search_kwargs``, ``tags``, ...), checked where a wrong value would fail later;
- anything else is a :class:`~nudge_rag.errors.ConfigError` that names it. A store with no
  framework (its adapter is the retriever) takes a top-k only.

Imports no framework: the names are the frameworks' own (a test compares them with the
installed ``VectorIndexRetriever`` and ``VectorStoreRetriever``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nudge_rag._util import check_positive_int
from nudge_rag.errors import ConfigError

__all__ = ["LANGCHAIN_OPTIONS", "LLAMAINDEX_OPTIONS", "retriever_options"]

#: ``VectorIndexRetriever`` keywords a user may set (besides the top-k).
LLAMAINDEX_OPTIONS = frozenset(
    {
        "vector_store_query_mode",
        "filters",
        "alpha",
        "doc_ids",
        "sparse_top_k",
        "hybrid_top_k",
        "verbose",
        "vector_store_kwargs",
    }
)
#: ``VectorStoreRetriever`` fields a user may set (besides the top-k).
LANGCHAIN_OPTIONS = frozenset({"search_type", "search_kwargs", "tags", "metadata", "name"})
LANGCHAIN_SEARCH_TYPES = ("similarity", "similarity_score_threshold", "mmr")

#: Names a framework knows but the finetuner sets itself, and why they cannot be passed.
_RESERVED = {
    "embed_model": "queries are embedded with the finetuner's model (and its query-side adaptor): "
    "pass embed_model= to NudgeEmbeddingFinetuner",
    "embedding": "queries are embedded with the finetuner's model (and its query-side adaptor): "
    "pass embed_model= to NudgeEmbeddingFinetuner",
    "adaptor": "the query-side adaptor in force is applied by the finetuner (see ft.adaptor())",
    "node_ids": "the index sets it (every node of the index)",
    "callback_manager": "the index sets it",
    "object_map": "the index sets it",
    "vectorstore": "the retriever searches the fine-tuned store",
    "index": "the retriever searches the fine-tuned index",
}
#: Another framework's spelling, and this framework's.
_OTHER_SPELLING = {
    "llamaindex": {
        "search_kwargs": "search_kwargs is LangChain's: LlamaIndex takes similarity_top_k= (or "
        "k=), filters= and vector_store_kwargs=",
        "search_type": "search_type is LangChain's: LlamaIndex takes vector_store_query_mode=",
    },
    "langchain": {
        "filters": "filters is LlamaIndex's: LangChain takes search_kwargs={'filter': ...}",
        "filter": "LangChain takes the filter in search_kwargs={'filter': ...}",
        "vector_store_query_mode": "vector_store_query_mode is LlamaIndex's: LangChain takes "
        "search_type=",
        "score_threshold": "LangChain takes it in search_kwargs={'score_threshold': ...}",
        "fetch_k": "LangChain takes it in search_kwargs={'fetch_k': ...}",
    },
}


def retriever_options(
    framework: str,
    similarity_top_k: object = None,
    options: Mapping[str, Any] | None = None,
    *,
    where: str = "",
) -> tuple[int | None, dict[str, Any]]:
    """``(k, options)``: the one top-k asked for, and the other options for ``as_retriever``.

    Args:
        framework: ``"llamaindex"``, ``"langchain"`` or ``"none"`` (a store with no framework).
        similarity_top_k: The top-k given apart from the options (None: not given).
        options: What goes to the framework's ``as_retriever``; ``k`` / ``similarity_top_k`` /
            ``search_kwargs["k"]`` are taken out of it.
        where: How the caller named ``options`` (``"retriever_kwargs"``), for the messages.

    Raises:
        ConfigError: An option the framework does not take, a top-k that is not an integer
            >= 1, two spellings of the top-k that disagree, or a LangChain ``search_type`` it
            does not know (or ``"similarity_score_threshold"`` without a ``score_threshold``).

    Example:
        >>> retriever_options("langchain", None, {"search_kwargs": {"k": 3, "fetch_k": 9}})
        (3, {'search_kwargs': {'fetch_k': 9}})
        >>> retriever_options("llamaindex", 5, {"k": 3})
        Traceback (most recent call last):
        ...
        nudge_rag.errors.ConfigError: conflicting top-k: similarity_top_k=5 and k=3; give one
    """
    if options is not None and not isinstance(options, Mapping):
        msg = f"{where or 'options'}: expected a mapping of keyword arguments, received {type(options).__name__}"
        raise ConfigError(msg)
    rest = dict(options or {})

    def name(key: str) -> str:
        return f"{where}[{key!r}]" if where else key

    given: list[tuple[str, object]] = []
    if similarity_top_k is not None:
        given.append(("similarity_top_k", similarity_top_k))
    for key in ("similarity_top_k", "k"):
        if key in rest:
            given.append((name(key), rest.pop(key)))
    if framework == "langchain" and "search_kwargs" in rest:
        search = rest["search_kwargs"]
        if search is None:
            search = {}
        if not isinstance(search, Mapping):
            msg = f"{name('search_kwargs')}: expected a mapping, received {type(search).__name__}"
            raise ConfigError(msg)
        search = dict(search)
        if "k" in search:
            given.append((f"{name('search_kwargs')}['k']", search.pop("k")))
        rest["search_kwargs"] = search
    k, first = None, ""
    for label, value in given:
        value = check_positive_int(value, label)
        if k is not None and value != k:
            msg = f"conflicting top-k: {first}={k!r} and {label}={value!r}; give one"
            raise ConfigError(msg)
        k, first = value, first or label

    allowed = {
        "llamaindex": LLAMAINDEX_OPTIONS,
        "langchain": LANGCHAIN_OPTIONS,
    }.get(framework, frozenset())
    for key in rest:
        if key in allowed:
            continue
        why = _RESERVED.get(key) or _OTHER_SPELLING.get(framework, {}).get(key)
        if why is None:
            accepted = ", ".join(["k", "similarity_top_k", *sorted(allowed)])
            if framework == "langchain":
                accepted += " (and search_kwargs={'k': ...})"
            why = (
                f"the {framework} retriever takes {accepted}"
                if framework in ("llamaindex", "langchain")
                else "a store with no framework is its own retriever: it takes k only"
            )
        msg = f"{name(key)}: not a retriever option here ({why})"
        raise ConfigError(msg)
    if framework == "langchain":
        _check_langchain(rest, name)
    elif framework == "llamaindex" and "vector_store_query_mode" in rest:
        _check_query_mode(rest["vector_store_query_mode"], name("vector_store_query_mode"))
    return k, rest


def _check_langchain(rest: dict[str, Any], name: Any) -> None:
    """What ``VectorStoreRetriever`` validates when it is built, after a fine-tune wrote."""
    search_type = rest.get("search_type", "similarity")
    if search_type not in LANGCHAIN_SEARCH_TYPES:
        msg = f"{name('search_type')}: expected one of {LANGCHAIN_SEARCH_TYPES}, received {search_type!r}"
        raise ConfigError(msg)
    threshold = rest.get("search_kwargs", {}).get("score_threshold")
    if search_type == "similarity_score_threshold" and not isinstance(threshold, int | float):
        msg = (
            f"{name('search_kwargs')}: search_type='similarity_score_threshold' needs a number "
            f"in search_kwargs['score_threshold'], received {threshold!r}"
        )
        raise ConfigError(msg)


def _check_query_mode(mode: object, label: str) -> None:
    from llama_index.core.vector_stores.types import VectorStoreQueryMode

    try:
        VectorStoreQueryMode(mode)
    except ValueError:
        modes = [m.value for m in VectorStoreQueryMode]
        msg = f"{label}: expected one of {modes}, received {mode!r}"
        raise ConfigError(msg) from None
