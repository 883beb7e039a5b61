"""Replicas of one deployment against one PostgreSQL + pgvector table (issue 19): the jobs each
replica process runs, for the replica tests (forked from the zygote, see safety_zygote.py), the
pgvector crash suite and ``benchmarks/bench_replicas.py`` (run as a script: ``python
pg_replicas.py <job> '<json kwargs>'`` prints the job's JSON result).

Each job opens the store from the database as a replica's program would (its own engine, its
own ``NUDGE_RAG_HOME`` from its environment), does one thing and returns a JSON-able dict.

The two frameworks' stores of the same corpus (``N`` records ``r000`` ..., bag-of-words vectors):

- ``langchain``: LangChain ``PGVector`` (psycopg 3), a collection in ``langchain_pg_embedding``;
- ``llamaindex``: LlamaIndex ``PGVectorStore`` (psycopg2), its table ``data_<name>``.

Importing this module imports the standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

N = 200
DIM = 128
GAMMA = 0.3
FRAMEWORKS = ["langchain", "llamaindex"]


# ---------------------------------------------------------------------------------------------
# The corpus and the queries
# ---------------------------------------------------------------------------------------------
def rid(i: int, name: str) -> str:
    """Record ``i`` of the store ``name`` (LangChain's ``langchain_pg_embedding`` keys ids
    across every collection: a second collection given the same ids would take none)."""
    return f"{name}-r{i:03d}"


def texts() -> list[str]:
    return [
        f"record {i} about topic{i} with alpha{i % 7} beta{i % 5} and gamma{i % 11}"
        for i in range(N)
    ]


def queries(
    name: str, lo: int, hi: int, per: int = 1, word: str = "question"
) -> list[tuple[str, list[str]]]:
    """``per`` training queries for each record ``lo`` ... ``hi - 1``; each shares words with
    other records than its answer, so that NUDGE has something to move."""
    return [
        (f"{word} topic{i} alpha{(i + 1) % 7} beta{(i + 2) % 5} v{v}", [rid(i, name)])
        for v in range(per)
        for i in range(lo, hi)
    ]


def embedder() -> Any:
    from nudge_rag.testing import BagOfWordsEmbedder

    return BagOfWordsEmbedder(DIM)


# ---------------------------------------------------------------------------------------------
# The stores
# ---------------------------------------------------------------------------------------------
def urls_for(socket_dir: str) -> dict[str, str]:
    return {
        d: f"postgresql+{d}://postgres@/postgres?host={socket_dir}"
        for d in ("psycopg2", "psycopg", "asyncpg")
    }


def _pgvector(cls: Any, emb: Any, engine: Any, name: str) -> Any:
    """LangChain's PGVector, which creates its tables when made: two processes making one at the
    same moment race in CREATE TABLE (a unique violation in pg_type); the loser finds them made."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(5):
        try:
            return cls(emb.as_langchain(), connection=engine, collection_name=name)
        except (IntegrityError, ProgrammingError):
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def opened(
    framework: str, urls: dict[str, str], name: str, *, create: bool = False
) -> Iterator[Any]:
    """The store as a replica holds it (an engine of its own, disposed at the end)."""
    emb = embedder()
    if framework == "langchain":
        from langchain_postgres import PGVector
        from sqlalchemy import create_engine

        engine = create_engine(urls["psycopg"])
        try:
            vs = _pgvector(PGVector, emb, engine, name)
            if create:
                vs.add_texts(texts(), ids=[rid(i, name) for i in range(N)], metadatas=_metas())
            yield vs
        finally:
            engine.dispose()
    elif framework == "llamaindex":
        from llama_index.vector_stores.postgres import PGVectorStore

        vs = PGVectorStore.from_params(
            connection_string=urls["psycopg2"],
            async_connection_string=urls["asyncpg"],
            table_name=name,
            embed_dim=DIM,
        )
        try:
            if create:
                from llama_index.core.schema import TextNode

                vecs = emb.embed(texts())
                vs.add(
                    [
                        TextNode(id_=rid(i, name), text=t, metadata=m, embedding=v.tolist())
                        for i, (t, m, v) in enumerate(zip(texts(), _metas(), vecs, strict=True))
                    ]
                )
            yield vs
        finally:
            if vs._engine is not None:
                vs._engine.dispose()
    else:
        raise ValueError(framework)


def _metas() -> list[dict[str, Any]]:
    return [{"n": i, "tag": f"t{i % 3}"} for i in range(N)]


def finetuner(store: Any, framework: str, **kw: Any) -> Any:
    from nudge_rag import NudgeEmbeddingFinetuner

    kw.setdefault("gamma", GAMMA)
    kw.setdefault("write_batch_size", 25)
    embed = embedder().as_llamaindex() if framework == "llamaindex" else None  # a bare store
    return NudgeEmbeddingFinetuner(store, embed_model=embed, **kw)


def vectors(framework: str, urls: dict[str, str], name: str) -> dict[str, list[float]]:
    """Every record's vector as PostgreSQL holds it (ground truth)."""
    from nudge_rag.stores import adapter_for

    with opened(framework, urls, name) as vs:
        out: dict[str, list[float]] = {}
        for page in adapter_for(vs).iter_pages(500, with_documents=False):
            for i, v in zip(page.ids, page.embeddings, strict=True):
                out[i] = [float(x) for x in v]
        return out


# ---------------------------------------------------------------------------------------------
# Being told when to go (no clocks: a replica waits on a Unix socket its parent controls)
# ---------------------------------------------------------------------------------------------
def wait_on(path: str | None, word: str = "ready") -> None:
    """Say ``word`` on the Unix socket ``path`` and wait for ``go``."""
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(f"{word}\n".encode())
        got = conn.makefile("r").readline()
        if got != "go\n":
            raise RuntimeError(f"expected go on {path}, received {got!r}")


class Gate:
    """The parent side: replicas connect to ``path`` and wait; :meth:`release` lets them go
    together once ``n`` have said they are ready."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(8)
        self._waiting: list[tuple[socket.socket, str]] = []

    def wait_for(self, n: int) -> list[str]:
        """Block until ``n`` more replicas are waiting; what each said."""
        said = []
        for _ in range(n):
            conn, _ = self._sock.accept()
            word = conn.makefile("r").readline().strip()
            self._waiting.append((conn, word))
            said.append(word)
        return said

    def release(self) -> None:
        for conn, _ in self._waiting:
            with contextlib.suppress(OSError):
                conn.sendall(b"go\n")
        for conn, _ in self._waiting:
            conn.close()
        self._waiting = []

    def close(self) -> None:
        self.release()
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


# ---------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------
def _report(report: Any) -> dict[str, Any]:
    out: dict[str, Any] = report.to_dict()
    out.pop("curve", None)
    out.pop("validation", None)
    return out


def job_build(framework: str, urls: dict[str, str], name: str) -> dict[str, Any]:
    with opened(framework, urls, name, create=True):
        pass
    return {"n": N}


def job_vectors(framework: str, urls: dict[str, str], name: str, out: str) -> dict[str, Any]:
    Path(out).write_text(json.dumps(vectors(framework, urls, name)))
    return {"out": out}


def job_snapshot(framework: str, urls: dict[str, str], name: str, out: str) -> dict[str, Any]:
    """Every record's id, vector, text and metadata (safety_kit.Snapshot), saved to ``out``."""
    import safety_kit

    with opened(framework, urls, name) as vs:
        snap = safety_kit.snapshot(vs)
    snap.save(out)
    return {"n": len(snap.ids)}


def job_finetune(
    framework: str,
    urls: dict[str, str],
    name: str,
    lo: int,
    hi: int,
    word: str = "question",
    gate: str | None = None,
    pause: str | None = None,
    lock_timeout: float | None = 0.0,
    write_batch_size: int = 25,
) -> dict[str, Any]:
    """Fine-tune on queries of records ``lo`` ... ``hi - 1``. ``gate``: wait on it before
    starting; ``pause``: after the first write batch (the lock held, the store half-written),
    say ``paused`` on it and wait. A StoreBusyError is a result (``busy``), not a failure."""
    from nudge_rag.errors import StoreBusyError

    if pause:
        from nudge_rag.stores import _base

        real = _base.checkpoint
        seen = {"n": 0}

        def hold(point: str) -> None:
            real(point)
            if point == "store.batch":
                seen["n"] += 1
                if seen["n"] == 1:
                    wait_on(pause, "paused")

        _base.checkpoint = hold  # type: ignore[assignment]
    with opened(framework, urls, name) as vs:
        ft = finetuner(vs, framework, lock_timeout=lock_timeout, write_batch_size=write_batch_size)
        wait_on(gate)
        try:
            ft.finetune(queries(name, lo, hi, word=word))
        except StoreBusyError as exc:
            return {"busy": str(exc), "pid": os.getpid()}
        return {**_report(ft.report), "pid": os.getpid()}


def job_revert(framework: str, urls: dict[str, str], name: str, **kw: Any) -> dict[str, Any]:
    with opened(framework, urls, name) as vs:
        out: dict[str, Any] = finetuner(vs, framework, **kw).revert().to_dict()
        return out


def job_record(framework: str, urls: dict[str, str], name: str, lo: int, hi: int) -> dict[str, Any]:
    """Confirm one answer for each record ``lo`` ... ``hi - 1`` (``ft.record``)."""
    with opened(framework, urls, name) as vs:
        ft = finetuner(vs, framework)
        for q, ans in queries(name, lo, hi, word="asked"):
            ft.record(q, ans, source="chat")
        return {"recorded": hi - lo, "where": str(getattr(ft.feedback, "path", ""))}


def job_update(framework: str, urls: dict[str, str], name: str) -> dict[str, Any]:
    """What the feedback log holds here, then ``update()`` on it."""
    with opened(framework, urls, name) as vs:
        ft = finetuner(vs, framework)
        pairs = ft.feedback.training_pairs()
        ft.update()
        rep = _report(ft.report)
        return {"pairs": len(pairs), "trained_on": rep["n_train"] + rep["n_val"], **rep}


def job_state(framework: str, urls: dict[str, str], name: str) -> dict[str, Any]:
    """Where this replica's finetuner keeps the store's state, and what it holds."""
    from nudge_rag.state import FinetuneState
    from nudge_rag.stores import adapter_for

    with opened(framework, urls, name) as vs:
        ad = adapter_for(vs)
        be = ad.state_backend(ad.identity().key)
        st = FinetuneState.load(be)
        return {
            "where": be.where,
            "status": st.status if st else None,
            "ids": list(st.ids) if st else [],
        }


if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).resolve().parent)]
    job = globals()[f"job_{sys.argv[1]}"]
    print(json.dumps(job(**json.loads(sys.argv[2]))))
