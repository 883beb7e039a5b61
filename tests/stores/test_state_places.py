"""Where each store keeps our state (issue 19, "the state lives with the store"): the companion
collections on a Chroma or Milvus server held to the StateBackend contract (generations
switched atomically, chunked blobs, feedback shared by replicas, a lease two processes exclude
each other with, freed when its holder is SIGKILLed), and the folders inside or beside the files
of the stores saved to disk, which the stores do not mind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nudge_rag.errors import StateError, StoreBusyError
from nudge_rag.state import FinetuneState, FolderBackend, KVBackend

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from companions import open_backend  # noqa: E402

REPO = TESTS.parent


# -- the companion places under test -------------------------------------------------------------
@pytest.fixture(params=["chroma-server", "milvus-server", "milvus-lite"])
def place(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, Any] | None, Callable]]:
    """(spec another process can open, or None; ``make(scope)`` -> a backend in this process)."""
    closers: list[Callable[[], None]] = []
    spec: dict[str, Any] | None
    if request.param == "chroma-server":
        host, port = request.getfixturevalue("chroma_server")
        spec = {"kind": "chroma", "host": host, "port": port, "collection": _name("user")}
    elif request.param == "milvus-server":
        spec = {"kind": "milvus", "uri": request.getfixturevalue("milvus_server_uri")}
    else:
        # Milvus Lite (one process per file): the companion code against Lite, in process only.
        spec = None
        uri = request.getfixturevalue("milvus_uri")
    suffix = uuid.uuid4().hex[:8]

    def make(scope: str) -> KVBackend:
        if spec is None:
            from pymilvus import MilvusClient

            from nudge_rag.state._milvus import MilvusCompanion

            mc = MilvusClient(uri)
            return MilvusCompanion(mc, f"{scope}-{suffix}", name="nudge_rag_state_lite")
        be, close = open_backend(spec, f"{scope}-{suffix}")
        closers.append(close)
        return be  # type: ignore[no-any-return]

    yield spec, make
    for close in closers:
        close()


def _name(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:10]}"


def _arrays(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    o = rng.normal(size=(n, d)).astype(np.float32).astype(np.float64)
    return o, rng.normal(size=(n, d)).astype(np.float32).astype(np.float64)


def _commit(be: KVBackend, n: int = 5, d: int = 8, seed: int = 0) -> FinetuneState:
    o, t = _arrays(n, d, seed)
    return FinetuneState.commit(
        be,
        ids=[f"r{i}" for i in range(n)],
        originals=o,
        targets=t,
        priors=o.copy(),
        manifest={"identity": "test:x", "durable": True},
    )


# -- generations ------------------------------------------------------------------------------------
def test_a_generation_is_in_force_only_once_current_names_it(place: Any) -> None:
    _, make = place
    be = make("gens")
    first = _commit(be, seed=1)
    # a second generation written but never switched in (a run killed before its switch)
    be.write_generation("gen-000002", {"ids.json": b"[]", "originals.npy": b"partial"})
    back = FinetuneState.load(be)
    assert back is not None and back.name == "gen-000001"
    assert np.array_equal(back.targets, first.targets)
    assert be.generations() == [1, 2]
    # the next commit removes the leftover and switches to the new one; the old is dropped
    second = _commit(be, n=7, seed=2)
    assert second.name == "gen-000002" and be.generations() == [2]
    again = FinetuneState.load(be)
    assert again is not None and again.ids == second.ids
    assert np.array_equal(again.originals, second.originals)


def test_a_second_replica_reads_the_generation_the_first_switched_to(place: Any) -> None:
    _, make = place
    a, b = make("shared"), make("shared")
    assert FinetuneState.load(b) is None and not b.has_state()
    st = _commit(a, n=4, seed=3)
    st.mark("applied", note="done")
    back = FinetuneState.load(b)
    assert back is not None and back.status == "applied" and back.manifest["note"] == "done"
    assert np.array_equal(back.targets, st.targets) and b.has_state()
    other = make("another-store")
    assert FinetuneState.load(other) is None and not other.has_state()  # scopes apart


def test_blobs_longer_than_a_chunk_round_trip_and_damage_is_refused(place: Any) -> None:
    _, make = place
    be = make("blobs")
    n = be.chunk_bytes
    big = np.random.default_rng(4).bytes(2 * n + 123)
    be.write_generation("gen-000001", {"big.bin": big, "small.bin": b"x", "edge.bin": b"y" * n})
    assert be.read("gen-000001", "big.bin") == big
    assert be.read("gen-000001", "small.bin") == b"x"
    assert be.read("gen-000001", "edge.bin") == b"y" * n
    assert len(be._keys("gen-000001/big.bin#")) == 3
    # a replaced blob: one chunk fewer, and its old third chunk is gone
    shorter = big[: n + 5]
    be.replace("gen-000001", "big.bin", shorter)
    assert be.read("gen-000001", "big.bin") == shorter
    assert len(be._keys("gen-000001/big.bin#")) == 2
    be._put({"gen-000001/big.bin#1": b"torn"})
    with pytest.raises(StateError, match="digest mismatch"):
        be.read("gen-000001", "big.bin")
    be._delete(["gen-000001/big.bin#1"])
    with pytest.raises(StateError, match="incomplete"):
        be.read("gen-000001", "big.bin")
    with pytest.raises(StateError, match="missing"):
        be.read("gen-000001", "nothing.bin")


def test_a_whole_state_of_many_chunks_round_trips(place: Any) -> None:
    _, make = place
    be = make("large")
    rows = 3 * be.chunk_bytes // (64 * 8) + 7  # originals.npy alone spans four chunks
    st = _commit(be, n=rows, d=64, seed=5)
    back = FinetuneState.load(make("large"))
    assert back is not None and len(back.ids) == rows
    assert np.array_equal(back.originals, st.originals)
    assert np.array_equal(back.priors, st.priors)


# -- feedback ---------------------------------------------------------------------------------------
def test_feedback_from_two_replicas_is_seen_by_both(place: Any) -> None:
    _, make = place
    a, b = make("fb"), make("fb")
    a.feedback_append(json.dumps({"q": "from a", "n": 1}))
    b.feedback_append(json.dumps({"q": "from b", "n": 2}))
    lines, cursor, reset = a.feedback_read(None)
    assert sorted(json.loads(x)["q"] for x in lines) == ["from a", "from b"] and reset
    b.feedback_append(json.dumps({"q": "later", "n": 3}))
    more, cursor, reset = a.feedback_read(cursor)
    assert [json.loads(x)["q"] for x in more] == ["later"] and not reset
    # a compaction by one replica: the other starts over from the rewritten log
    b.feedback_rewrite([json.dumps({"q": "compacted", "n": 0})])
    after, _, reset = a.feedback_read(cursor)
    assert [json.loads(x)["q"] for x in after] == ["compacted"] and reset
    assert not make("fb-other").feedback_read(None)[0]


# -- the lease ---------------------------------------------------------------------------------------
def _holder(spec: dict[str, Any], scope: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    return subprocess.Popen(
        [sys.executable, str(TESTS / "companions.py"), json.dumps(spec), scope],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _servers_only(spec: dict[str, Any] | None) -> dict[str, Any]:
    if spec is None:
        pytest.skip("Milvus Lite opens a file in one process only")
    return spec


def test_the_lease_excludes_another_process_and_waits_for_it(place: Any) -> None:
    spec = _servers_only(place[0])
    be = place[1]("lease")
    scope = be.scope
    with _holder(spec, scope) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
            with pytest.raises(StoreBusyError, match=f"pid {proc.pid}"), be.lock(0.0):
                pass
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "released"
            with be.lock(0.0):  # let go: ours at once
                assert be._lease_holder() is not None
            assert proc.wait(timeout=120) == 0
        finally:
            proc.kill()
    assert be._lease_holder() is None


def test_a_lease_whose_holder_was_killed_is_free(place: Any) -> None:
    spec = _servers_only(place[0])
    be = place[1]("killed")
    with _holder(spec, be.scope) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
            with pytest.raises(StoreBusyError), be.lock(0.0):
                pass
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            proc.kill()
    raw = be._blob("LEASE")
    assert raw is not None and json.loads(raw)["pid"] == proc.pid  # left behind, never freed
    with be.lock(0.0):  # a dead pid of this host holds nothing
        pass


def test_two_backends_in_one_process_exclude_each_other(place: Any) -> None:
    _, make = place
    a, b = make("inproc"), make("inproc")
    with a.lock(0.0), pytest.raises(StoreBusyError), b.lock(0.0):
        pass
    with b.lock(0.0):
        pass


# -- folders inside or beside the files of stores on disk ---------------------------------------------
def test_a_chroma_folder_keeps_the_state_inside_and_chroma_does_not_mind(tmp_path: Path) -> None:
    import chromadb
    from chromadb.api.client import SharedSystemClient

    from nudge_rag.stores._chroma import ChromaAdapter

    path = tmp_path / "chroma"
    client = chromadb.PersistentClient(path=str(path))
    col = client.create_collection("docs", embedding_function=None)
    rng = np.random.default_rng(0)
    col.add(ids=[f"r{i}" for i in range(20)], embeddings=rng.normal(size=(20, 4)))
    ad = ChromaAdapter(col)
    be = ad.state_backend(ad.identity().key)
    assert isinstance(be, FolderBackend)
    assert be.directory == path.resolve() / "nudge_state" / "docs"
    _commit(be)  # type: ignore[arg-type]
    col.add(ids=["late"], embeddings=rng.normal(size=(1, 4)))
    assert col.query(query_embeddings=rng.normal(size=(1, 4)), n_results=3)["ids"][0]
    client.close()
    SharedSystemClient.clear_system_cache()
    again = chromadb.PersistentClient(path=str(path))
    col2 = again.get_collection("docs")
    assert (
        col2.count() == 21
        and len(col2.query(query_embeddings=[[1, 0, 0, 0]], n_results=21)["ids"][0]) == 21
    )
    assert ChromaAdapter(col2).state_backend("x").directory == be.directory
    assert FinetuneState.load(be) is not None
    again.close()
    # a copy of the folder keeps the collection id, and carries its own state
    shutil.copytree(path, tmp_path / "copy")
    SharedSystemClient.clear_system_cache()
    copy = chromadb.PersistentClient(path=str(tmp_path / "copy"))
    moved = ChromaAdapter(copy.get_collection("docs"))
    assert moved.identity() == ad.identity()
    assert moved.state_backend("x").directory == (
        tmp_path / "copy"
    ).resolve() / be.directory.relative_to(path.resolve())
    copy.close()


def test_an_in_memory_chroma_has_no_state_place_and_a_server_has_the_companion(
    chroma_http: Any,
) -> None:
    import chromadb

    from nudge_rag.state._chroma import ChromaCompanion
    from nudge_rag.stores._chroma import ChromaAdapter

    mem = chromadb.EphemeralClient().get_or_create_collection(_name("mem"))
    assert ChromaAdapter(mem).state_backend("x") is None
    col = chroma_http.get_or_create_collection(_name("srv"), embedding_function=None)
    be = ChromaAdapter(col).state_backend("chroma:" + str(col.id))
    assert isinstance(be, ChromaCompanion) and be.kind == "chroma"
    assert "nudge_rag_state" in [c.name for c in chroma_http.list_collections()]
    assert str(col.id) in be.where or "scope chroma:" in be.where


def test_qdrant_and_lancedb_folders_keep_the_state_inside_and_reopen(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient
    from qdrant_client.models import Distance, PointStruct, VectorParams

    from nudge_rag.stores._qdrant import QdrantAdapter

    qpath = tmp_path / "qdrant"
    qc = QdrantClient(path=str(qpath))
    qc.create_collection("docs", vectors_config=VectorParams(size=4, distance=Distance.DOT))
    qc.upsert("docs", [PointStruct(id=i, vector=[float(i), 1, 0, 0]) for i in range(5)])
    be = QdrantAdapter(qc, "docs").state_backend("x")
    assert be.directory == qpath.resolve() / "nudge_state" / "docs"
    _commit(be)
    qc.close()
    qc = QdrantClient(path=str(qpath))
    assert [c.name for c in qc.get_collections().collections] == ["docs"]
    assert qc.count("docs").count == 5
    assert FinetuneState.load(QdrantAdapter(qc, "docs").state_backend("x")) is not None
    qc.close()
    mem = QdrantClient(":memory:")
    mem.create_collection("docs", vectors_config=VectorParams(size=4, distance=Distance.DOT))
    assert QdrantAdapter(mem, "docs").state_backend("x") is None

    import lancedb
    import pyarrow as pa

    from nudge_rag.stores._lancedb import LanceDBAdapter

    lpath = tmp_path / "lance"
    db = lancedb.connect(str(lpath))
    schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), 4))])
    table = db.create_table("docs", schema=schema)
    table.add([{"id": f"r{i}", "vector": [float(i), 1, 0, 0]} for i in range(5)])
    be = LanceDBAdapter(table, str(lpath)).state_backend("x")
    assert be.directory == lpath.resolve() / "nudge_state" / "docs"
    _commit(be)
    db = lancedb.connect(str(lpath))
    assert list(db.table_names()) == ["docs"]
    assert db.open_table("docs").count_rows() == 5


def test_milvus_lite_keeps_the_state_beside_its_file(milvus_uri: str) -> None:
    from pymilvus import DataType, MilvusClient

    from nudge_rag.stores._milvus import MilvusAdapter

    mc = MilvusClient(milvus_uri)
    name = _name("lite")
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=4)
    index = mc.prepare_index_params()
    index.add_index(field_name="vec", index_type="FLAT", metric_type="L2")
    mc.create_collection(name, schema=schema, index_params=index)
    be = MilvusAdapter(mc, name).state_backend("x")
    assert isinstance(be, FolderBackend)
    assert be.directory == Path(os.path.realpath(milvus_uri) + ".nudge_state") / name
    mc.drop_collection(name)


# -- stale readers on one Chroma folder ---------------------------------------------------------------
_WRITER = """
import sys, chromadb, numpy as np
client = chromadb.PersistentClient(path=sys.argv[1])
col = client.get_collection("docs")
col.update(ids=[f"r{i}" for i in range(10)], embeddings=np.full((10, 4), float(sys.argv[2])))
client.close()
"""


def _write_in_another_process(path: Path, value: float) -> None:
    subprocess.run([sys.executable, "-c", _WRITER, str(path), str(value)], check=True, timeout=120)


def test_a_chroma_folder_reads_stale_after_another_process_writes_and_fresh_get_does_not(
    tmp_path: Path,
) -> None:
    """The measured facts behind ChromaAdapter.fresh_get (see nudge_rag/stores/_chroma.py)."""
    import chromadb

    from nudge_rag.stores._chroma import ChromaAdapter

    path = tmp_path / "chroma"
    client = chromadb.PersistentClient(path=str(path))
    col = client.create_collection("docs", embedding_function=None)
    col.add(
        ids=[f"r{i}" for i in range(20)],
        embeddings=np.zeros((20, 4)),
        documents=[f"d{i}" for i in range(20)],
    )
    ad = ChromaAdapter(col)
    ids = ["r0", "r9", "r15"]
    assert ad.get(ids).embeddings[:, 0].tolist() == [0, 0, 0]  # this process has loaded them
    _write_in_another_process(path, 5.0)
    # stale: by id, by page, through a search, and through another client of this process
    assert ad.get(ids).embeddings[:, 0].tolist() == [0, 0, 0]
    assert next(ad.iter_pages(20, with_documents=False)).embeddings[:10, 0].tolist() == [0] * 10
    assert ad.search(np.full(4, 5.0), 1)[0][1] == -100.0  # the nearest still reads as zeros
    other = chromadb.PersistentClient(path=str(path)).get_collection("docs")
    assert ChromaAdapter(other).get(ids).embeddings[:, 0].tolist() == [0, 0, 0]
    # fresh: a private client of the folder, and the user's client still works after it
    assert ad.fresh_get(ids).embeddings[:, 0].tolist() == [5, 5, 0]
    assert ad.fresh_get(ids).texts == ["d0", "d9", "d15"]
    assert ad.get(ids).embeddings[:, 0].tolist() == [0, 0, 0]
    # whoever holds the store's lock reads fresh, until its first write or the lock's release
    be = ad.state_backend(ad.identity().key)
    with be.lock(0.0):
        assert ad.get(ids).embeddings[:, 0].tolist() == [5, 5, 0]
        assert next(ad.iter_pages(20, with_documents=False)).embeddings[:10, 0].tolist() == [5] * 10
        assert ad.search(np.full(4, 5.0), 1)[0][1] == 0.0
    assert ad.get(ids).embeddings[:, 0].tolist() == [0, 0, 0]  # the user's client, as it was
    # this process's own write brings its view up to date with every write before it
    ad.write_vectors(["r15"], np.full((1, 4), 7.0))
    assert ad.get(ids).embeddings[:, 0].tolist() == [5, 5, 7]
    _write_in_another_process(path, 3.0)
    assert ad.get(ids).embeddings[:, 0].tolist() == [5, 5, 7]
    assert ad.fresh_get(ids).embeddings[:, 0].tolist() == [3, 3, 7]
    with be.lock(0.0):
        assert ad.get(ids).embeddings[:, 0].tolist() == [3, 3, 7]
        ad.write_vectors(["r0"], np.full((1, 4), 1.0))  # written through the user's client
        assert ad.get(ids).embeddings[:, 0].tolist() == [1, 3, 7]
    assert ad.get(ids).embeddings[:, 0].tolist() == [1, 3, 7]
    client.close()


def test_fresh_get_elsewhere_is_get(chroma_http: Any) -> None:
    from nudge_rag.stores._chroma import ChromaAdapter

    col = chroma_http.get_or_create_collection(_name("fresh"), embedding_function=None)
    col.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=["x", "y"])
    ad = ChromaAdapter(col)
    assert ad.fresh_get(["b", "a"]).embeddings.tolist() == ad.get(["b", "a"]).embeddings.tolist()


def test_a_chroma_collection_made_again_under_the_same_name_is_not_given_the_old_state(
    tmp_path: Path,
) -> None:
    """The folder is named by the collection, the state by its id: a collection deleted and
    made again under the same name is another store, and the state left there is refused."""
    import chromadb

    from nudge_rag import NudgeEmbeddingFinetuner
    from nudge_rag.testing import BagOfWordsEmbedder

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    emb = BagOfWordsEmbedder(16)
    texts = [f"note {i} about topic{i} and facet{i % 3}" for i in range(12)]

    def make() -> Any:
        col = client.create_collection("docs", configuration={"hnsw": {"space": "l2"}})
        col.add(ids=[f"n{i}" for i in range(12)], documents=texts, embeddings=emb.embed(texts))
        return col

    pairs = [(f"topic{i} facet{(i + 1) % 3} question", [f"n{i}"]) for i in range(4)]
    ft = NudgeEmbeddingFinetuner(make(), embed_model=emb, gamma=0.3)
    ft.finetune(pairs)
    assert ft.report.n_moved > 0
    assert ft.report.state_dir == str((tmp_path / "chroma").resolve() / "nudge_state" / "docs")
    client.delete_collection("docs")
    again = NudgeEmbeddingFinetuner(make(), embed_model=emb, gamma=0.3)
    with pytest.raises(StateError, match="belongs to another store"):
        again.finetune(pairs)
    client.close()


def test_state_dir_naming_a_chroma_folders_own_place_is_that_place_and_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the command line passes (``state_dir=<chroma path>/nudge_state/<collection>``, maybe
    relative) is the place the API uses: one state, and the lock that reads the folder fresh."""
    import chromadb

    from nudge_rag.state.places import backend_for
    from nudge_rag.stores._chroma import ChromaAdapter, _ChromaFolderState

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    col = client.create_collection("docs")
    col.add(ids=["a"], embeddings=[[1.0, 0.0]])
    ad = ChromaAdapter(col)
    ident = ad.identity()
    own = ad.state_backend(ident.key)
    _commit(own)
    monkeypatch.chdir(tmp_path)
    for named in ("chroma/nudge_state/docs", tmp_path / "chroma" / "nudge_state" / "docs"):
        got = backend_for(ad, ident, state_dir=named, persist_dir=None, legacy=tmp_path / "x")
        assert isinstance(got, _ChromaFolderState) and got.where == own.where
    with pytest.raises(StateError, match="names another place"):
        backend_for(ad, ident, state_dir=tmp_path / "other", persist_dir=None, legacy=tmp_path)
    client.close()


def test_milvus_companion_opens_one_another_replica_made_without_its_index_yet(
    milvus_server_uri: str,
) -> None:
    """Two replicas starting at once: one's ``create_collection`` has made the companion but not
    yet its index when the other loads it (Milvus: "index not found"). The second makes the same
    index and loads; both then share one state."""
    from pymilvus import DataType, MilvusClient

    from nudge_rag.state._milvus import MilvusCompanion

    mc = MilvusClient(milvus_server_uri)
    name = _name("noindex")
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("k", DataType.VARCHAR, is_primary=True, max_length=2048)
    schema.add_field("scope", DataType.VARCHAR, max_length=1024)
    schema.add_field("data", DataType.VARCHAR, max_length=65535)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    mc.create_collection(name, schema=schema)  # the creator, stopped before its index
    assert mc.list_indexes(name) == []
    try:
        be = MilvusCompanion(mc, "scope-a", name=name)
        be._put({"CURRENT": b"gen-1"})
        other = MilvusCompanion(mc, "scope-a", name=name)
        assert other._get(["CURRENT"]) == {"CURRENT": b"gen-1"}
        assert mc.list_indexes(name) == ["v"]
    finally:
        mc.drop_collection(name)
        mc.close()
