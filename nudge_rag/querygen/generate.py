"""Training queries from stored chunks: any LLM, concurrent, resumable; offline without one.

Example:
    >>> async def my_llm(prompt: str) -> str:
    ...     return '["What does NUDGE move?", "Why are record vectors moved?"]'
    >>> ds = generate_queries({"c1": "NUDGE moves record vectors toward their queries."},
    ...                       llm=my_llm, queries_per_chunk=2)
    >>> list(ds.queries.values()), ds.relevant_docs["c1#0"]
    (['What does NUDGE move?', 'Why are record vectors moved?'], ['c1'])
    >>> ds.stats.n_queries, ds.stats.n_failed
    (2, 0)

What an LLM answers is not trusted: an answer is read inside the per-call timeout (parsing and
cleaning run in a worker thread, in the same awaited unit as the call), is cut to
:data:`~nudge_rag.querygen.parsing.MAX_ANSWER_CHARS` first, and must be text; a request the
provider refuses (HTTP 400 / 401 / 403, ``AuthenticationError`` ...) ends the run at once with
:class:`~nudge_rag.errors.LLMRequestError` instead of being retried; a cache line that cannot be
written is logged and counted, and the chunk's questions are kept. ``stats.rejected`` and
``stats.dropped`` count what was refused, by reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from nudge_rag._util import (
    check_non_negative,
    check_non_negative_int,
    check_positive_int,
    progress_bar,
    run_sync,
    run_workers,
)
from nudge_rag.errors import (
    ConfigError,
    LLMRequestError,
    QueryGenerationError,
    UnusableAnswerError,
)
from nudge_rag.judged import QADataset
from nudge_rag.querygen.cache import QueryCache, config_hash
from nudge_rag.querygen.filter import RoundTrip, RoundTripReport, round_trip_ranks
from nudge_rag.querygen.llm import (
    as_async_llm,
    describe_llm,
    request_error_status,
    run_in_daemon_thread,
)
from nudge_rag.querygen.offline import OfflineGenerator
from nudge_rag.querygen.parsing import MAX_ANSWER_CHARS, clean_questions, parse_questions
from nudge_rag.querygen.prompts import DEFAULT_PROMPT, check_prompt, render_prompt

__all__ = [
    "GeneratedDataset",
    "GenerationStats",
    "QueryGenerationError",
    "agenerate_queries",
    "generate_queries",
    "sample_chunks",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationStats:
    """How a generation run went.

    Attributes:
        generator: ``"offline"``, or a description of the LLM.
        n_chunks: Chunks queries were asked for (after the ``max_chunks`` sample).
        n_cached: Of those, chunks answered from the cache (no LLM call).
        n_generated: Chunks generated in this run.
        n_failed: Chunks that failed after their retries (skipped).
        n_queries: Queries in the dataset.
        n_dropped: Parsed questions dropped by cleaning (duplicates, too short or too long,
            copies); ``sum(dropped.values())``.
        n_short: Chunks that got fewer than ``queries_per_chunk`` queries.
        llm_calls: LLM calls made, retries included.
        retries: Calls that were retries.
        seconds: Wall time of the run.
        failures: chunk id -> last error, for failed chunks.
        round_trip: Result of the round-trip check, if one was asked for.
        dropped: Questions dropped, by reason: ``"too_short"``, ``"too_long"`` (over
            :data:`~nudge_rag.querygen.parsing.MAX_QUESTION_CHARS`), ``"duplicate"``,
            ``"near_duplicate"``, ``"copy"`` (of the chunk), ``"extra"`` (beyond
            ``queries_per_chunk``).
        rejected: LLM calls that gave no usable answer, by reason: ``"timeout"``, ``"error"``
            (an exception, retried), ``"request_error"`` (refused by the provider, not retried),
            ``"not_text"`` (``None``, bytes, an object without text), ``"no_question"`` (text
            with no usable question). Their sum is ``llm_calls - n_generated`` for a run that
            was not stopped.
        n_truncated: Answers longer than :data:`~nudge_rag.querygen.parsing.MAX_ANSWER_CHARS`,
            cut to it before parsing.
        cache_errors: Finished chunks whose cache line could not be written (their questions
            are in the dataset; a later run asks for them again).
    """

    generator: str
    n_chunks: int
    n_cached: int
    n_generated: int
    n_failed: int
    n_queries: int
    n_dropped: int
    n_short: int
    llm_calls: int
    retries: int
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)
    round_trip: RoundTripReport | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    n_truncated: int = 0
    cache_errors: int = 0

    @property
    def chunks_per_second(self) -> float:
        return (self.n_generated / self.seconds) if self.seconds > 0 else float("nan")


class GeneratedDataset(QADataset):
    """Generated queries as :class:`~nudge_rag.judged.JudgedQueries`, with the run's stats.

    ``corpus`` holds every chunk passed in (all of them are candidates at retrieval time), and
    ``queries`` / ``relevant_docs`` the generated questions, each answered by its source chunk.
    Query ids are ``"<chunk id>#<i>"``. ``save_json`` writes LlamaIndex's
    ``EmbeddingQAFinetuneDataset`` shape (the stats are not written). Unlike
    :meth:`~nudge_rag.judged.JudgedQueries.from_any`, it may hold no query (every chunk failed).

    Attributes:
        stats: How the run went (:class:`GenerationStats`); ``None`` when read from a file.
    """

    stats: GenerationStats | None = None

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Mapping[str, str],
        relevant_docs: Mapping[str, Any],
        mode: str | None = None,
        stats: GenerationStats | None = None,
    ) -> None:
        super().__init__(queries, corpus, relevant_docs, mode)
        object.__setattr__(self, "stats", stats)

    def training_pairs(self) -> list[tuple[str, list[str]]]:
        """``[(query text, [chunk id]), ...]``, the form ``NudgeEmbeddingFinetuner.finetune`` takes."""
        return [(self.queries[q], list(self.relevant_docs[q])) for q in self.queries]


def sample_chunks(chunk_ids: Sequence[str], max_chunks: int | None, seed: int) -> list[str]:
    """A seeded sample of ``max_chunks`` ids, in their original order (all if ``None`` or more)."""
    ids = list(chunk_ids)
    if max_chunks is None or max_chunks >= len(ids):
        return ids
    pick = np.sort(np.random.RandomState(seed).choice(len(ids), size=max_chunks, replace=False))
    return [ids[int(i)] for i in pick]


@dataclass
class _Run:
    """Mutable counters of one run, and its progress bar."""

    bar: Any = None
    cached: int = 0
    generated: int = 0
    failed: int = 0
    calls: int = 0
    retries: int = 0
    truncated: int = 0
    cache_errors: int = 0
    t0: float = field(default_factory=time.perf_counter)
    failures: dict[str, str] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)

    def tick(self) -> None:
        if self.bar is None:
            return
        secs = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(
            cached=self.cached,
            new=self.generated,
            failed=self.failed,
            rate=f"{self.generated / secs:.1f}/s",
            refresh=False,
        )
        self.bar.update(1)


def _check_options(
    queries_per_chunk: int,
    max_concurrency: int,
    max_chunks: int | None,
    timeout: float | None,
    retries: int,
    backoff: float,
    on_error: str,
) -> None:
    def bad(name: str, want: str, got: object) -> None:
        msg = f"{name}: expected {want}, received {got!r}"
        raise ConfigError(msg)

    check_positive_int(queries_per_chunk, "queries_per_chunk")
    check_positive_int(max_concurrency, "max_concurrency")
    if max_chunks is not None:
        check_positive_int(max_chunks, "max_chunks")
    if timeout is not None and not timeout > 0:
        bad("timeout", "None or a number of seconds > 0", timeout)
    check_non_negative_int(retries, "retries")
    check_non_negative(backoff, "backoff")
    if on_error not in ("skip", "raise"):
        bad("on_error", "'skip' or 'raise'", on_error)


async def agenerate_queries(
    chunks: Mapping[str, str],
    llm: Any = None,
    *,
    queries_per_chunk: int = 2,
    prompt: str = DEFAULT_PROMPT,
    max_chunks: int | None = None,
    seed: int = 0,
    max_concurrency: int = 16,
    timeout: float | None = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    on_error: Literal["skip", "raise"] = "skip",
    cache_path: str | None = None,
    cache_tag: str = "",
    round_trip: RoundTrip | None = None,
    show_progress: bool = False,
    min_words: int = 3,
    max_copy_words: int | None = 12,
    near_duplicate: float | None = 0.8,
) -> GeneratedDataset:
    """Async twin of :func:`generate_queries` (same arguments), for code already in an event loop."""
    _check_options(
        queries_per_chunk, max_concurrency, max_chunks, timeout, retries, backoff, on_error
    )
    if not isinstance(chunks, Mapping):
        msg = f"chunks must be a mapping {{chunk id: text}}; received {type(chunks).__name__}"
        raise ConfigError(msg)
    corpus = {str(k): str(v) for k, v in chunks.items()}
    n = int(queries_per_chunk)
    ids = sample_chunks(list(corpus), max_chunks, seed)
    run = _Run()
    per_chunk: dict[str, list[str]] = {}

    if llm is None or isinstance(llm, OfflineGenerator):
        gen = llm if isinstance(llm, OfflineGenerator) else OfflineGenerator(seed=seed)
        name = gen.fingerprint
        run.bar = progress_bar(len(ids), "offline queries", "chunk", show=show_progress)
        raw = gen.generate(corpus, n, only=ids)
        for cid in ids:
            per_chunk[cid] = clean_questions(
                raw[cid], n=n, min_words=1, min_chars=3, drops=run.dropped
            )
            run.generated += 1
            run.tick()
    else:
        template = check_prompt(prompt)
        name = describe_llm(llm)
        cache = (
            QueryCache(cache_path, config_hash(template, n, cache_tag, "parse-v1"))
            if cache_path is not None
            else None
        )
        todo: list[str] = []
        for cid in ids:
            hit = cache.get(cid, corpus[cid]) if cache is not None else None
            if hit is None:
                todo.append(cid)
            else:
                per_chunk[cid] = hit
                run.cached += 1
        run.bar = progress_bar(len(ids), "generating queries", "chunk", show=show_progress)
        if run.bar is not None and run.cached:
            run.bar.update(run.cached)
        if cache is not None and run.cached:
            logger.info("query cache: %d of %d chunks already done", run.cached, len(ids))
        try:
            # Sync callables run in daemon threads (no pool): a hung call is abandoned at its
            # timeout and neither holds a worker nor keeps the process from exiting.
            call = as_async_llm(llm)
            await _run_llm(
                call,
                todo,
                corpus,
                template,
                n,
                per_chunk,
                run,
                cache,
                max_concurrency=max_concurrency,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                max_backoff=max_backoff,
                on_error=on_error,
                rng=random.Random(seed),
                min_words=min_words,
                max_copy_words=max_copy_words,
                near_duplicate=near_duplicate,
            )
        finally:
            if cache is not None:
                cache.close()
            if run.bar is not None:
                run.bar.close()
        # Re-clean cached answers too: cleaning is cheap and settings may have changed.
        for cid in ids:
            if cid in per_chunk:
                per_chunk[cid] = clean_questions(
                    per_chunk[cid],
                    context=corpus[cid],
                    n=n,
                    min_words=min_words,
                    max_copy_words=max_copy_words,
                    near_threshold=near_duplicate,
                    drops=run.dropped,
                )
    if run.bar is not None and llm is None:
        run.bar.close()

    queries: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    for cid in ids:
        for i, q in enumerate(per_chunk.get(cid, [])):
            qid = f"{cid}#{i}"
            while qid in queries:  # only if a chunk id itself looks like "<id>#<i>"
                qid += "'"
            queries[qid] = q
            relevant[qid] = [cid]

    report: RoundTripReport | None = None
    if round_trip is not None and queries:
        queries, relevant, report = _apply_round_trip(round_trip, corpus, queries, relevant)

    n_short = sum(1 for cid in ids if cid not in run.failures and len(per_chunk.get(cid, [])) < n)
    stats = GenerationStats(
        generator=name,
        n_chunks=len(ids),
        n_cached=run.cached,
        n_generated=run.generated,
        n_failed=run.failed,
        n_queries=len(queries),
        n_dropped=sum(run.dropped.values()),
        n_short=n_short,
        llm_calls=run.calls,
        retries=run.retries,
        seconds=time.perf_counter() - run.t0,
        failures=dict(run.failures),
        round_trip=report,
        dropped=dict(run.dropped),
        rejected=dict(run.rejected),
        n_truncated=run.truncated,
        cache_errors=run.cache_errors,
    )
    logger.info(
        "generated %d queries for %d chunks (%d cached, %d new, %d failed) in %.1f s",
        stats.n_queries, stats.n_chunks, stats.n_cached, stats.n_generated, stats.n_failed,
        stats.seconds,
    )  # fmt: skip
    return GeneratedDataset(queries=queries, corpus=corpus, relevant_docs=relevant, stats=stats)


async def _run_llm(
    call: Any,
    todo: list[str],
    corpus: Mapping[str, str],
    template: str,
    n: int,
    per_chunk: dict[str, list[str]],
    run: _Run,
    cache: QueryCache | None,
    *,
    max_concurrency: int,
    timeout: float | None,
    retries: int,
    backoff: float,
    max_backoff: float,
    on_error: str,
    rng: random.Random,
    min_words: int,
    max_copy_words: int | None,
    near_duplicate: float | None,
) -> None:
    """Generate for ``todo`` with ``max_concurrency`` workers; each LLM call holds the semaphore.

    One attempt is one awaited unit under ``timeout``: the call, then reading its answer (parse
    and clean, in a daemon thread so a large answer cannot stall the event loop). A refused
    request (:func:`~nudge_rag.querygen.llm.request_error_status`) raises
    :class:`LLMRequestError` at once; every other failure is retried.
    """
    sem = asyncio.Semaphore(max_concurrency)
    queue = iter(todo)

    async def attempt(prompt_text: str, text: str) -> _Reading:
        answer = await call(prompt_text)
        if isinstance(answer, str) and len(answer) > MAX_ANSWER_CHARS:
            run.truncated += 1
        return await run_in_daemon_thread(
            _read_answer, answer, text, n, min_words, max_copy_words, near_duplicate,
            name="nudge-parse",
        )  # fmt: skip

    async def one(cid: str) -> None:
        text = corpus[cid]
        prompt_text = render_prompt(template, text, n)
        last: BaseException | None = None
        for i in range(retries + 1):
            if i:
                run.retries += 1
                delay = min(max_backoff, backoff * 2 ** (i - 1)) * (0.5 + rng.random())
                await asyncio.sleep(delay)
            run.calls += 1
            try:
                async with sem:
                    got = await asyncio.wait_for(attempt(prompt_text, text), timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                refused, status = request_error_status(exc)
                if refused:
                    run.rejected["request_error"] += 1
                    run.failed += 1
                    run.failures[cid] = repr(exc)
                    run.tick()
                    code = f"HTTP {status}, " if status is not None else ""
                    said = str(exc) if len(str(exc)) <= 500 else str(exc)[:497] + "..."
                    kept = "; chunks finished before are in the cache" if cache is not None else ""
                    msg = (
                        f"the LLM refused the request for chunk {cid!r} ({code}"
                        f"{type(exc).__name__}): {said}. Not retried, and the run is stopped: "
                        f"check the API key, its permissions, the model name and the prompt{kept}"
                    )
                    raise LLMRequestError(
                        msg, cid, status_code=status, provider_message=str(exc)
                    ) from exc
                if isinstance(exc, UnusableAnswerError):
                    exc.chunk_id = cid
                    run.rejected[exc.reason] += 1
                elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                    run.rejected["timeout"] += 1
                else:
                    run.rejected["error"] += 1
                last = exc
                logger.debug("chunk %r attempt %d failed: %r", cid, i + 1, exc)
                continue
            run.dropped.update(got.drops)
            per_chunk[cid] = got.kept
            if cache is not None:
                try:
                    cache.put(cid, text, got.kept)
                except (OSError, ValueError, TypeError) as exc:  # the questions are kept anyway
                    run.cache_errors += 1
                    logger.warning(
                        "query cache %s: chunk %r not written (%r); its questions are kept "
                        "for this run", cache.path, cid, exc,
                    )  # fmt: skip
            run.generated += 1
            run.tick()
            return
        err = "timed out" if isinstance(last, (asyncio.TimeoutError, TimeoutError)) else repr(last)
        run.failed += 1
        run.failures[cid] = err
        run.tick()
        if on_error == "raise":
            msg = (
                f"generating questions for chunk {cid!r} failed after {retries + 1} attempts: {err}"
            )
            raise QueryGenerationError(msg, cid) from last
        logger.warning("skipping chunk %r: %s", cid, err)

    async def worker() -> None:
        for cid in queue:  # a shared iterator: each chunk goes to exactly one worker
            await one(cid)

    await run_workers(worker, min(max_concurrency, len(todo)))


@dataclass(frozen=True)
class _Reading:
    """The questions read from one answer, and what was dropped on the way."""

    kept: list[str]
    drops: Counter[str]


def _read_answer(
    answer: str,
    context: str,
    n: int,
    min_words: int,
    max_copy_words: int | None,
    near_threshold: float | None,
) -> _Reading:
    """Parse and clean one answer (runs in a worker thread, inside the call's timeout).

    Raises:
        UnusableAnswerError: ``answer`` is not text, or no usable question is left.
    """
    drops: Counter[str] = Counter()
    parsed = parse_questions(answer, drops=drops)
    kept = clean_questions(
        parsed,
        context=context,
        n=n,
        min_words=min_words,
        max_copy_words=max_copy_words,
        near_threshold=near_threshold,
        drops=drops,
    )
    if not kept:
        msg = (
            f"no usable question in the answer ({len(parsed)} parsed, dropped: "
            f"{dict(drops) or 'none'}): {answer[:120]!r}"
        )
        raise UnusableAnswerError(msg, reason="no_question")
    return _Reading(kept, drops)


def _apply_round_trip(
    rt: RoundTrip,
    corpus: Mapping[str, str],
    queries: dict[str, str],
    relevant: dict[str, list[str]],
) -> tuple[dict[str, str], dict[str, list[str]], RoundTripReport]:
    ids = list(corpus)
    row = {c: i for i, c in enumerate(ids)}
    if rt.chunk_embeddings is not None:
        d = np.asarray(rt.chunk_embeddings, dtype=np.float32)
        if d.ndim != 2 or d.shape[0] != len(ids):
            msg = (
                f"round_trip chunk_embeddings must have one row per chunk ({len(ids)}); "
                f"received shape {d.shape}"
            )
            raise ConfigError(msg)
    else:
        d = np.asarray(rt.embedder.embed_documents([corpus[c] for c in ids]), dtype=np.float32)
    qids = list(queries)
    embed = rt.embed_queries if rt.embed_queries is not None else rt.embedder.embed_queries
    q = np.asarray(embed([queries[x] for x in qids]), dtype=np.float32)
    ranks = round_trip_ranks(q, [row[relevant[x][0]] for x in qids], d)
    ok = ranks < rt.top_k
    report = RoundTripReport(rt.mode, rt.top_k, len(qids), int((~ok).sum()), ranks)
    logger.info(
        "round trip: %d of %d queries rank their chunk below top-%d (%s)",
        report.n_failed, len(qids), rt.top_k, "dropped" if rt.mode == "filter" else "kept",
    )  # fmt: skip
    if rt.mode == "report":
        return queries, relevant, report
    keep = [x for x, good in zip(qids, ok, strict=True) if good]
    return {x: queries[x] for x in keep}, {x: relevant[x] for x in keep}, report


def generate_queries(
    chunks: Mapping[str, str],
    llm: Any = None,
    *,
    queries_per_chunk: int = 2,
    prompt: str = DEFAULT_PROMPT,
    max_chunks: int | None = None,
    seed: int = 0,
    max_concurrency: int = 16,
    timeout: float | None = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    on_error: Literal["skip", "raise"] = "skip",
    cache_path: str | None = None,
    cache_tag: str = "",
    round_trip: RoundTrip | None = None,
    show_progress: bool = False,
    min_words: int = 3,
    max_copy_words: int | None = 12,
    near_duplicate: float | None = 0.8,
) -> GeneratedDataset:
    """Write training queries for chunks: each query is answered by the chunk it was written for.

    Args:
        chunks: chunk id -> chunk text (e.g. every node of the store). All of them form the
            dataset's ``corpus``; queries are generated for all or for a sample.
        llm: A LlamaIndex LLM, a LangChain chat model / LLM / Runnable, or a sync or async callable
            ``prompt -> str``. ``None`` (or an :class:`OfflineGenerator`) uses the offline
            generator, which needs no model (salient terms and lead sentences of each chunk).
        queries_per_chunk: Questions asked for per chunk (at most this many are kept).
        prompt: Template with ``{context}`` and ``{n}`` placeholders (LLM only).
        max_chunks: Generate for a seeded sample of this many chunks only (big stores).
        seed: Seed of the sample and of the retry jitter.
        max_concurrency: LLM calls in flight at once (an ``asyncio.Semaphore``; sync callables
            run in a daemon thread per call).
        timeout: Seconds per LLM call, reading its answer included, before it counts as failed
            (``None``: wait forever). A timed-out sync call cannot be stopped: its daemon thread
            is abandoned (it frees its concurrency slot and does not keep the process alive).
        retries: Further attempts after a failed call (an exception, a timeout, an answer that
            is not text or has no usable question), waiting ``backoff * 2**i`` seconds (times a
            jitter in [0.5, 1.5), capped at ``max_backoff``). A request the provider refuses
            (HTTP 400 / 401 / 403, an ``AuthenticationError`` / ``PermissionDeniedError`` /
            ``BadRequestError``) is never retried: it raises :class:`LLMRequestError` at once.
        backoff: First retry delay in seconds.
        max_backoff: Longest retry delay.
        on_error: ``"skip"`` a chunk whose attempts all failed (it is listed in
            ``stats.failures`` and retried on the next run), or ``"raise"``
            :class:`QueryGenerationError` (chunks already done stay in the cache). A refused
            request stops the run in both modes.
        cache_path: JSONL file to resume from and append to (LLM only). Entries are keyed by
            chunk id, sha256 of the chunk text and a hash of prompt, ``queries_per_chunk`` and
            ``cache_tag``; one line is appended and flushed per finished chunk. A line that
            cannot be written is logged and counted in ``stats.cache_errors``; the run goes on.
        cache_tag: Extra cache key, e.g. the model name, to keep answers of two LLMs apart.
        round_trip: Keep only queries whose chunk ranks in the top-k under the given embeddings
            (or only report how many would be dropped); see :class:`RoundTrip`.
        show_progress: Show a tqdm bar with cached / new / failed counts and chunks per second.
        min_words: Questions with fewer words are dropped.
        max_copy_words: Questions sharing a longer run of words with the chunk, or made of one
            run of it (90 % of 8 words or more), are dropped as copies; ``None`` keeps them.
        near_duplicate: Token Jaccard at or above which two questions of a chunk are
            near-duplicates (the later one is dropped); ``None`` keeps near-duplicates (exact
            duplicates are always dropped).

    Returns:
        A :class:`GeneratedDataset` (:class:`~nudge_rag.judged.JudgedQueries` of the questions) whose
        ``stats`` say what happened.

    Raises:
        ConfigError: An option is out of range, or the prompt lacks a placeholder.
        QueryGenerationError: With ``on_error="raise"``, a chunk failed after its retries.
        LLMRequestError: The provider refused a request (bad credentials, no permission, a
            malformed request): raised at once, whatever ``on_error`` says.
    """
    coro = agenerate_queries(
        chunks,
        llm,
        queries_per_chunk=queries_per_chunk,
        prompt=prompt,
        max_chunks=max_chunks,
        seed=seed,
        max_concurrency=max_concurrency,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        on_error=on_error,
        cache_path=cache_path,
        cache_tag=cache_tag,
        round_trip=round_trip,
        show_progress=show_progress,
        min_words=min_words,
        max_copy_words=max_copy_words,
        near_duplicate=near_duplicate,
    )
    return run_sync(coro)
