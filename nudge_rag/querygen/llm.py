"""One async call, ``prompt -> str``, over whatever LLM the user passed.

Detected by duck typing, so no framework is imported here (nor anywhere in :mod:`nudge_rag.querygen`):

=====================================  ====================================================
what was passed                        how it is called
=====================================  ====================================================
LlamaIndex LLM (``acomplete``)         ``(await llm.acomplete(prompt)).text``
LangChain chat model / LLM / Runnable  ``await llm.ainvoke(prompt)``; a message's ``.content``
(``ainvoke``)                          (text blocks joined), or the string itself
``async def f(prompt) -> str``         ``await f(prompt)``
``def f(prompt) -> str``               in a daemon thread of its own (one per call)
=====================================  ====================================================

Objects with only the sync twin (``complete`` / ``invoke``) run in a daemon thread too. A daemon
thread, not a pool: a sync call that never returns is abandoned when its timeout fires; it holds
no worker a later call would wait for, and it does not keep the interpreter from exiting (the
default ``ThreadPoolExecutor`` joins its workers at exit, and ``asyncio.run`` waits for the
loop's default pool).

An answer must be text: ``None``, bytes, a dict without a ``"text"`` / ``"content"`` string, or
any other object raise :class:`~nudge_rag.errors.UnusableAnswerError` (``reason="not_text"``)
instead of being turned into text with ``str()``. :func:`request_error_status` tells a request
the provider refused (HTTP 400 / 401 / 403, ``AuthenticationError`` ...), which retrying cannot
fix, from one that may succeed next time.

Example:
    >>> call = as_async_llm(lambda prompt: '["What is NUDGE?"]')
    >>> asyncio.run(call("..."))
    '["What is NUDGE?"]'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nudge_rag.errors import ConfigError, UnusableAnswerError

__all__ = [
    "AsyncLLM",
    "as_async_llm",
    "describe_llm",
    "request_error_status",
    "response_text",
    "run_in_daemon_thread",
]

#: What generation calls: an async function from prompt to answer text.
AsyncLLM = Callable[[str], Awaitable[str]]

T = TypeVar("T")

#: HTTP statuses of a request the provider refused as such: retrying it cannot succeed.
REFUSED_STATUS = frozenset({400, 401, 403})
#: Words in the class name of such an exception (OpenAI, Anthropic, LiteLLM, ...).
REFUSED_NAMES = ("Authentication", "PermissionDenied", "BadRequest", "InvalidRequest")


def _not_text(resp: Any) -> UnusableAnswerError:
    kind = type(resp).__name__
    msg = f"the LLM answer is not text: received {kind} {_preview(resp)}"
    return UnusableAnswerError(msg, reason="not_text")


def _preview(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:  # a broken __repr__ must not hide the real problem
        return "(unprintable)"
    return text if len(text) <= 80 else text[:77] + "..."


def response_text(resp: Any) -> str:
    """The text of an LLM response: ``.text`` (LlamaIndex), ``.content`` (LangChain), or str.

    Also read: a LlamaIndex ``ChatResponse`` (``.message.content``), LangChain content blocks
    (the text blocks joined), and a dict with a ``"text"`` or ``"content"`` string.

    Raises:
        UnusableAnswerError: The response holds no text (``None``, bytes, a dict or object
            without a text field, content blocks none of which is text); ``reason="not_text"``.
    """
    orig = resp
    for _ in range(3):  # a response, its message, the message's content
        if isinstance(resp, str):
            return resp
        if resp is None or isinstance(resp, (bytes, bytearray, memoryview)):
            raise _not_text(orig)
        if isinstance(resp, dict):
            for key in ("text", "content"):
                if isinstance(resp.get(key), str):
                    return str(resp[key])
            raise _not_text(orig)
        content = getattr(resp, "content", None)
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # LangChain content blocks
            parts = [
                b if isinstance(b, str) else b["text"]
                for b in content
                if isinstance(b, str) or (isinstance(b, dict) and isinstance(b.get("text"), str))
            ]
            if parts:
                return "".join(parts)
            raise _not_text(orig)
        text = getattr(resp, "text", None)
        if isinstance(text, str):
            return text
        message = getattr(resp, "message", None)  # LlamaIndex ChatResponse
        if message is None or message is resp:
            break
        resp = message
    raise _not_text(orig)


def _status_of(exc: BaseException) -> int | None:
    for owner, attr in ((exc, "status_code"), (exc, "http_status"), (exc, "status")):
        v = getattr(owner, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str) and v.isdigit() and len(v) == 3:
            return int(v)
    v = getattr(getattr(exc, "response", None), "status_code", None)  # httpx, requests
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    return None


def request_error_status(exc: BaseException) -> tuple[bool, int | None]:
    """Whether ``exc`` is a request the provider refused (not worth retrying), and its status.

    Refused: an HTTP status of 400, 401 or 403 on the exception (``status_code``, ``status``,
    ``http_status``, or ``response.status_code`` as httpx and requests have it), or a class
    whose name (or a base class's) contains ``Authentication``, ``PermissionDenied``,
    ``BadRequest`` or ``InvalidRequest``. The exception's ``__cause__`` chain is followed a few
    links, for wrappers that re-raise.

    Returns:
        ``(refused, status)``; ``status`` is the HTTP status found, or ``None``.
    """
    e: BaseException | None = exc
    for _ in range(4):
        if e is None:
            break
        status = _status_of(e)
        if status in REFUSED_STATUS:
            return True, status
        names = [c.__name__ for c in type(e).__mro__]
        if any(word in name for name in names for word in REFUSED_NAMES):
            return True, status
        e = e.__cause__
    return False, None


def run_in_daemon_thread(
    fn: Callable[..., T], *args: Any, name: str = "nudge-llm"
) -> asyncio.Future[T]:
    """Run ``fn(*args)`` in a new daemon thread; a future of the running loop gets its outcome.

    Cancelling the future (a timeout) abandons the thread: it is not joined, holds no pool
    worker, and does not keep the interpreter from exiting. Its late result is dropped, even
    once the loop is closed. Exceptions, ``BaseException`` included, reach the awaiting code.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if fut.done():  # cancelled (timed out) meanwhile
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def target() -> None:
        try:
            value: Any = fn(*args)
            ok = True
        except StopIteration as exc:  # a future cannot hold StopIteration
            value, ok = RuntimeError(f"{fn!r} raised StopIteration: {exc!r}"), False
        except BaseException as exc:
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut


def describe_llm(llm: Any) -> str:
    """A short name of the LLM for logs and cache tags (class and model name if it has one)."""
    name = type(llm).__name__
    for attr in ("model", "model_name", "model_id"):
        v = getattr(llm, attr, None)
        if isinstance(v, str) and v:
            return f"{name}({v})"
    if inspect.isfunction(llm) or inspect.ismethod(llm):
        return f"function {getattr(llm, '__qualname__', name)}"
    return name


def _is_async_callable(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - want the bound __call__ of instances
    )


def as_async_llm(llm: Any, *, executor: concurrent.futures.Executor | None = None) -> AsyncLLM:
    """Wrap ``llm`` into ``async (prompt) -> str``.

    Args:
        llm: A LlamaIndex LLM, a LangChain chat model / LLM / Runnable, or a sync or async
            callable ``prompt -> str``.
        executor: Thread pool for sync callables (default: none, each call runs in a daemon
            thread of its own, see :func:`run_in_daemon_thread`; a pool's workers stay busy
            with calls that hang, and non-daemon pools are joined at interpreter exit).

    Raises:
        ConfigError: ``llm`` is none of these.
    """
    if hasattr(llm, "acomplete") and callable(llm.acomplete):

        async def call_llamaindex(prompt: str) -> str:
            return response_text(await llm.acomplete(prompt))

        return call_llamaindex
    if hasattr(llm, "ainvoke") and callable(llm.ainvoke):

        async def call_runnable(prompt: str) -> str:
            return response_text(await llm.ainvoke(prompt))

        return call_runnable
    sync: Callable[[str], Any] | None = None
    if hasattr(llm, "complete") and callable(llm.complete):
        sync = llm.complete
    elif hasattr(llm, "invoke") and callable(llm.invoke):
        sync = llm.invoke
    elif callable(llm):
        if _is_async_callable(llm):

            async def call_async(prompt: str) -> str:
                return response_text(await llm(prompt))

            return call_async
        sync = llm
    if sync is None:
        msg = (
            "llm must be a LlamaIndex LLM (with acomplete), a LangChain chat model / LLM / "
            "Runnable (with ainvoke), or a callable prompt -> str (sync or async); "
            f"received {type(llm).__name__}"
        )
        raise ConfigError(msg)
    fn = sync

    async def call_in_thread(prompt: str) -> str:
        if executor is None:
            out = await run_in_daemon_thread(fn, prompt)
        else:
            out = await asyncio.get_running_loop().run_in_executor(executor, fn, prompt)
        if inspect.isawaitable(out):  # a sync-looking callable that returned a coroutine
            out = await out
        return response_text(out)

    return call_in_thread
