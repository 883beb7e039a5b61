"""Named crash points for the fault-injection tests (a no-op unless a test arms one).

Code that changes a user's files or store calls ``checkpoint("name")`` at the points where a
crash must be survivable: between the files of a journal generation, around the rename that
switches generations, between write-back batches, between the files of a persisted index. A test
arms one point through the environment of a subprocess::

    NUDGE_RAG_KILL_AT="store.batch#3"   # SIGKILL this process at the 3rd pass through it

and the process kills itself with SIGKILL (no cleanup, no atexit, no flush: what a power cut or
the OOM killer does) the moment it gets there. ``NUDGE_RAG_FAULT_LOG=<file>`` appends every point
passed (one name a line), so a test can list the points a run goes through and draw a seeded
schedule from them.
"""

from __future__ import annotations

import os
import signal

__all__ = ["checkpoint"]

_ARMED: tuple[str, int] | None = None
_LOG: str | None = os.environ.get("NUDGE_RAG_FAULT_LOG") or None
_COUNTS: dict[str, int] = {}


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, nth = spec.partition("#")
    return name, int(nth or 1)


_ARMED = _parse(os.environ.get("NUDGE_RAG_KILL_AT"))


def checkpoint(name: str) -> None:
    """Pass a named crash point (kills the process if a test armed this point)."""
    if _ARMED is None and _LOG is None:
        return
    n = _COUNTS.get(name, 0) + 1
    _COUNTS[name] = n
    if _LOG is not None:
        with open(_LOG, "a", encoding="utf-8") as f:
            f.write(f"{name}#{n}\n")
    if (name, n) == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
