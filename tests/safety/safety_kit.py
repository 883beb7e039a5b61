"""Stores on disk, snapshots and jobs for the safety tests (issue 9).

The crash tests run every store operation in a child process forked from the zygote
(safety_zygote.py); the functions named ``job_*`` are what those children call. Each opens the
store from disk as a user's program would, does one thing, and returns a JSON-able dict.

Importing this module imports the standard library and numpy only; nudge_rag and the store
clients are imported inside the functions (a child must read its crash points from its own
environment).

Crash-suite stores (``KINDS``), all ~40 records embedded with the bag-of-words model:

- ``chroma``: LlamaIndex ``ChromaVectorStore`` over ``chromadb.PersistentClient`` (l2 space, so
  vectors are kept bit for bit); identity: the collection id.
- ``simple``: a LlamaIndex ``VectorStoreIndex`` over ``SimpleVectorStore``, persisted with
  ``storage_context.persist``; the finetuner gets ``persist_dir=``.
- ``faiss``: LangChain ``FAISS`` (flat inner product), ``save_local``; ``persist_dir=``.
- ``qdrant``: LangChain ``QdrantVectorStore`` over ``QdrantClient(path=...)`` (Dot distance, so
  vectors are kept bit for bit); identity: the path and the collection.

One server kind (``SERVER_KINDS``), whose state lives in a companion collection on the server:

- ``chroma-server``: LlamaIndex ``ChromaVectorStore`` over ``chromadb.HttpClient`` to the server
  named by ``$NUDGE_RAG_TEST_CHROMA`` (``host:port``), l2 space; the collection's name is kept in
  ``<root>/chroma-server/name`` (each build makes a new collection).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from live_servers import chroma_http_client, close_chroma_http

DIM = 48
N_RECORDS = 40
GAMMA = 0.3
COLLECTION = "safety-docs"
TOPICS = ["protein folding", "solar wind", "river delta", "neural network", "coral reef"]
KINDS = ["chroma", "simple", "faiss", "qdrant"]
SERVER_KINDS = ["chroma-server"]

#: Lines for the end of the pytest run (conftest.py prints them): kill points tried, data lost.
SUMMARY: list[str] = []
PERSISTED = {"simple", "faiss"}  # saved to disk by the finetuner (persist_dir=)


# ---------------------------------------------------------------------------------------------
# The corpus and the training queries
# ---------------------------------------------------------------------------------------------
def record_id(i: int, ns: str = "safety") -> str:
    # UUIDs, because Qdrant takes only UUIDs or unsigned ints as point ids.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"nudge-rag-{ns}/{i}"))


def ids(n: int = N_RECORDS) -> list[str]:
    return [record_id(i) for i in range(n)]


def texts(n: int = N_RECORDS, flavour: str = "") -> list[str]:
    return [
        f"record {i} on {TOPICS[i % 5]} with term{i} and facet{i * 7 % 13}{flavour}"
        for i in range(n)
    ]


def metadatas(n: int = N_RECORDS) -> list[dict[str, Any]]:
    return [
        {"n": i, "topic": TOPICS[i % 5], "score": i / 8, "even": i % 2 == 0, "tag": f"t{i % 3}"}
        for i in range(n)
    ]


def queries(name: str, rids: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """Training queries: ``q1`` points at records 0-11, ``q2`` at 6-17 (6-11 are in both)."""
    rids = rids or ids()
    if name == "q1":
        rows, other, word = range(12), 1, "question"
    elif name == "q2":
        rows, other, word = range(6, 18), 3, "asked"
    else:
        raise ValueError(name)
    return [
        (f"term{i} {TOPICS[(i + other + v) % 5]} {word} {v}", [rids[i]])
        for i in rows
        for v in range(2)
    ]


def warm() -> None:
    """Load once, in the zygote, what every child would otherwise load for seconds."""
    from llama_index.core import Settings

    _ = Settings.node_parser  # LlamaIndex's default splitter loads a tiktoken vocabulary


def embedder() -> Any:
    from nudge_rag.testing import BagOfWordsEmbedder

    return BagOfWordsEmbedder(DIM)


# ---------------------------------------------------------------------------------------------
# Crash-suite stores: build on disk, open from disk
# ---------------------------------------------------------------------------------------------
@dataclass
class Opened:
    obj: Any  # what the user passes to the finetuner
    persist_dir: str | None
    close: Any  # () -> None
    embed_model: Any = None


def store_path(kind: str, root: str | os.PathLike[str]) -> Path:
    return Path(root) / kind


def _chroma_server() -> tuple[str, int]:
    host, _, port = os.environ["NUDGE_RAG_TEST_CHROMA"].rpartition(":")
    return host, int(port)


def _llamaindex_chroma(col: Any, rids: list[str], txts: list[str], metas: list[dict]) -> None:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.chroma import ChromaVectorStore

    nodes = [
        TextNode(id_=i, text=t, metadata=dict(m)) for i, t, m in zip(rids, txts, metas, strict=True)
    ]
    ctx = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=col))
    VectorStoreIndex(nodes, storage_context=ctx, embed_model=embedder().as_llamaindex())


def build(kind: str, root: str | os.PathLike[str]) -> None:
    """Create the store ``kind`` under ``root`` and leave it on disk, closed."""
    path = store_path(kind, root)
    emb = embedder()
    rids, txts, metas = ids(), texts(), metadatas()
    if kind == "chroma":
        import chromadb
        from llama_index.core import StorageContext, VectorStoreIndex
        from llama_index.core.schema import TextNode
        from llama_index.vector_stores.chroma import ChromaVectorStore

        client = chromadb.PersistentClient(path=str(path))
        col = client.create_collection(COLLECTION, configuration={"hnsw": {"space": "l2"}})
        nodes = [
            TextNode(id_=i, text=t, metadata=dict(m))
            for i, t, m in zip(rids, txts, metas, strict=True)
        ]
        ctx = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=col))
        VectorStoreIndex(nodes, storage_context=ctx, embed_model=emb.as_llamaindex())
        client.close()
    elif kind == "chroma-server":
        name = f"safety_{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True, exist_ok=True)
        client = chroma_http_client(*_chroma_server())
        try:
            col = client.create_collection(name, configuration={"hnsw": {"space": "l2"}})
            _llamaindex_chroma(col, rids, txts, metas)
        finally:
            close_chroma_http(client)
        (path / "name").write_text(name)
    elif kind == "simple":
        from llama_index.core import VectorStoreIndex
        from llama_index.core.schema import TextNode

        nodes = [
            TextNode(id_=i, text=t, metadata=dict(m))
            for i, t, m in zip(rids, txts, metas, strict=True)
        ]
        index = VectorStoreIndex(nodes, embed_model=emb.as_llamaindex())
        index.storage_context.persist(persist_dir=str(path))
    elif kind == "faiss":
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy

        vs = FAISS.from_texts(
            txts,
            emb.as_langchain(),
            metadatas=metas,
            ids=rids,
            distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
        )
        vs.save_local(str(path))
    elif kind == "qdrant":
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient
        from qdrant_client.models import Distance, VectorParams

        client = QdrantClient(path=str(path))
        client.create_collection(
            COLLECTION, vectors_config=VectorParams(size=DIM, distance=Distance.DOT)
        )
        vs = QdrantVectorStore(
            client=client,
            collection_name=COLLECTION,
            embedding=emb.as_langchain(),
            distance=Distance.DOT,
        )
        vs.add_texts(txts, metadatas=metas, ids=rids)
        client.close()
    else:
        raise ValueError(kind)


def open_store(kind: str, root: str | os.PathLike[str]) -> Opened:
    """Open the store ``kind`` from disk, as a user's new process would."""
    path = store_path(kind, root)
    emb = embedder()
    if kind == "chroma":
        import chromadb
        from llama_index.core import VectorStoreIndex
        from llama_index.vector_stores.chroma import ChromaVectorStore

        client = chromadb.PersistentClient(path=str(path))
        col = client.get_collection(COLLECTION)
        index = VectorStoreIndex.from_vector_store(
            ChromaVectorStore(chroma_collection=col), embed_model=emb.as_llamaindex()
        )
        return Opened(index, None, client.close)
    if kind == "chroma-server":
        from llama_index.core import VectorStoreIndex
        from llama_index.vector_stores.chroma import ChromaVectorStore

        http = chroma_http_client(*_chroma_server())
        col = http.get_collection((path / "name").read_text())
        index = VectorStoreIndex.from_vector_store(
            ChromaVectorStore(chroma_collection=col), embed_model=emb.as_llamaindex()
        )
        return Opened(index, None, lambda: close_chroma_http(http))
    if kind == "simple":
        from llama_index.core import StorageContext, load_index_from_storage

        ctx = StorageContext.from_defaults(persist_dir=str(path))
        index = load_index_from_storage(ctx, embed_model=emb.as_llamaindex())
        return Opened(index, str(path), lambda: None)
    if kind == "faiss":
        from langchain_community.vectorstores import FAISS
        from langchain_community.vectorstores.utils import DistanceStrategy

        vs = FAISS.load_local(
            str(path),
            emb.as_langchain(),
            allow_dangerous_deserialization=True,  # our own file, written by build()
            distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
        )
        return Opened(vs, str(path), lambda: None)
    if kind == "qdrant":
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient
        from qdrant_client.models import Distance

        client = QdrantClient(path=str(path))
        vs = QdrantVectorStore(
            client=client,
            collection_name=COLLECTION,
            embedding=emb.as_langchain(),
            distance=Distance.DOT,
        )
        return Opened(vs, None, client.close)
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# Snapshots: every id's vector, text and metadata
# ---------------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    ids: list[str]
    vectors: np.ndarray  # float64 (lossless for the float32 stores)
    texts: list[str | None]
    metadatas: list[dict]

    def row(self, rid: str) -> int:
        return self.ids.index(rid)

    def as_dict(self) -> dict[str, tuple[np.ndarray, str | None, dict]]:
        return {
            i: (self.vectors[r], self.texts[r], self.metadatas[r]) for r, i in enumerate(self.ids)
        }

    def save(self, out: str | os.PathLike[str]) -> None:
        out = Path(out)
        np.save(out.with_suffix(".npy"), self.vectors, allow_pickle=False)
        doc = {"ids": self.ids, "texts": self.texts, "metadatas": self.metadatas}
        out.with_suffix(".json").write_text(json.dumps(doc))

    @classmethod
    def load(cls, out: str | os.PathLike[str]) -> Snapshot:
        out = Path(out)
        doc = json.loads(out.with_suffix(".json").read_text())
        vecs = np.load(out.with_suffix(".npy"), allow_pickle=False)
        return cls(doc["ids"], vecs, doc["texts"], doc["metadatas"])


def snapshot(store: Any) -> Snapshot:
    """Read every record of ``store`` (anything ``adapter_for`` takes), sorted by id."""
    from nudge_rag.stores import adapter_for

    ad = adapter_for(store)
    rows: dict[str, tuple[np.ndarray, str | None, dict]] = {}
    for page in ad.iter_pages(7, with_documents=True):
        for i, v, t, m in zip(page.ids, page.embeddings, page.texts, page.metadatas, strict=True):
            assert i not in rows, f"id {i} read twice"
            rows[i] = (np.asarray(v, dtype=np.float64), t, json.loads(json.dumps(m)))
    order = sorted(rows)
    vecs = np.stack([rows[i][0] for i in order]) if order else np.zeros((0, 0))
    return Snapshot(order, vecs, [rows[i][1] for i in order], [rows[i][2] for i in order])


def diff(
    got: Snapshot,
    want: Snapshot,
    *,
    atol: float = 0.0,
    only: set[str] | None = None,
    check_ids: bool = True,
) -> list[str]:
    """What differs between two snapshots (empty: equal, vectors bit for bit when atol=0)."""
    out: list[str] = []
    g, w = got.as_dict(), want.as_dict()
    if check_ids and only is None:
        if set(g) - set(w):
            out.append(f"extra ids {sorted(set(g) - set(w))[:5]}")
        if set(w) - set(g):
            out.append(f"missing ids {sorted(set(w) - set(g))[:5]}")
    for rid in sorted(only if only is not None else set(w) & set(g)):
        if rid not in g or rid not in w:
            out.append(f"{rid}: in {'want' if rid in w else 'got'} only")
            continue
        (gv, gt, gm), (wv, wt, wm) = g[rid], w[rid]
        if gv.shape != wv.shape:
            out.append(f"{rid}: vector shape {gv.shape} != {wv.shape}")
        elif atol == 0.0:
            if not np.array_equal(gv, wv):
                out.append(f"{rid}: vector differs (max |Δ| {np.max(np.abs(gv - wv)):.3g})")
        elif not np.allclose(gv, wv, atol=atol, rtol=0):
            out.append(f"{rid}: vector differs (max |Δ| {np.max(np.abs(gv - wv)):.3g})")
        if gt != wt:
            out.append(f"{rid}: text {gt!r} != {wt!r}")
        if gm != wm:
            out.append(f"{rid}: metadata {gm!r} != {wm!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Jobs (run in zygote children)
# ---------------------------------------------------------------------------------------------
REPORT_FIELDS = [
    "n_moved",
    "moved_ids",
    "adopted_ids",
    "deleted_ids",
    "written",
    "note",
    "state_dir",
    "n_restored",
    "n_already_original",
    "changed_ids",
    "mismatched_ids",
    "max_abs_diff",
]


def report_dict(report: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in REPORT_FIELDS:
        if hasattr(report, f):
            v = getattr(report, f)
            out[f] = list(v) if isinstance(v, (list, tuple, set)) else v
    return out


def finetuner(opened: Opened, **kw: Any) -> Any:
    from nudge_rag import NudgeEmbeddingFinetuner

    kw.setdefault("gamma", GAMMA)
    if opened.persist_dir is not None:
        kw.setdefault("persist_dir", opened.persist_dir)
    return NudgeEmbeddingFinetuner(opened.obj, embed_model=opened.embed_model, **kw)


def job_build(kind: str, root: str) -> dict[str, Any]:
    build(kind, root)
    return {}


def job_snapshot(kind: str, root: str, out: str) -> dict[str, Any]:
    opened = open_store(kind, root)
    try:
        snap = snapshot(opened.obj)
    finally:
        opened.close()
    snap.save(out)
    return {"n": len(snap.ids)}


def job_finetune(
    kind: str, root: str, queries_name: str, write_batch_size: int = 3, **kw: Any
) -> dict[str, Any]:
    opened = open_store(kind, root)
    try:
        ft = finetuner(opened, write_batch_size=write_batch_size, **kw)
        ft.finetune(queries(queries_name))
        return report_dict(ft.report)
    finally:
        opened.close()


def job_revert(
    kind: str, root: str, write_batch_size: int = 3, snapshot_before: str | None = None, **kw: Any
) -> dict[str, Any]:
    opened = open_store(kind, root)
    try:
        if snapshot_before:
            snapshot(opened.obj).save(snapshot_before)
        ft = finetuner(opened, write_batch_size=write_batch_size, **kw)
        return report_dict(ft.revert())
    finally:
        opened.close()


def job_hold_lock(
    host: str, port: int, collection: str, sock: str, queries_name: str = "q1"
) -> dict[str, Any]:
    """A fine-tune of a collection on a Chroma server that stops after its first write batch
    (the store's lock held, the store half-written), says ``locked`` on the Unix socket ``sock``
    and goes on when it reads ``go``. Returns its report and the monotonic time of its last batch."""
    import socket
    import time

    from nudge_rag import NudgeEmbeddingFinetuner
    from nudge_rag.stores._chroma import ChromaAdapter

    client = chroma_http_client(host, port)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock)
    batches: list[float] = []

    class Held(ChromaAdapter):
        def _write_batch(self, ids: list[str], vectors: np.ndarray) -> None:
            super()._write_batch(ids, vectors)
            batches.append(time.monotonic())
            if len(batches) == 1:
                conn.sendall(b"locked\n")
                word = conn.recv(64)
                if word != b"go\n":
                    raise RuntimeError(f"expected go, received {word!r}")

    try:
        store = Held(client.get_collection(collection), name="chroma")
        ft = NudgeEmbeddingFinetuner(store, embed_model=embedder(), gamma=GAMMA, write_batch_size=3)
        ft.finetune(queries(queries_name))
        return {**report_dict(ft.report), "last_batch": batches[-1], "batches": len(batches)}
    finally:
        conn.close()
        close_chroma_http(client)


def job_user_changes(
    kind: str,
    root: str,
    edit_id: str,
    text: str,
    meta: dict[str, Any],
    delete_id: str | None = None,
) -> dict[str, Any]:
    """What a user does between two runs, through the framework, saved the framework's way:
    ``edit_id`` gets a new text (so a new vector) and metadata, ``delete_id`` is deleted."""
    opened = open_store(kind, root)
    gone = [edit_id] + ([delete_id] if delete_id else [])
    try:
        obj = opened.obj
        if kind in ("chroma", "simple"):
            from llama_index.core.schema import TextNode

            obj.delete_nodes(gone, delete_from_docstore=True)
            obj.insert_nodes([TextNode(id_=edit_id, text=text, metadata=dict(meta))])
            if kind == "simple":
                obj.storage_context.persist(persist_dir=opened.persist_dir)
        elif kind == "faiss":
            obj.delete(gone)
            obj.add_texts([text], metadatas=[dict(meta)], ids=[edit_id])
            obj.save_local(opened.persist_dir)
        elif kind == "qdrant":
            if delete_id:
                obj.delete([delete_id])
            obj.add_texts([text], metadatas=[dict(meta)], ids=[edit_id])  # an upsert
        else:
            raise ValueError(kind)
        return {}
    finally:
        opened.close()
