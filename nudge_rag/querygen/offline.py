"""Pseudo-queries without a generator model: the offline default of :func:`generate_queries`.

Retrieval research offers several ways to make training queries from documents alone:

* **title / lead as query** (the title of a page, the first sentence of a chunk): short, topical,
  written to summarise; the closest thing to a real query a document carries.
* **salient-term queries** (keyword or keyphrase queries, as in RM3-style expansion or
  doc2query-free query simulation): the few terms of a chunk with the highest TF-IDF against the
  rest of the corpus, in their order of appearance. Real queries are short and name what is
  *distinctive* about their answer, which is exactly what IDF weighting picks out.
* **salient sentence selection**: the sentence whose terms carry the most TF-IDF mass.
* **independent cropping** (Contriever, Izacard et al. 2022): random contiguous spans.

For NUDGE the question is not "which queries look real" but "which direction does moving a record
toward its pseudo-queries take it". Every record gets queries here (unlike real training data,
where a few records move), so the move is a corpus-wide transform: it helps real queries only if
it pulls each record toward what distinguishes it from the others (salient terms, the lead), and
it hurts if it pulls records toward arbitrary parts of themselves (random spans are mostly
boilerplate: "we found", "results show"). The default order per chunk is therefore: salient-term
query, lead (title-like first sentence), then alternating further keyword queries (next-most
salient terms) and salient sentences. Asking for ``n`` queries takes the first ``n`` of that list,
so the queries for ``n = 2`` are a subset of those for ``n = 4``.

Measured (all-MiniLM-L6-v2, REAL test queries of the paper split, ``benchmarks/bench_querygen.py``):
moving records toward offline queries never helped SciFact at any γ (-0.25 point at γ = 0.01,
-2 at 0.05) and helped NFCorpus only slightly (+0.6 at γ = 0.01-0.02, -0.5 at 0.2). Validation on
held-out offline queries *of another kind than the training ones* (the default ``n = 2`` trains
on one kind per chunk and holds out the other) tracks this and picks γ = 0 or nearly so, so NUDGE on
offline queries is safe (change within ±0.1 point) rather than useful. An LLM, or real queries,
are what make NUDGE gain.

Everything is deterministic for a given corpus, seed and ``n``; only numpy and the standard library
are used.

Example:
    >>> gen = OfflineGenerator()
    >>> chunks = {"a": "Statins and breast cancer survival. Statin users had lower breast cancer "
    ...           "mortality in a Finnish cohort.", "b": "Asthma and diet. Fruit intake "
    ...           "lowered asthma symptoms in children."}
    >>> gen.generate(chunks, 2)["a"]
    ['statins breast cancer cohort', 'Statins and breast cancer survival']
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from nudge_rag._util import check_positive_int
from nudge_rag.errors import ConfigError

__all__ = ["OfflineGenerator", "OfflineStrategy"]

OfflineStrategy = Literal["mixed", "keywords", "lead", "sentences", "spans"]
_STRATEGIES = ("mixed", "keywords", "lead", "sentences", "spans")

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-']*")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])|\n{1,}")

# A small English stop list: function words, plus the boilerplate of abstracts and reports that
# would otherwise look salient in a small corpus.
_STOP = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "although",
        "am",
        "among",
        "an",
        "and",
        "any",
        "are",
        "aren't",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "cannot",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "either",
        "et",
        "al",
        "etc",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "however",
        "i",
        "if",
        "in",
        "into",
        "is",
        "isn't",
        "it",
        "its",
        "itself",
        "just",
        "least",
        "less",
        "like",
        "made",
        "make",
        "many",
        "may",
        "me",
        "might",
        "more",
        "most",
        "much",
        "must",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "one",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "per",
        "same",
        "shall",
        "she",
        "should",
        "since",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "though",
        "through",
        "thus",
        "to",
        "too",
        "two",
        "under",
        "until",
        "up",
        "upon",
        "us",
        "use",
        "used",
        "using",
        "very",
        "via",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "whether",
        "which",
        "while",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "within",
        "without",
        "would",
        "yet",
        "you",
        "your",
        "yours",
        "yourself",
        "also",
        "among",
        "based",
        "between",
        "both",
        "can",
        "compared",
        "data",
        "different",
        "effect",
        "effects",
        "first",
        "found",
        "group",
        "groups",
        "high",
        "higher",
        "however",
        "including",
        "increased",
        "level",
        "levels",
        "low",
        "lower",
        "new",
        "non",
        "number",
        "observed",
        "patients",
        "p",
        "result",
        "results",
        "showed",
        "shown",
        "significant",
        "significantly",
        "studies",
        "study",
        "suggest",
        "suggests",
        "three",
        "total",
        "well",
        "within",
        "years",
        "year",
        "associated",
        "analysis",
    ]
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _norm(word: str) -> str:
    w = word.lower().strip("-'")
    # light plural folding so "statins" and "statin" count as one term
    if len(w) > 4 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    return w


def _is_term(w: str) -> bool:
    return len(w) > 2 and w not in _STOP and not w.replace(".", "").isdigit()


def split_sentences(text: str) -> list[str]:
    """Split a text into sentences (punctuation followed by a capital, or line breaks)."""
    return [s.strip() for s in _SENT.split(text) if s and s.strip()]


@dataclass(frozen=True, kw_only=True)
class OfflineGenerator:
    """Make pseudo-queries from chunk texts alone: no LLM, no model, deterministic.

    Args:
        strategy: ``"mixed"`` (default: salient terms, lead, then more keyword and sentence
            queries), or one kind only: ``"keywords"``, ``"lead"`` (first sentence, then the
            following ones), ``"sentences"`` (most salient sentences), ``"spans"`` (random crops,
            Contriever-style; for comparison, not recommended).
        keywords: Terms per keyword query.
        max_words: Sentences and spans are cut to this many words.
        seed: Seed of the random choices (spans only).

    The salience of a term is ``tf * idf`` with the document frequency counted over the chunks
    passed to :meth:`generate` (the whole store, not only a sample), so terms that every chunk
    shares (boilerplate) are never chosen.
    """

    strategy: OfflineStrategy = "mixed"
    keywords: int = 4
    max_words: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            msg = f"strategy must be one of {_STRATEGIES}; received {self.strategy!r}"
            raise ConfigError(msg)
        check_positive_int(self.keywords, "keywords")
        if self.max_words < 3:
            msg = f"max_words must be >= 3; received {self.max_words}"
            raise ConfigError(msg)

    @property
    def fingerprint(self) -> str:
        """Identifies the generator's settings (part of the cache key)."""
        return f"offline-v1:{self.strategy}:{self.keywords}:{self.max_words}:{self.seed}"

    # ------------------------------------------------------------------------------------
    def document_frequencies(self, texts: Sequence[str]) -> tuple[Counter[str], int]:
        """Document frequency of each normalised term over ``texts``, and the number of texts."""
        df: Counter[str] = Counter()
        for t in texts:
            df.update({_norm(w) for w in _words(t)})
        return df, len(texts)

    def generate(
        self,
        chunks: Mapping[str, str],
        n: int,
        *,
        only: Sequence[str] | None = None,
        df: tuple[Counter[str], int] | None = None,
    ) -> dict[str, list[str]]:
        """Up to ``n`` queries per chunk, keyed by chunk id.

        Args:
            chunks: chunk id -> text (the whole store: it gives the term statistics).
            n: Queries per chunk.
            only: Generate for these chunk ids only (a sample), still with statistics from all.
            df: Precomputed :meth:`document_frequencies` of ``chunks``.
        """
        check_positive_int(n, "queries_per_chunk")
        counts, n_docs = df if df is not None else self.document_frequencies(list(chunks.values()))
        ids = list(chunks) if only is None else list(only)
        return {cid: self.for_chunk(chunks[cid], n, counts, n_docs, cid) for cid in ids}

    def for_chunk(
        self, text: str, n: int, df: Mapping[str, int], n_docs: int, key: str = ""
    ) -> list[str]:
        """Up to ``n`` distinct queries for one chunk."""
        words = _words(text)
        if not words:
            return []
        idf = {
            t: math.log((n_docs + 1) / (df.get(t, 0) + 1)) + 1.0 for t in {_norm(w) for w in words}
        }
        tf = Counter(_norm(w) for w in words if _is_term(_norm(w)))
        salience = {t: c * idf[t] for t, c in tf.items()}
        ranked_terms = sorted(salience, key=lambda t: (-salience[t], t))
        sentences = split_sentences(text) or [text]
        rng = random.Random(f"{self.seed}:{key}:{len(text)}")

        def keyword_query(rank: int) -> str | None:
            chosen = set(ranked_terms[rank * self.keywords : (rank + 1) * self.keywords])
            if not chosen:
                return None
            seen: list[str] = []
            for w in words:  # in order of first appearance, surface form of the first use
                t = _norm(w)
                if t in chosen and t not in {_norm(s) for s in seen}:
                    seen.append(w.lower() if not w.isupper() else w)
            return " ".join(seen)

        def cut(s: str) -> str:
            ws = s.split()
            return " ".join(ws[: self.max_words]).rstrip(".;:,")

        def sentence_score(s: str) -> float:
            ts = [_norm(w) for w in _words(s)]
            ts = [t for t in ts if t in salience]
            return sum(salience[t] for t in set(ts)) / math.sqrt(max(len(_words(s)), 1))

        lead = [cut(s) for s in sentences]
        by_salience = [cut(s) for s in sorted(sentences[1:], key=lambda s: -sentence_score(s))]

        def span() -> str:
            k = min(len(words), rng.randint(max(3, self.max_words // 3), self.max_words))
            start = rng.randint(0, len(words) - k)
            return " ".join(words[start : start + k])

        out: list[str] = []
        seen_keys: set[str] = set()

        def add(q: str | None) -> None:
            if q and len(out) < n:
                key_ = " ".join(_norm(w) for w in _words(q))
                if key_ and key_ not in seen_keys:
                    seen_keys.add(key_)
                    out.append(q)

        if self.strategy == "keywords":
            for r in range(n):
                add(keyword_query(r))
        elif self.strategy == "lead":
            for s in lead[:n]:
                add(s)
        elif self.strategy == "sentences":
            for s in [lead[0], *by_salience][:n]:
                add(s)
        elif self.strategy == "spans":
            for _ in range(4 * n):
                add(span())
        else:  # mixed
            add(keyword_query(0))
            add(lead[0])
            r, s_i = 1, 0
            while len(out) < n and (
                r * self.keywords < len(ranked_terms) or s_i < len(by_salience)
            ):
                if r * self.keywords < len(ranked_terms):
                    add(keyword_query(r))
                    r += 1
                if s_i < len(by_salience):
                    add(by_salience[s_i])
                    s_i += 1
        return out
