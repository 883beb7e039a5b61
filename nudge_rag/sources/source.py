"""A resolved SOURCE (:class:`Source`: its store, embedding model and state folder) and what can
be done with it: read its chunks, write training queries for them, evaluate it by exact search,
fine-tune it in place (:class:`SourceRun`), compare before and after, revert.

Imports the standard library only; numpy, the finetuner and the evaluation are imported when
used.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nudge_rag.errors import ConfigError, DatasetError, DimensionMismatchError, StateError
from nudge_rag.sources.chroma import several_collections
from nudge_rag.sources.documents import DEFAULT_CHUNK_CHARS, shell_path

if TYPE_CHECKING:
    from nudge_rag.evaluation import Comparison, EvaluationResult
    from nudge_rag.finetuner import FinetuneReport, NudgeEmbeddingFinetuner, RevertReport
    from nudge_rag.stores import VectorStoreAdapter

__all__ = [
    "PAGE",
    "Kind",
    "Mode",
    "Source",
    "SourceRun",
    "load_state",
    "plot_compared",
    "state_curve",
]

logger = logging.getLogger(__name__)

#: Records read per page.
PAGE = 1000

Kind = Literal["beir", "documents", "llamaindex", "chroma"]
Mode = Literal["build", "open", "read"]


@dataclass
class Source:
    """What a SOURCE resolved to (see :func:`open_source`).

    Attributes:
        kind: ``"beir"``, ``"documents"``, ``"llamaindex"`` or ``"chroma"``.
        path: The SOURCE path.
        store: The object the finetuner takes (None for BEIR, and for documents only read).
        embedder: The embedding model of the store (ours: ``embed_documents`` /
            ``embed_queries``).
        state_dir: Where fine-tuning state is kept by default (beside the store).
        label: A short description for messages.
        store_dir: The folder that holds the store (the Chroma directory, or the LlamaIndex
            persist dir); None for BEIR.
        collection: The Chroma collection name, or the LlamaIndex index id when one was given.
        persist_dir: A LlamaIndex index's folder: the finetuner saves the index there
            (crash-safely) after it writes vectors and after a revert.
        store_id: A name of the store that moves with its folder (the LlamaIndex index id).
        chunk_size: The chunk length a documents source was read with.
    """

    kind: Kind
    path: Path
    store: Any = None
    embedder: Any = None
    state_dir: Path | None = None
    label: str = ""
    store_dir: Path | None = None
    collection: str | None = None
    persist_dir: Path | None = None
    store_id: str | None = None
    chunk_size: int = DEFAULT_CHUNK_CHARS
    _chunks: dict[str, str] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ reading
    def adapter(self) -> VectorStoreAdapter:
        """The store adapter (checked to hold records)."""
        from nudge_rag.stores import adapter_for

        if self.store is None:
            msg = f"the {self.label} has no vector store to read"
            raise ConfigError(msg)
        adapter = adapter_for(self.store)
        if adapter.count() == 0:
            msg = f"empty corpus: the {self.label} holds no records"
            raise DatasetError(msg)
        return adapter

    def chunks(self) -> dict[str, str]:
        """Chunk id -> text (what training queries are written for)."""
        if self._chunks is not None:
            return self._chunks
        if self.kind == "beir":
            from nudge_rag.beir import load_beir

            return load_beir(self.path, qrels=[], check_ids=False).corpus
        out: dict[str, str] = {}
        for page in self.adapter().iter_pages(PAGE, with_documents=True):
            for rid, text in zip(page.ids, page.texts, strict=True):
                if text:
                    out[rid] = text
        if not out:
            msg = f"the {self.label} holds no chunk texts to write queries for"
            raise DatasetError(msg)
        return out

    def generate_queries(
        self,
        llm: Any = None,
        *,
        queries_per_chunk: int = 2,
        max_chunks: int | None = None,
        seed: int = 0,
        show_progress: bool = False,
    ) -> Any:
        """Training queries for this source's chunks (see :func:`nudge_rag.generate_queries`).

        Returns:
            A :class:`~nudge_rag.querygen.GeneratedDataset` (``save_json`` writes LlamaIndex's
            ``EmbeddingQAFinetuneDataset`` JSON).

        Raises:
            DatasetError: No query could be generated.
        """
        from nudge_rag.querygen import generate_queries

        chunks = self.chunks()
        ds = generate_queries(
            chunks,
            llm,
            queries_per_chunk=queries_per_chunk,
            max_chunks=max_chunks,
            seed=seed,
            show_progress=show_progress,
        )
        if not ds.queries:
            msg = f"no query could be generated for the {len(chunks)} chunks of {self.label}"
            raise DatasetError(msg)
        return ds

    def _ranked(
        self, queries: Any, k: int, vectors: dict[str, Any] | None, adaptor: Any = None
    ) -> tuple[list[list[str]], set[str]]:
        """Top-``k`` ids per query vector by exact search with the store's similarity (the
        vectors of ``vectors``' ids replaced by its values; queries through ``adaptor`` when
        given); also every id seen."""
        import numpy as np

        from nudge_rag.core.topk import RunningTopK

        if self.kind == "beir":
            corpus = self.chunks()
            metric = "dot"
            pages: Iterable[tuple[list[str], Any]] = [
                (list(corpus), self.embedder.embed_documents(list(corpus.values())))
            ]
        else:
            adapter = self.adapter()
            metric = adapter.metric
            pages = (
                (list(p.ids), p.embeddings) for p in adapter.iter_pages(PAGE, with_documents=False)
            )
        q = np.asarray(queries, dtype=np.float64)
        if adaptor is not None:
            q = np.asarray(adaptor.transform(q), dtype=np.float64)
        if metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        top = RunningTopK(len(q), k)  # ties: the earlier record first
        ids_all: list[str] = []
        for ids, emb in pages:
            v = np.array(emb, dtype=np.float64)
            if v.shape[0] == 0:
                continue
            if v.shape[1] != q.shape[1]:
                msg = (
                    f"the store holds vectors of width {v.shape[1]} but the embedding model "
                    f"gives {q.shape[1]}: the store was built with another embedding model"
                )
                raise DimensionMismatchError(msg)
            for j, rid in enumerate(ids if vectors is not None else ()):
                if rid in vectors:  # type: ignore[operator]
                    v[j] = vectors[rid]  # type: ignore[index]
            if metric == "cosine":
                v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            s = q @ v.T
            if metric == "l2":
                s = 2 * s - (v * v).sum(axis=1)[None, :]  # -|q - v|^2 up to a per-query constant
            top.update(s)
            ids_all.extend(ids)
        return [[ids_all[i] for i in row] for row in top.rows.tolist()], set(ids_all)

    def evaluate(
        self,
        dataset: Any,
        k: int = 10,
        *,
        name: str = "",
        split: str | None = None,
        vectors: dict[str, Any] | None = None,
        adaptor: Any = None,
    ) -> EvaluationResult:
        """NDCG@k, Recall@k, MRR@k and hit rate of exact search over the source's vectors.

        Args:
            dataset: Judged queries (see :meth:`~nudge_rag.judged.JudgedQueries.from_any`);
                for a BEIR source, its own folder by default.
            k: Cutoff.
            name: A label for the result.
            split: BEIR qrels split.
            vectors: id -> vector to use instead of the stored one (e.g. kept originals).
            adaptor: A query-side :class:`~nudge_rag.core.Adaptor` queries go through (what
                the finetuner's retriever does when ``method="auto"`` chose one; see
                :meth:`adaptor_in_force`).

        Raises:
            DatasetError: No relevant id of the queries is in the store.
        """
        from nudge_rag.evaluation.evaluate import score
        from nudge_rag.judged import JudgedQueries

        data = JudgedQueries.from_any(
            self.path if dataset is None else dataset, name="dataset", split=split
        )
        if data.texts is None:
            msg = "dataset: exact search embeds the query texts; these judged queries have none"
            raise ConfigError(msg)
        texts = sorted(set(data.texts))
        ranked, seen = self._ranked(self.embedder.embed_queries(texts), k, vectors, adaptor)
        relevant = set(data.relevant_ids())
        if not relevant & seen:
            msg = (
                f"none of the {len(relevant)} relevant ids in the queries (e.g. "
                f"{sorted(relevant)[:3]}) is in the {self.label}: the queries' relevant_docs must "
                f"name this store's chunk ids (e.g. {sorted(seen)[:2]})"
            )
            raise DatasetError(msg)
        lookup = dict(zip(texts, ranked, strict=True))
        return score(data, [lookup[t] for t in data.texts], k, name, warn_short=False)

    def compare(
        self,
        dataset: Any,
        k: int = 10,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        split: str | None = None,
    ) -> Comparison:
        """Before (the originals kept in ``state_dir``) against after (the fine-tuned vectors).

        The store is only read: the state's originals and targets stand in for its vectors.

        Raises:
            StateError: ``state_dir`` holds no fine-tuning state.
        """
        from nudge_rag.evaluation import compare

        state = load_state(Path(state_dir) if state_dir is not None else self._state_dir())
        originals = {rid: state.originals[r] for r, rid in enumerate(state.ids)}
        targets = {rid: state.targets[r] for r, rid in enumerate(state.ids)}
        before = self.evaluate(dataset, k, name="before", split=split, vectors=originals)
        after = self.evaluate(
            dataset, k, name="after", split=split, vectors=targets, adaptor=state_adaptor(state)
        )
        return compare(before, after)

    def adaptor_in_force(self, state_dir: str | os.PathLike[str] | None = None) -> Any:
        """The query-side adaptor a fine-tune left in force for this store (None if none)."""
        from nudge_rag.state import FinetuneState

        where = Path(state_dir) if state_dir is not None else self.state_dir
        if where is None or not Path(where).is_dir() or self.kind == "beir":
            return None
        state = FinetuneState.load(where)
        if state is None or state.status not in ("applied", "unchanged"):
            return None
        return state_adaptor(state)

    # ------------------------------------------------------------------ writing
    def finetuner(
        self, state_dir: str | os.PathLike[str] | None = None, **options: Any
    ) -> NudgeEmbeddingFinetuner:
        """A :class:`~nudge_rag.NudgeEmbeddingFinetuner` over this source's store, its state
        beside the store (or in ``state_dir``); ``options`` are the finetuner's own."""
        from nudge_rag.finetuner import NudgeEmbeddingFinetuner

        if self.kind == "beir" or self.store is None:
            msg = (
                "a BEIR folder is never modified (its fine-tuning runs in memory, see "
                "finetune_beir)"
            )
            raise ConfigError(msg)
        return NudgeEmbeddingFinetuner(
            self.store,
            embed_model=self.embedder,
            state_dir=Path(state_dir) if state_dir is not None else self._state_dir(),
            persist_dir=self.persist_dir,
            store_id=self.store_id,
            **options,
        )

    def finetune(
        self,
        train_queries: Any = None,
        *,
        eval_queries: str | os.PathLike[str] | None = None,
        k: int = 10,
        state_dir: str | os.PathLike[str] | None = None,
        method: Literal["auto", "nudge-n", "nudge-m"] = "auto",
        gamma: float | None = None,
        objective: str = "top1",
        seed: int = 0,
        llm: Any = None,
        queries_per_chunk: int = 2,
        max_chunks: int | None = None,
        show_progress: bool = False,
    ) -> SourceRun:
        """Fine-tune the store in place (see :class:`~nudge_rag.NudgeEmbeddingFinetuner`).

        Args:
            train_queries: Training queries (a dataset, its JSON path, or pairs); None: written
                from the chunks by ``llm`` (or the offline generator).
            eval_queries: Held-out judged queries: before vs after at ``k``, exact search.
            k: Cutoff of the held-out evaluation.
            state_dir: Where the originals are kept (default: beside the store).
            method, gamma, objective, seed, llm, queries_per_chunk, max_chunks, show_progress:
                The finetuner's options of the same names.

        Returns:
            A :class:`SourceRun` (its ``report`` is the finetuner's).
        """
        ft = self.finetuner(
            state_dir,
            method=method,
            gamma=gamma,
            objective=objective,
            seed=seed,
            llm=llm,
            queries_per_chunk=queries_per_chunk,
            max_chunks=max_chunks,
            show_progress=show_progress,
        )
        n = self.adapter().count()
        logger.info("fine-tuning %s: %d records", self.label, n)
        ft.finetune(train_queries)
        rep = ft.report
        assert rep is not None
        cmp = None
        if eval_queries is not None and (rep.written or rep.adaptor):
            cmp = self.compare(eval_queries, k, rep.state_dir)
        stats = getattr(ft.generated, "stats", None)
        if isinstance(train_queries, (str, os.PathLike)):
            how = f"queries from {os.fspath(train_queries)}"
        elif train_queries is not None:
            how = "the given queries"
        else:
            how = "queries written by " + (stats.generator if stats is not None else "the LLM")
        return SourceRun(self, rep, how, stats, cmp, eval_queries, Path(rep.state_dir))

    def revert(self, state_dir: str | os.PathLike[str] | None = None) -> RevertReport:
        """Write back the original vectors kept in the state (default: beside the store).

        Returns:
            The finetuner's :class:`~nudge_rag.finetuner.RevertReport`; its ``note`` says why
            nothing was restored when the state says nothing was written or all was reverted.

        Raises:
            StateError: There is no fine-tuning state where it was looked for (the message says
                where): the store cannot be reverted from here.
            ConfigError: A BEIR folder (never modified).
        """
        if self.kind == "beir":
            msg = "a BEIR folder is never modified (its fine-tuning runs in memory): nothing to revert"
            raise ConfigError(msg)
        where = Path(state_dir) if state_dir is not None else self._state_dir()
        load_state(where)  # missing state: an error that says where it looked
        return self.finetuner(where).revert()

    def _state_dir(self) -> Path:
        if self.state_dir is None:
            msg = f"the {self.label} has no default state folder: pass state_dir"
            raise ConfigError(msg)
        return self.state_dir

    def revert_args(self, state_dir: str | os.PathLike[str] | None = None) -> list[str]:
        """Arguments of ``nudge-rag revert`` that reach this store and its state, each a quoted
        shell word: the store's folder, ``--collection`` where the folder holds several, and
        ``--state-dir`` where the state is not in its default place."""
        assert self.store_dir is not None
        args = [shell_path(self.store_dir)]
        if self.kind in ("documents", "chroma") and self.collection is not None:
            if several_collections(self.store_dir):
                args += ["--collection", shlex.quote(self.collection)]
        elif self.kind == "llamaindex" and self.collection is not None:
            args += ["--collection", shlex.quote(self.collection)]
        if state_dir is not None and Path(state_dir).resolve() != self._state_dir().resolve():
            args += ["--state-dir", shell_path(state_dir)]
        return args


def state_adaptor(state: Any) -> Any:
    """The query-side adaptor kept with a state generation, or None."""
    from nudge_rag.core import Adaptor
    from nudge_rag.session import ADAPTOR_FILE

    if not state.has(ADAPTOR_FILE):
        return None
    return Adaptor(state.array(ADAPTOR_FILE).astype("float32"))


def load_state(state_dir: Path) -> Any:
    """The fine-tuning state in ``state_dir``, or StateError saying where it looked."""
    from nudge_rag.state import FinetuneState

    state = FinetuneState.load(state_dir) if state_dir.is_dir() else None
    if state is None:
        msg = (
            f"no fine-tuning state at {str(state_dir)!r}, so nothing can be reverted from it. A "
            "fine-tune that writes vectors keeps the originals there (one that wrote nothing "
            "keeps none: the store is as it was); if it ran with --state-dir DIR, pass the same "
            "--state-dir; if the state folder was deleted, the originals went with it"
        )
        raise StateError(msg)
    return state


def state_curve(state_dir: str | os.PathLike[str]) -> tuple[Any, str | None]:
    """What the γ panel of a plot can show for the fine-tune kept in ``state_dir``:
    ``(report-like object with .curve and .gamma, None)`` when the state keeps the validation
    curve, else ``(None, why there is none)``.

    Raises:
        StateError: ``state_dir`` holds no fine-tuning state.
    """
    from types import SimpleNamespace

    import numpy as np

    from nudge_rag.core import ValidationCurve

    man = load_state(Path(state_dir)).manifest
    gamma, objective, n_val = man.get("gamma"), man.get("objective", "?"), man.get("n_val") or 0
    c = man.get("curve")
    if isinstance(c, dict) and c.get("gammas"):
        curve = ValidationCurve(
            gammas=np.asarray(c["gammas"], dtype=np.float64),
            scores=np.asarray(c["scores"], dtype=np.float64),
            objective=str(c.get("objective", objective)),
            n_queries=int(c.get("n_queries", n_val)),
        )
        return SimpleNamespace(curve=curve, gamma=gamma), None
    if gamma is None:
        return None, "the state records no γ and no validation curve"
    if not n_val:
        return None, f"γ = {gamma:.3g} was fixed: no validation curve"
    return None, (
        f"γ = {gamma:.3g} chosen by {objective} on {n_val} validation queries; the state keeps "
        "no validation curve (finetune --out writes it in its report)"
    )


def plot_compared(
    cmp: Comparison, path: str | os.PathLike[str], state_dir: str | os.PathLike[str]
) -> Path:
    """:func:`~nudge_rag.evaluation.plot_comparison` of ``cmp`` with the γ panel of the
    fine-tune kept in ``state_dir`` (its validation curve, or a title saying why there is none).
    """
    from nudge_rag.evaluation import plot_comparison

    curve, why = state_curve(state_dir)
    return plot_comparison(cmp.before, cmp.after, curve, path, curve_note=why)


@dataclass(frozen=True)
class SourceRun:
    """What :meth:`Source.finetune` did.

    Attributes:
        source: The source fine-tuned.
        report: The finetuner's :class:`~nudge_rag.FinetuneReport`.
        how: Where the training queries came from.
        generation: Query generation statistics (None when queries were given).
        evaluation: Held-out before/after comparison (None without ``eval_queries``, or when
            nothing was written).
        eval_queries: The held-out queries file, if any.
        state_dir: The state folder used.
    """

    source: Source
    report: FinetuneReport
    how: str
    generation: Any
    evaluation: Comparison | None
    eval_queries: str | os.PathLike[str] | None
    state_dir: Path

    def summary(self) -> str:
        """Readable lines: what was fine-tuned, the report, the held-out comparison."""
        rep, src = self.report, self.source
        lines = [f"Fine-tuned {src.label}: {rep.n_records} records, {self.how}."]
        st = self.generation
        if st is not None:
            lines.append(
                f"generated {st.n_queries} training queries for {st.n_chunks} chunks "
                f"({st.generator}; {st.n_failed} failed) in {st.seconds:.1f}s"
            )
        lines.append(rep.summary())
        if rep.written:
            if src.persist_dir is not None:
                lines.append(f"index persisted to {src.persist_dir} (crash-safe)")
            lines.append(f"state (originals, for revert) in {rep.state_dir}")
        if self.evaluation is not None:
            lines += [f"\nheld-out queries from {self.eval_queries}:", self.evaluation.table()]
        elif self.eval_queries is not None:
            lines.append("nothing was written: no before/after evaluation")
        return "\n".join(lines)

    def revert_command(self, prog: str = "nudge-rag") -> str:
        """The command that undoes this run, ready to paste (paths quoted for the shell)."""
        return " ".join([prog, "revert", *self.source.revert_args(self.state_dir)])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values."""
        out: dict[str, Any] = {
            "source": str(self.source.path),
            "kind": self.source.kind,
            "report": self.report.to_dict(),
        }
        if self.evaluation is not None:
            out["evaluation"] = self.evaluation.to_dict()
        return out
