"""Hold out validation queries that can actually say something about γ."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from nudge_rag.core.queries import QuerySet
from nudge_rag.errors import ConfigError

__all__ = ["validation_positions", "validation_split"]

logger = logging.getLogger(__name__)


def validation_split(
    queries: QuerySet, fraction: float = 0.2, *, seed: int = 0
) -> tuple[QuerySet, QuerySet]:
    """Split ``queries`` into (train, validation), holding out only queries that stay "covered".

    NUDGE moves only records that training queries point to. A validation query whose answer rows
    lose all their training queries to the hold-out can only get worse as γ grows, so a plain random
    split (with, say, two generated questions per chunk) drives γ to 0. Here a query is held out
    only if every one of its answer rows keeps at least one other training query. Queries are
    visited in a seeded random order until ``fraction`` of them are held out or none is eligible.

    Example:
        >>> qs = QuerySet(np.ones((4, 2), np.float32), [[0], [0], [1], [2]])
        >>> tr, va = validation_split(qs, 0.5, seed=0)
        >>> len(tr), len(va), va.rows.tolist()
        (3, 1, [0])

    Raises:
        ConfigError: ``fraction`` is not in (0, 1), or no query can be held out.
    """
    held = validation_positions(queries, fraction, seed=seed)
    mask = np.zeros(len(queries), dtype=bool)
    mask[held] = True
    return queries.subset(np.flatnonzero(~mask)), queries.subset(held)


def validation_positions(
    queries: QuerySet,
    fraction: float = 0.2,
    *,
    seed: int = 0,
    eligible: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """The positions :func:`validation_split` holds out, increasing (same rule, same errors).

    ``eligible``: only these queries may be held out (``fraction`` of them), while coverage is
    counted over every query (the judge's labels train, users' own confirmations validate).
    """
    if not 0.0 < fraction < 1.0:
        msg = f"validation fraction must be in (0, 1); received {fraction}"
        raise ConfigError(msg)
    n = len(queries)
    ok = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    target = max(1, round(fraction * int(ok.sum())))
    counts = np.bincount(queries.rows, minlength=int(queries.rows.max()) + 1 if n else 0)
    order = np.random.default_rng(seed).permutation(n)
    held: list[int] = []
    for j in order:
        if not ok[j]:
            continue
        rows = queries.answer_rows(int(j))
        if np.all(counts[rows] >= 2):
            counts[rows] -= 1
            held.append(int(j))
            if len(held) == target:
                break
    if not held and eligible is not None:
        msg = (
            f"cannot hold out validation queries from {int(ok.sum())} eligible queries (users' "
            "confirmations): no record they point to has another query"
        )
        raise ConfigError(msg)
    if not held:
        msg = (
            f"cannot hold out validation queries from {n} training queries: no record has two or "
            "more of them, so any held-out query would leave its record with no training query "
            "and could never favour a move. Give more queries per record, pass val= explicitly, "
            "or fix gamma="
        )
        raise ConfigError(msg)
    if len(held) < target:
        logger.info(
            "validation split: only %d of the %d wanted queries could be held out while keeping "
            "every answer record covered by a training query",
            len(held),
            target,
        )
    return np.sort(np.asarray(held, dtype=np.int64))
