"""State places: the key-value backend's contract, where a finetuner keeps its state, replicas
that share a store's place, stale readers, and states moved out of the per-user folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.errors import StateError, StoreBusyError
from nudge_rag.feedback import FeedbackLog
from nudge_rag.state import FinetuneState, FolderBackend, KVBackend, StateBackend
from nudge_rag.state.places import STATE_FOLDER, persist_state_folder
from nudge_rag.stores._inmemory import LangChainInMemoryAdapter
from nudge_rag.testing import BagOfWordsEmbedder

N_DOCS = 60


class DictKV(KVBackend):
    """A key-value place held in a dict: what a companion table is, minus the server. Two
    objects over one dict are two replicas reaching one store."""

    kind = "dict"

    def __init__(self, data: dict[str, bytes], chunk_bytes: int = 1 << 20) -> None:
        self.data = data
        self.where = f"dict:{id(data)}"
        self.chunk_bytes = chunk_bytes
        self.settle_seconds = 0.0
        self.puts = 0

    def _get(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {k: self.data[k] for k in keys if k in self.data}

    def _put(self, items: Mapping[str, bytes]) -> None:
        self.puts += 1
        self.data.update(items)

    def _delete(self, keys: Sequence[str]) -> None:
        for k in keys:
            self.data.pop(k, None)

    def _keys(self, prefix: str) -> list[str]:
        return [k for k in self.data if k.startswith(prefix)]


def _arrays(n: int, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, d))


# ---------------------------------------------------------------------------------------------
# The key-value backend's contract
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1 << 20, 100])
def test_kv_generations_round_trip_and_switch_by_current(chunk):
    be = DictKV({}, chunk_bytes=chunk)
    assert FinetuneState.load(be) is None
    o, t, p = _arrays(30)
    st = FinetuneState.commit(
        be, ids=[f"r{i}" for i in range(30)], originals=o, targets=t, priors=p,
        manifest={"identity": "x"}, extra={"adaptor.npy": np.eye(4)},
    )  # fmt: skip
    back = FinetuneState.load(DictKV(be.data, chunk_bytes=chunk))
    assert back is not None and back.ids == st.ids and back.name == "gen-000001"
    assert np.array_equal(back.originals, o) and np.array_equal(back.targets, t)
    assert np.array_equal(back.array("adaptor.npy"), np.eye(4))
    if chunk == 100:  # blobs over chunk_bytes are split and put back together
        assert any("#" in k for k in be.data)
    back.mark("applied")
    st2 = FinetuneState.commit(
        be, ids=["r0"], originals=o[:1], targets=t[:1], priors=p[:1], manifest={"identity": "x"}
    )
    assert st2.name == "gen-000002"
    assert be.generations() == [2]  # the older generation is dropped after the switch
    assert FinetuneState.load(be).ids == ["r0"]  # type: ignore[union-attr]


def test_kv_generation_not_switched_in_is_never_used_and_is_dropped():
    be = DictKV({})
    o, t, p = _arrays(5)
    FinetuneState.commit(be, ids=list("abcde"), originals=o, targets=t, priors=p, manifest={})
    # a killed run wrote a newer generation's blobs but never switched CURRENT
    be.write_generation("gen-000002", {"manifest.json": b"{}", "ids.json": b"[]"})
    assert FinetuneState.load(be).name == "gen-000001"  # type: ignore[union-attr]
    FinetuneState.commit(be, ids=["a"], originals=o[:1], targets=t[:1], priors=p[:1], manifest={})
    assert FinetuneState.load(be).ids == ["a"]  # type: ignore[union-attr]


def test_kv_damaged_blob_is_refused():
    be = DictKV({}, chunk_bytes=64)
    o, t, p = _arrays(10)
    FinetuneState.commit(be, ids=list("abcdefghij"), originals=o, targets=t, priors=p, manifest={})
    key = next(k for k in be.data if k.startswith("gen-000001/originals.npy#"))
    be.data[key] = b"x" + be.data[key][1:]
    with pytest.raises(StateError, match="damaged"):
        FinetuneState.load(be)


def test_kv_feedback_is_shared_by_two_replicas_and_survives_compaction():
    shared: dict[str, bytes] = {}
    a = FeedbackLog.on(DictKV(shared), compact_factor=1.0)
    b = FeedbackLog.on(DictKV(shared))
    for i in range(5):
        a.record(f"question {i}", [f"d{i}"], source="replica-1")
        b.record(f"other {i}", [f"d{i + 10}"], source="replica-2")
    assert len(a) == len(b) == 10
    a.compact()
    assert len(b) == 10  # b sees the rewrite and starts over
    b.record("late", ["d99"])
    pairs = dict(a.training_pairs())
    assert len(pairs) == 11 and pairs["late"] == {"d99": 1.0}
    assert {e.source for e in a} == {"replica-1", "replica-2", ""}


def test_kv_lease_excludes_a_second_holder_and_frees_on_exit():
    shared: dict[str, bytes] = {}
    a, b = DictKV(shared), DictKV(shared)
    with a.lock(0.0), pytest.raises(StoreBusyError, match="held by pid"):
        b.lock(0.0).__enter__()
    with b.lock(0.0):  # released
        pass


def test_kv_lease_of_a_killed_process_on_this_host_is_free(tmp_path):
    shared: dict[str, bytes] = {}
    a = DictKV(shared)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(proc.stdout)
    import socket
    import time

    value = {"host": socket.gethostname(), "pid": dead, "token": "t", "expires": time.time() + 999}
    shared["LEASE"] = b"=" + json.dumps(value).encode()
    with a.lock(0.0):  # the holder is gone: its lease does not block
        assert json.loads(shared["LEASE"][1:])["pid"] == os.getpid()


# ---------------------------------------------------------------------------------------------
# The finetuner over a store with a place of its own
# ---------------------------------------------------------------------------------------------
def _texts() -> list[str]:
    return [f"document about topic{i} with words alpha{i % 7} beta{i % 5}" for i in range(N_DOCS)]


def _pairs(docs: Sequence[int], shift: int = 1) -> list[tuple[str, list[str]]]:
    out = []
    for v in range(2):
        for d in docs:
            q = f"question alpha{(d + shift) % 7} beta{(d + 2 * shift) % 5} topic{d} v{v}"
            out.append((q, [f"d{d}"]))
    return out


def _store():
    from langchain_core.vectorstores import InMemoryVectorStore

    emb = BagOfWordsEmbedder(dim=64).as_langchain()
    ids = [f"d{i}" for i in range(N_DOCS)]
    return InMemoryVectorStore.from_texts(_texts(), emb, ids=ids)


def _vectors(store) -> dict[str, list[float]]:
    return {k: list(v["vector"]) for k, v in store.store.items()}


@pytest.fixture
def placed(monkeypatch):
    """LangChain in-memory stores whose adapter keeps our state in a dict beside the store (as
    the server stores keep it in a companion table)."""
    places: dict[int, dict[str, bytes]] = {}

    def state_backend(self, scope):
        return DictKV(places.setdefault(id(self._vs), {}))

    monkeypatch.setattr(LangChainInMemoryAdapter, "state_backend", state_backend)
    return places


def _ft(store, home: Path, monkeypatch, **kw) -> NudgeEmbeddingFinetuner:
    monkeypatch.setenv("NUDGE_RAG_HOME", str(home))  # every replica its own home
    return NudgeEmbeddingFinetuner(store, method="nudge-n", gamma=0.3, **kw)


def test_two_replicas_with_their_own_homes_revert_exactly(placed, tmp_path, monkeypatch):
    store = _store()
    orig = _vectors(store)
    r1 = _ft(store, tmp_path / "h1", monkeypatch)
    r1.finetune(_pairs(range(0, 20)))
    r2 = _ft(store, tmp_path / "h2", monkeypatch)
    r2.finetune(_pairs(range(10, 30)))
    assert r2.report is not None and sorted(r2.report.restored_ids) == [f"d{i}" for i in range(10)]
    assert set(r2.report.moved_ids) == {f"d{i}" for i in range(10, 30)}
    rev1 = r1.revert()
    assert rev1.changed_ids == [] and rev1.n_restored == 20
    assert r2.revert().n_restored == 0  # one state: already reverted
    assert _vectors(store) == orig


def test_wiped_home_finds_the_state_in_the_store(placed, tmp_path, monkeypatch):
    store = _store()
    orig = _vectors(store)
    _ft(store, tmp_path / "h1", monkeypatch).finetune(_pairs(range(0, 20)))
    shutil.rmtree(tmp_path / "h1", ignore_errors=True)  # a container restarted, fresh disk
    again = _ft(store, tmp_path / "h1", monkeypatch)
    again.finetune(_pairs(range(0, 20)))
    rep = again.report
    assert rep is not None and rep.n_written == 0  # it knew the first run: the same move, no write
    assert again.revert().n_restored == 20
    assert _vectors(store) == orig


def test_feedback_from_every_replica_is_one_log(placed, tmp_path, monkeypatch):
    store = _store()
    r1 = _ft(store, tmp_path / "h1", monkeypatch)
    r2 = _ft(store, tmp_path / "h2", monkeypatch)
    for q, ids in _pairs(range(0, 15))[:15]:
        r1.record(q, ids)
    for q, ids in _pairs(range(15, 30))[:15]:
        r2.record(q, ids)
    assert len(r1.feedback.training_pairs()) == 30
    assert len(r2.feedback.training_pairs()) == 30


def test_explicit_state_dir_beside_a_state_in_the_store_is_refused(placed, tmp_path, monkeypatch):
    store = _store()
    orig = _vectors(store)
    _ft(store, tmp_path / "h1", monkeypatch).finetune(_pairs(range(0, 20)))
    moved = _vectors(store)
    elsewhere = _ft(store, tmp_path / "h2", monkeypatch, state_dir=tmp_path / "elsewhere")
    with pytest.raises(StateError, match="keeps a fine-tuning state of ours"):
        elsewhere.finetune(_pairs(range(30, 40)))
    assert _vectors(store) == moved  # refused before anything was written
    _ft(store, tmp_path / "h2", monkeypatch).revert()
    assert _vectors(store) == orig


class _StaleAdapter(LangChainInMemoryAdapter):
    """A client whose reads show the store as it was when it was opened (chromadb's
    PersistentClient in a second process), while its writes reach the store."""

    def __init__(self, vs) -> None:
        super().__init__(vs)
        self.snapshot = {k: list(v["vector"]) for k, v in vs.store.items()}

    def _vector(self, id_: str) -> list[float]:
        return self.snapshot[id_]

    def _write_batch(self, ids, vectors) -> None:
        super()._write_batch(ids, vectors)
        for i, row in zip(ids, vectors.tolist(), strict=True):
            self.snapshot[i] = row


def test_a_stale_reader_never_makes_the_state_forget_our_vectors(placed, tmp_path, monkeypatch):
    store = _store()
    orig = _vectors(store)
    stale = _StaleAdapter(store)  # opened before the first fine-tune
    monkeypatch.setattr(stale, "identity", LangChainInMemoryAdapter(store).identity)
    _ft(store, tmp_path / "h1", monkeypatch).finetune(_pairs(range(0, 20)))
    emb = BagOfWordsEmbedder(dim=64)
    second = NudgeEmbeddingFinetuner(stale, embed_model=emb, method="nudge-n", gamma=0.3)
    second.finetune(_pairs(range(30, 40)))
    # what it read as originals for d0..d19 was stale: they are written again, and the state
    # keeps knowing the vectors the first run wrote
    assert second.report is not None and second.report.n_written >= 30
    stale2 = _StaleAdapter(store)
    stale2.snapshot = {k: orig[k] for k in orig}  # reads originals everywhere
    monkeypatch.setattr(stale2, "identity", LangChainInMemoryAdapter(store).identity)
    NudgeEmbeddingFinetuner(stale2, embed_model=emb, method="nudge-n", gamma=0.3).revert()
    assert _vectors(store) == orig


# ---------------------------------------------------------------------------------------------
# Folders that travel with the store's files, and moving old per-user states
# ---------------------------------------------------------------------------------------------
def test_persist_dir_state_lives_inside_the_saved_files_and_a_copy_carries_its_own(tmp_path):
    from langchain_community.vectorstores import FAISS

    emb = BagOfWordsEmbedder(dim=64).as_langchain()
    ids = [f"d{i}" for i in range(N_DOCS)]
    FAISS.from_texts(_texts(), emb, ids=ids).save_local(str(tmp_path / "a"))

    def load(where: Path):
        return FAISS.load_local(str(where), emb, allow_dangerous_deserialization=True)

    def vecs(where: Path) -> np.ndarray:
        vs = load(where)
        return vs.index.reconstruct_n(0, vs.index.ntotal)

    orig = vecs(tmp_path / "a")
    ft = NudgeEmbeddingFinetuner(load(tmp_path / "a"), persist_dir=tmp_path / "a", gamma=0.3)
    ft.finetune(_pairs(range(0, 20)))
    assert ft.state_backend.where == str(tmp_path / "a" / STATE_FOLDER)
    assert (tmp_path / "a" / STATE_FOLDER / "CURRENT").is_file()
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # a backup restored beside the live one
    ftb = NudgeEmbeddingFinetuner(load(tmp_path / "b"), persist_dir=tmp_path / "b", gamma=0.3)
    ftb.finetune(_pairs(range(20, 40)))
    assert sorted(ftb.report.restored_ids) == sorted(f"d{i}" for i in range(20))  # type: ignore[union-attr]
    NudgeEmbeddingFinetuner(load(tmp_path / "a"), persist_dir=tmp_path / "a").revert()
    NudgeEmbeddingFinetuner(load(tmp_path / "b"), persist_dir=tmp_path / "b").revert()
    assert np.array_equal(vecs(tmp_path / "a"), orig)
    assert np.array_equal(vecs(tmp_path / "b"), orig)


def test_persist_state_folder_is_beside_a_single_file(tmp_path):
    (tmp_path / "dump.json").write_text("{}")
    assert persist_state_folder(tmp_path / "dump.json") == tmp_path / f"dump.json.{STATE_FOLDER}"
    assert persist_state_folder(tmp_path / "index") == tmp_path / "index" / STATE_FOLDER


def test_a_state_in_the_old_per_user_folder_is_moved_to_the_store(placed, tmp_path, monkeypatch):
    store = _store()
    orig = _vectors(store)
    old = _ft(store, tmp_path / "h1", monkeypatch, store_id="docs")
    monkeypatch.setattr(LangChainInMemoryAdapter, "state_backend", lambda self, scope: None)
    old.finetune(_pairs(range(0, 20)))  # an earlier version: state in the per-user folder
    for q, ids in _pairs(range(0, 5)):
        old.record(q, ids)
    legacy = old.state_path
    assert (legacy / "CURRENT").is_file()
    monkeypatch.undo()
    shared: dict[str, bytes] = {}
    monkeypatch.setattr(
        LangChainInMemoryAdapter, "state_backend", lambda self, scope: DictKV(shared)
    )
    new = _ft(store, tmp_path / "h1", monkeypatch, store_id="docs")
    assert isinstance(new.state_backend, DictKV)
    assert (
        not legacy.exists() and (legacy.with_name(legacy.name + ".moved") / "MOVED.txt").is_file()
    )
    assert len(new.feedback.training_pairs()) == 10
    assert new.revert().n_restored == 20
    assert _vectors(store) == orig


def test_folder_backend_is_the_old_layout(tmp_path):
    be: StateBackend = FolderBackend(tmp_path)
    o, t, p = _arrays(3)
    FinetuneState.commit(be, ids=list("abc"), originals=o, targets=t, priors=p, manifest={})
    assert (tmp_path / "CURRENT").read_text().strip() == "gen-000001"
    assert sorted(f.name for f in (tmp_path / "gen-000001").iterdir()) == [
        "ids.json", "manifest.json", "originals.npy", "priors.npy", "targets.npy",
    ]  # fmt: skip


def test_lease_waits_for_the_holder_when_asked(tmp_path):
    shared: dict[str, bytes] = {}
    a, b = DictKV(shared), DictKV(shared)
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def hold() -> None:
        with a.lock(0.0):
            order.append("a")
            entered.set()
            release.wait(30)

    th = threading.Thread(target=hold)
    th.start()
    entered.wait(30)

    def later() -> None:
        release.set()

    threading.Thread(target=later).start()
    with b.lock(None):
        order.append("b")
    th.join()
    assert order == ["a", "b"]


def test_kv_compaction_keeps_a_line_another_replica_appended_meanwhile():
    shared: dict[str, bytes] = {}
    a, b = DictKV(shared), DictKV(shared)
    a.feedback_append('{"x": 1}')

    class Racing(DictKV):
        def _put(self, items):  # b appends right after a wrote the new epoch's lines
            super()._put(items)
            if not any(k == "FB_EPOCH" for k in items) and not getattr(self, "raced", False):
                self.raced = True
                b.feedback_append('{"x": 2}')

    Racing(shared).feedback_rewrite(['{"x": 1}'])
    lines, _, _ = DictKV(shared).feedback_read(None)
    assert sorted(lines) == ['{"x": 1}', '{"x": 2}']


def test_judge_answers_land_in_the_shared_log_with_their_candidate_digest():
    shared: dict[str, bytes] = {}
    a = FeedbackLog.on(DictKV(shared))
    a.record("q", ["d1"], source="judge", shown=["d1", "d2"], candidates="abc123")
    a.record("q", ["d1"], source="chat")
    b = FeedbackLog.on(DictKV(shared))
    got = sorted((e.source, e.candidates) for e in b)
    assert got == [("chat", ""), ("judge", "abc123")]
