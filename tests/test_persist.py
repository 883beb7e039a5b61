"""Crash-safe persistence: atomic files, and stores saved so that a kill never loses a file.

The kill tests run a real subprocess (this file doubles as its script: ``python test_persist.py
KIND TARGET VERSION``) that saves a store over an older version of it and SIGKILLs itself at a
named crash point (``NUDGE_RAG_KILL_AT``, see :mod:`nudge_rag._faults`); the parent then loads
what is on disk with the framework's own loader and checks that ids, texts, metadata and vectors
are each, as a whole, the old version or the new one. The crash points a save passes through are
listed by a first, unarmed run (``NUDGE_RAG_FAULT_LOG``); no test depends on timing.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings(
    "ignore:`langchain-community` is being sunset:DeprecationWarning"
)

HERE = Path(__file__).resolve()
DIM = 8
N = 6

# Each kind: what is saved, and whether its target is a file (InMemoryVectorStore.dump) or a folder.
KINDS = {
    "li-index-simple": "llama_index.core",
    "li-index-faiss": "llama_index.vector_stores.faiss",
    "li-storage-context": "llama_index.core",
    "li-simple-store": "llama_index.core",
    "li-faiss-store": "llama_index.vector_stores.faiss",
    "lc-faiss": "langchain_community.vectorstores",
    "lc-inmemory": "langchain_core.vectorstores",
}


# ---------------------------------------------------------------------------------------------
# Two versions of one store: same ids; vectors, texts and metadata all differ
# ---------------------------------------------------------------------------------------------
def records(version: int) -> tuple[list[str], list[str], list[dict[str, Any]], np.ndarray]:
    rng = np.random.default_rng(version)
    vecs = rng.normal(size=(N, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"rec-{i}" for i in range(N)]
    texts = [f"text of record {i}, version {version}" for i in range(N)]
    metas = [{"source": f"doc{i}.md", "version": version} for i in range(N)]
    return ids, texts, metas, vecs


def build(kind: str, version: int) -> Any:
    """The store of ``kind`` holding version ``version`` of the records."""
    ids, texts, metas, vecs = records(version)
    if kind.startswith("li-"):
        from llama_index.core import MockEmbedding, StorageContext, VectorStoreIndex
        from llama_index.core.schema import TextNode

        nodes = [
            TextNode(id_=i, text=t, metadata=m, embedding=[float(x) for x in v])
            for i, t, m, v in zip(ids, texts, metas, vecs, strict=True)
        ]
        if kind in ("li-simple-store", "li-faiss-store"):
            store = faiss_store() if kind == "li-faiss-store" else simple_store()
            store.add(nodes)
            return store
        ctx = StorageContext.from_defaults(
            vector_store=faiss_store() if kind == "li-index-faiss" else None
        )
        index = VectorStoreIndex(
            nodes, storage_context=ctx, embed_model=MockEmbedding(embed_dim=DIM)
        )
        return index.storage_context if kind == "li-storage-context" else index
    if kind == "lc-faiss":
        from langchain_community.vectorstores import FAISS

        return FAISS.from_embeddings(
            list(zip(texts, vecs.tolist(), strict=True)), lc_embedding(), metadatas=metas, ids=ids
        )
    if kind == "lc-inmemory":
        from langchain_core.vectorstores import InMemoryVectorStore

        vs = InMemoryVectorStore(lc_embedding())
        for i, t, m, v in zip(ids, texts, metas, vecs, strict=True):
            vs.store[i] = {"id": i, "vector": [float(x) for x in v], "text": t, "metadata": m}
        return vs
    raise AssertionError(kind)


def simple_store() -> Any:
    from llama_index.core.vector_stores import SimpleVectorStore

    return SimpleVectorStore()


def faiss_store() -> Any:
    import faiss
    from llama_index.vector_stores.faiss import FaissVectorStore

    return FaissVectorStore(faiss_index=faiss.IndexFlatIP(DIM))


def lc_embedding() -> Any:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    return DeterministicFakeEmbedding(size=DIM)


def framework_save(kind: str, store: Any, target: Path) -> None:
    """Save the way the framework itself does (what a user's existing store was written with)."""
    if kind in ("li-index-simple", "li-index-faiss"):
        store.storage_context.persist(persist_dir=str(target))
    elif kind == "li-storage-context":
        store.persist(persist_dir=str(target))
    elif kind in ("li-simple-store", "li-faiss-store"):
        store.persist(persist_path=str(target / "default__vector_store.json"))
    elif kind == "lc-faiss":
        store.save_local(str(target))
    else:
        store.dump(str(target))


def target_of(kind: str, root: Path) -> Path:
    return root / "store.json" if kind == "lc-inmemory" else root


# ---------------------------------------------------------------------------------------------
# Load with the framework's own loader, and take everything out of it
# ---------------------------------------------------------------------------------------------
class Snapshot(NamedTuple):
    ids: list[str]
    texts: dict[str, str] | None  # None: the store keeps no texts (bare LlamaIndex stores)
    metadatas: dict[str, dict[str, Any]] | None
    vectors: dict[str, np.ndarray]


def _vec(v: Any) -> np.ndarray:
    a = np.asarray(v)
    assert a.dtype in (np.float32, np.float64), a.dtype
    return a


def load(kind: str, target: Path) -> Snapshot:
    if kind in ("li-simple-store", "li-faiss-store"):
        if kind == "li-simple-store":
            from llama_index.core.vector_stores import SimpleVectorStore

            emb = SimpleVectorStore.from_persist_dir(str(target)).data.embedding_dict
            return Snapshot(sorted(emb), None, None, {k: _vec(v) for k, v in emb.items()})
        from llama_index.vector_stores.faiss import FaissVectorStore

        fi = FaissVectorStore.from_persist_dir(str(target))._faiss_index
        rows = fi.reconstruct_n(0, fi.ntotal)
        return Snapshot([str(i) for i in range(fi.ntotal)], None, None, dict(enumerate(rows)))  # type: ignore[arg-type]
    if kind.startswith("li-"):
        from llama_index.core import MockEmbedding, StorageContext, load_index_from_storage

        if kind == "li-index-faiss":
            from llama_index.vector_stores.faiss import FaissVectorStore

            ctx = StorageContext.from_defaults(
                vector_store=FaissVectorStore.from_persist_dir(str(target)),
                persist_dir=str(target),
            )
        else:
            ctx = StorageContext.from_defaults(persist_dir=str(target))
        index = load_index_from_storage(ctx, embed_model=MockEmbedding(embed_dim=DIM))
        nodes = {i: index.docstore.get_node(i) for i in index.index_struct.nodes_dict.values()}
        if kind == "li-index-faiss":
            fi = index.vector_store._faiss_index
            rows = fi.reconstruct_n(0, fi.ntotal)
            vectors = {index.index_struct.nodes_dict[str(p)]: rows[p] for p in range(fi.ntotal)}
        else:
            vectors = {k: _vec(v) for k, v in index.vector_store.data.embedding_dict.items()}
        return Snapshot(
            sorted(nodes),
            {i: n.text for i, n in nodes.items()},
            {i: dict(n.metadata) for i, n in nodes.items()},
            vectors,
        )
    if kind == "lc-faiss":
        from langchain_community.vectorstores import FAISS

        vs = FAISS.load_local(str(target), lc_embedding(), allow_dangerous_deserialization=True)
        rows = vs.index.reconstruct_n(0, vs.index.ntotal)
        ids = [vs.index_to_docstore_id[p] for p in range(vs.index.ntotal)]
        docs = {i: vs.docstore.search(i) for i in ids}
        return Snapshot(
            sorted(ids),
            {i: d.page_content for i, d in docs.items()},
            {i: dict(d.metadata) for i, d in docs.items()},
            dict(zip(ids, rows, strict=True)),
        )
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore.load(str(target), lc_embedding()).store
    return Snapshot(
        sorted(store),
        {i: r["text"] for i, r in store.items()},
        {i: dict(r["metadata"]) for i, r in store.items()},
        {i: _vec(r["vector"]) for i, r in store.items()},
    )


def same_vectors(a: dict[Any, np.ndarray], b: dict[Any, np.ndarray]) -> bool:
    """Equal bit for bit (same keys, dtypes and values)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a
    )


def assert_whole(got: Snapshot, old: Snapshot, new: Snapshot, where: str) -> None:
    """Each part of what is on disk is, as a whole, the old version or the new one."""
    assert got.ids in (old.ids, new.ids), where
    assert got.texts in (old.texts, new.texts), where
    assert got.metadatas in (old.metadatas, new.metadatas), where
    assert same_vectors(got.vectors, old.vectors) or same_vectors(got.vectors, new.vectors), where


def user_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".nudge-tmp-" not in str(p)]


def skip_without(kind: str) -> None:
    pytest.importorskip(KINDS[kind])
    if "faiss" in kind:
        pytest.importorskip("faiss")


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_save_store_round_trips_bit_for_bit(kind: str, tmp_path: Path) -> None:
    from nudge_rag.persist import save_store

    skip_without(kind)
    target = target_of(kind, tmp_path / "fresh" / "deeper")  # created as needed
    written = save_store(build(kind, 1), target)
    assert written and all(p.is_file() and p.stat().st_size > 0 for p in written)
    got = load(kind, target)
    # what the framework's own saver writes loads back to the very same thing
    own = target_of(kind, tmp_path / "own")
    own.parent.mkdir(parents=True, exist_ok=True)
    framework_save(kind, build(kind, 1), own)
    ref = load(kind, own)
    assert got.ids == ref.ids and got.texts == ref.texts and got.metadatas == ref.metadatas
    assert same_vectors(got.vectors, ref.vectors)
    ids, texts, metas, vecs = records(1)
    if got.texts is not None:
        assert got.texts == dict(zip(ids, texts, strict=True))
        assert got.metadatas == dict(zip(ids, metas, strict=True))
    if kind != "li-faiss-store":  # a bare FAISS store keeps positions, not ids
        assert got.ids == ids
        assert all(
            np.array_equal(got.vectors[i], v.astype(got.vectors[i].dtype))
            for i, v in zip(ids, vecs, strict=True)
        )
    # the same files the framework writes, and no temporary left behind
    assert sorted(
        p.name for p in user_files(target.parent if kind == "lc-inmemory" else target)
    ) == sorted(p.name for p in user_files(own.parent if kind == "lc-inmemory" else own))
    assert not list((target.parent if kind == "lc-inmemory" else target).glob(".nudge-tmp-*"))


@pytest.mark.parametrize("kind", ["li-index-simple", "lc-faiss", "lc-inmemory"])
def test_save_store_replaces_an_older_version(kind: str, tmp_path: Path) -> None:
    from nudge_rag.persist import save_store

    skip_without(kind)
    target = target_of(kind, tmp_path / "s")
    target.parent.mkdir(parents=True, exist_ok=True)
    framework_save(kind, build(kind, 0), target)
    old = load(kind, target)
    keep = (target.parent if kind == "lc-inmemory" else target) / "notes.txt"
    keep.write_text("the user's own file")
    first = next(p for p in user_files(keep.parent) if p != keep)
    first.chmod(0o640)
    save_store(build(kind, 1), target)
    new = load(kind, target)
    assert not same_vectors(new.vectors, old.vectors) and new.texts != old.texts
    assert same_vectors(new.vectors, load_fresh(kind, tmp_path, 1).vectors)
    assert keep.read_text() == "the user's own file"  # files the framework does not write stay
    assert stat.S_IMODE(first.stat().st_mode) == 0o640  # the replaced file keeps its mode


def load_fresh(kind: str, tmp_path: Path, version: int) -> Snapshot:
    target = target_of(kind, tmp_path / f"fresh-{version}")
    target.parent.mkdir(parents=True, exist_ok=True)
    framework_save(kind, build(kind, version), target)
    return load(kind, target)


def test_save_store_refuses_what_it_cannot_save(tmp_path: Path) -> None:
    from nudge_rag.errors import StoreError, UnsupportedStoreError
    from nudge_rag.persist import save_store

    with pytest.raises(
        UnsupportedStoreError, match=r"cannot save a builtins\.dict.*VectorStoreIndex"
    ):
        save_store({"a": 1}, tmp_path / "x")
    assert isinstance(UnsupportedStoreError("x"), StoreError)
    assert not (tmp_path / "x").exists()


def test_save_store_checks_file_or_folder(tmp_path: Path) -> None:
    from nudge_rag.errors import ConfigError
    from nudge_rag.persist import save_store

    pytest.importorskip("langchain_core.vectorstores")
    pytest.importorskip("llama_index.core")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        save_store(build("li-index-simple", 0), tmp_path / "a_file")
    (tmp_path / "a_dir").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        save_store(build("lc-inmemory", 0), tmp_path / "a_dir")
    assert (tmp_path / "a_file").read_text() == "x" and not any((tmp_path / "a_dir").iterdir())


def test_a_framework_failure_changes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nudge_rag.errors import StoreError
    from nudge_rag.persist import save_store

    pytest.importorskip("langchain_core.vectorstores")
    target = tmp_path / "store.json"
    framework_save("lc-inmemory", build("lc-inmemory", 0), target)
    before = target.read_bytes()
    store = build("lc-inmemory", 1)

    def half_then_fail(path: str) -> None:
        Path(path).write_text('{"trunc')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "dump", half_then_fail)
    with pytest.raises(StoreError, match=r"No space left.*no file in .* was changed"):
        save_store(store, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["store.json"]


# ---------------------------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------------------------
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_atomic_write_bytes_replaces_whole_file_and_keeps_mode(tmp_path: Path) -> None:
    from nudge_rag.persist import atomic_write, atomic_write_bytes, fsync_dir

    f = tmp_path / "manifest.json"
    assert atomic_write_bytes(f, b"one") == f and f.read_bytes() == b"one"
    f.chmod(0o600)
    stale = tmp_path / f".manifest.json.nudge-tmp-{dead_pid()}-abcdef"
    stale.write_bytes(b"left by a killed write")
    live = tmp_path / f".manifest.json.nudge-tmp-{os.getpid()}-abcdef"
    live.write_bytes(b"a write of this process, in progress")
    atomic_write_bytes(f, b"two")
    assert f.read_bytes() == b"two" and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert not stale.exists() and live.exists()  # only a dead process's temporary is removed
    live.unlink()

    def fails(fh: Any) -> None:
        fh.write(b"par")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(f, fails)
    assert f.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json"
    ]
    np_file = tmp_path / "a.npy"
    atomic_write(np_file, lambda fh: np.save(fh, np.arange(3.0), allow_pickle=False))
    assert np.load(np_file).tolist() == [0.0, 1.0, 2.0]
    fsync_dir(tmp_path)


def test_persist_imports_stdlib_only() -> None:
    code = (
        "import sys; before = set(sys.modules); import nudge_rag.persist\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(','.join(sorted(new - {'nudge_rag', 'numpy'} - set(sys.stdlib_module_names))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------
# Killed saves
# ---------------------------------------------------------------------------------------------
def run_child(
    kind: str, target: Path, version: int, **env: str
) -> subprocess.CompletedProcess[str]:
    """Save version ``version`` of ``kind`` to ``target`` in a fresh process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_RAG_")}
    full.update(env)
    return subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore::DeprecationWarning",
            str(HERE),
            kind,
            str(target),
            str(version),
        ],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


# Each kind costs one fresh process per file it writes, plus two (LlamaIndex imports in ~3 s):
# the FAISS index and the bare store run with the slow tests.
KILL_KINDS = [
    "li-index-simple",
    pytest.param("li-index-faiss", marks=pytest.mark.slow),
    pytest.param("li-simple-store", marks=pytest.mark.slow),
    "lc-faiss",
    "lc-inmemory",
]


@pytest.mark.parametrize("kind", KILL_KINDS)
def test_a_save_killed_at_any_point_leaves_old_or_new(kind: str, tmp_path: Path) -> None:
    """SIGKILL after each file switched in (and before the first): the store always loads, and
    its ids, texts, metadata and vectors are each wholly the old version or wholly the new."""
    from nudge_rag.persist import save_store

    skip_without(kind)
    base = tmp_path / "old"
    target_old = target_of(kind, base)
    base.mkdir()
    framework_save(kind, build(kind, 0), target_old)  # the user's store, as the framework wrote it
    old = load(kind, target_old)

    # An unarmed run lists the crash points a save passes through, and gives the new version.
    ref_root = tmp_path / "ref"
    shutil.copytree(base, ref_root)
    log = tmp_path / "points.log"
    r = run_child(kind, target_of(kind, ref_root), 1, NUDGE_RAG_FAULT_LOG=str(log))
    assert r.returncode == 0, r.stderr
    new = load(kind, target_of(kind, ref_root))
    assert not same_vectors(new.vectors, old.vectors)
    points = log.read_text().split()
    n_files = len(user_files(base))
    assert points[0] == "persist.written#1"
    assert points[1:] == [f"persist.file#{n}" for n in range(1, len(points))]
    assert len(points) - 1 == n_files  # every file the framework writes is switched in

    for point in points:
        root = tmp_path / point.replace("#", "-")
        shutil.copytree(base, root)
        target = target_of(kind, root)
        r = run_child(kind, target, 1, NUDGE_RAG_KILL_AT=point)
        assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr)
        files = user_files(root)
        assert len(files) == n_files, point
        assert all(f.stat().st_size > 0 for f in files), point  # never an empty file
        got = load(kind, target)
        assert_whole(got, old, new, point)
        n_new = int(point.split("#")[1]) if point.startswith("persist.file") else 0
        if n_new == 0:
            assert same_vectors(got.vectors, old.vectors) and got.texts == old.texts, point
        if n_new == n_files:
            assert same_vectors(got.vectors, new.vectors) and got.texts == new.texts, point
        tmp_dirs = list(
            target.parent.glob(".nudge-tmp-*")
            if kind == "lc-inmemory"
            else target.glob(".nudge-tmp-*")
        )
        assert len(tmp_dirs) == 1, point  # the killed save's leftovers ...

    # ... are removed by the next save, which completes the job.
    save_store(build(kind, 1), target)
    assert not list((target.parent if kind == "lc-inmemory" else target).glob(".nudge-tmp-*"))
    got = load(kind, target)
    assert same_vectors(got.vectors, new.vectors) and got.texts == new.texts


def _child(argv: list[str]) -> None:
    """Subprocess entry: save version VERSION of KIND to TARGET with save_store."""
    kind, target, version = argv
    from nudge_rag.persist import save_store

    save_store(build(kind, int(version)), Path(target))


if __name__ == "__main__":
    _child(sys.argv[1:])
