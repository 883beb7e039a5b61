"""One replica of an application for the replica tests (issue 19): its own OS process, its own
``NUDGE_RAG_HOME`` (set by the parent), a store opened the way an application opens it, and
a finetuner kept for the life of the process. It reads one JSON command per line on stdin and
answers one JSON line on stdout, so that the parent drives several replicas step by step
("at the same moment" is: the parent sends both the command, then reads both answers).

Stores (``spec["kind"]``): ``"chroma-server"`` (``host``, ``port``, ``collection``: an
``HttpClient``), ``"chroma-folder"`` (``path``, ``collection``: a ``PersistentClient``) and
``"milvus-server"`` (``uri``, ``collection``: a ``MilvusClient``, a FLAT L2 index, the adapter
passed to the finetuner as is).

Commands: ``{"op": "build", "n": N}`` (make the collection: records ``r000`` ... with
bag-of-words vectors, l2 space so vectors are kept bit for bit), ``{"op": "open"}`` (the store
and its finetuner, vectors loaded), ``{"op": "finetune", "first": i, "n": n}`` (train on two
queries per record ``r{i}`` ... ``r{i+n-1}``), ``{"op": "revert"}``, ``{"op": "record",
"query": q, "ids": [...]}``, ``{"op": "feedback"}`` (the log's training pairs), ``{"op":
"vectors"}`` (every record's vector), ``{"op": "exit"}``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

DIM = 48
GAMMA = 0.3
TOPICS = ["protein folding", "solar wind", "river delta", "neural network", "coral reef"]


def rid(i: int) -> str:
    return f"r{i:03d}"


def text(i: int) -> str:
    return f"record {i} on {TOPICS[i % 5]} with term{i} and facet{i * 7 % 13}"


def queries(first: int, n: int) -> list[tuple[str, list[str]]]:
    return [
        (f"term{i} {TOPICS[(i + 1 + v) % 5]} question {v}", [rid(i)])
        for i in range(first, first + n)
        for v in range(2)
    ]


class Replica:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.client: Any = None
        self.col: Any = None
        self.ft: Any = None

    def _client(self) -> Any:
        if self.spec["kind"] == "milvus-server":
            from pymilvus import MilvusClient

            if self.client is None:
                self.client = MilvusClient(self.spec["uri"])
            return self.client
        import chromadb

        if self.client is None:
            if self.spec["kind"] == "chroma-server":
                self.client = chromadb.HttpClient(host=self.spec["host"], port=self.spec["port"])
            else:
                self.client = chromadb.PersistentClient(path=self.spec["path"])
        return self.client

    def build(self, n: int) -> dict[str, Any]:
        from nudge_rag.testing import BagOfWordsEmbedder

        if self.spec["kind"] == "milvus-server":
            from pymilvus import DataType, MilvusClient

            mc = self._client()
            schema = MilvusClient.create_schema(auto_id=False)
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("text", DataType.VARCHAR, max_length=1024)
            schema.add_field("vec", DataType.FLOAT_VECTOR, dim=DIM)
            index = mc.prepare_index_params()
            index.add_index(field_name="vec", index_type="FLAT", metric_type="L2")
            name = self.spec["collection"]
            mc.create_collection(name, schema=schema, index_params=index)
            txts = [text(i) for i in range(n)]
            vecs = BagOfWordsEmbedder(DIM).embed(txts)
            mc.insert(
                name,
                [
                    {"pk": rid(i), "text": t, "vec": v.tolist()}
                    for i, (t, v) in enumerate(zip(txts, vecs, strict=True))
                ],
            )
            return {}
        col = self._client().create_collection(
            self.spec["collection"],
            configuration={"hnsw": {"space": "l2"}},
            embedding_function=None,
        )
        txts = [text(i) for i in range(n)]
        col.add(
            ids=[rid(i) for i in range(n)],
            documents=txts,
            metadatas=[{"n": i} for i in range(n)],
            embeddings=BagOfWordsEmbedder(DIM).embed(txts),
        )
        return {"id": str(col.id)}

    def open(self) -> dict[str, Any]:
        from nudge_rag import NudgeEmbeddingFinetuner
        from nudge_rag.testing import BagOfWordsEmbedder

        store = self._store()
        self.ft = NudgeEmbeddingFinetuner(
            store,
            embed_model=BagOfWordsEmbedder(DIM),
            gamma=GAMMA,
            lock_timeout=None,
            write_batch_size=25,
        )
        return {"pid": os.getpid()}

    def _store(self) -> Any:
        if self.spec["kind"] == "milvus-server":
            from nudge_rag.stores._milvus import MilvusAdapter

            ad = MilvusAdapter(self._client(), self.spec["collection"])
            ad.count()
            return ad
        self.col = self._client().get_collection(self.spec["collection"])
        self.col.get(limit=1, include=["embeddings"])  # this process has read the store
        return self.col

    def finetune(self, first: int, n: int) -> dict[str, Any]:
        self.ft.finetune(queries(first, n))
        return _report(self.ft.report)

    def revert(self) -> dict[str, Any]:
        return _report(self.ft.revert())

    def record(self, query: str, ids: list[str]) -> dict[str, Any]:
        self.ft.record(query, ids)
        return {}

    def feedback(self) -> dict[str, Any]:
        pairs = self.ft.feedback.training_pairs()
        return {"pairs": sorted([q, sorted(map(str, ids))] for q, ids in _pairs(pairs))}

    def vectors(self) -> dict[str, Any]:
        if self.spec["kind"] == "milvus-server":
            from nudge_rag.stores._milvus import MilvusAdapter

            ad = MilvusAdapter(self._client(), self.spec["collection"])
            return {
                i: [float(x) for x in v]
                for page in ad.iter_pages(100, with_documents=False)
                for i, v in zip(page.ids, page.embeddings, strict=True)
            }
        col = self._client().get_collection(self.spec["collection"])
        got = col.get(include=["embeddings"])
        return {
            i: [float(x) for x in v] for i, v in zip(got["ids"], got["embeddings"], strict=True)
        }


def _pairs(pairs: Any) -> list[tuple[str, list[str]]]:
    out = []
    for p in pairs:
        q, ids = p[0], p[1]
        out.append((str(q), list(ids.keys() if isinstance(ids, dict) else ids)))
    return out


def _report(rep: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in (
        "n_moved",
        "moved_ids",
        "n_restored",
        "n_already_original",
        "changed_ids",
        "adopted_ids",
        "deleted_ids",
        "mismatched_ids",
        "note",
        "state_dir",
    ):
        if hasattr(rep, f):
            v = getattr(rep, f)
            out[f] = list(v) if isinstance(v, (list, tuple, set)) else v
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    rep = Replica(spec)
    out = sys.stdout
    sys.stdout = sys.stderr  # only answers on the real stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "exit":
            break
        try:
            result = {"ok": True, **getattr(rep, op)(**cmd)}
        except Exception:
            result = {"ok": False, "error": traceback.format_exc()}
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
