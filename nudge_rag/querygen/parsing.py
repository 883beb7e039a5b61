"""Turn what an LLM really answers into clean questions.

LLMs asked for "a JSON list of questions" return, in practice: the JSON list; the list inside a
```` ```json ```` fence; the list followed by prose; numbered or bulleted lines; a preamble
("Here are 3 questions:"); an empty answer; or an answer cut off by a token limit. :func:`parse_questions`
handles all of these, and :func:`clean_questions` removes what would make bad training data:
duplicates and near-duplicates, too-short questions, and questions that copy the chunk.

Example:
    >>> parse_questions('Here are 2 questions:\\n1. What is NUDGE?\\n2) Why move records?')
    ['What is NUDGE?', 'Why move records?']
    >>> parse_questions('```json\\n["What is NUDGE?", "Why move rec')   # truncated JSON
    ['What is NUDGE?']
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher

__all__ = [
    "clean_questions",
    "longest_common_words",
    "near_duplicate",
    "normalize_question",
    "parse_questions",
]

_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)(?:```|$)", re.S)
_BULLET = re.compile(
    r"""^\s*(?:
        (?:[Qq](?:uestion)?\s*\d*\s*[:.)\-]\s*)         # Q1: / Question 2.
      | (?:\(?\d{1,3}\s*[.):\]]\s*)                     # 1. 1) (1) 1:
      | (?:[-*•·–—]\s+)                                 # - * •
      | (?:\(?[a-hA-H][.)]\s+)                          # a) b.
    )""",
    re.X,
)
_PREAMBLE = re.compile(
    r"^\s*(?:sure|certainly|okay|ok|of course|here\s+(?:are|is)|below\s+(?:are|is)|the\s+following|"
    r"these\s+are|i\s+(?:have|will|can)|questions?\s*:|answer\s*:|output\s*:|json\s*:)",
    re.I,
)
_TOKEN = re.compile(r"\w+", re.U)
_QUOTES = "\"'“”‘’`"


def _strip_item(s: str) -> str:
    s = s.strip()
    prev = None
    while prev != s:
        prev = s
        s = _BULLET.sub("", s, count=1).strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:  # an enclosing pair only
            s = s[1:-1].strip()
        s = s.rstrip(",").strip()
        s = re.sub(r"^\*\*(.*)\*\*$", r"\1", s).strip()  # markdown bold
    return s


def _json_strings(obj: object) -> list[str]:
    """Strings of a parsed JSON value: a list of strings, of {"question": ...}, or a dict of lists."""
    out: list[str] = []
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, list):
        for x in obj:
            if isinstance(x, str):
                out.append(x)
            elif isinstance(x, dict):
                for key in ("question", "query", "q", "text"):
                    if isinstance(x.get(key), str):
                        out.append(x[key])
                        break
    elif isinstance(obj, dict):
        for key in ("questions", "queries", "items", "results"):
            if key in obj:
                return _json_strings(obj[key])
    return out


def _salvage_json_list(text: str) -> list[str] | None:
    """Complete strings of a JSON list, even if the list is cut off or followed by prose."""
    start = text.find("[")
    if start < 0:
        return None
    # Whole list first (the first balanced one, prose after it ignored).
    dec = json.JSONDecoder()
    try:
        obj, _ = dec.raw_decode(text[start:])
        got = _json_strings(obj)
        if got or obj == []:
            return got
    except ValueError:
        pass
    # Truncated: read complete string literals one by one.
    body = text[start + 1 :]
    out: list[str] = []
    pos = 0
    string = re.compile(r'\s*,?\s*("(?:[^"\\]|\\.)*")', re.S)
    while True:
        m = string.match(body, pos)
        if not m:
            break
        try:
            out.append(json.loads(m.group(1)))
        except ValueError:  # pragma: no cover - the regex only matches valid literals
            break
        pos = m.end()
    return out or None


def _looks_truncated(line: str) -> bool:
    s = line.rstrip()
    return not s.endswith(("?", ".", "!", ")", '"', "'", "”", "’"))


def parse_questions(answer: str | None) -> list[str]:
    """Extract the questions of an LLM answer, in order, stripped of numbering and quotes.

    Understands: a JSON list of strings (or of ``{"question": ...}`` objects, or
    ``{"questions": [...]}``), possibly inside a code fence or followed by prose; a JSON list cut
    off mid-string (the complete strings are kept); one question per line, numbered (``1.``,
    ``2)``, ``(3)``, ``Q4:``) or bulleted (``-``, ``*``, ``•``); preamble and closing lines that are
    not questions. In a line-based answer that was cut off, a last line that does not end like a
    sentence is dropped. An empty or whitespace answer gives ``[]``.
    """
    if not answer or not answer.strip():
        return []
    text = unicodedata.normalize("NFKC", str(answer)).replace("\r\n", "\n").strip()
    fenced = _FENCE.findall(text)
    candidates = [f for f in fenced if f.strip()] + [text]
    for cand in candidates:
        if "[" in cand:
            got = _salvage_json_list(cand)
            if got is not None and (got or cand.strip().startswith("[")):
                return [q for q in (_strip_item(x) for x in got) if q]
        stripped = cand.strip()
        if stripped.startswith("{"):
            try:
                got = _json_strings(json.loads(stripped))
            except ValueError:
                got = []
            if got:
                return [q for q in (_strip_item(x) for x in got) if q]
    body = fenced[0] if fenced and fenced[0].strip() else text
    lines = [ln for ln in body.split("\n") if ln.strip()]
    items: list[tuple[str, bool]] = []  # (text, was it marked as a list item)
    for ln in lines:
        marked = bool(_BULLET.match(ln))
        item = _strip_item(ln)
        if not item or item in {"[", "]", "```"}:
            continue
        items.append((item, marked))
    if not items:
        return []
    any_marked = any(m for _, m in items)
    out: list[str] = []
    for i, (item, marked) in enumerate(items):
        if any_marked and not marked and not item.endswith("?"):
            continue  # prose around a numbered / bulleted list
        if not marked and _PREAMBLE.match(item) and item.endswith(":"):
            continue
        if not marked and _PREAMBLE.match(item) and not item.endswith("?"):
            continue
        if i == len(items) - 1 and len(items) > 1 and _looks_truncated(item):
            continue  # cut off by a token limit
        out.append(item)
    return out


def normalize_question(q: str) -> str:
    """Lower case, NFKC, punctuation dropped, whitespace collapsed: the exact-duplicate key."""
    q = unicodedata.normalize("NFKC", q).lower()
    return " ".join(_TOKEN.findall(q))


def _tokens(q: str) -> set[str]:
    return set(_TOKEN.findall(unicodedata.normalize("NFKC", q).lower()))


def near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """Whether two questions are near-duplicates: token Jaccard or character ratio >= threshold."""
    ta, tb = _tokens(a), _tokens(b)
    if ta and tb and len(ta & tb) / len(ta | tb) >= threshold:
        return True
    na, nb = normalize_question(a), normalize_question(b)
    return SequenceMatcher(None, na, nb, autojunk=False).ratio() >= max(threshold, 0.9)


def longest_common_words(query: str, text: str) -> int:
    """Length, in words, of the longest run of consecutive words the query shares with the text."""
    qw = _TOKEN.findall(query.lower())
    tw = _TOKEN.findall(text.lower())
    if not qw or not tw:
        return 0
    # dynamic programming over the (short) query; positions of each text word
    where: dict[str, list[int]] = {}
    for i, w in enumerate(tw):
        where.setdefault(w, []).append(i)
    best = 0
    prev: dict[int, int] = {}
    for w in qw:
        cur: dict[int, int] = {}
        for i in where.get(w, ()):
            cur[i] = prev.get(i - 1, 0) + 1
            if cur[i] > best:
                best = cur[i]
        prev = cur
    return best


def clean_questions(
    questions: Iterable[str],
    *,
    context: str | None = None,
    n: int | None = None,
    min_words: int = 3,
    min_chars: int = 10,
    max_copy_words: int | None = 12,
    max_copy_fraction: float = 0.9,
    near_threshold: float | None = 0.8,
    seen: Sequence[str] = (),
) -> list[str]:
    """Drop duplicates, near-duplicates, too-short questions and verbatim copies of the chunk.

    Args:
        questions: Parsed questions, in preference order.
        context: The chunk text; a question sharing a run of more than ``max_copy_words``
            consecutive words with it, or whose words are a run of the chunk covering at least
            ``max_copy_fraction`` of the question, is a copy, not a question.
        n: Keep at most this many.
        min_words: Fewer words than this is too short.
        min_chars: Fewer characters than this is too short.
        max_copy_words: Longest shared run of words allowed (``None``: no copy check).
        max_copy_fraction: Share of the question's words allowed to be one run of the chunk
            (for questions of ``max_copy_words`` words or fewer this only applies from 8 words).
        near_threshold: Token Jaccard at or above which two questions are near-duplicates (``None``: keep them).
        seen: Questions already kept (e.g. for the same chunk in an earlier run).
    """
    kept: list[str] = []
    keys = {normalize_question(s) for s in seen}
    pool = list(seen)
    for q in questions:
        q = " ".join(str(q).split())
        if len(q) < min_chars or len(_TOKEN.findall(q)) < min_words:
            continue
        key = normalize_question(q)
        if not key or key in keys:
            continue
        if context and max_copy_words is not None:
            run = longest_common_words(q, context)
            nwords = len(_TOKEN.findall(q))
            if run > max_copy_words or (nwords >= 8 and run >= max_copy_fraction * nwords):
                continue
        if near_threshold is not None and any(near_duplicate(q, p, near_threshold) for p in pool):
            continue
        keys.add(key)
        pool.append(q)
        kept.append(q)
        if n is not None and len(kept) >= n:
            break
    return kept
