"""A relevance judge: labels for logged queries past what users were shown.

Users confirm only what the retriever showed them, so a query whose answer ranks 11th teaches
nothing. A judge (an LLM, a cross-encoder, a human review queue) reads a logged query and a wide
list of candidates the store retrieves for it (top ``k`` under the current vectors and under the
original ones) and names the one that answers it, or none. ``ft.update(judge=...)`` asks it and
turns its answers into feedback entries of their own (``source="judge"``) beside the users'.

What a judge may be:

=========================================  ====================================================
what was passed                            how it is asked
=========================================  ====================================================
``def judge(query, candidates) -> ids``    called with the query and a list of
(sync or ``async def``)                    :class:`Candidate` (``.id``, ``.text``); returns the
                                           ids that answer it (``[]`` / ``None``: none does)
an LLM (anything ``llm=`` accepts)         :data:`JUDGE_PROMPT` (the query and the numbered
                                           passages: "which answers it, or none"); the answer
                                           is read by :func:`parse_judgement`
=========================================  ====================================================

A judgement is stored as a :class:`~nudge_rag.feedback.FeedbackEntry` whose ``candidates``
field holds :func:`candidate_digest` of the query and the candidate list, and whose ``shown``
holds that list ("none relevant" is an entry with no ids). The feedback log is therefore also
the judge's cache: a query is never asked twice over the same candidates, a run killed half-way
resumes where it stopped, and replicas sharing the log share the judgements.

How far the judge is trusted (:func:`training_pairs`): on queries users confirmed, the judge
must name a confirmed record often enough (``min_agreement``), else none of its labels is used;
a judge label never overrides a user: records the user was shown and did not confirm are not
taken from the judge, and users' confirmations stay whatever the judge says.

Example:
    >>> def judge(query, candidates):                      # a cross-encoder, a human queue...
    ...     return [c.id for c in candidates if "NUDGE" in c.text][:1]
    >>> ft.update(judge=judge)                             # doctest: +SKIP
    >>> print(ft.report.judge.summary())                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from nudge_rag._util import check_non_negative_int, check_positive_int, run_workers
from nudge_rag.core import QuerySet
from nudge_rag.core.split import validation_positions
from nudge_rag.errors import ConfigError, LLMRequestError, UnusableAnswerError
from nudge_rag.feedback import FeedbackEntry, FeedbackLog
from nudge_rag.querygen.llm import (
    as_async_llm,
    request_error_status,
    response_text,
    run_in_daemon_thread,
)
from nudge_rag.querygen.parsing import MAX_ANSWER_CHARS, scrub_surrogates

__all__ = [
    "JUDGE_PROMPT",
    "JUDGE_SOURCE",
    "Candidate",
    "JudgeOptions",
    "JudgeRun",
    "Trust",
    "as_judge",
    "candidate_digest",
    "judge_prompt",
    "parse_judgement",
    "run_judge",
    "training_pairs",
    "users_holdout",
]

logger = logging.getLogger(__name__)

#: ``source`` of the feedback entries a judge's answers become.
JUDGE_SOURCE = "judge"

JUDGE_PROMPT = """\
You judge search results. Below are a question and {n} numbered passages.
Which passage answers the question? Name the one that answers it best.

Question: {query}

Passages:
{passages}

Answer with the number of that passage only (for example: 7), or with the word none if no \
passage answers the question."""


class Candidate(NamedTuple):
    """A record the judge is shown: its store id and its text."""

    id: str
    text: str


#: What ``ft.update(judge=...)`` calls: query, candidates -> the ids that answer it.
AsyncJudge = Callable[[str, list[Candidate]], Awaitable[list[str]]]


@dataclass(frozen=True, kw_only=True)
class JudgeOptions:
    """How ``update(judge=...)`` asks the judge and weighs its answers.

    Attributes:
        candidates: Records retrieved per query under each of the current and the original
            vectors (their union is shown, current order first). 100 reaches records users
            never saw; 50 gains little on SciFact (``benchmarks/results/judge.md``).
        max_calls: Judge calls per update at most (``None``: no limit). Queries no user
            confirmed go first, then the rest, oldest first; the others wait for the next update.
        max_concurrency: Judge calls in flight at once.
        timeout: Seconds per call (an LLM's answer read included) before it counts as failed.
        retries: Further attempts after a failed call (an error, a timeout, an unreadable
            answer). A request the provider refused is never retried: it stops the run.
        reask_new: A query the judge found nothing for is asked again (about the new ones only)
            once at least this many candidates it was never shown have come up.
        min_agreement: Share of the users' confirmed queries on which the judge must name a
            record they confirmed for its labels to be used at all (1.0 = never, 0 = always).
        min_overlap: Confirmed queries the judge must have answered before ``min_agreement``
            is measured; with fewer, its labels wait.
        grade: Grade of a judge's label (users' confirmations keep theirs).
        passage_chars: Characters of each passage put into an LLM's prompt.
    """

    candidates: int = 100
    max_calls: int | None = None
    max_concurrency: int = 8
    timeout: float | None = 60.0
    retries: int = 2
    reask_new: int = 10
    min_agreement: float = 0.6
    min_overlap: int = 20
    grade: float = 1.0
    passage_chars: int = 600

    def __post_init__(self) -> None:
        check_positive_int(self.candidates, "candidates")
        check_positive_int(self.max_concurrency, "max_concurrency")
        check_positive_int(self.reask_new, "reask_new")
        check_positive_int(self.passage_chars, "passage_chars")
        if self.max_calls is not None:
            check_non_negative_int(self.max_calls, "max_calls")
        check_non_negative_int(self.retries, "retries")
        check_non_negative_int(self.min_overlap, "min_overlap")
        if self.timeout is not None and not self.timeout > 0:
            msg = f"timeout must be None or a number of seconds > 0; received {self.timeout!r}"
            raise ConfigError(msg)
        if not 0.0 <= self.min_agreement <= 1.0:
            msg = f"min_agreement must be in [0, 1]; received {self.min_agreement!r}"
            raise ConfigError(msg)
        if not self.grade > 0 or self.grade != self.grade or self.grade == float("inf"):
            msg = f"grade must be a finite number > 0; received {self.grade!r}"
            raise ConfigError(msg)


# ---------------------------------------------------------------------------------------------
# Asking
# ---------------------------------------------------------------------------------------------
def candidate_digest(query: str, ids: Sequence[str]) -> str:
    """The cache key of one judgement: a digest of the query and the candidate ids in order."""
    data = json.dumps([query, list(ids)], ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:24]


def judge_prompt(query: str, candidates: Sequence[Candidate], *, passage_chars: int = 600) -> str:
    """The LLM prompt for one query: the query and the numbered passages (each cut)."""
    lines = []
    for n, c in enumerate(candidates, 1):
        text = " ".join(c.text.split())
        if len(text) > passage_chars:
            text = text[: passage_chars - 3] + "..."
        lines.append(f"[{n}] {text}")
    return JUDGE_PROMPT.format(n=len(candidates), query=query, passages="\n".join(lines))


# A passage number or the word none, whichever comes first; each alternative is a bounded or
# possessive-free literal run, so re.search is linear in the answer.
_NUMBER = re.compile(r"(?<![\w.])\d{1,7}(?![\w])")
_NONE = re.compile(
    r"\b(?:none|no\s{1,4}passage|no\s{1,4}relevant|not\s{1,4}answered|no\s{1,4}answer)\b", re.I
)


def parse_judgement(answer: Any, n: int) -> int | None:
    """The passage an LLM judge named (0-based), or ``None`` when it said none answers.

    Reads ``7``, ``[7]``, ``Passage 7``, ``{"answer": 7}``, ``The answer is passage 7.``,
    ``none`` / ``None of the passages``: the first passage number or the word *none*, whichever
    comes first. The answer is cut to :data:`~nudge_rag.querygen.parsing.MAX_ANSWER_CHARS`
    first; both patterns are plain bounded regexes (linear time).

    Raises:
        UnusableAnswerError: Not text (``reason="not_text"``), or no passage number in
            ``1..n`` and no *none* (``reason="no_judgement"``).
    """
    text = scrub_surrogates(response_text(answer)[:MAX_ANSWER_CHARS])
    num = _NUMBER.search(text)
    none = _NONE.search(text)
    if none is not None and (num is None or none.start() < num.start()):
        return None
    if num is not None:
        k = int(num.group())
        if 1 <= k <= n:
            return k - 1
        msg = f"the judge named passage {k}, but there are {n}: {text[:80]!r}"
        raise UnusableAnswerError(msg, reason="no_judgement")
    msg = f"the judge's answer names no passage and does not say none: {text[:80]!r}"
    raise UnusableAnswerError(msg, reason="no_judgement")


def _is_judge_function(obj: Any) -> bool:
    """A callable of two positional arguments (query, candidates), not an LLM."""
    if any(callable(getattr(obj, a, None)) for a in ("acomplete", "ainvoke", "complete", "invoke")):
        return False
    if not callable(obj):
        return False
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    return len(params) >= 2 or varargs


def _as_ids(got: Any, candidates: Sequence[Candidate]) -> list[str]:
    """What a judge function returned, as candidate ids (unknown ids are dropped)."""
    if got is None:
        return []
    if isinstance(got, str):
        got = [got]
    elif isinstance(got, Mapping):
        got = [k for k, v in got.items() if float(v) > 0]
    elif not isinstance(got, Iterable):
        msg = f"a judge must return ids (a list of str, or None); received {type(got).__name__}"
        raise UnusableAnswerError(msg, reason="not_ids")
    known = {c.id for c in candidates}
    out = [str(i) for i in got]
    kept = [i for i in dict.fromkeys(out) if i in known]
    if len(kept) < len(out):
        logger.debug("judge named %d id(s) that are not among the candidates", len(out) - len(kept))
    return kept


def as_judge(judge: Any, *, passage_chars: int = 600) -> AsyncJudge:
    """Wrap ``judge`` into ``async (query, candidates) -> ids``.

    Args:
        judge: A function ``(query, candidates) -> ids`` (sync or async), or an LLM (a LlamaIndex
            LLM, a LangChain chat model / Runnable, a callable ``prompt -> str``).
        passage_chars: Characters of each passage in an LLM's prompt.

    Raises:
        ConfigError: ``judge`` is none of these.
    """
    if _is_judge_function(judge):
        fn = judge

        async def call_function(query: str, candidates: list[Candidate]) -> list[str]:
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)  # noqa: B004
            ):
                got = await fn(query, candidates)
            else:
                # a daemon thread of its own: a call that hangs past the timeout is abandoned
                got = await run_in_daemon_thread(fn, query, candidates, name="nudge-judge")
                if inspect.isawaitable(got):
                    got = await got
            return _as_ids(got, candidates)

        return call_function
    try:
        llm = as_async_llm(judge)
    except ConfigError:
        msg = (
            "judge must be a function (query, candidates) -> ids (sync or async) or an LLM "
            f"(anything llm= accepts); received {type(judge).__name__}"
        )
        raise ConfigError(msg) from None

    async def call_llm(query: str, candidates: list[Candidate]) -> list[str]:
        answer = await llm(judge_prompt(query, candidates, passage_chars=passage_chars))
        k = parse_judgement(answer, len(candidates))
        return [] if k is None else [candidates[k].id]

    return call_llm


@dataclass
class JudgeRun:
    """What one round of asking did (counts for the report)."""

    n_asked: int = 0  # queries asked (a call succeeded)
    n_calls: int = 0  # calls made, retries included
    n_failed: int = 0  # queries whose calls all failed (asked again next update)
    n_labels: int = 0  # relevant ids named
    n_none: int = 0  # answers "none relevant"
    rejected: dict[str, int] = field(default_factory=dict)


async def run_judge(
    judge: AsyncJudge,
    todo: Sequence[tuple[str, list[Candidate]]],
    log: FeedbackLog,
    options: JudgeOptions,
    *,
    source: str = JUDGE_SOURCE,
) -> JudgeRun:
    """Ask ``judge`` about each ``(query, candidates)`` of ``todo`` and log every answer as
    soon as it comes (so a killed run keeps what it was told). At most
    ``options.max_concurrency`` calls are in flight; a failed call is retried
    ``options.retries`` times; a refused request raises :class:`LLMRequestError` at once.
    """
    run = JudgeRun()
    sem = asyncio.Semaphore(options.max_concurrency)
    queue = iter(todo)

    def reject(reason: str) -> None:
        run.rejected[reason] = run.rejected.get(reason, 0) + 1

    async def one(query: str, cands: list[Candidate]) -> None:
        for attempt in range(options.retries + 1):
            run.n_calls += 1
            try:
                async with sem:
                    ids = await asyncio.wait_for(judge(query, cands), options.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                refused, status = request_error_status(exc)
                if refused:
                    code = f"HTTP {status}, " if status is not None else ""
                    said = str(exc) if len(str(exc)) <= 500 else str(exc)[:497] + "..."
                    msg = (
                        f"the judge refused the request for the query {query[:60]!r} ({code}"
                        f"{type(exc).__name__}): {said}. Not retried, and the run is stopped: "
                        "check the API key, its permissions, the model name and the prompt; "
                        "judgements made before are in the feedback log"
                    )
                    raise LLMRequestError(
                        msg, query[:60], status_code=status, provider_message=str(exc)
                    ) from exc
                if isinstance(exc, UnusableAnswerError):
                    reject(exc.reason)
                elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
                    reject("timeout")
                else:
                    reject("error")
                logger.debug("judge call %d for %r failed: %r", attempt + 1, query[:60], exc)
                continue
            shown = [c.id for c in cands]
            digest = candidate_digest(query, shown)
            log.record(
                query,
                {i: options.grade for i in ids},
                source=source,
                shown=shown,
                candidates=digest,
            )
            run.n_asked += 1
            run.n_labels += len(ids)
            run.n_none += not ids
            return
        run.n_failed += 1
        logger.warning(
            "the judge gave no usable answer for %r: asked again next update", query[:60]
        )

    async def worker() -> None:
        for query, cands in queue:  # a shared iterator: each query goes to one worker
            await one(query, cands)

    await run_workers(worker, min(options.max_concurrency, len(todo)))
    return run


# ---------------------------------------------------------------------------------------------
# What to ask, and what to train on
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Judged:
    """What the log holds about one query (users' side and the judge's side)."""

    confirmed: dict[str, float]  # users' ids with a positive grade
    seen: set[str]  # every id a user was shown or graded
    named: dict[str, float]  # ids the judge named relevant
    judged: set[str]  # every candidate the judge was shown
    digests: set[str]  # judgements made (candidate digests)
    first: int  # position of the query's first entry in the log (older first)


def by_query(entries: Iterable[FeedbackEntry], *, min_grade: float = 0.0) -> dict[str, Judged]:
    """Users' and the judge's feedback per query text, in log order."""
    out: dict[str, Judged] = {}
    for pos, e in enumerate(entries):
        j = out.get(e.query)
        if j is None:
            j = out[e.query] = Judged({}, set(), {}, set(), set(), pos)
        if e.candidates:
            j.digests.add(e.candidates)
            j.judged.update(e.shown)
            for i, g in e.ids.items():
                if g > min_grade:
                    j.named[i] = max(g, j.named.get(i, g))
        else:
            j.seen.update(e.shown)
            j.seen.update(e.ids)
            for i, g in e.ids.items():
                if g > min_grade:
                    j.confirmed[i] = max(g, j.confirmed.get(i, g))
    return out


def to_ask(
    state: Mapping[str, Judged], candidates: Mapping[str, list[Candidate]], options: JudgeOptions
) -> tuple[list[tuple[str, list[Candidate]]], int, int]:
    """Which queries to ask about, with which candidates; how many were already answered, and
    how many wait for a later update (the budget).

    A query the judge named a record for is done. One it found nothing for is asked again about
    the candidates it was never shown, once at least ``reask_new`` of them have come up. Never
    twice over the same list. Unconfirmed queries first (they have the most to gain), then
    older before newer; cut at ``max_calls``.
    """
    todo: list[tuple[bool, int, str, list[Candidate]]] = []
    cached = 0
    for q, cands in candidates.items():
        j = state.get(q)
        if j is None or not cands:
            continue
        if j.named:
            cached += 1
            continue
        new = [c for c in cands if c.id not in j.judged]
        if j.digests and len(new) < options.reask_new:
            cached += 1
            continue
        ask = new if j.digests else cands
        if candidate_digest(q, [c.id for c in ask]) in j.digests:
            cached += 1
            continue
        todo.append((bool(j.confirmed), j.first, q, ask))
    todo.sort(key=lambda t: (t[0], t[1]))
    waiting = 0
    if options.max_calls is not None and len(todo) > options.max_calls:
        waiting = len(todo) - options.max_calls
        todo = todo[: options.max_calls]
    return [(q, ask) for _, _, q, ask in todo], cached, waiting


@dataclass(frozen=True)
class Trust:
    """How far the judge was trusted in one update.

    Attributes:
        n_overlap: Users' confirmed queries the judge answered.
        agreement: Share of them on which it named a record users confirmed (None: no overlap).
        trusted: Whether its labels were used.
        n_used: Judge labels used for training (on queries users left unconfirmed, or records
            users never saw).
        n_contradicting: Judge labels dropped because a user was shown that record and did not
            confirm it.
        users_only: Per training pair: True when it holds users' confirmations only (no judge
            label). Only those are held out to choose γ on, so that the judge can add training
            data but never decide how far records move.
    """

    n_overlap: int
    agreement: float | None
    trusted: bool
    n_used: int
    n_contradicting: int
    users_only: tuple[bool, ...] = ()


def users_holdout(
    queries: QuerySet, eligible: Sequence[bool], fraction: float = 0.2, *, seed: int = 0
) -> np.ndarray:
    """Positions of validation queries held out among the ``eligible`` ones (users' own
    confirmations), increasing: the covered rule of
    :func:`~nudge_rag.core.split.validation_positions` (a held-out query's records keep a
    training query), with coverage counted over every query, judge-labelled ones included.

    Raises:
        ConfigError: No eligible query can be held out.
    """
    return validation_positions(queries, fraction, seed=seed, eligible=eligible)


def training_pairs(
    entries: Iterable[FeedbackEntry], options: JudgeOptions, *, min_grade: float = 0.0
) -> tuple[list[tuple[str, dict[str, float]]], Trust]:
    """Users' confirmations, and the judge's labels where it is trusted, one pair per query.

    Users' confirmations are kept as they are. The judge's labels are used only if, on the
    queries users confirmed that it answered (at least ``min_overlap``), it named a confirmed
    record at least ``min_agreement`` of the time; then a judge label is added unless a user was
    shown that record and did not confirm it (users outrank the judge). ``Trust.users_only``
    marks the pairs with no judge label: ``update()`` holds out only those to choose γ.
    """
    entries = list(entries)
    state = by_query(entries, min_grade=min_grade)
    overlap = [j for j in state.values() if j.confirmed and j.digests]
    agree = sum(bool(set(j.named) & set(j.confirmed)) for j in overlap)
    agreement = agree / len(overlap) if overlap else None
    trusted = options.min_agreement <= 0.0 or (
        agreement is not None
        and len(overlap) >= options.min_overlap
        and agreement >= options.min_agreement
    )
    # Pairs in the order their first positive entry came (what FeedbackLog.training_pairs
    # gives when there is no judge: the held-out split, seeded by position, is unchanged).
    first: dict[str, int] = {}
    for pos, e in enumerate(entries):
        positive = any(g > min_grade for g in e.ids.values())
        if e.query not in first and positive and (not e.candidates or trusted):
            first[e.query] = pos
    pairs: list[tuple[int, str, dict[str, float]]] = []
    used = contradicting = 0
    for q, j in state.items():
        grades = dict(j.confirmed)
        if trusted:
            for i, g in j.named.items():
                if i in grades:
                    continue
                if i in j.seen:
                    contradicting += 1
                    continue
                grades[i] = g
                used += 1
        if grades:
            pairs.append((first[q], q, grades))
    pairs.sort(key=lambda t: t[0])
    pure = tuple(g == state[q].confirmed for _, q, g in pairs)
    trust = Trust(len(overlap), agreement, trusted, used, contradicting, pure)
    return [(q, g) for _, q, g in pairs], trust
