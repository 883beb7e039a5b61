"""Companion-collection state backends for tests, opened from a small JSON-able spec so that a
child process (another replica) opens the same place: ``{"kind": "chroma", "host": ..., "port":
..., "collection": ...}`` or ``{"kind": "milvus", "uri": ..., "collection": ...}``.

Run as a script (``python companions.py SPEC SCOPE``) it takes the place's lock, prints
``held`` and waits for a line on stdin before letting go (the lease tests' other process).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def open_backend(spec: dict[str, Any], scope: str) -> tuple[Any, Callable[[], None]]:
    """The backend of ``scope`` at ``spec``, and what closes the client it opened."""
    if spec["kind"] == "chroma":
        from live_servers import chroma_http_client, close_chroma_http

        from nudge_rag.state._chroma import ChromaCompanion

        client = chroma_http_client(spec["host"], int(spec["port"]))
        col = client.get_or_create_collection(spec["collection"], embedding_function=None)
        return ChromaCompanion(col, scope), lambda: close_chroma_http(client)
    if spec["kind"] == "milvus":
        from pymilvus import MilvusClient

        from nudge_rag.state._milvus import MilvusCompanion

        mc = MilvusClient(spec["uri"])
        return MilvusCompanion(mc, scope, where=spec["uri"]), mc.close
    raise ValueError(spec["kind"])


def hold(spec: dict[str, Any], scope: str) -> None:
    be, close = open_backend(spec, scope)
    try:
        with be.lock(0.0):
            print("held", flush=True)
            sys.stdin.readline()
        print("released", flush=True)
    finally:
        close()


if __name__ == "__main__":
    hold(json.loads(sys.argv[1]), sys.argv[2])
