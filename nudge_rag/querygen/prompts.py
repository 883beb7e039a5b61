"""The question-writing prompt: the default, and checks on a user's own template."""

from __future__ import annotations

import re

from nudge_rag.errors import ConfigError

__all__ = ["DEFAULT_PROMPT", "check_prompt", "render_prompt"]

#: The default prompt. ``{context}`` is replaced by the chunk's text, ``{n}`` by the number of
#: questions. Only these two placeholders are substituted (with ``str.replace``), so a template may
#: contain other braces, e.g. a JSON example.
DEFAULT_PROMPT = """\
Context information is below.
---------------------
{context}
---------------------
You write search queries to test a retrieval system. Using only the context above, write {n} \
diverse questions that a user could ask and that this context answers.
- Each question must be self-contained: understandable without seeing the context. Name what it \
is about; never say "the passage", "the text", "this study" or "the document".
- Do not copy sentences from the context; ask the way a person would.
- Vary the questions: different facts, different question words.
Answer with a JSON list of {n} strings and nothing else, for example:
["First question?", "Second question?"]
"""

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_prompt(template: str) -> str:
    """Return ``template`` if it holds ``{context}`` and ``{n}`` and no other ``{name}`` field.

    Raises:
        ConfigError: A placeholder is missing, or an unknown ``{name}`` (a likely typo) is present.
    """
    if not isinstance(template, str):
        msg = f"prompt must be a str template; received {type(template).__name__}"
        raise ConfigError(msg)
    missing = [p for p in ("{context}", "{n}") if p not in template]
    if missing:
        msg = (
            f"prompt must contain the placeholders {{context}} (the chunk text) and {{n}} (the "
            f"number of questions); missing {', '.join(missing)} in {template[:80]!r}"
        )
        raise ConfigError(msg)
    unknown = sorted({m for m in _PLACEHOLDER.findall(template) if m not in {"context", "n"}})
    if unknown:
        msg = (
            f"prompt has unknown placeholders {['{' + u + '}' for u in unknown]}; only {{context}} "
            "and {n} are filled in"
        )
        raise ConfigError(msg)
    return template


def render_prompt(template: str, context: str, n: int) -> str:
    """Fill ``{n}`` then ``{context}`` (so braces inside the chunk text are left alone)."""
    return template.replace("{n}", str(n)).replace("{context}", context)
