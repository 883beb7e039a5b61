"""Turn what an LLM really answers into clean questions, in time linear in the answer.

LLMs asked for "a JSON list of questions" return, in practice: the JSON list; the list inside a
```` ```json ```` fence; the list followed by prose; numbered or bulleted lines; a preamble
("Here are 3 questions:"); an empty answer; or an answer cut off by a token limit. :func:`parse_questions`
handles all of these, and :func:`clean_questions` removes what would make bad training data:
duplicates and near-duplicates, too-short and too-long questions, and questions that copy the chunk.

Hostile or broken answers are bounded, not trusted:

* an answer is cut to :data:`MAX_ANSWER_CHARS` (64 kB, ~30 times what any sane list of questions
  takes) before it is read; a JSON list cut there keeps its complete strings;
* a question longer than :data:`MAX_QUESTION_CHARS` (500) is dropped (reason ``"too_long"``);
* lone surrogates (``"\\ud800"``, bytes decoded with ``surrogateescape``) become U+FFFD, so
  every question kept encodes as UTF-8;
* no regex here can backtrack more than a bounded amount: leading whitespace, bullets, quotes and
  bold markers are stripped by moving two indices (no repeated copies), bullet patterns use
  bounded repeats, and fences are found with ``str.find``; JSON nested too deep to decode
  (``RecursionError``) is read as prose;
* the near-duplicate test is linear in the two questions (token-set Jaccard, then the Dice
  coefficient of character bigrams) instead of ``difflib.SequenceMatcher``, which is quadratic
  and took 40 s on two long questions.

``benchmarks/bench_parsing.py`` times all of this on degenerate inputs up to 1 MB.

Example:
    >>> parse_questions('Here are 2 questions:\\n1. What is NUDGE?\\n2) Why move records?')
    ['What is NUDGE?', 'Why move records?']
    >>> parse_questions('```json\\n["What is NUDGE?", "Why move rec')   # truncated JSON
    ['What is NUDGE?']
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, MutableMapping, Sequence

from nudge_rag.errors import UnusableAnswerError

__all__ = [
    "CHAR_NEAR_THRESHOLD",
    "MAX_ANSWER_CHARS",
    "MAX_QUESTION_CHARS",
    "clean_questions",
    "longest_common_words",
    "near_duplicate",
    "normalize_question",
    "parse_questions",
    "scrub_surrogates",
]

#: Characters of an answer that are read; the rest is cut off before parsing.
MAX_ANSWER_CHARS = 65_536
#: Longest question kept, in characters (after whitespace is collapsed).
MAX_QUESTION_CHARS = 500
#: Lowest Dice coefficient of character bigrams at which two questions are near-duplicates
#: (or the ``near_threshold`` passed, if higher). Calibrated against the ``SequenceMatcher``
#: ratio >= 0.9 rule it replaces: see ``benchmarks/results/parsing.md``.
CHAR_NEAR_THRESHOLD = 0.88

#: A question-drop counter: reason -> count (e.g. a :class:`collections.Counter`).
DropCounts = MutableMapping[str, int]

# A list marker at the start of a line (matched at a position, after leading whitespace). Every
# repeat is bounded, so a failed match costs O(1) however long the whitespace after "Q" is.
_BULLET_ALTS = r"""
        [Qq](?:uestion)?[ \t]{0,4}(?:\d{1,4}[ \t]{0,4})?[:.)\-]   # Q1: / Question 2.
      | \(?\d{1,3}[ \t]{0,4}[.):\]]                               # 1. 1) (1) 1:
      | [-*•·–—](?=\s)                                            # - * •
      | \(?[a-hA-H][.)](?=\s)                                     # a) b.
"""
_BULLET = re.compile(f"(?:{_BULLET_ALTS})", re.X)
# A run of markers ("- 1. Q2:"), stripped in one call. Each marker starts with a character that
# is not whitespace, so the whitespace between two of them splits one way only: no backtracking.
_BULLET_RUN = re.compile(f"(?:{_BULLET_ALTS})(?:\\s*(?:{_BULLET_ALTS}))*", re.X)
# Matched on the first 40 characters of an item only (see _squash_head): bounded work.
_PREAMBLE = re.compile(
    r"\s*(?:sure|certainly|okay|ok|of course|here\s+(?:are|is)|below\s+(?:are|is)|the\s+following|"
    r"these\s+are|i\s+(?:have|will|can)|questions?\s*:|answer\s*:|output\s*:|json\s*:)",
    re.I,
)
# One JSON string literal after optional whitespace and one optional comma: the two whitespace
# runs are separated by the comma, so a run not followed by a string fails in one pass. The
# literal is the unrolled loop "[^"\\]*(?:\\.[^"\\]*)*": a backslash starts the only way out of
# a run, so there is one way to match and an unterminated literal fails in one pass.
_JSON_STRING = re.compile(r'\s*(?:,\s*)?("[^"\\]*(?:\\.[^"\\]*)*")', re.S)
_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+", re.U)
_SURROGATE = re.compile("[\ud800-\udfff]")
_QUOTES = frozenset("\"'“”‘’`")
_FENCE_TAG = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_JSON_KEYS_ITEM = ("question", "query", "q", "text")
_JSON_KEYS_LIST = ("questions", "queries", "items", "results")


def _count(drops: DropCounts | None, reason: str, k: int = 1) -> None:
    if drops is not None and k:
        drops[reason] = drops.get(reason, 0) + k


def scrub_surrogates(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (a valid pair is joined into its char)."""
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _skip_ws(s: str, i: int, j: int) -> int:
    m = _WS.match(s, i, j)
    return m.end() if m else i


def _trim(s: str, i: int, j: int) -> tuple[int, int]:
    i = _skip_ws(s, i, j)
    while j > i and s[j - 1].isspace():
        j -= 1
    return i, j


def _strip_item(s: str) -> str:
    """Strip whitespace, list markers, one enclosing quote pair, trailing commas and ``**bold**``,
    repeatedly, until nothing changes. Two indices move inward: linear in ``len(s)``."""
    i, j = _trim(s, 0, len(s))
    while True:
        before = (i, j)
        m = _BULLET_RUN.match(s, i, j)
        if m:
            i, j = _trim(s, m.end(), j)
        if j - i >= 2 and s[i] in _QUOTES and s[j - 1] in _QUOTES:  # enclosing pairs only
            k = 1  # '""""x""""': as many pairs as both runs of quotes allow, in one step
            while k < (j - i) // 2 and s[i + k] in _QUOTES and s[j - 1 - k] in _QUOTES:
                k += 1
            i, j = _trim(s, i + k, j - k)
        while j > i and s[j - 1] == ",":
            j -= 1
        i, j = _trim(s, i, j)
        if j - i >= 4 and s.startswith("**", i, j) and s.endswith("**", i, j):  # markdown bold
            i, j = _trim(s, i + 2, j - 2)
        if (i, j) == before:
            return s[i:j]


def _is_marked(line: str) -> bool:
    """Whether a line starts (after whitespace) with a number, bullet or ``Q1:`` label."""
    return _BULLET.match(line, _skip_ws(line, 0, len(line))) is not None


def _json_strings(obj: object) -> list[str]:
    """Strings of a parsed JSON value: a list of strings, of {"question": ...}, or a dict of lists."""
    for _ in range(4):  # {"questions": {"items": [...]}}: unwrap a few dicts, iteratively
        if not isinstance(obj, dict):
            break
        key = next((k for k in _JSON_KEYS_LIST if k in obj), None)
        if key is None:
            return []
        obj = obj[key]
    out: list[str] = []
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, list):
        for x in obj:
            if isinstance(x, str):
                out.append(x)
            elif isinstance(x, dict):
                for key in _JSON_KEYS_ITEM:
                    if isinstance(x.get(key), str):
                        out.append(x[key])
                        break
    return out


def _salvage_json_list(text: str) -> list[str] | None:
    """Complete strings of a JSON list, even if the list is cut off or followed by prose."""
    start = text.find("[")
    if start < 0:
        return None
    # Whole list first (the first balanced one, prose after it ignored).
    try:
        obj, _ = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):  # not JSON, cut off, or nested too deep to decode
        pass
    else:
        got = _json_strings(obj)
        if got or obj == []:
            return got
    # Truncated: read complete string literals one by one.
    out: list[str] = []
    pos = start + 1
    while True:
        m = _JSON_STRING.match(text, pos)
        if not m:
            break
        try:
            out.append(json.loads(m.group(1)))
        except ValueError:  # a control character or a bad escape inside the literal
            break
        pos = m.end()
    return out or None


def _fenced_blocks(text: str) -> list[str]:
    """Bodies of ```` ``` ```` fences (language tag and leading whitespace skipped); an unclosed
    fence runs to the end. Found with ``str.find``: linear."""
    out: list[str] = []
    n = len(text)
    pos = 0
    while True:
        i = text.find("```", pos)
        if i < 0:
            return out
        j = i + 3
        while j < n and text[j] in _FENCE_TAG:
            j += 1
        j = _skip_ws(text, j, n)
        end = text.find("```", j)
        if end < 0:
            out.append(text[j:])
            return out
        out.append(text[j:end])
        pos = end + 3


def _looks_truncated(line: str) -> bool:
    s = line.rstrip()
    return not s.endswith(("?", ".", "!", ")", '"', "'", "”", "’"))


def _bounded(items: Iterable[str], max_chars: int | None, drops: DropCounts | None) -> list[str]:
    out = []
    for q in items:
        if not q:
            continue
        q = scrub_surrogates(q)  # JSON escapes ("\\ud800") can make them too
        if max_chars is not None and len(q) > max_chars:
            _count(drops, "too_long")
            continue
        out.append(q)
    return out


def parse_questions(
    answer: str | None,
    *,
    max_answer_chars: int | None = MAX_ANSWER_CHARS,
    max_question_chars: int | None = MAX_QUESTION_CHARS,
    drops: DropCounts | None = None,
) -> list[str]:
    """Extract the questions of an LLM answer, in order, stripped of numbering and quotes.

    Understands: a JSON list of strings (or of ``{"question": ...}`` objects, or
    ``{"questions": [...]}``), possibly inside a code fence or followed by prose; a JSON list cut
    off mid-string (the complete strings are kept); one question per line, numbered (``1.``,
    ``2)``, ``(3)``, ``Q4:``) or bulleted (``-``, ``*``, ``•``); preamble and closing lines that are
    not questions. In a line-based answer that was cut off, a last line that does not end like a
    sentence is dropped. An empty or whitespace answer gives ``[]``.

    Time and output are linear in ``min(len(answer), max_answer_chars)``, whatever the answer.

    Args:
        answer: The LLM's answer text (``None`` reads as empty).
        max_answer_chars: Characters read; the rest is cut off first (``None``: read it all).
        max_question_chars: Longer questions are dropped (``None``: keep them).
        drops: A counter to add dropped questions to, by reason (``"too_long"``).

    Raises:
        UnusableAnswerError: ``answer`` is not a ``str`` (reason ``"not_text"``).
    """
    if answer is None:
        return []
    if not isinstance(answer, str):
        msg = f"an LLM answer must be text (str); received {type(answer).__name__}"
        raise UnusableAnswerError(msg, reason="not_text")
    if max_answer_chars is not None and len(answer) > max_answer_chars:
        answer = answer[:max_answer_chars]
    if not answer or answer.isspace():
        return []
    text = unicodedata.normalize("NFKC", answer).replace("\r\n", "\n").strip()
    fenced = _fenced_blocks(text)
    candidates = [f for f in fenced if f.strip()] + [text]
    for cand in candidates:
        if "[" in cand:
            got = _salvage_json_list(cand)
            if got is not None and (got or cand.lstrip().startswith("[")):
                return _bounded((_strip_item(x) for x in got), max_question_chars, drops)
        stripped = cand.strip()
        if stripped.startswith("{"):
            try:
                got = _json_strings(json.loads(stripped))
            except (ValueError, RecursionError):
                got = []
            if got:
                return _bounded((_strip_item(x) for x in got), max_question_chars, drops)
    body = fenced[0] if fenced and fenced[0].strip() else text
    items: list[tuple[str, bool]] = []  # (text, was it marked as a list item)
    for ln in body.split("\n"):
        if not ln or ln.isspace():
            continue
        item = _strip_item(ln)
        if not item or item in {"[", "]", "```"}:
            continue
        items.append((item, _is_marked(ln)))
    if not items:
        return []
    any_marked = any(m for _, m in items)
    out: list[str] = []
    for i, (item, marked) in enumerate(items):
        if any_marked and not marked and not item.endswith("?"):
            continue  # prose around a numbered / bulleted list
        if not marked and not item.endswith("?") and _PREAMBLE.match(_squash_head(item)):
            continue  # "Here are 3 questions:", "Sure, ..."
        if i == len(items) - 1 and len(items) > 1 and _looks_truncated(item):
            continue  # cut off by a token limit
        out.append(item)
    return _bounded(out, max_question_chars, drops)


def _squash_head(item: str) -> str:
    """The first 40 characters of ``item``, whitespace runs collapsed to one space (enough for
    the preamble pattern, whose phrases are short)."""
    return " ".join(item[:40].split())


def normalize_question(q: str) -> str:
    """Lower case, NFKC, punctuation dropped, whitespace collapsed: the exact-duplicate key."""
    q = unicodedata.normalize("NFKC", q).lower()
    return " ".join(_TOKEN.findall(q))


class _Features:
    """What the near-duplicate test compares, computed once per question (the bigram counts
    only when the word sets did not decide)."""

    __slots__ = ("_bigrams", "n_bigrams", "norm", "tokens")

    def __init__(self, q: str) -> None:
        self.norm = normalize_question(q)
        self.tokens = frozenset(self.norm.split())
        self.n_bigrams = len(self.norm) + 1  # of " norm ", padded with a space each side
        self._bigrams: Counter[str] | None = None

    @property
    def bigrams(self) -> Counter[str]:
        if self._bigrams is None:
            padded = f" {self.norm} "
            self._bigrams = Counter(a + b for a, b in itertools.pairwise(padded))
        return self._bigrams


def _near(fa: _Features, fb: _Features, threshold: float) -> bool:
    if fa.tokens and fb.tokens:
        inter = len(fa.tokens & fb.tokens)
        if inter >= threshold * (len(fa.tokens) + len(fb.tokens) - inter):
            return True
    t = max(threshold, CHAR_NEAR_THRESHOLD)
    na, nb = fa.n_bigrams, fb.n_bigrams
    if 2 * min(na, nb) < t * (na + nb):  # the lengths alone rule it out
        return False
    ba, bb = fa.bigrams, fb.bigrams
    small, big = (ba, bb) if len(ba) <= len(bb) else (bb, ba)
    common = sum(min(c, big.get(g, 0)) for g, c in small.items())
    return 2 * common >= t * (na + nb)


def near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """Whether two questions are near-duplicates, in time linear in their lengths.

    True if the Jaccard index of their word sets is at least ``threshold``, or if the Dice
    coefficient of the character bigrams of their normalised forms (:func:`normalize_question`,
    padded with a space) is at least ``max(threshold, CHAR_NEAR_THRESHOLD)``: the second test
    catches typos and inflections ("statin" / "statins"), as the ``SequenceMatcher`` ratio did.
    """
    return _near(_Features(a), _Features(b), threshold)


def _word_positions(text: str) -> dict[str, list[int]]:
    where: dict[str, list[int]] = {}
    for i, w in enumerate(_TOKEN.findall(text.lower())):
        where.setdefault(w, []).append(i)
    return where


def _longest_run(query: str, where: dict[str, list[int]]) -> int:
    best = 0
    prev: dict[int, int] = {}
    for w in _TOKEN.findall(query.lower()):
        cur: dict[int, int] = {}
        for i in where.get(w, ()):
            cur[i] = prev.get(i - 1, 0) + 1
            if cur[i] > best:
                best = cur[i]
        prev = cur
    return best


def longest_common_words(query: str, text: str) -> int:
    """Length, in words, of the longest run of consecutive words the query shares with the text."""
    return _longest_run(query, _word_positions(text))


def clean_questions(
    questions: Iterable[str],
    *,
    context: str | None = None,
    n: int | None = None,
    min_words: int = 3,
    min_chars: int = 10,
    max_chars: int | None = MAX_QUESTION_CHARS,
    max_copy_words: int | None = 12,
    max_copy_fraction: float = 0.9,
    near_threshold: float | None = 0.8,
    seen: Sequence[str] = (),
    drops: DropCounts | None = None,
) -> list[str]:
    """Drop duplicates, near-duplicates, too-short and too-long questions and copies of the chunk.

    Every question is compared with the ones kept before it (linear time per pair), so the cost
    is linear in the total length of ``questions`` times the number kept (at most ``n``).

    Args:
        questions: Parsed questions, in preference order.
        context: The chunk text; a question sharing a run of more than ``max_copy_words``
            consecutive words with it, or whose words are a run of the chunk covering at least
            ``max_copy_fraction`` of the question, is a copy, not a question.
        n: Keep at most this many.
        min_words: Fewer words than this is too short.
        min_chars: Fewer characters than this is too short.
        max_chars: More characters than this (after whitespace is collapsed) is too long
            (``None``: no bound).
        max_copy_words: Longest shared run of words allowed (``None``: no copy check).
        max_copy_fraction: Share of the question's words allowed to be one run of the chunk
            (for questions of ``max_copy_words`` words or fewer this only applies from 8 words).
        near_threshold: Token Jaccard at or above which two questions are near-duplicates (see
            :func:`near_duplicate`; ``None``: keep them).
        seen: Questions already kept (e.g. for the same chunk in an earlier run).
        drops: A counter to add dropped questions to, by reason: ``"too_short"``,
            ``"too_long"``, ``"duplicate"``, ``"copy"``, ``"near_duplicate"``, and ``"extra"``
            for those left once ``n`` were kept.
    """
    qs = list(questions)
    kept: list[str] = []
    keys = {normalize_question(s) for s in seen}
    pool = [_Features(s) for s in seen] if near_threshold is not None else []
    where = _word_positions(context) if context and max_copy_words is not None else None
    for idx, q in enumerate(qs):
        q = scrub_surrogates(" ".join(str(q).split()))
        if max_chars is not None and len(q) > max_chars:
            _count(drops, "too_long")
            continue
        nwords = len(_TOKEN.findall(q))
        if len(q) < min_chars or nwords < min_words:
            _count(drops, "too_short")
            continue
        key = normalize_question(q)
        if not key or key in keys:
            _count(drops, "duplicate" if key else "too_short")
            continue
        if where is not None and max_copy_words is not None:
            run = _longest_run(q, where)
            if run > max_copy_words or (nwords >= 8 and run >= max_copy_fraction * nwords):
                _count(drops, "copy")
                continue
        if near_threshold is not None:
            feats = _Features(q)
            if any(_near(feats, p, near_threshold) for p in pool):
                _count(drops, "near_duplicate")
                continue
            pool.append(feats)
        keys.add(key)
        kept.append(q)
        if n is not None and len(kept) >= n:
            _count(drops, "extra", len(qs) - idx - 1)
            break
    return kept
