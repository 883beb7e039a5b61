"""The store side of a fine-tune: read, check what is still ours, journal, write, revert.

A :class:`StoreSession` binds one store (its adapter and identity) to its state folder. The
finetuner decides what to move; the session does every read and write of the store and of its
state, in this order: read (and sort each journaled record into ours / the user's / deleted),
journal a new state generation, write in batches, read back; revert restores only what is
still ours. Callers hold the store's :class:`~nudge_rag.state.StateLock` around a session's
reads and writes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nudge_rag._util import progress_iter
from nudge_rag.core import BestUnmovedScores, QuerySet, UnmovedTopK, normalize_rows
from nudge_rag.core.choose import Pool, PoolAccumulator, pool_from_hits
from nudge_rag.errors import (
    AnswerError,
    DimensionMismatchError,
    MetricError,
    StateError,
    WriteBackError,
)
from nudge_rag.evaluation.metrics import MetricMeans, ranking_metrics
from nudge_rag.reports import RevertReport
from nudge_rag.state import FinetuneState, StateBackend, vectors_match
from nudge_rag.stores import StoreIdentity, VectorStoreAdapter
from nudge_rag.stores._base import name_ids

__all__ = ["StoreRead", "StoreSession", "report_metrics"]

logger = logging.getLogger(__name__)

#: Best unmoved scores are kept for at least this many ranks (the report's metrics @10).
REPORT_K = 10
#: The query-side adaptor's weight, kept with the state generation that applies it.
ADAPTOR_FILE = "adaptor.npy"


@dataclass
class StoreRead:
    """What a read of the store found (see :meth:`StoreSession.read_scan`)."""

    s_vecs: np.ndarray  # (s, d) float64 original vectors of the fitted records
    unmoved: BestUnmovedScores | None  # per validation query, best scores of the rest
    n_records: int
    dim: int
    # journaled records (of the state in force): what the store holds for each that is still
    # ours, and the ones the user changed or deleted since
    held: dict[str, np.ndarray] = field(default_factory=dict)
    adopted: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # per validation query, its best records among those that do not move (``pool=`` reads)
    pool: Pool | None = None
    # journaled records that the state in force says hold a moved vector but that read back as
    # their original: a client with a stale view of the store, or a record re-embedded to the
    # same vector. Never taken for settled: their old target is kept as a prior and they are
    # written again, whatever the store says it holds.
    ambiguous: set[str] = field(default_factory=set)


@dataclass
class StoreSession:
    """One store and its state folder.

    Attributes:
        adapter: The store's adapter.
        identity: The store's identity (recorded with the state, checked on load).
        backend: Where its state lives (a folder, or a table / collection beside the store).
        page_size: Records read per page (and per ``get``).
        write_batch_size: Records written per call to the store.
        show_progress: Progress bars while reading.
        persist: Saves the store after writing (``persist_dir`` stores), or None.
    """

    adapter: VectorStoreAdapter
    identity: StoreIdentity
    backend: StateBackend
    page_size: int = 1000
    write_batch_size: int = 500
    show_progress: bool = False
    persist: Callable[[], None] | None = None
    claimed: bool = field(default=False, init=False)
    n_written: int = field(default=0, init=False)  # records the last write() sent to the store

    @property
    def state_dir(self) -> str:
        """Where the state lives, as text (a folder path, or a table/collection)."""
        return self.backend.where

    def lock(self, timeout: float | None) -> Any:
        """The store's lock (see :meth:`nudge_rag.state.StateBackend.lock`)."""
        return self.backend.lock(timeout)

    def load_state(self) -> FinetuneState | None:
        """The state in force for this store (StateError if it belongs to another store)."""
        state_dir, ident = self.state_dir, self.identity
        state = FinetuneState.load(self.backend)
        if state is None:
            return None
        self.claimed = False
        if state.identity == ident.key or self.backend.with_store:
            # A place that travels with the store holds only its state (a copied folder
            # carries its own, written when the copy still had the old path).
            return state
        owner = _live_process_owner(state.identity)
        if (state.manifest.get("durable") and ident.durable) or owner:
            why = f" (a store alive in process {owner})" if owner else ""
            msg = (
                f"the fine-tuning state in {state_dir} belongs to another store "
                f"({state.identity!r}{why}; this store is {ident.key!r}): it was left as it is. "
                "Pass another state_dir, or the store_id that store was fine-tuned with"
            )
            raise StateError(msg)
        # A store without an identity of its own, reloaded in a new process and pointed at its
        # state folder by the caller: taken as the same store only if the journaled records it
        # holds are ours (checked when they are read, before anything is written).
        self.claimed = True
        return state

    def confirm(self, n_ours: int, n_present: int, state: FinetuneState) -> None:
        """Refuse a claimed state (see :meth:`load_state`) whose records this store does not
        hold: most of the journaled records present must still hold a vector of ours."""
        if self.claimed and n_present and 2 * n_ours < n_present:
            msg = (
                f"the fine-tuning state in {self.state_dir} was written for another store "
                f"({state.identity!r}): only {n_ours} of the {n_present} journaled records this "
                "store holds carry a vector it wrote. It was left as it is; pass another "
                "state_dir (and store_id=, a name of yours, so that each store finds its own)"
            )
            raise StateError(msg)

    def identity_note(self) -> str:
        """What a report says after writing to a store whose identity dies with this process."""
        if self.identity.durable:
            return ""
        return (
            f"this {self.adapter.name} store has no identity that outlives this process: "
            "to revert it after a restart, pass store_id= (a name of yours) or persist_dir= "
            "(where you save it), the same on every run"
        )

    def tolerance(self) -> float:
        # Stores that renormalise what is written hand back the written vector to ~1e-7.
        return 1e-6 if self.adapter.normalizes_on_write else 0.0

    def get_vectors(self, ids: list[str], dim: int) -> np.ndarray:
        if not ids:
            return np.zeros((0, dim), dtype=np.float64)
        out = []
        for start in range(0, len(ids), self.page_size):
            out.append(self.adapter.get(ids[start : start + self.page_size]).embeddings)
        return np.concatenate(out, axis=0)

    def read_scan(
        self,
        s_ids: list[str],
        val: QuerySet | None,
        state: FinetuneState | None,
        dim: int,
        k: int,
        pool: int = 0,
    ) -> StoreRead:
        """One pass over the store: keep the records queries answer, stream the rest
        (``unmoved="scan"``).

        Records of the state in force are checked on the way: one still holding a vector we
        wrote (or its original) counts with its original; one the user changed since is theirs
        (its current vector is its original from now on); one not met at all was deleted.
        """
        pos = {i: r for r, i in enumerate(s_ids)}
        s_vecs = np.zeros((len(s_ids), dim), dtype=np.float64)
        seen = np.zeros(len(s_ids), dtype=bool)
        acc = UnmovedTopK(val.embeddings, [], max(k, REPORT_K)) if val is not None else None
        pooled = PoolAccumulator(val.embeddings, pool) if val is not None and pool else None
        journal = state.row_of() if state is not None and state.active else {}
        out = StoreRead(s_vecs, None, 0, dim)
        met: set[str] = set()
        n = 0
        pages = self.adapter.iter_pages(self.page_size, with_documents=False)
        total = self.adapter.count() if self.show_progress else 0
        n_pages = -(-total // self.page_size)
        desc = f"reading store ({total} records)"
        for page in progress_iter(pages, n_pages, desc, "page", show=self.show_progress):
            vecs = np.asarray(page.embeddings, dtype=np.float64)
            if vecs.shape[0] and vecs.shape[1] != dim:
                msg = (
                    f"the {self.adapter.name} store holds vectors of width {vecs.shape[1]} but the "
                    f"embedding model gives {dim}: is embed_model the one that built the store?"
                )
                raise DimensionMismatchError(msg)
            if journal:
                met |= self._classify(page.ids, page.embeddings, vecs, state, journal, out)
            self._check_unit(vecs)
            keep = np.fromiter((rid in pos for rid in page.ids), dtype=bool, count=len(page.ids))
            if keep.any():
                rows_ = [pos[rid] for rid, k_ in zip(page.ids, keep, strict=True) if k_]
                s_vecs[rows_] = vecs[keep]
                seen[rows_] = True
            if acc is not None and (~keep).any():
                acc.update(vecs[~keep].astype(np.float32))
                if pooled is not None:
                    pooled.update(normalize_rows(vecs[~keep], name="stored vectors"))
            n += len(page.ids)
        if not seen.all():
            missing = [s_ids[i] for i in np.flatnonzero(~seen)[:10]]
            msg = (
                f"{int((~seen).sum())} record id(s) named by training queries are not in the "
                f"{self.adapter.name} store, e.g. {missing}; ids must be the store's record ids "
                "(LlamaIndex node ids, LangChain document ids)"
            )
            raise AnswerError(msg)
        out.deleted = [rid for rid in journal if rid not in met]
        out.n_records = n
        out.unmoved = acc.result() if acc is not None else None
        out.pool = pooled.result() if pooled is not None else None
        self._log_changes(out, state)
        return out

    def read_by_id(
        self,
        s_ids: list[str],
        val: QuerySet | None,
        state: FinetuneState | None,
        dim: int,
        k: int,
        pool: int = 0,
    ) -> StoreRead:
        """Read only the records queries answer (and the journaled ones), by id; the best scores
        of every other record come from the store's own search (``unmoved="search"``).

        The store runs each validation query as a top-k search that leaves out the records read
        here; those are scored exactly (journaled ones with their originals). The cost follows
        the number of queries, not the size of the store.
        """
        journal = state.row_of() if state is not None and state.active else {}
        wanted = list(dict.fromkeys([*s_ids, *journal]))
        absent = set(self.adapter._missing(wanted)) if wanted else set()
        gone = [i for i in s_ids if i in absent]
        if gone:
            msg = (
                f"{len(gone)} record id(s) named by training queries are not in the "
                f"{self.adapter.name} store, e.g. {gone[:10]}; ids must be the store's record ids "
                "(LlamaIndex node ids, LangChain document ids)"
            )
            raise AnswerError(msg)
        present = [i for i in wanted if i not in absent]
        cur = self.get_vectors(present, dim)
        if cur.shape[0] and cur.shape[1] != dim:
            msg = (
                f"the {self.adapter.name} store holds vectors of width {cur.shape[1]} but the "
                f"embedding model gives {dim}: is embed_model the one that built the store?"
            )
            raise DimensionMismatchError(msg)
        vecs = cur.astype(np.float64)
        out = StoreRead(
            np.zeros((len(s_ids), dim), dtype=np.float64), None, self.adapter.count(), dim
        )
        self._classify(present, cur, vecs, state, journal, out)
        out.deleted = [i for i in journal if i in absent]
        self._check_unit(vecs)
        row = {i: j for j, i in enumerate(present)}
        out.s_vecs[:] = vecs[[row[i] for i in s_ids]]
        if val is not None:
            kk = max(k, REPORT_K)
            # The core scores q · unit(record) with queries as given: the store's search gets
            # unit queries (cosine), and its scores are scaled back by each query's norm.
            qv = np.asarray(val.embeddings, dtype=np.float32)
            qn = np.linalg.norm(qv, axis=1, keepdims=True)
            fitted = set(s_ids)
            extra = [j for j, i in enumerate(present) if i not in fitted]
            if pool:
                store = self._search_pool(qv / qn, kk, pool, present, vecs[extra], out) * qn
            else:
                store = self.adapter.top_scores(qv / qn, kk, exclude=present) * qn
            if extra:  # journaled records outside this fit: scored as they will be (originals)
                mine = qv @ normalize_rows(vecs[extra], name="stored vectors").T.astype(np.float32)
                store = -np.sort(-np.concatenate([store, mine], axis=1), axis=1)[:, :kk]
            out.unmoved = BestUnmovedScores(np.ascontiguousarray(store, dtype=np.float32))
        self._log_changes(out, state)
        return out

    def _search_pool(
        self, units: np.ndarray, k: int, pool: int, present: list[str], extra: np.ndarray,
        out: StoreRead,
    ) -> np.ndarray:  # fmt: skip
        """The store's top-``k`` scores of each query outside ``present`` (as ``top_scores``),
        and, from the same search, the best ``pool`` records' vectors (``out.pool``)."""
        n, kk = units.shape[0], max(k, pool)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        hits: list[list[str]] = [[] for _ in range(n)]
        if n and self.adapter.count():
            found = self.adapter._top_hits(
                np.asarray(units, dtype=np.float32), kk, list(dict.fromkeys(present))
            )
            for j, got in enumerate(found):
                best = np.sort(np.asarray([s for _, s in got[:kk]], dtype=np.float32))[::-1][:k]
                scores[j, : len(best)] = best
                hits[j] = [i for i, _ in got[:pool]]
        ids = list(dict.fromkeys(i for h in hits for i in h))
        vecs = normalize_rows(self.get_vectors(ids, units.shape[1]), name="stored vectors")
        by_id = dict(zip(ids, vecs, strict=True))
        shared = normalize_rows(extra, name="stored vectors") if len(extra) else None
        out.pool = pool_from_hits(n, hits, by_id, units.shape[1], shared)
        return scores

    def _classify(
        self,
        ids: list[str],
        current: np.ndarray,
        vecs: np.ndarray,
        state: FinetuneState | None,
        journal: dict[str, int],
        out: StoreRead,
    ) -> set[str]:
        """Sort journaled records into ours (``vecs`` row set to the original, the current vector
        kept in ``out.held``) and the user's (``out.adopted``); returns the journaled ids met."""
        js = [(j, journal[rid]) for j, rid in enumerate(ids) if rid in journal]
        if not js or state is None:
            return set()
        at = np.array([j for j, _ in js], dtype=np.int64)
        rows = np.array([r for _, r in js], dtype=np.int64)
        tol = self.tolerance()
        ours = state.ours(rows, current[at], tol)
        odd = self._stale(state, rows, current[at], tol)
        for j, r, mine, amb in zip(
            at.tolist(), rows.tolist(), ours.tolist(), odd.tolist(), strict=True
        ):
            rid = ids[j]
            if mine:  # ours: start from the original, never from a moved vector
                out.held[rid] = np.array(current[j], dtype=np.float64)
                vecs[j] = state.originals[r]
                if amb:
                    out.ambiguous.add(rid)
            else:  # the user changed it since: theirs, as it is now
                out.adopted.append(rid)
        if out.ambiguous:
            logger.warning(
                "%d record(s) that the last fine-tune moved read back as their originals (a "
                "client with a stale view of the store, or re-embedded since): they are written "
                "again and their moved vectors stay known to the state (%s)",
                len(out.ambiguous),
                name_ids(sorted(out.ambiguous)),
            )
        return {ids[j] for j in at.tolist()}

    @staticmethod
    def _stale(
        state: FinetuneState, rows: np.ndarray, current: np.ndarray, tol: float
    ) -> np.ndarray:
        """Rows that an applied state moved but that read back as their original."""
        if state.status != "applied" or not len(rows):
            return np.zeros(len(rows), dtype=bool)
        moved = ~vectors_match(state.targets[rows], state.originals[rows], tol=tol)
        as_orig = vectors_match(current, state.originals[rows], tol=tol)
        as_target = vectors_match(current, state.targets[rows], tol=tol)
        odd: np.ndarray = moved & as_orig & ~as_target
        return odd

    def _check_unit(self, vecs: np.ndarray) -> None:
        if self.adapter.metric == "cosine" or not vecs.shape[0]:
            return
        norms = np.linalg.norm(vecs, axis=1)
        if np.any(np.abs(norms - 1.0) > 1e-3):
            msg = (
                f"this {self.adapter.name} store ranks by {self.adapter.metric} and holds "
                f"vectors that are not unit length (e.g. norm {norms[np.argmax(np.abs(norms - 1))]:.4g}); "
                "NUDGE works on unit vectors, and writing unit vectors among longer or "
                "shorter ones would change how every record ranks. Build the store with "
                "normalised embeddings or with cosine similarity."
            )
            raise MetricError(msg)

    def _log_changes(self, out: StoreRead, state: FinetuneState | None) -> None:
        if state is not None:
            self.confirm(len(out.held), len(out.held) + len(out.adopted), state)
        if out.adopted or out.deleted:
            logger.warning(
                "%d record(s) changed and %d deleted since the last fine-tune of this store: "
                "left as they are (changed: %s; deleted: %s)",
                len(out.adopted),
                len(out.deleted),
                name_ids(out.adopted),
                name_ids(out.deleted),
            )

    def write(
        self,
        state: FinetuneState | None,
        read: StoreRead,
        moved_ids: list[str],
        new: np.ndarray,
        pos: dict[str, int],
        info: dict[str, Any],
        extra: dict[str, np.ndarray] | None = None,
    ) -> list[str]:
        """Journal, then write. Records of the state in force that are still ours and that this
        fine-tune does not move get their originals back; their ids are returned. ``extra``
        arrays (the query-side adaptor) are kept with the new state."""
        old = state.row_of() if state is not None and state.active else {}
        moved = set(moved_ids)
        back = [i for i in old if i in read.held and i not in moved]
        ids = list(moved_ids) + back
        if not ids:
            if state is not None and state.active:
                # Everything the last fine-tune wrote was changed or deleted by the user since.
                state.mark("reverted", note="every journaled record was changed or deleted")
            if state is None or not state.active or extra:
                # Nothing written: a state that says so (a later revert has nothing to undo
                # in the store; it drops a query-side adaptor kept here).
                empty = np.zeros((0, read.dim), dtype=np.float64)
                FinetuneState.commit(
                    self.backend,
                    ids=[],
                    originals=empty,
                    targets=empty,
                    priors=empty,
                    manifest={
                        "identity": self.identity.key,
                        "durable": self.identity.durable,
                        "store": self.adapter.name,
                        "note": "nothing was written",
                        **info,
                    },
                    status="unchanged",
                    extra=extra,
                )
            return []
        d = read.dim
        originals = np.empty((len(ids), d), dtype=np.float64)
        targets = np.empty_like(originals)
        priors = np.empty_like(originals)
        for r, rid in enumerate(ids):
            if rid in read.held:  # ours: the journal's original; the store holds `held`
                originals[r] = state.originals[old[rid]]  # type: ignore[union-attr]
                # An ambiguous record may hold the old target whatever it read as: keep that
                # known (a later read through a fresh client matches it).
                priors[r] = (
                    state.targets[old[rid]]  # type: ignore[union-attr]
                    if rid in read.ambiguous
                    else read.held[rid]
                )
            else:  # never written by us, or adopted: what the store holds is the original
                originals[r] = read.s_vecs[pos[rid]]
                priors[r] = originals[r]
            targets[r] = new[r] if r < len(moved_ids) else originals[r]
        ident = self.identity
        journal = FinetuneState.commit(
            self.backend,
            ids=ids,
            originals=originals,
            targets=targets,
            priors=priors,
            manifest={
                "identity": ident.key,
                "durable": ident.durable,
                "store": self.adapter.name,
                "metric": self.adapter.metric,
                "dim": d,
                "n_moved": len(moved_ids),
                **info,
            },
            extra=extra,
        )
        # Records that already hold their target (an update that moves them the same way) are
        # journaled but not written again.
        held = np.array([rid in read.held for rid in ids], dtype=bool)
        same = np.zeros(len(ids), dtype=bool)
        if held.any():
            cur = np.stack([read.held[rid] for rid, h in zip(ids, held, strict=True) if h])
            same[held] = vectors_match(cur, targets[held], tol=self.tolerance())
        same &= np.array([rid not in read.ambiguous for rid in ids], dtype=bool)
        write = ~same
        self.n_written = int(write.sum())
        try:
            self.adapter.write_vectors(
                [rid for rid, w in zip(ids, write, strict=True) if w],
                targets[write],
                batch_size=self.write_batch_size,
            )
            if self.persist is not None:
                self.persist()
        except Exception as exc:
            rolled = ""
            try:
                self.adapter.write_vectors(ids, originals, batch_size=self.write_batch_size)
                if self.persist is not None:
                    self.persist()
                journal.mark("reverted", error=str(exc))
                rolled = "; the originals were written back, the store is as before"
            except Exception as exc2:  # the store is still failing: leave the journal open
                rolled = (
                    f"; rolling back failed too ({exc2}); the originals are saved in "
                    f"{journal.directory}: call revert() once the store is reachable"
                )
            msg = f"writing vectors to the {self.adapter.name} store failed ({exc}){rolled}"
            raise WriteBackError(msg) from exc
        journal.mark("applied")
        return back

    def revert(self, lock_timeout: float | None = 0.0) -> RevertReport:
        """Write the original vectors back wherever the store still holds one we wrote.

        Records the user changed since the fine-tune (re-embedded, edited) are left as they are,
        and records deleted since are skipped; both are named in the report and never block the
        others. What is written is read back and compared with the originals. Works after a
        process restart (the originals are on disk in the state folder), after a write that was
        cut short, and after a revert that was; reverting twice is harmless.
        """
        state_dir = self.state_dir
        with self.lock(lock_timeout):
            state = self.load_state()
            if state is None:
                note = (
                    f"no fine-tuning state for this store at {state_dir}: nothing was restored. "
                    "If it was fine-tuned, pass the state_dir (or store_id / persist_dir) it was "
                    "fine-tuned with"
                )
                logger.warning("%s", note)
                return RevertReport(0, 0.0, str(state_dir), note=note)
            if not state.active:
                if state.status == "unchanged" and state.has(ADAPTOR_FILE):
                    state.mark("reverted", note="the query-side adaptor was dropped")
                    note = (
                        "nothing was written to the store; the query-side adaptor was dropped "
                        "(retrievers made from now on embed queries as the model does)"
                    )
                    return RevertReport(0, 0.0, str(state_dir), note=note, adaptor_dropped=True)
                note = (
                    f"the fine-tuning state in {state_dir} is {state.status!r}: nothing to restore"
                )
                return RevertReport(0, 0.0, str(state_dir), note=note)
            tol = self.tolerance()
            missing = set(self.adapter._missing(list(state.ids))) if state.ids else set()
            rows = np.array(
                [r for r, i in enumerate(state.ids) if i not in missing], dtype=np.int64
            )
            present = [state.ids[r] for r in rows]
            cur = self.get_vectors(present, state.originals.shape[1])
            ours = state.ours(rows, cur, tol)
            # Records the state moved that read back as original are written anyway: a client
            # with a stale view reads originals where the store holds our vectors.
            is_orig = vectors_match(cur, state.originals[rows], tol=tol) & ~self._stale(
                state, rows, cur, tol
            )
            self.confirm(int(ours.sum()), len(rows), state)
            todo = rows[ours & ~is_orig]
            already = rows[ours & is_orig]
            changed = [state.ids[r] for r in rows[~ours]]
            deleted = [i for i in state.ids if i in missing]
            todo_ids = [state.ids[r] for r in todo]
            self.adapter.write_vectors(
                todo_ids, state.originals[todo], batch_size=self.write_batch_size
            )
            check = np.concatenate([todo, already])
            back = self.get_vectors([state.ids[r] for r in check], state.originals.shape[1])
            good = vectors_match(back, state.originals[check], tol=tol)
            mismatched = [state.ids[r] for r in check[~good]]
            diff = (
                float(np.max(np.abs(back[: len(todo)].astype(np.float64) - state.originals[todo])))
                if len(todo)
                else 0.0
            )
            if self.persist is not None:
                self.persist()
            if not mismatched:
                # Only now: until the originals are in the store (and saved, for a persisted
                # store), the state must stay active so that a crash leaves revert() to finish.
                state.mark(
                    "reverted",
                    n_restored=len(todo),
                    changed_ids=changed,
                    deleted_ids=deleted,
                    max_abs_diff=diff,
                )
        rep = RevertReport(
            n_restored=len(todo) - len(set(mismatched) & set(todo_ids)),
            max_abs_diff=diff,
            state_dir=str(state_dir),
            n_already_original=len(already),
            changed_ids=changed,
            deleted_ids=deleted,
            mismatched_ids=mismatched,
            adaptor_dropped=state.has(ADAPTOR_FILE) and not mismatched,
        )
        logger.info("%s", rep.summary())
        return rep


_TOKEN_PID = re.compile(r"^process:[^:]+:(\d+)-")


def _live_process_owner(identity: str) -> int | None:
    """The pid of the live process whose in-memory store ``identity`` names, else None."""
    m = _TOKEN_PID.match(identity)
    if not m:
        return None
    pid = int(m.group(1))
    if pid == os.getpid():
        return pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        return pid
    return pid


def report_metrics(s_unit: np.ndarray, val: QuerySet, unmoved: BestUnmovedScores) -> MetricMeans:
    """Metrics @10 of the validation queries over the whole store: the fitted records scored
    exactly, every other record through its streamed best scores (never relevant)."""
    const = unmoved.scores[:, :REPORT_K].astype(np.float64)
    s = val.embeddings.astype(np.float64) @ s_unit.T.astype(np.float64)
    allscores = np.concatenate([const, s], axis=1)
    order = np.argsort(-allscores, axis=1, kind="stable")[:, :REPORT_K]
    ranked = np.where(order >= const.shape[1], order - const.shape[1], -1).astype(np.int64)
    return ranking_metrics(ranked, val.indptr, val.rows, val.gains, REPORT_K).mean()
