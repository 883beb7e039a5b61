"""Shared plumbing, written once: option checks, progress bars, sync-over-async, framework detection.

Private: the public modules use these and re-export what users need (``framework_of`` is
:func:`nudge_rag.integrations.framework_of`). Imports the standard library only (tqdm lazily,
when a bar is asked for), so every layer of the package may use it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import numbers
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeGuard, TypeVar

from nudge_rag.errors import ConfigError

__all__ = [
    "check_non_negative",
    "check_non_negative_int",
    "check_positive_int",
    "framework_of",
    "from_class",
    "gather_bounded",
    "progress_bar",
    "progress_iter",
    "run_sync",
    "run_workers",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Framework = Literal["llamaindex", "langchain"]


# ---------------------------------------------------------------------------------------------
# Option checks (typed errors, one wording: "<name>: expected ..., received ...")
# ---------------------------------------------------------------------------------------------
def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (bools refused), else ConfigError.

    Example:
        >>> check_positive_int(3, "k")
        3
        >>> check_positive_int(0, "k")
        Traceback (most recent call last):
        ...
        nudge_rag.errors.ConfigError: k: expected an integer >= 1, received 0
    """
    if not _is_int(value) or value < 1:
        msg = f"{name}: expected an integer >= 1, received {value!r}"
        raise ConfigError(msg)
    return int(value)


def check_non_negative_int(value: object, name: str) -> int:
    """``value`` as an ``int`` if it is an integer >= 0 (bools refused), else ConfigError."""
    if not _is_int(value) or value < 0:
        msg = f"{name}: expected an integer >= 0, received {value!r}"
        raise ConfigError(msg)
    return int(value)


def check_non_negative(value: object, name: str) -> float:
    """``value`` as a ``float`` if it is a real number >= 0 (bools and NaN refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not float(value) >= 0  # NaN fails this too
    ):
        msg = f"{name}: expected a number >= 0, received {value!r}"
        raise ConfigError(msg)
    return float(value)


# ---------------------------------------------------------------------------------------------
# Progress bars (tqdm when installed and asked for; never required)
# ---------------------------------------------------------------------------------------------
def progress_bar(total: int, desc: str, unit: str, *, show: bool = True) -> Any:
    """A tqdm bar of ``total`` steps, or ``None`` when ``show`` is false or tqdm is missing.

    Callers call ``bar.update(n)`` / ``bar.close()`` on what they get when it is not None.
    """
    if not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the local extra
        logger.warning("tqdm is not installed: no progress bar (pip install tqdm)")
        return None
    return tqdm(total=total, desc=desc, unit=unit)


def progress_iter(
    items: Iterable[T], total: int, desc: str, unit: str, *, show: bool = True
) -> Iterator[T]:
    """Iterate ``items``, advancing a progress bar (see :func:`progress_bar`) one step each."""
    bar = progress_bar(total, desc, unit, show=show)
    if bar is None:
        yield from items
        return
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# Async plumbing
# ---------------------------------------------------------------------------------------------
def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also inside a running event loop.

    Without a running loop this is ``asyncio.run``. Inside one (Jupyter, an async web handler
    calling sync code) the coroutine runs in a fresh loop on a worker thread, and this call
    blocks until it is done.

    Example:
        >>> async def two() -> int:
        ...     return 2
        >>> run_sync(two())
        2
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


async def gather_bounded(
    fn: Callable[[Any], Awaitable[T]],
    items: Sequence[Any],
    max_concurrency: int,
    *,
    show_progress: bool = False,
    desc: str = "",
    unit: str = "it",
) -> list[T]:
    """``await fn(item)`` for every item, at most ``max_concurrency`` in flight; results in order.

    The first exception propagates (the other calls are cancelled by ``asyncio.gather``'s
    caller going away).
    """
    sem = asyncio.Semaphore(max_concurrency)
    bar = progress_bar(len(items), desc, unit, show=show_progress)

    async def one(item: Any) -> T:
        async with sem:
            out = await fn(item)
        if bar is not None:
            bar.update(1)
        return out

    try:
        return list(await asyncio.gather(*(one(i) for i in items)))
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------
# Which framework an object belongs to, from its type's MRO (never imports the framework)
# ---------------------------------------------------------------------------------------------
def from_class(obj: Any, module_prefix: str, *names: str) -> bool:
    """Whether a class in ``type(obj).__mro__`` comes from a module starting with
    ``module_prefix`` (and, if ``names`` are given, is named one of them).

    Example:
        >>> from_class({}, "builtins", "dict"), from_class({}, "llama_index.")
        (True, False)
    """
    for cls in type(obj).__mro__:
        mod = getattr(cls, "__module__", "") or ""
        if mod.startswith(module_prefix) and (not names or cls.__name__ in names):
            return True
    return False


def framework_of(obj: Any) -> Framework | None:
    """``"llamaindex"``, ``"langchain"`` or ``None``, from the modules in the object's type MRO.

    Example:
        >>> framework_of(object()) is None
        True
    """
    if from_class(obj, "llama_index."):
        return "llamaindex"
    if from_class(obj, "langchain_") or from_class(obj, "langchain."):
        return "langchain"
    return None


async def run_workers(worker: Callable[[], Awaitable[None]], n: int) -> None:
    """Run ``n`` copies of ``worker`` concurrently; if one fails (or the caller is cancelled),
    cancel the others, wait for them to stop, and raise."""
    tasks = [asyncio.ensure_future(worker()) for _ in range(n)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
