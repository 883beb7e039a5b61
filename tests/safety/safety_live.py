"""Living stores for the lifecycle tests: each supported kind, filled through its framework, with
the operations users do between two runs (edit, re-embed, delete, add), done through the
framework's own API the way a user would.

The user's embedding model is :class:`UserModel`: the bag-of-words embedder, which can be
"upgraded" (``model_v2()``) so that re-embedding a record gives it another vector.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safety_kit as K

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.testing import BagOfWordsEmbedder

# Server kinds: what they connect to comes from tests/stores/conftest.py's fixtures.
SERVICE_KINDS = [
    "pgvector",  # LangChain PGVectorStore (langchain_postgres v2) on the session's PostgreSQL
    "milvus",  # LangChain Milvus on the session's Milvus Lite file, l2
    "lancedb",  # LangChain LanceDB (langchain_community) in a folder, l2
]

LIVE_KINDS = [
    "llamaindex-simple",
    "langchain-inmemory",
    "chroma",  # a raw chromadb collection (PersistentClient), cosine space
    "langchain-chroma",  # LangChain Chroma (PersistentClient), l2 space
    "qdrant",  # LangChain QdrantVectorStore over QdrantClient(path=...), Cosine
    "faiss",  # LangChain FAISS, flat inner product
    *SERVICE_KINDS,
]


class UserModel(BagOfWordsEmbedder):
    """The user's embedding model; inside ``model_v2()`` it is another model (a re-embedding
    gives other vectors for the same text)."""

    def __init__(self) -> None:
        super().__init__(K.DIM)
        self.version = 1

    def embed(self, texts: Any) -> Any:
        if self.version == 2 and not isinstance(texts, str):
            texts = [f"{t} modeltwo upgraded" for t in texts]
        return super().embed(texts)

    @contextlib.contextmanager
    def model_v2(self) -> Iterator[None]:
        self.version = 2
        try:
            yield
        finally:
            self.version = 1


@dataclass
class Live:
    """One store of one kind, as the user holds it."""

    kind: str
    obj: Any  # what the user passes to the finetuner
    model: UserModel
    tol: float  # 0: kept bit for bit; 1e-6: a store that renormalises (cosine Chroma / Qdrant)
    embed_model: Any = None  # the finetuner needs it only for a raw collection
    persist_dir: str | None = None
    closers: tuple[Any, ...] = ()
    services: dict[str, Any] | None = None  # what make_live was given (a twin gets the same)

    # -- the finetuner ---------------------------------------------------------------------

    def finetuner(self, **kw: Any) -> NudgeEmbeddingFinetuner:
        kw.setdefault("gamma", K.GAMMA)
        kw.setdefault("write_batch_size", 3)
        if self.persist_dir is not None:
            kw.setdefault("persist_dir", self.persist_dir)
        return NudgeEmbeddingFinetuner(self.obj, embed_model=self.embed_model, **kw)

    def snapshot(self) -> K.Snapshot:
        return K.snapshot(self.obj)

    def close(self) -> None:
        for c in self.closers:
            c()

    # -- what users do -----------------------------------------------------------------------

    def edit(self, rid: str, text: str, meta: dict[str, Any]) -> None:
        """New text (and so a new embedding) under the same id."""
        k = self.kind
        if k == "llamaindex-simple":
            from llama_index.core.schema import TextNode

            self.obj.delete_nodes([rid], delete_from_docstore=True)
            self.obj.insert_nodes([TextNode(id_=rid, text=text, metadata=dict(meta))])
        elif k == "langchain-inmemory":
            from langchain_core.documents import Document

            self.obj.add_documents([Document(page_content=text, metadata=dict(meta))], ids=[rid])
        elif k == "chroma":
            self.obj.update(
                ids=[rid],
                documents=[text],
                metadatas=[dict(meta)],
                embeddings=self.model.embed([text]),
            )
        elif k == "langchain-chroma":
            from langchain_core.documents import Document

            self.obj.update_document(rid, Document(page_content=text, metadata=dict(meta)))
        elif k in ("qdrant", "pgvector"):
            self.obj.add_texts([text], metadatas=[dict(meta)], ids=[rid])  # an upsert
        elif k == "milvus":
            from langchain_core.documents import Document

            self.obj.upsert(ids=[rid], documents=[Document(page_content=text, metadata=dict(meta))])
        elif k in ("faiss", "lancedb"):
            self.obj.delete([rid])
            self.add(rid, text, meta)
        else:
            raise ValueError(k)

    def reembed(self, rid: str) -> None:
        """The same text and metadata, embedded again by the upgraded model."""
        snap = self.snapshot()
        row = snap.row(rid)
        text, meta = snap.texts[row], self._user_meta(snap.metadatas[row])
        assert text is not None
        with self.model.model_v2():
            self.edit(rid, text, meta)

    def delete(self, rid: str) -> None:
        k = self.kind
        if k == "llamaindex-simple":
            self.obj.delete_nodes([rid], delete_from_docstore=True)
        elif k == "chroma":
            self.obj.delete(ids=[rid])
        else:
            self.obj.delete([rid])

    def add(self, rid: str, text: str, meta: dict[str, Any]) -> None:
        k = self.kind
        if k == "llamaindex-simple":
            from llama_index.core.schema import TextNode

            self.obj.insert_nodes([TextNode(id_=rid, text=text, metadata=dict(meta))])
        elif k == "chroma":
            self.obj.add(
                ids=[rid],
                documents=[text],
                metadatas=[dict(meta)],
                embeddings=self.model.embed([text]),
            )
        elif k == "lancedb":
            self.obj.add_texts([text], metadatas=[self._lancedb_meta(meta)], ids=[rid])
        else:
            self.obj.add_texts([text], metadatas=[dict(meta)], ids=[rid])

    def _lancedb_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A LanceDB table's metadata is a struct fixed when the table was made: a user's record
        holds those keys (None where it has no value), and no other (LanceDB refuses them)."""
        struct = self.obj.get_table().schema.field("metadata").type
        return {f.name: meta.get(f.name) for f in struct}

    def _user_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if not k.startswith("_") and k not in LI_KEYS}


LI_KEYS = {"_node_content", "_node_type", "document_id", "doc_id", "ref_doc_id"}


def make_live(
    kind: str,
    where: Path,
    *,
    flavour: str = "",
    name: str = K.COLLECTION,
    ns: str = "safety",
    services: dict[str, Any] | None = None,
) -> Live:
    """A store of ``kind`` filled with the corpus (texts end with ``flavour``: two stores with
    the same ids and other texts hold other vectors). In-memory kinds ignore ``where``.

    The server kinds take what they connect to from ``services`` (the server fixtures of
    tests/conftest.py, see ``services_for``): ``pg_langchain_engine`` for "pgvector",
    ``milvus_uri`` for "milvus"; each store is a fresh table / collection of its own."""
    where.mkdir(parents=True, exist_ok=True)
    model = UserModel()
    rids = [K.record_id(i, ns) for i in range(K.N_RECORDS)]
    txts, metas = K.texts(flavour=flavour), K.metadatas()
    if kind == "llamaindex-simple":
        from llama_index.core import VectorStoreIndex
        from llama_index.core.schema import TextNode

        nodes = [
            TextNode(id_=i, text=t, metadata=dict(m))
            for i, t, m in zip(rids, txts, metas, strict=True)
        ]
        index = VectorStoreIndex(nodes, embed_model=model.as_llamaindex())
        return Live(kind, index, model, 0.0)
    if kind == "langchain-inmemory":
        from langchain_core.vectorstores import InMemoryVectorStore

        vs = InMemoryVectorStore(model.as_langchain())
        vs.add_texts(txts, metadatas=metas, ids=rids)
        return Live(kind, vs, model, 0.0)
    if kind in ("chroma", "langchain-chroma"):
        import chromadb

        client = chromadb.PersistentClient(path=str(where / "chroma"))
        if kind == "chroma":
            col = client.create_collection(name, configuration={"hnsw": {"space": "cosine"}})
            col.add(ids=rids, documents=txts, metadatas=metas, embeddings=model.embed(txts))
            return Live(kind, col, model, 1e-6, embed_model=model, closers=(client.close,))
        from langchain_chroma import Chroma

        vs = Chroma(collection_name=name, embedding_function=model.as_langchain(), client=client)
        vs.add_texts(txts, metadatas=metas, ids=rids)
        return Live(kind, vs, model, 0.0, closers=(client.close,))
    if kind == "qdrant":
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient
        from qdrant_client.models import Distance, VectorParams

        client = QdrantClient(path=str(where / "qdrant"))
        client.create_collection(
            name, vectors_config=VectorParams(size=K.DIM, distance=Distance.COSINE)
        )
        vs = QdrantVectorStore(client=client, collection_name=name, embedding=model.as_langchain())
        vs.add_texts(txts, metadatas=metas, ids=rids)
        return Live(kind, vs, model, 1e-6, closers=(client.close,))
    if kind == "faiss":
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy

        vs = FAISS.from_texts(
            txts,
            model.as_langchain(),
            metadatas=metas,
            ids=rids,
            distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
        )
        return Live(kind, vs, model, 0.0)
    if kind in SERVICE_KINDS:
        live = _service_live(kind, where, model, rids, txts, metas, services or {})
        live.services = services
        return live
    raise ValueError(kind)


# What each server kind needs from tests/stores/conftest.py's fixtures.
SERVICE_FIXTURES = {"pgvector": ["pg_langchain_engine"], "milvus": ["milvus_uri"], "lancedb": []}


def services_for(kind: str, request: Any) -> dict[str, Any]:
    """The session fixtures ``kind`` needs, fetched from a test's ``request``."""
    return {f: request.getfixturevalue(f) for f in SERVICE_FIXTURES.get(kind, [])}


def _service_live(
    kind: str,
    where: Path,
    model: UserModel,
    rids: list[str],
    txts: list[str],
    metas: list[dict[str, Any]],
    services: dict[str, Any],
) -> Live:
    from store_cases import table_name  # tests/stores: a name SQL, Milvus and LanceDB take

    if kind == "pgvector":
        from langchain_postgres import PGVectorStore

        engine = services["pg_langchain_engine"]
        table = table_name("safety")
        engine.init_vectorstore_table(table, K.DIM)
        vs = PGVectorStore.create_sync(engine, model.as_langchain(), table)  # cosine
        vs.add_texts(txts, metadatas=metas, ids=rids)
        return Live(kind, vs, model, 0.0)
    if kind == "milvus":
        from langchain_milvus import Milvus

        vs = Milvus.from_texts(
            txts,
            model.as_langchain(),
            metadatas=metas,
            ids=rids,
            connection_args={"uri": services["milvus_uri"]},
            collection_name=table_name("safety"),
            enable_dynamic_field=True,  # users' metadata keys vary from record to record
        )
        return Live(
            kind, vs, model, 0.0, closers=(lambda: vs.client.drop_collection(vs.collection_name),)
        )
    if kind == "lancedb":
        from langchain_community.vectorstores import LanceDB

        # mode="append": LangChain's default ("overwrite") replaces the whole table on every
        # add_texts, so a user who adds records to a living store sets it.
        vs = LanceDB(
            embedding=model.as_langchain(),
            uri=str(where / "lancedb"),
            table_name="safety",
            mode="append",
        )
        vs.add_texts(txts, metadatas=metas, ids=rids)
        return Live(kind, vs, model, 0.0)
    raise ValueError(kind)


def new_id(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"nudge-rag-safety/added/{n}"))
