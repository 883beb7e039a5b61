"""`NudgeEmbeddingFinetuner`: NUDGE on the vectors inside a LlamaIndex or LangChain vector store.

The data path::

    store ──read page by page──▶ records that training queries answer (kept)
                                 every other record ──▶ best scores per validation query (streamed)
    training queries ──query-side embedding──▶ NUDGE (γ chosen on validation) ──▶ moved vectors
    journal (originals first) ──▶ write back in place, same ids ──▶ the framework's own retriever

Memory is a page of the store plus the records training queries point to; the store's size does
not matter. Texts, metadata and ids are never written; only the vectors of moved records are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nudge_rag._faults import checkpoint
from nudge_rag._util import check_positive_int, run_sync
from nudge_rag.auto import ChoosesMethod, Probes
from nudge_rag.core import (
    NudgeM,
    NudgeN,
    QuerySet,
    normalize_rows,
)
from nudge_rag.errors import (
    ConfigError,
    DimensionMismatchError,
    MetricError,
)
from nudge_rag.feedback import FeedbackLog
from nudge_rag.integrations import Pipeline, resolve_pipeline
from nudge_rag.integrations.options import retriever_options
from nudge_rag.judged import JudgedQueries, TrainingPairs, as_training_pairs
from nudge_rag.learning import LearnsFromUse
from nudge_rag.reports import FinetuneReport, RevertReport
from nudge_rag.session import StoreSession, report_metrics
from nudge_rag.state import (
    FolderBackend,
    StateBackend,
)
from nudge_rag.state.places import backend_for, user_state_dir
from nudge_rag.stores import StoreIdentity, VectorStoreAdapter, adapter_for

if TYPE_CHECKING:
    from nudge_rag.integrations.base import Retriever
    from nudge_rag.querygen import GeneratedDataset

__all__ = ["FinetuneReport", "NudgeEmbeddingFinetuner", "RevertReport", "as_training_pairs"]
# as_training_pairs: nudge_rag.judged's, importable from here as before

logger = logging.getLogger(__name__)

Method = Literal["auto", "nudge-n", "nudge-m"]
#: Median cosine between stored vectors and the model's embedding of their texts below which
#: the model is taken for another one (a header of metadata in the embedded text costs ~0.1;
#: another model of the same width gives ~0).
MODEL_CHECK_COSINE = 0.5
#: ``unmoved="auto"`` pushes the unmoved pass down to the store's search from this size on.
AUTO_SEARCH_RECORDS = 50_000


# ---------------------------------------------------------------------------------------------
# The finetuner
# ---------------------------------------------------------------------------------------------
@dataclass
class NudgeEmbeddingFinetuner(LearnsFromUse, ChoosesMethod):
    """Fine-tune the embeddings stored in an existing index or vector store, in place.

    Example:
        >>> ft = NudgeEmbeddingFinetuner(index)                        # doctest: +SKIP
        >>> retriever = ft.finetune([("what is X?", ["node-id-1"]), ...])  # doctest: +SKIP
        >>> print(ft.report.summary())                                 # doctest: +SKIP
        >>> ft.revert()                       # the store is exactly as before  # doctest: +SKIP

    Args:
        store: A LlamaIndex ``VectorStoreIndex`` or vector store, a LangChain ``VectorStore``, a
            chromadb ``Collection``, or a :class:`~nudge_rag.stores.VectorStoreAdapter`.
        embed_model: The model that embedded the records (needed only when ``store`` carries
            none: a bare LlamaIndex vector store, a chromadb collection). Training queries are
            embedded with its query-side call.
        method: ``"auto"`` (default): held-out questions decide between NUDGE-N on the
            records, a query-side linear adaptor (the returned retriever embeds queries through
            it; the stored vectors are not touched by it), both, or nothing, with the loss on
            records no training question points to bounded (see :mod:`nudge_rag.core.choose`
            and docs/methods.md, "Which method when"); ``"nudge-n"`` (NUDGE-N only, γ chosen by
            ``objective``; unit vectors, safe on every store) or ``"nudge-m"`` (inner-product
            stores only). With ``gamma`` fixed, ``"auto"`` is ``"nudge-n"``.
        gamma: Fix γ and skip its selection.
        objective: What γ is chosen by: ``"top1"`` (the paper) or ``"ndcg@k"``.
        val_fraction: Share of training queries held out to choose γ (only queries whose records
            keep a training query are held out).
        refit: After choosing γ on the held-out queries, fit the move that is written on training
            + validation queries together (default True: on SciFact over 8 random splits this
            adds 1.5 NDCG@10 points on average, on NFCorpus it is neutral).
        seed: Seed of the validation split.
        similarity_top_k: ``k`` of the retriever handed back (framework default when None).
        store_id: A name for the store that outlives this process, for stores that have no
            identity of their own (in-memory stores loaded from files): the state of a store is
            found by its identity, so the same name finds the same state after a restart. Default:
            the store's own identity (Chroma collection id, Qdrant location + collection), the
            path of ``persist_dir``, or, for an in-memory store, a token for this process only.
        persist_dir: Where the store is saved (a LlamaIndex index's persist dir, a LangChain
            FAISS folder, an InMemoryVectorStore dump file): after writing vectors and after a
            revert the store is saved there crash-safely (:func:`nudge_rag.persist.save_store`);
            also names the store when ``store_id`` is not given.
        state_dir: Where originals and the journal live. Default: a folder per store identity in
            the per-user data folder (:func:`nudge_rag.state.default_state_home`; a temporary
            folder for stores that live only in this process); never the working directory.
        lock_timeout: How long to wait for another fine-tune or revert of the same store: ``0``
            (default) raises :class:`~nudge_rag.errors.StoreBusyError` at once, ``None`` waits
            for it to finish, a number waits up to that many seconds.
        check_model: Before anything is written, embed a few stored chunks' texts with the
            embedding model and compare with their stored vectors: a model other than the one
            that built the store (another model of the same width) is refused, since NUDGE would
            move records toward queries embedded in another space.
        unmoved: How γ selection learns the best scores of the records that do not move:
            ``"scan"`` reads every vector once, page by page; ``"search"`` asks the store's own
            top-k search for each validation query, leaving out the fitted records, and reads
            only the fitted records by id (cost independent of the store's size; on an HNSW/IVF
            index the scores are approximate); ``"auto"`` (default) searches on stores of
            ``AUTO_SEARCH_RECORDS`` records or more. The report says which ran.
        page_size: Records read per page.
        write_batch_size: Records written per call to the store.
        max_concurrency: Queries embedded concurrently.
        show_progress: Show progress bars (tqdm) while reading and writing.
        llm: Writes training queries when :meth:`finetune` gets none: a LlamaIndex LLM, a
            LangChain chat model / Runnable, or a (sync or async) callable ``prompt -> str``.
            ``None``: the offline generator (no model; see :mod:`nudge_rag.querygen`).
        queries_per_chunk: Queries written per chunk.
        max_chunks: Write queries for a seeded sample of this many chunks only.
        query_cache: JSONL file that makes query generation resumable (LLM only).
    """

    store: Any
    embed_model: Any = None
    method: Method = "auto"
    gamma: float | None = None
    objective: str = "top1"
    val_fraction: float = 0.2
    refit: bool = True
    seed: int = 0
    similarity_top_k: int | None = None
    store_id: str | None = None
    persist_dir: str | os.PathLike[str] | None = None
    state_dir: str | os.PathLike[str] | None = None
    lock_timeout: float | None = 0.0
    check_model: bool = True
    unmoved: Literal["auto", "scan", "search"] = "auto"
    page_size: int = 1000
    write_batch_size: int = 500
    max_concurrency: int = 16
    show_progress: bool = False
    llm: Any = None
    queries_per_chunk: int = 2
    max_chunks: int | None = None
    query_cache: str | os.PathLike[str] | None = None
    report: FinetuneReport | None = field(default=None, init=False, repr=False)
    generated: GeneratedDataset | None = field(default=None, init=False, repr=False)
    _adapter: VectorStoreAdapter = field(init=False, repr=False)
    _pipeline: Pipeline | None = field(default=None, init=False, repr=False)
    _feedback: FeedbackLog | None = field(default=None, init=False, repr=False)
    _backend: StateBackend | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in ("auto", "nudge-n", "nudge-m"):
            msg = f"method must be 'auto', 'nudge-n' or 'nudge-m'; received {self.method!r}"
            raise ConfigError(msg)
        for name in ("page_size", "write_batch_size", "max_concurrency"):
            check_positive_int(getattr(self, name), name)
        if self.similarity_top_k is not None:
            check_positive_int(self.similarity_top_k, "similarity_top_k")
        if self.unmoved not in ("auto", "scan", "search"):
            msg = f"unmoved must be 'auto', 'scan' or 'search'; received {self.unmoved!r}"
            raise ConfigError(msg)
        if self.store_id is not None and (not isinstance(self.store_id, str) or not self.store_id):
            msg = f"store_id must be a non-empty str or None; received {self.store_id!r}"
            raise ConfigError(msg)
        if self.lock_timeout is not None and (
            isinstance(self.lock_timeout, bool)
            or not isinstance(self.lock_timeout, int | float)
            or self.lock_timeout < 0
        ):
            msg = f"lock_timeout must be a number >= 0 or None; received {self.lock_timeout!r}"
            raise ConfigError(msg)
        self._model()  # validates gamma / objective / val_fraction now, not after reading
        self._adapter = adapter_for(self.store)
        if self.method == "nudge-m" and self._adapter.metric != "dot":
            msg = (
                f"NUDGE-M gives vectors of different lengths that must be ranked by inner product, "
                f"but this {self._adapter.name} store ranks by {self._adapter.metric}"
                + (" and renormalises what is written" if self._adapter.normalizes_on_write else "")
                + ", which would silently change what NUDGE-M computed. Use method='nudge-n' "
                "(unit vectors: safe on cosine, dot and L2 stores alike), or a store created with "
                "inner-product distance."
            )
            raise MetricError(msg)

    # ------------------------------------------------------------------ public API
    def finetune(
        self,
        train_queries: Any = None,
        *,
        similarity_top_k: int | None = None,
        retriever_kwargs: Mapping[str, Any] | None = None,
        method: Method | None = None,
    ) -> Retriever | None:
        """Fine-tune the stored vectors on ``train_queries`` and return a retriever.

        Args:
            train_queries: ``[(query text, [record id, ...]), ...]``, a dataset with ``queries``
                and ``relevant_docs`` (ids are the store's record ids: node ids / document ids),
                or the path of its JSON file. ``None``: write them from the stored chunks with
                ``llm`` (or the offline generator) first; see :meth:`agenerate_queries`.
            similarity_top_k: ``k`` of the returned retriever (overrides the constructor's).
            retriever_kwargs: Passed to the framework's ``as_retriever`` (see :meth:`retriever`).
            method: This run's method instead of the constructor's (``"nudge-m"`` only if the
                constructor's is ``"nudge-m"``: the store's metric was checked for it).

        Returns:
            The framework's own retriever over the fine-tuned store (LlamaIndex
            ``BaseRetriever`` / LangChain ``VectorStoreRetriever``); the adapter itself for a
            store with no framework (a chromadb collection); ``None`` for a bare LlamaIndex store
            that keeps no texts (pass its ``VectorStoreIndex`` to get a retriever).
            :attr:`report` says what happened.
        """
        return run_sync(
            self.afinetune(
                train_queries,
                similarity_top_k=similarity_top_k,
                retriever_kwargs=retriever_kwargs,
                method=method,
            )
        )

    async def afinetune(
        self,
        train_queries: Any = None,
        *,
        similarity_top_k: int | None = None,
        retriever_kwargs: Mapping[str, Any] | None = None,
        method: Method | None = None,
    ) -> Retriever | None:
        """Async twin of :meth:`finetune`, for applications that already run an event loop."""
        run_method = self.method if method is None else method
        if run_method not in ("auto", "nudge-n", "nudge-m") or (
            run_method == "nudge-m" and self.method != "nudge-m"
        ):
            msg = f"method must be 'auto' or 'nudge-n' (or the constructor's); received {method!r}"
            raise ConfigError(msg)
        k, options = retriever_options(  # wrong options fail here, not after the write
            self._resolve().framework, similarity_top_k, retriever_kwargs, where="retriever_kwargs"
        )
        if train_queries is None:
            train_queries = await self.agenerate_queries()
        pairs = JudgedQueries.from_any(train_queries, name="train_queries").to_pairs()
        pipe = self._resolve()
        pairs = await asyncio.to_thread(self._expand_ids, pairs, pipe)
        if self.check_model:
            await self._check_model(pipe, sorted({i for _, ans in pairs for i in ans}))
        times: dict[str, float] = {}
        t = time.perf_counter()
        q = np.asarray(await pipe.embed_queries([p[0] for p in pairs]))
        times["embed"] = time.perf_counter() - t
        probes = None
        if run_method == "auto" and self.gamma is None:
            t = time.perf_counter()
            probes = await self._probes(pipe, pairs)
            times["probes"] = time.perf_counter() - t
        self.report = await asyncio.to_thread(
            self._finetune_locked, pairs, q, times, run_method, probes
        )
        logger.info("%s", self.report.summary())
        retriever = self.retriever(k, **options)
        if retriever is None:
            logger.warning(
                "the %s store keeps no texts (they live in the index's docstore): the vectors are "
                "fine-tuned, but a retriever needs the VectorStoreIndex; pass the index instead",
                self._adapter.name,
            )
        return retriever

    def _finetune_locked(
        self,
        pairs: TrainingPairs,
        q: np.ndarray,
        times: dict[str, float],
        method: str,
        probes: Probes | None = None,
    ) -> FinetuneReport:
        """Everything that reads or writes the store or its state, under the store's lock."""
        if method == "auto" and self.gamma is None:
            return self._finetune_auto(pairs, q, times, probes)
        s_ids = sorted({i for _, ans in pairs for i in ans})
        pos = {i: r for r, i in enumerate(s_ids)}
        queries = QuerySet(q, [{pos[i]: g for i, g in ans.items()} for _, ans in pairs])
        model = self._model()
        if self.gamma is None:
            train, val = self._split(model, queries)  # update(): users hold out
        else:
            train, val = queries, None
        session = self._session()
        ident, state_dir = session.identity, session.state_dir
        with session.lock(self.lock_timeout):
            state = session.load_state()
            t = time.perf_counter()
            mode = self._unmoved_mode()
            reader = session.read_scan if mode == "scan" else session.read_by_id
            read = reader(s_ids, val, state, q.shape[1], model.unmoved_k)
            times["read"] = time.perf_counter() - t
            checkpoint("finetune.read")

            t = time.perf_counter()
            unit = normalize_rows(read.s_vecs, name="stored vectors")
            res = model.fit_partial(
                unit,
                np.arange(len(s_ids)),
                train,
                val,
                read.unmoved,
                n_records=len(s_ids),
            )
            before = after = None
            if val is not None and read.unmoved is not None:
                after_vecs = unit.copy()
                after_vecs[res.moved] = res.moved_embeddings
                before = report_metrics(unit, val, read.unmoved)
                after = report_metrics(after_vecs, val, read.unmoved)
            if self.refit and val is not None and res.gamma > 0:
                # γ is chosen and measured on held-out queries; the move that is written then
                # uses every query (the validation ones too), at that γ.
                fixed, curve = self._model(gamma=res.gamma), res.curve
                res = fixed.fit_partial(
                    unit,
                    np.arange(len(s_ids)),
                    QuerySet.concat(train, val),
                    None,
                    None,
                    n_records=len(s_ids),
                )
                res = replace(res, curve=curve, n_val=len(val), refit=True)
            times["fit"] = time.perf_counter() - t
            checkpoint("finetune.fit")

            moved_ids = [s_ids[r] for r in res.moved]
            note = ""
            worse = ""
            if before is not None and after is not None and after.ndcg < before.ndcg - 1e-12:
                worse = (
                    f"the chosen γ={res.gamma:.4g} would lower held-out NDCG@10 "
                    f"({before.ndcg:.4f} -> {after.ndcg:.4f}), so the store keeps its original vectors"
                )
            if res.gamma == 0 or not moved_ids or worse:
                note = worse or (
                    "validation preferred γ = 0: no move improved the held-out queries, so the "
                    "store keeps its original vectors"
                )
                moved_ids, new = [], np.zeros((0, read.dim))
            else:
                new = res.moved_embeddings.astype(np.float64)

            t = time.perf_counter()
            restored = session.write(
                state,
                read,
                moved_ids,
                new,
                pos,
                {
                    "gamma": res.gamma,
                    "method": "nudge-m" if self.method == "nudge-m" else "nudge-n",
                    "objective": self.objective,
                    "n_train": res.n_train,
                    "n_val": res.n_val,
                    "refit": res.refit,
                    "model": self._pipeline.model_name if self._pipeline is not None else "",
                    "curve": None
                    if res.curve is None
                    else {
                        "gammas": np.asarray(res.curve.gammas).tolist(),
                        "scores": np.asarray(res.curve.scores).tolist(),
                        "objective": res.curve.objective,
                        "n_queries": res.curve.n_queries,
                    },
                },
            )
            times["write"] = time.perf_counter() - t
        if (moved_ids or restored) and session.identity_note():
            note = (note + "\n" if note else "") + session.identity_note()
        return FinetuneReport(
            method="nudge-m" if self.method == "nudge-m" else "nudge-n",
            gamma=res.gamma if moved_ids else 0.0,
            n_records=read.n_records,
            n_moved=len(moved_ids),
            moved_ids=moved_ids,
            n_train=res.n_train,
            n_val=res.n_val,
            curve=res.curve,
            before=before,
            after=after,
            written=bool(moved_ids or restored),
            note=note,
            seconds=times,
            state_dir=str(state_dir),
            store_id=ident.key,
            adopted_ids=read.adopted,
            deleted_ids=read.deleted,
            restored_ids=restored,
            unmoved=mode if val is not None else "none",
            n_written=session.n_written,
        )

    async def agenerate_queries(self) -> GeneratedDataset:
        """Write training queries for the stored chunks (``llm``, or the offline generator).

        Chunk ids are read first (vectors and texts are not kept), a seeded sample of
        ``max_chunks`` is drawn if set, and only the sampled chunks' texts are fetched. The
        result (a :class:`~nudge_rag.querygen.GeneratedDataset`) is kept in :attr:`generated`.
        """
        from nudge_rag.querygen import agenerate_queries
        from nudge_rag.querygen.filter import check_generated
        from nudge_rag.querygen.generate import sample_chunks

        def read() -> dict[str, str]:
            ids = [
                i
                for p in self._adapter.iter_pages(self.page_size, with_documents=False)
                for i in p.ids
            ]
            self._check_sample(len(ids))
            chosen = sample_chunks(ids, self.max_chunks, self.seed)
            texts: dict[str, str] = {}
            for start in range(0, len(chosen), self.page_size):
                page = self._adapter.get(chosen[start : start + self.page_size])
                for rid, text in zip(page.ids, page.texts, strict=True):
                    if text:
                        texts[rid] = text
            if not texts:
                msg = (
                    f"the {self._adapter.name} store holds no chunk texts to write queries for; "
                    "pass train_queries (or the VectorStoreIndex whose docstore has the texts)"
                )
                raise ConfigError(msg)
            return texts

        chunks = await asyncio.to_thread(read)
        llm = self.llm
        if llm is None:
            pipe = self._pipeline_or_none()
            llm = pipe.default_llm if pipe is not None else None  # LlamaIndex Settings.llm
            if llm is not None:
                logger.info("writing training queries with Settings.llm (%s)", type(llm).__name__)
        cache = self.query_cache
        if cache is None and llm is not None:
            # LLM calls cost money: keep their answers with the store's state, so that a second
            # finetune() (or one after a crash) pays only for chunks it has not seen.
            cache = self.state_path / "queries.jsonl"
            cache.parent.mkdir(parents=True, exist_ok=True)
        generated: GeneratedDataset = await agenerate_queries(
            chunks,
            llm,
            queries_per_chunk=self.queries_per_chunk,
            seed=self.seed,
            max_concurrency=self.max_concurrency,
            cache_path=None if cache is None else str(cache),
            show_progress=self.show_progress,
        )
        check_generated(generated, len(chunks))
        self.generated = generated
        return generated

    def retriever(self, similarity_top_k: int | None = None, **kwargs: Any) -> Retriever | None:
        """The framework's own retriever over the (fine-tuned) store.

        Args:
            similarity_top_k: ``k`` (default: the constructor's, else the framework's).
            **kwargs: Passed to the framework's ``as_retriever``: LlamaIndex ``filters``,
                ``vector_store_query_mode``, ...; LangChain ``search_type`` and
                ``search_kwargs`` (``filter``, ``score_threshold``, ``fetch_k``). The top-k may
                also be given as ``k=`` or (LangChain) ``search_kwargs={"k": ...}``.

        Raises:
            ConfigError: An option the framework does not take, or top-k spellings that
                disagree (:func:`~nudge_rag.integrations.options.retriever_options`).
        """
        pipe = self._resolve()
        k, kwargs = retriever_options(pipe.framework, similarity_top_k, kwargs)
        k = k if k is not None else self.similarity_top_k
        if pipe.make_retriever is None:
            return self._adapter
        adaptor = self.adaptor() if pipe.adapts_queries else None
        if adaptor is not None:
            kwargs["adaptor"] = adaptor
        made: Retriever | None = pipe.make_retriever(k, **kwargs)
        return made

    async def aembed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` with the pipeline's query-side call (what training queries and
        :func:`~nudge_rag.evaluate` on a store with no framework use): ``(n, d)``."""
        return np.asarray(await self._resolve().embed_queries(list(texts)))

    def revert(self) -> RevertReport:
        """Write the original vectors back wherever the store still holds one we wrote.

        Records the user changed since the fine-tune (re-embedded, edited) are left as they are,
        and records deleted since are skipped; both are named in the report and never block the
        others. What is written is read back and compared with the originals. Works after a
        process restart (the originals are on disk in the state folder), after a write that was
        cut short, and after a revert that was; reverting twice is harmless.
        """
        return self._session().revert(self.lock_timeout)

    # ------------------------------------------------------------------ identity and state
    @property
    def identity(self) -> StoreIdentity:
        """Which store this is: ``store_id``, else ``persist_dir``, else the store's own."""
        if self.store_id is not None:
            return StoreIdentity(f"user:{self.store_id}", True)
        if self.persist_dir is not None:
            return StoreIdentity(f"path:{os.path.realpath(self.persist_dir)}", True)
        return self._adapter.identity()

    @property
    def state_backend(self) -> StateBackend:
        """Where this store's state (originals, journal, lock, feedback log) lives.

        With the store wherever it has a place for it (see :func:`nudge_rag.state.places.backend_for`):
        a table in its PostgreSQL database, a companion collection on its server, a folder inside
        or beside its files (``persist_dir``, a Chroma folder, ...). ``state_dir=`` names a folder
        instead; a store with no place of its own (in memory) uses :attr:`state_path`.
        """
        if self._backend is None:
            self._backend = backend_for(
                self._adapter,
                self.identity,
                state_dir=self.state_dir,
                persist_dir=self.persist_dir,
                legacy=self._legacy_path(),
                lock_timeout=self.lock_timeout,
            )
        return self._backend

    @property
    def state_path(self) -> Path:
        """The local folder of this store's state: its state folder when the state is kept in
        a folder, else the per-user folder that holds local caches (LLM answers)."""
        be = self.state_backend
        if isinstance(be, FolderBackend):
            return be.directory
        return self._legacy_path()

    def _legacy_path(self) -> Path:
        """The per-user folder of this store (where every state lived before 0.2)."""
        return user_state_dir(self.identity, self.state_dir)

    def _session(self) -> StoreSession:
        persist = None
        if self.persist_dir is not None:
            from nudge_rag.persist import save_store

            store, where = self.store, self.persist_dir

            def persist() -> None:
                save_store(store, where)

        return StoreSession(
            self._adapter,
            self.identity,
            self.state_backend,
            page_size=self.page_size,
            write_batch_size=self.write_batch_size,
            show_progress=self.show_progress,
            persist=persist,
        )

    # ------------------------------------------------------------------ internals
    def _model(self, gamma: float | None = None) -> NudgeN | NudgeM:
        """The core model that chooses γ (refit is done here, so that the report is held out)."""
        cls = NudgeM if self.method == "nudge-m" else NudgeN
        return cls(
            gamma=self.gamma if gamma is None else gamma,
            objective=self.objective,
            val_fraction=self.val_fraction,
            seed=self.seed,
        )

    def _resolve(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = resolve_pipeline(
                self.store, self.embed_model, max_concurrency=self.max_concurrency
            )
        return self._pipeline

    def _pipeline_or_none(self) -> Pipeline | None:
        try:
            return self._resolve()
        except ConfigError:
            return None

    def __repr__(self) -> str:
        return (
            f"NudgeEmbeddingFinetuner(store={self._adapter.name!r}, method={self.method!r}, "
            f"gamma={self.gamma!r}, store_id={self.identity.key!r})"
        )

    def _expand_ids(self, pairs: TrainingPairs, pipe: Pipeline) -> TrainingPairs:
        """Answer ids that are not record ids but stand for several (LlamaIndex source document
        ids, ``ref_doc_id``) become the ids of their records, with the same grade."""
        if pipe.expand_ids is None:
            return pairs
        named = sorted({i for _, ans in pairs for i in ans})
        missing = self._adapter._missing(named)
        if not missing:
            return pairs
        expanded = pipe.expand_ids(missing)
        if not expanded:
            return pairs
        logger.info("%d source document id(s) stand for their nodes", len(expanded))
        out: TrainingPairs = []
        for text, ans in pairs:
            grades: dict[str, float] = {}
            for rid, g in ans.items():
                for node in expanded.get(rid, [rid]):
                    grades[node] = max(grades.get(node, 0.0), g)
            out.append((text, grades))
        return out

    async def _check_model(self, pipe: Pipeline, ids: list[str], n: int = 8) -> None:
        """Refuse an embedding model that is not the one that built the store.

        A few records the queries answer are re-embedded from their stored text with the
        document-side call; their stored vectors (originals, where a fine-tune moved them) must
        point the same way. Another model of the same width gives unrelated directions.
        """
        if pipe.embed_documents is None or not ids:
            return
        sample = (
            ids[: max(1, n)]
            if len(ids) <= n
            else [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n)]
        )
        absent = set(self._adapter._missing(sample))  # named by _read, with the whole list
        sample = [i for i in sample if i not in absent]
        if not sample:
            return
        page = await asyncio.to_thread(self._adapter.get, sample)
        have = [(j, t) for j, t in enumerate(page.texts) if t]
        if not have:
            return
        stored = np.asarray(page.embeddings, dtype=np.float64)[[j for j, _ in have]]
        state = self._session().load_state()
        if state is not None and state.active:
            rows = state.row_of()
            for k, (j, _) in enumerate(have):
                r = rows.get(page.ids[j])
                if r is not None:
                    stored[k] = state.originals[r]
        emb = np.asarray(await pipe.embed_documents([t for _, t in have]), dtype=np.float64)
        if emb.shape != stored.shape:
            msg = (
                f"the {self._adapter.name} store holds vectors of width {stored.shape[1]} but the "
                f"embedding model gives {emb.shape[-1]}: is embed_model ({pipe.model_name}) the "
                "one that built the store?"
            )
            raise DimensionMismatchError(msg)
        en = np.linalg.norm(emb, axis=1)
        sn = np.linalg.norm(stored, axis=1)
        cos = np.sum(emb * stored, axis=1) / np.maximum(en * sn, 1e-30)  # a zero row: 0
        median = float(np.median(cos))
        if median < MODEL_CHECK_COSINE:
            msg = (
                f"the embedding model ({pipe.model_name}) does not look like the model that built "
                f"the {self._adapter.name} store: re-embedding {len(have)} stored chunks gives "
                f"vectors at median cosine {median:.2f} from the stored ones (the same model "
                f"gives ~1.0). Training queries embedded by another model would move records "
                "the wrong way: pass the store's own model as embed_model (or check_model=False "
                "if its stored texts are not what was embedded)"
            )
            raise ConfigError(msg)

    def _unmoved_mode(self) -> str:
        """``scan`` or ``search`` for this run (``auto``: search on a large store)."""
        if self.unmoved != "auto":
            return self.unmoved
        return "search" if self._adapter.count() >= AUTO_SEARCH_RECORDS else "scan"
