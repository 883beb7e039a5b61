"""One async call, ``prompt -> str``, over whatever LLM the user passed.

Detected by duck typing, so no framework is imported here (nor anywhere in :mod:`nudge_rag.querygen`):

=====================================  ====================================================
what was passed                        how it is called
=====================================  ====================================================
LlamaIndex LLM (``acomplete``)         ``(await llm.acomplete(prompt)).text``
LangChain chat model / LLM / Runnable  ``await llm.ainvoke(prompt)``; a message's ``.content``
(``ainvoke``)                          (text blocks joined), or the string itself
``async def f(prompt) -> str``         ``await f(prompt)``
``def f(prompt) -> str``               in a worker thread (one per concurrent call)
=====================================  ====================================================

Objects with only the sync twin (``complete`` / ``invoke``) run in a worker thread too.

Example:
    >>> call = as_async_llm(lambda prompt: '["What is NUDGE?"]')
    >>> asyncio.run(call("..."))
    '["What is NUDGE?"]'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from nudge_rag.errors import ConfigError

__all__ = ["AsyncLLM", "as_async_llm", "describe_llm", "response_text"]

#: What generation calls: an async function from prompt to answer text.
AsyncLLM = Callable[[str], Awaitable[str]]


def response_text(resp: Any) -> str:
    """The text of an LLM response: ``.text`` (LlamaIndex), ``.content`` (LangChain), or str."""
    if resp is None:
        return ""
    if isinstance(resp, str):
        return resp
    content = getattr(resp, "content", None)
    if content is not None and not callable(content):
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # LangChain content blocks
            parts = []
            for block in content:
                if isinstance(block, str):
                    parts.append(block)
                elif isinstance(block, dict) and isinstance(block.get("text"), str):
                    parts.append(block["text"])
            return "".join(parts)
    text = getattr(resp, "text", None)
    if isinstance(text, str):
        return text
    message = getattr(resp, "message", None)  # LlamaIndex ChatResponse
    if message is not None:
        return response_text(message)
    return str(resp)


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
        executor: Thread pool for sync callables (default: the event loop's own pool; pass one
            with as many workers as the wanted concurrency, as :func:`generate_queries` does).

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
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(executor, fn, prompt)
        if inspect.isawaitable(out):  # a sync-looking callable that returned a coroutine
            out = await out
        return response_text(out)

    return call_in_thread
