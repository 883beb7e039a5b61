"""The exceptions nudge_rag raises, as one tree so callers can catch at any level.

::

    NudgeError                      every error nudge_rag raises on purpose
    ├── NudgeInputError (ValueError) something passed in is malformed
    │   ├── ShapeError               wrong rank, wrong length, empty where data is needed
    │   ├── DimensionMismatchError   query and record vectors of different widths
    │   ├── NonFiniteError           NaN or inf in a vector
    │   ├── ZeroVectorError          an all-zero vector (it has no direction to rank by)
    │   ├── AnswerError              a query with no answer, or an answer row out of range
    │   ├── ConfigError              an option out of its range or of the wrong kind
    │   └── DatasetError             judged queries, or a data folder or file, that cannot be read
    ├── StoreError                   reading or writing a vector store failed
    │   ├── UnsupportedStoreError    (TypeError) no adapter exists for this store / index
    │   ├── MetricError              the method does not suit the store's similarity metric
    │   └── WriteBackError           a write-back failed; the journal can restore the store
    ├── StateError                   saved fine-tuning state is missing, corrupt or foreign
    │   └── StoreBusyError           another fine-tune or revert of the same store is running
    ├── QueryGenerationError         generating questions for a chunk failed
    │   ├── LLMRequestError          the provider refused the request (400/401/403): not retried
    │   └── UnusableAnswerError      an LLM answer that is not text or holds no usable question
    └── DependencyError (ImportError) an optional dependency is not installed

Every message names what is wrong: the argument, what was expected and what was received.
"""

from __future__ import annotations

__all__ = [
    "AnswerError",
    "ConfigError",
    "DatasetError",
    "DependencyError",
    "DimensionMismatchError",
    "LLMRequestError",
    "MetricError",
    "NonFiniteError",
    "NudgeError",
    "NudgeInputError",
    "QueryGenerationError",
    "ShapeError",
    "StateError",
    "StoreBusyError",
    "StoreError",
    "UnsupportedStoreError",
    "UnusableAnswerError",
    "WriteBackError",
    "ZeroVectorError",
]


class NudgeError(Exception):
    """Root of every error nudge_rag raises on purpose."""


class NudgeInputError(NudgeError, ValueError):
    """Something passed in is malformed."""


class ShapeError(NudgeInputError):
    """An array has the wrong rank or length, or is empty where data is needed."""


class DimensionMismatchError(NudgeInputError):
    """Query vectors and record vectors have different widths."""


class NonFiniteError(NudgeInputError):
    """A vector holds NaN or inf."""


class ZeroVectorError(NudgeInputError):
    """A vector is all zeros, so it has no direction to rank by."""


class AnswerError(NudgeInputError):
    """A query has no answer, or names a record row that does not exist."""


class ConfigError(NudgeInputError):
    """An option is out of its range or of the wrong kind."""


class DatasetError(NudgeInputError):
    """Judged queries (pairs, a dataset object, a JSON file, a BEIR folder) or a data folder or
    file that cannot be read: see :meth:`nudge_rag.judged.JudgedQueries.from_any`."""


class StoreError(NudgeError):
    """Reading from or writing to a vector store failed."""


class UnsupportedStoreError(StoreError, TypeError):
    """No adapter exists for the index or vector store that was passed."""


class MetricError(StoreError):
    """The chosen method does not suit the store's similarity metric."""


class WriteBackError(StoreError):
    """Writing vectors back failed part-way; the journal can restore the store."""


class StateError(NudgeError):
    """Saved fine-tuning state is missing, corrupt, or belongs to another store."""


class StoreBusyError(StateError):
    """Another fine-tune or revert of the same store holds its lock (see ``lock_timeout``)."""


class QueryGenerationError(NudgeError):
    """Generating questions for a chunk failed.

    Raised as such when a chunk's LLM calls all failed (with ``on_error="raise"``); its
    subclasses name the failures that are not a plain exhausted retry.

    Attributes:
        chunk_id: The chunk whose questions could not be generated (``""`` if not known).
    """

    def __init__(self, message: str, chunk_id: str) -> None:
        super().__init__(message)
        self.chunk_id = chunk_id


class LLMRequestError(QueryGenerationError):
    """The LLM provider refused the request itself: authentication, permission, bad request.

    Retrying cannot help (HTTP 400 / 401 / 403, or an exception such as OpenAI's and Anthropic's
    ``AuthenticationError``, ``PermissionDeniedError`` or ``BadRequestError``), so the first one
    ends the run at once, whatever ``on_error`` says; chunks finished before it stay in the cache.

    Attributes:
        chunk_id: The chunk whose call was refused.
        status_code: The HTTP status, if the provider's exception carried one.
        provider_message: The provider's own message (``str`` of its exception).
    """

    def __init__(
        self,
        message: str,
        chunk_id: str,
        *,
        status_code: int | None = None,
        provider_message: str = "",
    ) -> None:
        super().__init__(message, chunk_id)
        self.status_code = status_code
        self.provider_message = provider_message


class UnusableAnswerError(QueryGenerationError):
    """An LLM answer that cannot be used: not text, or no usable question in it (retried).

    Attributes:
        chunk_id: The chunk asked about (``""`` where the answer was read without one).
        reason: ``"not_text"`` (``None``, bytes, a dict or object without text) or
            ``"no_question"`` (text, but nothing survived parsing and cleaning).
    """

    def __init__(self, message: str, chunk_id: str = "", *, reason: str) -> None:
        super().__init__(message, chunk_id)
        self.reason = reason


class DependencyError(NudgeError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str) -> object:
    """Import an optional dependency, or raise DependencyError with the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        msg = (
            f"{module!r} is needed for this feature but is not installed; "
            f"install it with: pip install 'nudge-rag[{extra}]'"
        )
        raise DependencyError(msg) from exc
