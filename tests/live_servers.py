"""Helpers for the real servers the store and safety tests run against (their fixtures are in
tests/conftest.py). Imports the standard library only: the safety tests' worker processes
import it too (chromadb is imported when a client is made).
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chroma_cli() -> str | None:
    """The ``chroma`` command-line tool (beside this Python, else on PATH), or None."""
    beside = Path(sys.executable).with_name("chroma")
    if beside.exists():
        return str(beside)
    return shutil.which("chroma")


def chroma_http_client(host: str, port: int) -> Any:
    """A ``chromadb.HttpClient``; close it with :func:`close_chroma_http`."""
    import chromadb

    return chromadb.HttpClient(host=host, port=port)


def close_chroma_http(client: Any) -> None:
    """Close a ``chromadb.HttpClient`` and its HTTP sessions."""
    # chromadb 1.5's HTTP client does not close its httpx sessions on close() (neither its own
    # nor its admin client's); an open socket would surface as a ResourceWarning, an error here.
    servers = [getattr(client, "_server", None)]
    servers.append(getattr(getattr(client, "_admin_client", None), "_server", None))
    client.close()
    for server in servers:
        session = getattr(server, "_session", None)
        if session is not None:
            session.close()
