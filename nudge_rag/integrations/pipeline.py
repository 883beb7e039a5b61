"""Which framework a store belongs to, and what the finetuner needs from it (:class:`Pipeline`)."""

from __future__ import annotations

from typing import Any

from nudge_rag._util import framework_of
from nudge_rag.errors import ConfigError
from nudge_rag.integrations import langchain, llamaindex
from nudge_rag.integrations.base import (
    Pipeline,
    document_embedder,
    generic_embedder,
    model_name,
)

__all__ = ["resolve_pipeline"]


def resolve_pipeline(obj: Any, embed_model: Any = None, *, max_concurrency: int = 16) -> Pipeline:
    """Work out the framework of ``obj``, its query embedder and its retriever factory."""
    fw = framework_of(obj)
    if fw == "llamaindex":
        return llamaindex.pipeline(obj, embed_model, max_concurrency=max_concurrency)
    if fw == "langchain":
        return langchain.pipeline(obj, embed_model, max_concurrency=max_concurrency)
    if embed_model is None:
        msg = (
            f"{type(obj).__name__} carries no embedding model: pass embed_model= (the model that "
            "embedded the stored records; it embeds the training queries)"
        )
        raise ConfigError(msg)
    emb_fw = framework_of(embed_model)
    name = model_name(embed_model)
    if emb_fw == "llamaindex":
        return Pipeline(
            "none",
            obj,
            llamaindex.query_embedder(embed_model, max_concurrency),
            None,
            document_embedder(embed_model, "aget_text_embedding", max_concurrency),
            name,
        )
    if emb_fw == "langchain":
        return Pipeline(
            "none",
            obj,
            langchain.query_embedder(embed_model, max_concurrency),
            None,
            document_embedder(embed_model, "aembed_documents", max_concurrency),
            name,
        )
    return Pipeline(
        "none",
        obj,
        generic_embedder(embed_model, max_concurrency),
        None,
        document_embedder(embed_model, None, max_concurrency),
        name,
    )
