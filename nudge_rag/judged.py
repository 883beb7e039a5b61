"""Queries with judged relevant records: the package's one data model for them, and its one parser.

Training queries for NUDGE, held-out queries for :func:`~nudge_rag.evaluate`, and the questions
:func:`~nudge_rag.generate_queries` writes are the same thing: queries, each with the records
that answer it and how well (a grade). :class:`JudgedQueries` holds them, immutable;
:meth:`JudgedQueries.from_any` reads every shape the package accepts, with one set of rules and
one set of errors (:class:`~nudge_rag.errors.DatasetError`, naming the argument, the item, what
was expected and what was received):

=========================================================  =====================================
shape                                                      query ids
=========================================================  =====================================
``[(text, [record id, ...]), ...]``                        ``q0``, ``q1``, ... (list position)
``[(text, record id), ...]``, ``[(text, {id: grade}), ...]`` same
a dict or object with ``queries`` (id -> text) and         its own
``relevant_docs`` (id -> ids or {id: grade}), optional
``corpus`` (id -> text): LlamaIndex's
``EmbeddingQAFinetuneDataset``, a :class:`QADataset`
the path of that JSON file                                 its own
a BEIR folder (``split=``: which ``qrels/*.tsv``)          BEIR's
a :class:`JudgedQueries`                                   (returned as it is)
=========================================================  =====================================

The rules: ids are ``str`` (``int`` ids are turned into ``str``); a grade is a finite number and
only grades > 0 make a record relevant (a plain list of ids gives grade 1); a query with no
relevant record is dropped (logged), and at least one query must remain; queries follow the
order of ``relevant_docs`` (of the qrels file, of the list); a ``relevant_docs`` entry must name a
query of ``queries``, and when a corpus is given, a record of the corpus.

The array form the NUDGE core works on is :class:`~nudge_rag.core.QuerySet`
(:meth:`JudgedQueries.to_query_set`). Imports numpy and the standard library only.

Example:
    >>> jq = JudgedQueries.from_any([("what does NUDGE move?", ["d1"]), ("graded", {"d2": 2})])
    >>> jq
    JudgedQueries(n=2, records=2, graded=True)
    >>> jq.query_ids, jq.texts, dict(jq.relevance[1])
    (('q0', 'q1'), ('what does NUDGE move?', 'graded'), {'d2': 2.0})
    >>> jq.to_pairs()[0]
    ('what does NUDGE move?', {'d1': 1.0})
    >>> jq.to_query_set(["d1", "d2"], vectors=np.eye(2, dtype=np.float32)).answer_rows(1)
    array([1])
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import numpy as np

from nudge_rag.beir import default_split, load_beir
from nudge_rag.core.queries import QuerySet, as_float32_matrix
from nudge_rag.errors import AnswerError, ConfigError, DatasetError, ShapeError
from nudge_rag.persist import atomic_write_bytes

__all__ = [
    "JudgedQueries",
    "QADataset",
    "TrainingPairs",
    "as_training_pairs",
    "parse_relevance",
]

logger = logging.getLogger(__name__)

#: ``[(query text, {record id: grade}), ...]``: what :meth:`JudgedQueries.to_pairs` returns.
TrainingPairs = list[tuple[str, dict[str, float]]]

_Parsed = tuple[list[str], list[str], list[dict[str, float]]]

_SHAPES = (
    "a list of (query text, relevant ids) pairs, an object or dict with 'queries' and "
    "'relevant_docs' (QADataset, LlamaIndex EmbeddingQAFinetuneDataset), the path of such a "
    "JSON file, or a BEIR folder"
)


def _fail(msg: str) -> NoReturn:
    raise DatasetError(msg)


def _is_id(value: object) -> bool:
    return isinstance(value, str | numbers.Integral) and not isinstance(value, bool)


def parse_relevance(value: Any, where: str) -> dict[str, float]:
    """The relevant records of one query, from any accepted shape, as ``{record id: grade}``.

    ``value`` is one record id (``str`` or ``int``), an iterable of ids (grade 1 each) or a
    mapping ``{id: grade}``. Only grades > 0 are kept (the order of first appearance too; an id
    given twice keeps its highest grade). The result may be empty.

    Example:
        >>> parse_relevance({"d1": 2, "d2": 0, 3: 1.5}, "q")
        {'d1': 2.0, '3': 1.5}

    Raises:
        DatasetError: Not one of those shapes, an id that is not ``str``/``int``, or a grade
            that is not a finite number (the message starts with ``where``).
    """
    if _is_id(value):
        return {str(value): 1.0}
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
        items = ((d, 1.0) for d in value)
    else:
        _fail(
            f"{where}: expected relevant ids as a list of record ids, one id or a dict of "
            f"id -> grade, received {type(value).__name__}"
        )
    out: dict[str, float] = {}
    for d, g in items:
        if not _is_id(d):
            _fail(f"{where}: expected record ids as str or int, received {type(d).__name__} ({d!r:.40})")
        if isinstance(g, bool) or not isinstance(g, numbers.Real):
            _fail(f"{where}: expected numeric relevance grades, received {g!r:.40} for id {d!r}")
        grade = float(g)
        if not np.isfinite(grade):
            _fail(f"{where}: expected finite relevance grades, received {g!r} for id {d!r}")
        if grade > 0:
            out[str(d)] = max(grade, out.get(str(d), 0.0))
    return out


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        _fail(f"{where}: expected the query text as a str, received {type(value).__name__}")
    return value


def _dict_of(value: Any, what: str, name: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        _fail(f"{name}: expected {what} to be a dict keyed by id, received {type(value).__name__}")
    return value


def _from_qa(queries: Any, relevant_docs: Any, name: str) -> _Parsed:
    """``queries`` / ``relevant_docs`` dicts to ids, texts and relevance (in ``relevant_docs``
    order); queries with no relevant record are kept here (dropped by :func:`_drop_empty`)."""
    if not isinstance(queries, Mapping) or not isinstance(relevant_docs, Mapping):
        _fail(
            f"{name}: expected 'queries' and 'relevant_docs' to be dicts keyed by query id, "
            f"received {type(queries).__name__} and {type(relevant_docs).__name__}"
        )
    ids: list[str] = []
    texts: list[str] = []
    rels: list[dict[str, float]] = []
    for qid, docs in relevant_docs.items():
        if qid not in queries:
            _fail(f"{name}: relevant_docs names query {qid!r}, which is not in queries")
        if not _is_id(qid):
            _fail(f"{name}: expected query ids as str or int, received {type(qid).__name__}")
        ids.append(str(qid))
        texts.append(_text(queries[qid], f"{name}.queries[{qid!r}]"))
        rels.append(parse_relevance(docs, f"{name}.relevant_docs[{qid!r}]"))
    return ids, texts, rels


def _from_pairs(pairs: Sequence[Any], name: str) -> _Parsed:
    ids: list[str] = []
    texts: list[str] = []
    rels: list[dict[str, float]] = []
    for i, item in enumerate(pairs):
        if (
            isinstance(item, str | bytes)
            or not isinstance(item, Sequence)
            or len(item) != 2
            or not isinstance(item[0], str)
        ):
            _fail(
                f"{name}[{i}]: expected a (query text, relevant ids) pair, relevant ids being a "
                f"list of record ids, one id or a dict of id -> grade; received {item!r:.80}"
            )
        ids.append(f"q{i}")
        texts.append(item[0])
        rels.append(parse_relevance(item[1], f"{name}[{i}][1]"))
    return ids, texts, rels


def _drop_empty(parsed: _Parsed, name: str) -> _Parsed:
    ids, texts, rels = parsed
    keep = [i for i, r in enumerate(rels) if r]
    if len(keep) == len(ids):
        return parsed
    logger.warning(
        "%s: dropped %d of %d queries that have no relevant record (grade > 0)",
        name, len(ids) - len(keep), len(ids),
    )  # fmt: skip
    return [ids[i] for i in keep], [texts[i] for i in keep], [rels[i] for i in keep]


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{name}: {str(path)!r} cannot be read as UTF-8 text ({exc})"
        raise DatasetError(msg) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        msg = f"{name}: {str(path)!r} is not valid JSON ({exc})"
        raise DatasetError(msg) from exc
    if not isinstance(data, dict):
        _fail(
            f"{name}: expected {str(path)!r} to hold a JSON object with 'queries' and "
            f"'relevant_docs', received a JSON {type(data).__name__}"
        )
    return data


def _keys(data: Mapping[Any, Any], name: str) -> None:
    missing = [k for k in ("queries", "relevant_docs") if k not in data]
    if missing:
        _fail(
            f"{name}: expected keys 'queries' and 'relevant_docs', missing {missing} "
            f"(keys: {sorted(map(str, data))})"
        )


class JudgedQueries:
    """Queries, each with its judged relevant records; immutable.

    Build one from any accepted shape with :meth:`from_any` (see the module docstring). The
    constructor takes the parts themselves.

    Args:
        query_ids: One distinct id per query.
        relevance: Per query, its relevant records: ``{record id: grade}`` or a list of ids
            (grade 1); grades <= 0 are dropped, and every query needs a grade > 0.
        texts: The query texts, or ``None`` when only vectors are known.
        vectors: ``(n, d)`` query vectors (float), or ``None``.
        corpus: Record id -> text, if known; when given (non-empty), every relevant record must
            be in it.
        mode: LlamaIndex's modality tag (``"text"``), kept for its JSON format.

    Attributes:
        query_ids: ``tuple[str, ...]``.
        texts: ``tuple[str, ...]`` or ``None``.
        relevance: Per query, a read-only ``{record id: grade}`` mapping (grades > 0).
        vectors: A read-only ``(n, d)`` float32 array, or ``None``.
        corpus: A read-only record id -> text mapping (empty when not known).
        queries, relevant_docs: The LlamaIndex views, ``{query id: text}`` and
            ``{query id: [record id, ...]}`` (grades dropped).

    Raises:
        DatasetError: Ids that are not distinct or not ``str``/``int``, a query with no relevant
            record, texts or vectors of another length, a relevant record not in the corpus.
    """

    __slots__ = ("_corpus", "_ids", "_mode", "_rel", "_texts", "_vectors", "_views")
    _ids: tuple[str, ...]
    _rel: tuple[Mapping[str, float], ...]
    _texts: tuple[str, ...] | None
    _vectors: np.ndarray | None
    _corpus: Mapping[str, str]
    _mode: str | None
    _views: tuple[Mapping[str, str], Mapping[str, list[str]]] | None

    def __init__(
        self,
        query_ids: Sequence[str],
        relevance: Sequence[Mapping[str, float] | Iterable[str]],
        *,
        texts: Sequence[str] | None = None,
        vectors: Any = None,
        corpus: Mapping[str, str] | None = None,
        mode: str | None = None,
    ) -> None:
        self._init(query_ids, relevance, texts, vectors, corpus, mode, type(self).__name__)

    def _init(
        self,
        query_ids: Sequence[Any],
        relevance: Sequence[Any],
        texts: Sequence[Any] | None,
        vectors: Any,
        corpus: Mapping[Any, Any] | None,
        mode: str | None,
        name: str,
        *,
        checked: bool = False,
    ) -> None:
        """Set the parts; ``checked``: they come from another JudgedQueries (no re-check)."""
        if checked:
            ids, rels, corp = tuple(query_ids), tuple(relevance), corpus
            texts = None if texts is None else tuple(texts)
        else:
            ids, rels, texts, corp = _checked_parts(query_ids, relevance, texts, corpus, name)
        vecs = None
        if vectors is not None:
            vecs = as_float32_matrix(vectors, f"{name} vectors").copy()
            if vecs.shape[0] != len(ids):
                msg = f"{name}: expected vectors with one row per query ({len(ids)}), received {vecs.shape[0]} rows"
                raise ShapeError(msg)
            vecs.setflags(write=False)
        for slot, value in (
            ("_ids", ids),
            ("_rel", rels),
            ("_texts", texts),
            ("_vectors", vecs),
            ("_corpus", corp),
            ("_mode", mode),
            ("_views", None),
        ):
            object.__setattr__(self, slot, value)

    def __setattr__(self, name: str, value: object) -> None:
        msg = f"{type(self).__name__} is immutable: build a new one (subset, with_vectors, ...)"
        raise AttributeError(msg)

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    # ------------------------------------------------------------------ reading any shape
    @classmethod
    def from_any(
        cls, obj: Any, *, name: str = "train_queries", split: str | None = None
    ) -> JudgedQueries:
        """Judged queries from any accepted shape (see the module docstring).

        Args:
            obj: The queries: pairs, a dict or object with ``queries`` and ``relevant_docs``,
                the path of such a JSON file, a BEIR folder, or a ``JudgedQueries`` (returned as
                it is).
            name: The argument's name, for error messages (``"dataset"``, ``"--queries"``).
            split: For a BEIR folder, the qrels file to read (default: its only one, else
                ``"test"``).

        Raises:
            DatasetError: ``obj`` is none of those shapes, cannot be read, or holds no query
                with a relevant record (the message names ``name`` and the item at fault).
        """
        if isinstance(obj, JudgedQueries):
            if not len(obj):
                _fail(f"{name}: expected at least one query with a relevant id, received 0 queries")
            return obj
        corpus: Mapping[str, str] | None = None
        mode = None
        if isinstance(obj, str | os.PathLike):
            path = Path(obj).expanduser()
            if path.is_dir():
                return JudgedQueries.from_beir(path, split, name=name)
            if not path.is_file():
                _fail(
                    f"{name}: {str(path)!r} does not exist; expected a JSON file (LlamaIndex "
                    "EmbeddingQAFinetuneDataset) or a BEIR folder"
                )
            read = JudgedQueries.from_json(path, name=name)
            return JudgedQueries.from_any(read, name=f"{name} {str(path)!r}")
        if isinstance(obj, Mapping):
            _keys(obj, name)
            parsed = _from_qa(obj["queries"], obj["relevant_docs"], name)
            corpus, mode = obj.get("corpus"), obj.get("mode")
        elif hasattr(obj, "queries") and hasattr(obj, "relevant_docs"):
            parsed = _from_qa(obj.queries, obj.relevant_docs, name)
            corpus, mode = getattr(obj, "corpus", None), getattr(obj, "mode", None)
        elif isinstance(obj, Sequence) and not isinstance(obj, str | bytes | bytearray):
            parsed = _from_pairs(obj, name)
        else:
            _fail(f"{name}: expected judged queries: {_SHAPES}; received {type(obj).__name__}")
        return JudgedQueries._checked(parsed, corpus, mode, name)

    @staticmethod
    def _checked(
        parsed: _Parsed, corpus: Any, mode: Any, name: str, *, at_least_one: bool = True
    ) -> JudgedQueries:
        n = len(parsed[0])
        ids, texts, rels = _drop_empty(parsed, name)
        if at_least_one and not ids:
            _fail(
                f"{name}: expected at least one query with a relevant id (grade > 0), "
                f"received {n} {'query' if n == 1 else 'queries'} and none has one"
            )
        out = JudgedQueries.__new__(JudgedQueries)
        out._init(ids, rels, texts, None, corpus, mode if isinstance(mode, str) else None, name)
        return out

    @classmethod
    def from_json(cls, path: str | os.PathLike[str], *, name: str = "path") -> JudgedQueries:
        """Read LlamaIndex's ``EmbeddingQAFinetuneDataset`` JSON (as :meth:`save_json` writes).

        Returns an instance of ``cls`` (a :class:`QADataset` from ``QADataset.from_json``).

        Raises:
            DatasetError: Missing or unreadable file, not JSON, no ``queries`` /
                ``relevant_docs``, or entries that break the rules of :meth:`from_any`.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            _fail(f"{name}: QA dataset file {str(p)!r} does not exist")
        data = _read_json(p, name)
        _keys(data, f"{name} {str(p)!r}")
        relevant = data["relevant_docs"]
        grades = data.get("grades")
        if isinstance(grades, Mapping) and isinstance(relevant, Mapping):
            relevant = {q: grades.get(q, docs) for q, docs in relevant.items()}
        parsed = _from_qa(data["queries"], relevant, f"{name} {str(p)!r}")
        jq = JudgedQueries._checked(
            parsed, data.get("corpus"), data.get("mode"), f"{name} {str(p)!r}", at_least_one=False
        )
        return jq if cls is JudgedQueries else cls._like(jq)

    @classmethod
    def from_beir(
        cls, folder: str | os.PathLike[str], split: str | None = None, *, name: str = "folder"
    ) -> JudgedQueries:
        """The judged queries of one qrels split of a BEIR folder, with its corpus.

        Grades are kept as in the qrels file (graded relevance); queries judged only with
        grades <= 0 are dropped.

        Raises:
            DatasetError: Not a BEIR folder, ``split`` not given where the folder has several
                splits and no ``test``, or a file that cannot be parsed.
        """
        split = default_split(folder) if split is None else split
        data = load_beir(folder, qrels=split)
        judged = data.qrels[split]
        parsed = _from_qa(data.queries, judged, f"{name} qrels/{split}.tsv")
        return JudgedQueries._checked(parsed, data.corpus, None, f"{name} qrels/{split}.tsv")

    @classmethod
    def _like(cls, jq: JudgedQueries) -> JudgedQueries:
        """``jq`` as an instance of ``cls`` (a subclass whose extra attributes have defaults)."""
        out = cls.__new__(cls)
        for slot in JudgedQueries.__slots__:
            object.__setattr__(out, slot, getattr(jq, slot))
        return out

    # ------------------------------------------------------------------ the parts
    @property
    def query_ids(self) -> tuple[str, ...]:
        return self._ids

    @property
    def texts(self) -> tuple[str, ...] | None:
        return self._texts

    @property
    def relevance(self) -> tuple[Mapping[str, float], ...]:
        return self._rel

    @property
    def vectors(self) -> np.ndarray | None:
        return self._vectors

    @property
    def corpus(self) -> Mapping[str, str]:
        return self._corpus

    @property
    def mode(self) -> str | None:
        return self._mode

    def _view(self) -> tuple[Mapping[str, str], Mapping[str, list[str]]]:
        views = self._views
        if views is None:
            texts = self._need_texts("queries")
            queries = MappingProxyType(dict(zip(self._ids, texts, strict=True)))
            docs = MappingProxyType({q: list(r) for q, r in zip(self._ids, self._rel, strict=True)})
            views = (queries, docs)
            object.__setattr__(self, "_views", views)
        return views

    @property
    def queries(self) -> Mapping[str, str]:
        """``{query id: text}`` (LlamaIndex's ``queries``)."""
        return self._view()[0]

    @property
    def relevant_docs(self) -> Mapping[str, list[str]]:
        """``{query id: [relevant record id, ...]}`` (LlamaIndex's ``relevant_docs``)."""
        return self._view()[1]

    def _need_texts(self, what: str) -> tuple[str, ...]:
        if self._texts is None:
            msg = f"{what}: these {len(self)} judged queries have vectors but no texts"
            raise ConfigError(msg)
        return self._texts

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        records = len({d for r in self._rel for d in r})
        graded = any(g != 1.0 for r in self._rel for g in r.values())
        extra = "" if self._texts is not None else ", texts=None"
        if self._vectors is not None:
            extra += f", vectors={self._vectors.shape}"
        if self._corpus:
            extra += f", corpus={len(self._corpus)}"
        return f"{type(self).__name__}(n={len(self)}, records={records}, graded={graded}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JudgedQueries):
            return NotImplemented
        same_vectors = (self._vectors is None and other._vectors is None) or (
            self._vectors is not None
            and other._vectors is not None
            and np.array_equal(self._vectors, other._vectors)
        )
        return (
            self._ids == other._ids
            and self._texts == other._texts
            and self._rel == other._rel
            and self._corpus == other._corpus
            and same_vectors
        )

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ derived forms
    def to_pairs(self) -> TrainingPairs:
        """``[(query text, {record id: grade}), ...]``, one per query, in order."""
        texts = self._need_texts("to_pairs")
        return [(t, dict(r)) for t, r in zip(texts, self._rel, strict=True)]

    def judgements(self) -> dict[str, dict[str, float]]:
        """``{query id: {record id: grade}}`` (the form :func:`~nudge_rag.beir.paper_split` and
        the per-query metrics take)."""
        return {q: dict(r) for q, r in zip(self._ids, self._rel, strict=True)}

    def relevant_ids(self) -> list[str]:
        """Every record some query judges relevant, once each, in order of first appearance."""
        return list(dict.fromkeys(d for r in self._rel for d in r))

    def subset(self, idx: Sequence[int] | np.ndarray) -> JudgedQueries:
        """The queries at positions ``idx``, in that order (the corpus is shared)."""
        pos = [int(i) for i in np.asarray(idx, dtype=np.int64).reshape(-1)]
        out = JudgedQueries.__new__(JudgedQueries)
        out._init(
            [self._ids[i] for i in pos],
            [self._rel[i] for i in pos],
            None if self._texts is None else [self._texts[i] for i in pos],
            None if self._vectors is None else self._vectors[pos],
            self._corpus,
            self._mode,
            "JudgedQueries",
            checked=True,
        )
        return out

    def with_vectors(self, vectors: Any) -> JudgedQueries:
        """The same queries with their ``(n, d)`` vectors (e.g. embedded by the pipeline)."""
        out = JudgedQueries.__new__(JudgedQueries)
        out._init(
            self._ids, self._rel, self._texts, vectors, self._corpus, self._mode,
            "JudgedQueries", checked=True,
        )  # fmt: skip
        return out

    def to_query_set(
        self, row_of: Mapping[str, int] | Sequence[str], vectors: Any = None
    ) -> QuerySet:
        """The array form of the core: query vectors and, per query, ``{record row: grade}``.

        Args:
            row_of: Record id -> row of the record matrix, or the record ids in row order.
            vectors: ``(n, d)`` query vectors (default: :attr:`vectors`).

        Raises:
            ConfigError: No vectors, given or held.
            AnswerError: A relevant record has no row (the message names query and record).
        """
        if vectors is None:
            vectors = self._vectors
        if vectors is None:
            msg = "vectors: these judged queries hold no vectors; pass vectors= (the queries embedded)"
            raise ConfigError(msg)
        rows = row_of if isinstance(row_of, Mapping) else {d: i for i, d in enumerate(row_of)}
        answers: list[dict[int, float]] = []
        for qid, r in zip(self._ids, self._rel, strict=True):
            try:
                answers.append({rows[d]: g for d, g in r.items()})
            except KeyError as exc:
                msg = f"query {qid!r} names record {exc.args[0]!r}, which has no row among the records"
                raise AnswerError(msg) from None
        return QuerySet(vectors, answers)

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write LlamaIndex's ``EmbeddingQAFinetuneDataset`` JSON, atomically.

        ``queries``, ``corpus``, ``relevant_docs`` (and ``mode`` if set), which LlamaIndex
        loads; grades other than 1 also go to a ``grades`` key (``{query id: {id: grade}}``)
        that :meth:`from_json` reads back and LlamaIndex ignores. Vectors are not written.

        Returns:
            The path written.
        """
        data: dict[str, object] = {
            "queries": dict(self.queries),
            "corpus": dict(self._corpus),
            "relevant_docs": {q: list(d) for q, d in self.relevant_docs.items()},
        }
        if self._mode is not None:
            data["mode"] = self._mode
        graded = {q: dict(r) for q, r in zip(self._ids, self._rel, strict=True) if set(r.values()) != {1.0}}
        if graded:
            data["grades"] = graded
        return atomic_write_bytes(
            Path(path).expanduser(), json.dumps(data, indent=4, ensure_ascii=False).encode("utf-8")
        )


def _size(value: object) -> str:
    return f"{len(value)} entries" if isinstance(value, Sequence) else type(value).__name__


def _checked_parts(
    query_ids: Any, relevance: Any, texts: Any, corpus: Any, name: str
) -> tuple[
    tuple[str, ...], tuple[Mapping[str, float], ...], tuple[str, ...] | None, Mapping[str, str]
]:
    """The constructor's checks: ids, one relevance and text per query, a corpus of texts."""
    if isinstance(query_ids, str) or not isinstance(query_ids, Sequence):
        _fail(f"{name}: expected query_ids as a sequence of ids, received {type(query_ids).__name__}")
    for q in query_ids:
        if not _is_id(q):
            _fail(f"{name}: expected query ids as str or int, received {type(q).__name__} ({q!r:.40})")
    ids = tuple(str(q) for q in query_ids)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(q for q in ids if q in seen or seen.add(q))  # type: ignore[func-returns-value]
        _fail(f"{name}: expected distinct query ids, received {dup!r} more than once")
    if isinstance(relevance, str) or not isinstance(relevance, Sequence) or len(relevance) != len(ids):
        _fail(f"{name}: expected relevance with one entry per query ({len(ids)}), received {_size(relevance)}")
    rels = []
    for qid, r in zip(ids, relevance, strict=True):
        grades = parse_relevance(r, f"{name}.relevance[{qid!r}]")
        if not grades:
            _fail(f"{name}: query {qid!r} has no relevant record (grade > 0); every query needs one")
        rels.append(MappingProxyType(grades))
    text_tuple = None
    if texts is not None:
        if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) != len(ids):
            _fail(f"{name}: expected texts with one entry per query ({len(ids)}), received {_size(texts)}")
        text_tuple = tuple(_text(t, f"{name}.texts[{i}]") for i, t in enumerate(texts))
    corp: dict[str, str] = {}
    for k, v in _dict_of(corpus if corpus is not None else {}, "corpus", name).items():
        if not _is_id(k) or not isinstance(v, str):
            _fail(f"{name}: expected corpus as record id -> text (str), received {k!r:.40}: {type(v).__name__}")
        corp[str(k)] = v
    if corp:
        for qid, r in zip(ids, rels, strict=True):
            for d in r:
                if d not in corp:
                    _fail(f"{name}: relevant_docs[{qid!r}] names record {d!r}, which is not in corpus")
    return ids, tuple(rels), text_tuple, MappingProxyType(corp)


class QADataset(JudgedQueries):
    """Judged queries built from LlamaIndex's ``EmbeddingQAFinetuneDataset`` parts.

    The constructor code written against that shape uses; everything else is
    :class:`JudgedQueries` (``queries``, ``corpus`` and ``relevant_docs`` are its views).

    Example:
        >>> ds = QADataset(queries={"q1": "what is X?"}, corpus={"d1": "X is ..."},
        ...                relevant_docs={"q1": ["d1"]})
        >>> ds.relevant_docs["q1"], len(ds)
        (['d1'], 1)

    Args:
        queries: Query id -> text.
        corpus: Record id -> text.
        relevant_docs: Query id -> relevant record ids (or ``{id: grade}``).
        mode: LlamaIndex's modality tag (``"text"``); kept only if given.
    """

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Mapping[str, str],
        relevant_docs: Mapping[str, Any],
        mode: str | None = None,
    ) -> None:
        name = type(self).__name__
        ids, texts, rels = _drop_empty(_from_qa(queries, relevant_docs, name), name)
        super().__init__(ids, rels, texts=texts, corpus=corpus, mode=mode)


def as_training_pairs(data: Any) -> TrainingPairs:
    """``JudgedQueries.from_any(data).to_pairs()``: training queries as
    ``[(query text, {record id: grade}), ...]`` (kept for code that imported it)."""
    return JudgedQueries.from_any(data, name="train_queries").to_pairs()
