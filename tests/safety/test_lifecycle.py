"""The store lives on after a fine-tune: users edit, re-embed, delete and add records; several
stores share an id scheme; one store is reached through several wrappers; runs overlap; the
working directory changes. Every test ends with the user's data intact: their records exactly
as they set them, every other record exactly original after revert, and the reports naming
what was skipped.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safety_kit as K
from safety_live import LIVE_KINDS, Live, UserModel, make_live, new_id, services_for
from safety_zygote import Zygote

from nudge_rag import NudgeEmbeddingFinetuner
from nudge_rag.errors import StoreBusyError

RIDS = K.ids()
Q1 = K.queries("q1")  # records 0-11
Q2 = K.queries("q2")  # records 6-17
HANG = 300.0  # guard against a hung helper process; never reached when things work


@pytest.fixture(params=LIVE_KINDS)
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    kind = request.param
    store = make_live(kind, tmp_path / "store", services=services_for(kind, request))
    yield store
    store.close()


def assert_user_data(
    final: K.Snapshot, user: K.Snapshot, original: K.Snapshot, touched: set[str], tol: float
) -> None:
    """``final`` holds exactly the ids the user has; the records the user touched are exactly as
    they set them, every other record is exactly original (within ``tol`` on a store that
    renormalises what is written)."""
    assert final.ids == user.ids
    assert K.diff(final, user, only=touched & set(user.ids)) == []
    untouched = set(user.ids) - touched
    assert K.diff(final, original, only=untouched, atol=tol) == []


def moved_rows(snap: K.Snapshot, original: K.Snapshot) -> set[str]:
    return {i for i in snap.ids if i in original.ids and K.diff(snap, original, only={i})}


# ---------------------------------------------------------------------------------------------
# Users change records
# ---------------------------------------------------------------------------------------------
def test_user_changes_between_finetune_and_revert(live: Live):
    s0 = live.snapshot()
    ft = live.finetuner()
    ft.finetune(Q1)
    assert sorted(ft.report.moved_ids) == sorted(RIDS[:12])
    assert moved_rows(live.snapshot(), s0) == set(RIDS[:12])

    edited, reembedded, deleted = RIDS[0], RIDS[1], RIDS[2]  # three records we moved
    edited_other, deleted_other, added = RIDS[30], RIDS[31], new_id(0)  # and three we did not
    live.edit(edited, "an edited record on tide pools", {"n": 0, "edited": True})
    live.reembed(reembedded)
    live.delete(deleted)
    live.edit(edited_other, "another edited record on glaciers", {"n": 30, "edited": True})
    live.delete(deleted_other)
    live.add(added, "a new record on volcanoes", {"n": 100, "added": True})
    user = live.snapshot()
    assert K.diff(user, s0, only={reembedded}), "re-embedding changed nothing: nothing to test"

    rev = live.finetuner().revert()  # a finetuner made afresh: the state is found on disk
    assert sorted(rev.changed_ids) == sorted([edited, reembedded])
    assert rev.deleted_ids == [deleted]
    assert rev.mismatched_ids == []
    assert rev.n_restored == 12 - 3
    touched = {edited, reembedded, edited_other, added}
    assert_user_data(live.snapshot(), user, s0, touched, live.tol)

    again = live.finetuner().revert()  # nothing left to do, and nothing changes
    assert again.n_restored == 0
    assert_user_data(live.snapshot(), user, s0, touched, live.tol)


def test_user_changes_between_two_finetunes(live: Live, tmp_path: Path):
    s0 = live.snapshot()
    live.finetuner().finetune(Q1)

    edited, reembedded = RIDS[6], RIDS[7]  # moved by the first fine-tune, trained by the second
    deleted, edited_q1 = RIDS[0], RIDS[1]  # moved by the first only
    added = new_id(1)

    def user_changes(store: Live) -> None:
        store.edit(edited, "record six rewritten on term6 and kelp forests", {"n": 6, "v": 2})
        store.reembed(reembedded)
        store.delete(deleted)
        store.edit(edited_q1, "record one rewritten on deserts", {"n": 1, "v": 2})
        store.add(added, "a new record on term6 and volcanoes", {"n": 101})

    user_changes(live)
    user = live.snapshot()

    ft = live.finetuner()
    ft.finetune(Q2)
    assert sorted(ft.report.adopted_ids) == sorted([edited, reembedded, edited_q1])
    assert ft.report.deleted_ids == [deleted]
    assert sorted(ft.report.moved_ids) == sorted(RIDS[6:18])
    after = live.snapshot()

    # The second fine-tune started from the right vectors: the user's for the records they
    # changed, the originals for the rest (never a vector the first fine-tune wrote). A twin that
    # was never fine-tuned, changed the same way and fine-tuned once, ends the same.
    twin = make_live(live.kind, tmp_path / "twin", services=live.services)
    try:
        user_changes(twin)
        twin.finetuner().finetune(Q2)
        assert K.diff(after, twin.snapshot(), atol=live.tol) == []
    finally:
        twin.close()

    rev = live.finetuner().revert()
    assert rev.changed_ids == [] and rev.deleted_ids == [] and rev.mismatched_ids == []
    assert rev.n_restored == 12  # what the second moved; 2-5 were restored by it already
    touched = {edited, reembedded, edited_q1, added}
    assert_user_data(live.snapshot(), user, s0, touched, live.tol)


# ---------------------------------------------------------------------------------------------
# Several stores, several wrappers
# ---------------------------------------------------------------------------------------------
def rows(snap: K.Snapshot) -> set[bytes]:
    return {np.ascontiguousarray(v, dtype=np.float64).tobytes() for v in snap.vectors}


@pytest.mark.parametrize("kind", LIVE_KINDS)
def test_two_stores_with_equal_ids_never_share_vectors(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
):
    services = services_for(kind, request)
    a = make_live(kind, tmp_path / "a", services=services)
    b = make_live(kind, tmp_path / "b", flavour=" beta edition", services=services)
    try:
        a0, b0 = a.snapshot(), b.snapshot()
        assert a0.ids == b0.ids
        seen_a, seen_b = rows(a0), rows(b0)
        assert not seen_a & seen_b
        a.finetuner().finetune(Q1)
        b.finetuner().finetune(Q2)  # records 6-11 are trained in both
        a1, b1 = a.snapshot(), b.snapshot()
        assert moved_rows(a1, a0) == set(RIDS[:12])
        assert moved_rows(b1, b0) == set(RIDS[6:18])

        rev_a = a.finetuner().revert()
        assert rev_a.n_restored == 12 and rev_a.changed_ids == [] and rev_a.deleted_ids == []
        assert K.diff(a.snapshot(), a0, atol=a.tol) == []
        assert K.diff(b.snapshot(), b1) == []  # b untouched by a's revert
        rev_b = b.finetuner().revert()
        assert rev_b.n_restored == 12 and rev_b.changed_ids == [] and rev_b.deleted_ids == []
        assert K.diff(b.snapshot(), b0, atol=b.tol) == []
        assert K.diff(a.snapshot(), a0, atol=a.tol) == []
        for snap in (a1, a.snapshot()):
            seen_a |= rows(snap)
        for snap in (b1, b.snapshot()):
            seen_b |= rows(snap)
        assert not seen_a & seen_b  # neither ever held a vector of the other
    finally:
        a.close()
        b.close()


def test_same_chroma_collection_through_three_wrappers(tmp_path: Path):
    import chromadb
    from langchain_chroma import Chroma
    from llama_index.vector_stores.chroma import ChromaVectorStore

    model = UserModel()
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    try:
        col = client.create_collection(K.COLLECTION)  # l2: kept bit for bit
        col.add(
            ids=RIDS,
            documents=K.texts(),
            metadatas=K.metadatas(),
            embeddings=model.embed(K.texts()),
        )
        s0 = K.snapshot(col)
        lc = Chroma(
            collection_name=K.COLLECTION, embedding_function=model.as_langchain(), client=client
        )
        li = ChromaVectorStore(chroma_collection=client.get_collection(K.COLLECTION))

        raw_ft = NudgeEmbeddingFinetuner(col, embed_model=model, gamma=K.GAMMA)
        raw_ft.finetune(Q1)
        s1 = K.snapshot(col)
        lc_ft = NudgeEmbeddingFinetuner(lc, gamma=K.GAMMA)
        assert lc_ft.identity == raw_ft.identity
        rev = lc_ft.revert()  # LangChain finds what the raw collection's run left
        assert rev.n_restored == 12 and rev.changed_ids == []
        assert K.diff(K.snapshot(col), s0) == []

        lc_ft.finetune(Q1)  # the same records, the same move, from the originals
        assert K.diff(K.snapshot(col), s1) == []
        li_ft = NudgeEmbeddingFinetuner(li, embed_model=model.as_llamaindex(), gamma=K.GAMMA)
        li_ft.finetune(Q2)  # LlamaIndex takes over: 0-5 get their originals back, 6-17 move
        assert li_ft.report.adopted_ids == [] and li_ft.report.deleted_ids == []
        assert moved_rows(K.snapshot(col), s0) == set(RIDS[6:18])
        rev = NudgeEmbeddingFinetuner(col, embed_model=model).revert()
        assert rev.n_restored == 12 and rev.changed_ids == [] and rev.deleted_ids == []
        assert K.diff(K.snapshot(col), s0) == []
        assert raw_ft.report.state_dir == lc_ft.report.state_dir == li_ft.report.state_dir
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# Two runs at once on one living store (a Chroma server, reached by two processes)
# ---------------------------------------------------------------------------------------------
def _server_collection(client: Any, name: str) -> Any:
    col = client.create_collection(name)  # l2: kept bit for bit
    col.add(
        ids=RIDS,
        documents=K.texts(),
        metadatas=K.metadatas(),
        embeddings=UserModel().embed(K.texts()),
    )
    return col


def _state_listing(home: Path) -> list[str]:
    return sorted(
        str(p.relative_to(home)) for p in home.rglob("*") if not p.name.startswith("LOCK")
    )


def test_concurrent_finetunes_take_turns(
    zygote: Zygote,
    chroma_server: tuple[str, int],
    chroma_http: Any,
    tmp_path: Path,
    nudge_home: Path,
):
    from nudge_rag.stores._chroma import ChromaAdapter

    name = f"busy-{os.getpid()}-{time.monotonic_ns()}"
    col = _server_collection(chroma_http, name)
    s0 = K.snapshot(col)
    emb = K.embedder()

    # The first run, in another process: it takes the lock, writes one batch, tells us so over a
    # socket and waits for our word to go on.
    sock_path = tmp_path / "holder.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock_path))
    srv.listen(1)
    srv.settimeout(HANG)
    holder = zygote.start(
        "safety_kit:job_hold_lock",
        {
            "host": chroma_server[0],
            "port": chroma_server[1],
            "collection": name,
            "sock": str(sock_path),
            "queries_name": "q1",
        },
        env={"NUDGE_RAG_HOME": str(nudge_home)},
        name="holder",
    )
    conn: socket.socket | None = None
    try:
        conn, _ = srv.accept()
        conn.settimeout(HANG)
        assert conn.recv(64) == b"locked\n", holder.wait().log_tail()
        mid = K.snapshot(col)
        assert K.diff(mid, s0)  # the holder is half-way through its write
        listing = _state_listing(nudge_home)

        for timeout in (0, 0.05):  # at once, and after a short wait that ends while it is held
            with pytest.raises(StoreBusyError, match="another fine-tune or revert"):
                NudgeEmbeddingFinetuner(
                    col, embed_model=emb, gamma=K.GAMMA, lock_timeout=timeout
                ).finetune(Q2)
        with pytest.raises(StoreBusyError):
            NudgeEmbeddingFinetuner(col, embed_model=emb, lock_timeout=0).revert()
        assert K.diff(K.snapshot(col), mid) == []  # the refused runs touched nothing
        assert _state_listing(nudge_home) == listing

        # A run that waits: it starts now and must read the store only after the holder is done.
        first_read: list[float] = []

        class Watched(ChromaAdapter):
            def iter_pages(self, *a: Any, **kw: Any) -> Any:
                first_read.append(time.monotonic())
                return super().iter_pages(*a, **kw)

        waiter = NudgeEmbeddingFinetuner(
            Watched(chroma_http.get_collection(name), name="chroma"),
            embed_model=emb,
            gamma=K.GAMMA,
            write_batch_size=3,
            lock_timeout=None,
        )
        errors: list[BaseException] = []

        def run_waiter() -> None:
            try:
                waiter.finetune(Q2)
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=run_waiter)
        thread.start()
        conn.sendall(b"go\n")
        held = holder.wait().check()
        thread.join(HANG)
        assert not thread.is_alive()
        assert errors == []
    finally:
        if conn is not None:
            conn.close()
        srv.close()
    assert first_read and min(first_read) > held["last_batch"]  # it waited for the holder
    assert held["n_moved"] == 12
    assert waiter.report.adopted_ids == [] and waiter.report.deleted_ids == []

    # The same two runs one after the other, on a copy: the same store.
    ref = _server_collection(chroma_http, name + "-ref")
    NudgeEmbeddingFinetuner(ref, embed_model=emb, gamma=K.GAMMA).finetune(Q1)
    NudgeEmbeddingFinetuner(ref, embed_model=emb, gamma=K.GAMMA).finetune(Q2)
    assert K.diff(K.snapshot(col), K.snapshot(ref)) == []

    rev = NudgeEmbeddingFinetuner(col, embed_model=emb).revert()
    assert rev.changed_ids == [] and rev.deleted_ids == [] and rev.mismatched_ids == []
    assert K.diff(K.snapshot(col), s0) == []  # the originals, as before either run


# ---------------------------------------------------------------------------------------------
# Another working directory
# ---------------------------------------------------------------------------------------------
def test_state_is_found_from_another_working_directory(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    first, second = tmp_path / "cwd1", tmp_path / "cwd2"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    s0 = live.snapshot()
    live.finetuner().finetune(Q1)
    monkeypatch.chdir(second)
    rev = live.finetuner().revert()
    assert rev.n_restored == 12 and rev.note == ""
    assert K.diff(live.snapshot(), s0, atol=live.tol) == []
    assert list(first.iterdir()) == [] and list(second.iterdir()) == []  # nothing left in either


def test_persisted_index_reverts_from_another_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A LlamaIndex index saved to disk, reopened in another directory (and process state)."""
    first, second = tmp_path / "cwd1", tmp_path / "cwd2"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    K.build("simple", tmp_path)
    s0 = K.snapshot(K.open_store("simple", tmp_path).obj)
    K.finetuner(K.open_store("simple", tmp_path), write_batch_size=3).finetune(Q1)
    assert moved_rows(K.snapshot(K.open_store("simple", tmp_path).obj), s0) == set(RIDS[:12])
    monkeypatch.chdir(second)
    opened = K.open_store("simple", tmp_path)  # from disk, as a new process would
    rev = K.finetuner(opened).revert()
    assert rev.n_restored == 12
    assert K.diff(K.snapshot(K.open_store("simple", tmp_path).obj), s0) == []
    assert list(first.iterdir()) == [] and list(second.iterdir()) == []


def test_qdrant_opened_by_a_relative_path_is_the_same_store_after_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """QdrantClient(path="db") opened in one directory: after os.chdir the client still holds the
    same store, so its state must still be found (identity from where the store is, not from
    where "db" would be now)."""
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient
    from qdrant_client.models import Distance, VectorParams

    first, second = tmp_path / "cwd1", tmp_path / "cwd2"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    model = UserModel()
    client = QdrantClient(path="db")
    try:
        client.create_collection(
            K.COLLECTION, vectors_config=VectorParams(size=K.DIM, distance=Distance.DOT)
        )
        vs = QdrantVectorStore(
            client=client,
            collection_name=K.COLLECTION,
            embedding=model.as_langchain(),
            distance=Distance.DOT,
        )
        vs.add_texts(K.texts(), metadatas=K.metadatas(), ids=RIDS)
        s0 = K.snapshot(vs)
        NudgeEmbeddingFinetuner(vs, gamma=K.GAMMA).finetune(Q1)
        monkeypatch.chdir(second)
        rev = NudgeEmbeddingFinetuner(vs, gamma=K.GAMMA).revert()
        assert rev.n_restored == 12, rev.note
        assert K.diff(K.snapshot(vs), s0) == []
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["langchain-inmemory", "llamaindex-simple", "faiss", "chroma"])
def test_two_stores_given_one_state_dir(kind: str, tmp_path: Path):
    """Two stores fine-tuned with the same explicit ``state_dir`` (README: ``state_dir="nudge_state"``,
    two notebooks or two stores in one): the second must not take over the first's originals.
    Whatever it does (refuse, or keep both), both stores revert to their originals and neither
    ever holds a vector of the other."""
    from nudge_rag.errors import StateError

    state_dir = tmp_path / "nudge_state"
    a = make_live(kind, tmp_path / "a")
    b = make_live(kind, tmp_path / "b", flavour=" beta edition")
    try:
        a0, b0 = a.snapshot(), b.snapshot()
        a.finetuner(state_dir=state_dir).finetune(Q1)
        a1 = a.snapshot()
        refused = False
        try:
            b.finetuner(state_dir=state_dir).finetune(Q2)
        except StateError:
            refused = True
            assert K.diff(b.snapshot(), b0) == []
        b1 = b.snapshot()
        rev_a = a.finetuner(state_dir=state_dir).revert()
        assert rev_a.changed_ids == [], "the first store's records were taken for the user's"
        assert K.diff(a.snapshot(), a0, atol=a.tol) == [], "the first store lost its originals"
        if not refused:
            b.finetuner(state_dir=state_dir).revert()
            assert K.diff(b.snapshot(), b0, atol=b.tol) == []
        seen_a = rows(a0) | rows(a1) | rows(a.snapshot())
        seen_b = rows(b0) | rows(b1) | rows(b.snapshot())
        assert not seen_a & seen_b
    finally:
        a.close()
        b.close()
