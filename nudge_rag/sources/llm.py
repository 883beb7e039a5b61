"""``--llm module:function``: the LLM a user's own factory makes."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from nudge_rag.errors import ConfigError

__all__ = ["load_llm"]


def load_llm(spec: str) -> Any:
    """Import ``module:function`` and return the LLM it makes.

    ``function()`` (no required argument) is called and must return an LLM (LlamaIndex,
    LangChain, or a callable ``prompt -> str``); a function that takes one argument is used as
    the LLM itself (``function(prompt) -> str``). The working directory is importable.

    Raises:
        ConfigError: Malformed spec, module or attribute not found, or the factory failed.
    """
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        msg = f"--llm must be module:function (e.g. my_llms:make_llm); received {spec!r}"
        raise ConfigError(msg)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:
        msg = f"--llm {spec}: cannot import module {mod_name!r} ({type(exc).__name__}: {exc})"
        raise ConfigError(msg) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            msg = f"--llm {spec}: module {mod_name!r} has no attribute {attr!r}"
            raise ConfigError(msg)
        obj = getattr(obj, part)
    if not callable(obj):
        msg = f"--llm {spec}: {attr!r} is a {type(obj).__name__}, not a function"
        raise ConfigError(msg)
    try:
        params = inspect.signature(obj).parameters.values()
        required = [
            p
            for p in params
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        required = []
    if required:
        return obj  # the LLM itself: prompt -> answer
    try:
        llm = obj()
    except Exception as exc:
        msg = f"--llm {spec}: the factory raised {type(exc).__name__}: {exc}"
        raise ConfigError(msg) from exc
    if llm is None:
        msg = f"--llm {spec}: the factory returned None; it must return an LLM or a callable"
        raise ConfigError(msg)
    return llm
