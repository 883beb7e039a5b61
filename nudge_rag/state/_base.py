"""Where a store's fine-tuning state lives: the contract every place implements.

A :class:`StateBackend` keeps three things for one store, in one place, so that whoever reaches
the store reaches them too:

* the **generations** of the journal (named blobs: ``manifest.json``, ``ids.json``,
  ``originals.npy``, ...; see :mod:`nudge_rag.state._generations`), with a pointer ``CURRENT``
  that switches from one generation to the next in one atomic step;
* the **lock**: one fine-tune or revert of the store at a time, across processes and, for the
  places inside a database or a server, across hosts;
* the **feedback log** (:class:`~nudge_rag.feedback.FeedbackLog` lines), appended by every replica
  and read by every ``update()``.

Backends, one per kind of place (as :mod:`nudge_rag.stores` has one adapter per store):

==========================  ==========================================================
:class:`FolderBackend`      a folder of plain files (the per-user folder, ``state_dir=``,
                            and the folder inside or beside the files of a store saved to
                            disk: a Chroma folder, a ``persist_dir``, a Qdrant/LanceDB path)
:class:`KVBackend` subclasses  a table or collection beside the user's, in the store's own
                            database or server (PostgreSQL, Chroma server, Milvus server), with
                            a lock (an advisory lock or a lease with an owner and an expiry)
==========================  ==========================================================

Every backend gives the same guarantees: a generation becomes visible only when ``CURRENT``
names it, and ``CURRENT`` is switched only after every blob of the generation is durable; a
crash at any point leaves the old generation or the new one in force, never a mix.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from nudge_rag.errors import StateError, StoreBusyError

__all__ = ["KVBackend", "StateBackend", "lease_seconds"]

GEN_RE = re.compile(r"^gen-(\d{6,})$")
NONE = "none"  # what CURRENT says before the first generation


class StateBackend(abc.ABC):
    """One store's state place: journal generations, lock and feedback log.

    Attributes:
        where: Where this is, for people: a folder path, or e.g.
            ``"postgresql://host:5432/db table public.nudge_rag_state"``.
        kind: ``"folder"``, ``"postgres"``, ``"chroma"``, ``"milvus"``, ...
        local_dir: The folder for a folder backend (None elsewhere).
        with_store: True for a place that travels with the store (inside its database, its
            server or its files): a state found there is the store's own, even when the store's
            identity reads differently now (a copied folder has another path).
    """

    where: str
    kind: str
    local_dir: Any = None
    with_store: bool = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.where}>"

    # -- lock -------------------------------------------------------------------------------
    @abc.abstractmethod
    def lock(self, timeout: float | None = 0.0) -> contextlib.AbstractContextManager[Any]:
        """Hold the store's lock for a fine-tune or a revert.

        ``timeout``: ``0`` raises :class:`StoreBusyError` at once if another run holds it;
        ``None`` waits for as long as it takes; a number waits up to that many seconds.
        """

    # -- generations --------------------------------------------------------------------------
    @abc.abstractmethod
    def current(self) -> str | None:
        """The name of the generation in force (``"gen-000007"``), ``"none"`` when ``CURRENT``
        exists but names none yet, or None when there is no ``CURRENT`` at all."""

    @abc.abstractmethod
    def generations(self) -> list[int]:
        """The numbers of the generations kept here (complete or not)."""

    @abc.abstractmethod
    def read(self, gen: str, name: str) -> bytes:
        """A blob of a generation (StateError if it is missing)."""

    def read_all(self, gen: str, names: Sequence[str]) -> dict[str, bytes]:
        """Several blobs of a generation."""
        return {n: self.read(gen, n) for n in names}

    @abc.abstractmethod
    def write_generation(self, gen: str, blobs: Mapping[str, bytes]) -> None:
        """Write every blob of a new generation, durably; it is not in force until
        :meth:`switch` names it."""

    @abc.abstractmethod
    def switch(self, gen: str) -> None:
        """Make ``gen`` the generation in force (one atomic step)."""

    @abc.abstractmethod
    def replace(self, gen: str, name: str, data: bytes) -> None:
        """Replace one blob of a generation in one atomic step (a manifest's status)."""

    @abc.abstractmethod
    def drop(self, gen: str) -> None:
        """Remove a generation (an old one, or a partial one never switched in)."""

    @abc.abstractmethod
    def drop_partial(self) -> None:
        """Remove what a killed run left of a generation it never switched in."""

    # -- feedback -----------------------------------------------------------------------------
    @abc.abstractmethod
    def feedback_append(self, line: str) -> None:
        """Append one feedback line (a JSON object), durably."""

    @abc.abstractmethod
    def feedback_read(self, cursor: Any) -> tuple[list[str], Any, bool]:
        """Lines appended since ``cursor`` (None: all of them), the new cursor, and whether
        the log was rewritten since (then every line is returned and the reader starts over)."""

    @abc.abstractmethod
    def feedback_rewrite(self, lines: Sequence[str]) -> None:
        """Replace the whole log with ``lines`` (compaction), in one atomic step."""

    # -- whole place ----------------------------------------------------------------------------
    def has_state(self) -> bool:
        """Whether anything of ours is kept here (a generation or feedback)."""
        return self.current() is not None or bool(self.generations())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections the backend opened (not the store's own)."""


# ---------------------------------------------------------------------------------------------
# Key-value places: a table or a collection beside the user's
# ---------------------------------------------------------------------------------------------
def lease_seconds() -> float:
    """How long a lease on a server store lasts without renewal (``$NUDGE_RAG_LEASE_SECONDS``,
    default 900). A run renews it whenever it writes its journal."""
    try:
        return float(os.environ.get("NUDGE_RAG_LEASE_SECONDS", "900"))
    except ValueError:
        return 900.0


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class KVBackend(StateBackend):
    """A state place over a small key-value interface (a companion table or collection).

    Subclasses implement :meth:`_get`, :meth:`_put`, :meth:`_delete` and :meth:`_keys` over
    their store (keys are short ASCII strings, values bytes; ``_put`` of several keys should be
    atomic where the store allows, a transaction in PostgreSQL), and may override :meth:`lock`
    (PostgreSQL's advisory lock); the default lock is a lease kept under the key ``LEASE``.

    Blobs longer than :attr:`chunk_bytes` are split into ``name#0``, ``name#1``, ... and a
    ``name`` key that lists the chunks; a reader checks each generation against the sha256
    digests of its manifest anyway, so a torn write is refused, never used.
    """

    chunk_bytes: int = 1 << 20
    with_store = True
    settle_seconds: float = 0.2

    # -- the key-value interface --------------------------------------------------------------
    @abc.abstractmethod
    def _get(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of those ``keys`` that exist."""

    @abc.abstractmethod
    def _put(self, items: Mapping[str, bytes]) -> None:
        """Insert or replace these keys (durably, before returning)."""

    @abc.abstractmethod
    def _delete(self, keys: Sequence[str]) -> None:
        """Remove these keys (missing ones are ignored)."""

    @abc.abstractmethod
    def _keys(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix``."""

    # -- blobs ------------------------------------------------------------------------------------
    def _blob_items(self, key: str, data: bytes) -> dict[str, bytes]:
        n = self.chunk_bytes
        if len(data) <= n:
            return {key: b"=" + data}
        parts = {f"{key}#{i}": data[s : s + n] for i, s in enumerate(range(0, len(data), n))}
        head = json.dumps({"chunks": len(parts), "sha256": hashlib.sha256(data).hexdigest()})
        return {**parts, key: b"@" + head.encode("ascii")}

    def _blob(self, key: str) -> bytes | None:
        got = self._get([key]).get(key)
        if got is None:
            return None
        if got[:1] == b"=":
            return got[1:]
        if got[:1] != b"@":
            msg = f"state {self.where}: {key} is damaged (unknown encoding)"
            raise StateError(msg)
        head = json.loads(got[1:])
        names = [f"{key}#{i}" for i in range(int(head["chunks"]))]
        parts = self._get(names)
        if len(parts) != len(names):
            msg = f"state {self.where}: {key} is incomplete ({len(parts)} of {len(names)} parts)"
            raise StateError(msg)
        data = b"".join(parts[n] for n in names)
        if hashlib.sha256(data).hexdigest() != head["sha256"]:
            msg = f"state {self.where}: {key} is damaged (digest mismatch)"
            raise StateError(msg)
        return data

    # -- generations --------------------------------------------------------------------------
    def current(self) -> str | None:
        raw = self._blob("CURRENT")
        return None if raw is None else raw.decode("ascii").strip()

    def generations(self) -> list[int]:
        out = set()
        for k in self._keys("gen-"):
            m = GEN_RE.match(k.split("/", 1)[0])
            if m:
                out.add(int(m.group(1)))
        return sorted(out)

    def read(self, gen: str, name: str) -> bytes:
        data = self._blob(f"{gen}/{name}")
        if data is None:
            msg = f"fine-tuning state {self.where} {gen}: {name} is missing"
            raise StateError(msg)
        return data

    def write_generation(self, gen: str, blobs: Mapping[str, bytes]) -> None:
        items: dict[str, bytes] = {}
        for name, data in blobs.items():
            items.update(self._blob_items(f"{gen}/{name}", data))
        self._put(items)
        self._renew()

    def switch(self, gen: str) -> None:
        self._put(self._blob_items("CURRENT", (gen + "\n").encode("ascii")))

    def replace(self, gen: str, name: str, data: bytes) -> None:
        key = f"{gen}/{name}"
        old = [k for k in self._keys(key + "#")]
        self._put(self._blob_items(key, data))
        keep = set(self._blob_items(key, data))
        self._delete([k for k in old if k not in keep])
        self._renew()

    def drop(self, gen: str) -> None:
        self._delete(self._keys(gen + "/"))

    def drop_partial(self) -> None:
        cur = self.current()
        m = GEN_RE.match(cur or "")
        number = 0 if m is None else int(m.group(1))
        for g in self.generations():
            if g > number:
                self.drop(f"gen-{g:06d}")

    # -- feedback -----------------------------------------------------------------------------
    # Each line is its own key ``fb/<epoch>/<time_ns>-<uuid>``; a rewrite starts a new epoch
    # (its lines first, then the key FB_EPOCH), then removes the old epoch's keys.
    def _epoch(self) -> str:
        raw = self._blob("FB_EPOCH")
        return raw.decode("ascii").strip() if raw else "0"

    def feedback_append(self, line: str) -> None:
        data = b"=" + line.encode("utf-8")
        epoch = self._epoch()
        while True:
            self._put({f"fb/{epoch}/{time.time_ns():020d}-{uuid.uuid4().hex[:12]}": data})
            now = self._epoch()
            if now == epoch:
                return
            # A compaction switched epochs meanwhile and may drop the old epoch's keys: append
            # again to the new one (the copy, if it survives, collapses into the same entry).
            epoch = now

    def feedback_read(self, cursor: Any) -> tuple[list[str], Any, bool]:
        epoch = self._epoch()
        seen: set[str] = set()
        reset = True
        if isinstance(cursor, tuple) and cursor[0] == epoch:
            seen, reset = cursor[1], False
        keys = sorted(k for k in self._keys(f"fb/{epoch}/") if k not in seen)
        got = self._get(keys)
        lines = []
        for k in keys:
            v = got.get(k)
            if v is not None:
                lines.append(v[1:].decode("utf-8"))
        return lines, (epoch, seen | set(got)), reset

    def feedback_rewrite(self, lines: Sequence[str]) -> None:
        old = self._epoch()
        new = str(int(old) + 1) if old.isdigit() else "1"
        before = set(self._keys(f"fb/{old}/"))
        base = time.time_ns()
        self._put(
            {
                f"fb/{new}/{base + i:020d}-{uuid.uuid4().hex[:12]}": b"=" + ln.encode("utf-8")
                for i, ln in enumerate(lines)
            }
        )
        self._put({"FB_EPOCH": b"=" + new.encode("ascii")})
        # Lines another replica appended to the old epoch while this one compacted: carried
        # over (an appender that sees the switch appends again to the new epoch as well).
        late = sorted(set(self._keys(f"fb/{old}/")) - before)
        if late:
            got = self._get(late)
            self._put({f"fb/{new}/{k.rsplit('/', 1)[1]}": v for k, v in got.items()})
        self._delete([k for k in self._keys("fb/") if not k.startswith(f"fb/{new}/")])

    def has_state(self) -> bool:
        return bool(self._keys("CURRENT")) or bool(self._keys("fb/"))

    # -- the lease --------------------------------------------------------------------------------
    _held: dict[str, Any] | None = None

    def lock(self, timeout: float | None = 0.0) -> contextlib.AbstractContextManager[Any]:
        return self._lease(timeout)

    @contextlib.contextmanager
    def _lease(self, timeout: float | None) -> Iterator[KVBackend]:
        deadline = None if timeout is None else time.monotonic() + timeout
        me = _owner()
        delay = 0.05
        while True:
            holder = self._lease_holder()
            if holder is None or holder.get("token") == me["token"]:
                self._put({"LEASE": b"=" + json.dumps(self._lease_value(me)).encode()})
                # Read back after a pause: of two runs that wrote at once, the one whose lease
                # reads back wins (a store with no compare-and-set: best effort, see the README).
                time.sleep(self.settle_seconds)
                after = self._lease_holder()
                if after is not None and after.get("token") == me["token"]:
                    break
            if deadline is not None and time.monotonic() >= deadline:
                who = holder or self._lease_holder() or {}
                msg = (
                    f"another fine-tune or revert of this store is running (lease in {self.where}"
                    f", held by pid {who.get('pid')} on {who.get('host')} until "
                    f"{time.ctime(float(who.get('expires', 0)))}); wait for it, or pass "
                    "lock_timeout=None to wait for it to finish"
                )
                raise StoreBusyError(msg)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        self._held = me
        try:
            yield self
        finally:
            self._held = None
            with contextlib.suppress(Exception):
                holder = self._lease_holder()
                if holder is not None and holder.get("token") == me["token"]:
                    self._delete(["LEASE"])

    def _lease_value(self, me: Mapping[str, Any]) -> dict[str, Any]:
        return {**me, "expires": time.time() + lease_seconds()}

    def _renew(self) -> None:
        if self._held is not None:
            self._put({"LEASE": b"=" + json.dumps(self._lease_value(self._held)).encode()})

    def _lease_holder(self) -> dict[str, Any] | None:
        """The live lease's holder, or None when it is free, expired, or held by a process of
        this host that is gone (killed without letting go)."""
        raw = self._blob("LEASE")
        if raw is None:
            return None
        try:
            holder: dict[str, Any] = json.loads(raw)
        except ValueError:
            return None
        if float(holder.get("expires", 0)) < time.time():
            return None
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"])):
            return None
        return holder


def b64(data: bytes) -> str:
    """Bytes as ASCII text, for stores whose fields hold strings only."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))
