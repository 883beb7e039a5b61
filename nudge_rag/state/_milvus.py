"""A store's state in a companion collection on the Milvus server that holds the store.

One collection per database, ``nudge_rag_state``, beside the user's; each row belongs to one
store (its identity key, ``scope``)::

    k      VARCHAR(2048), primary key   "<scope>|<key>"
    scope  VARCHAR(1024)                the store's identity key
    data   VARCHAR(65535)               base64 of the value (at most 48,000 raw bytes + 1)
    v      FLOAT_VECTOR(2), FLAT index  a dummy [1, 0]: Milvus requires a vector field, and
                                        an index on it before the collection can be loaded

Milvus caps a VARCHAR at 65,535 bytes, so blobs are cut in 48,000-byte chunks (64,004 characters
of base64 with the one-byte tag). Every read uses Strong consistency, so a write is seen by the
next read, from any client. Remove it with ``client.drop_collection("nudge_rag_state")`` (every
store's state), or ``client.delete("nudge_rag_state", filter='scope == "<identity key>"')``.

The lock is :class:`KVBackend`'s lease (Milvus has no compare-and-set).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from nudge_rag._faults import checkpoint
from nudge_rag.state._base import KVBackend, b64, unb64

__all__ = ["COMPANION_COLLECTION", "MilvusCompanion"]

logger = logging.getLogger(__name__)

COMPANION_COLLECTION = "nudge_rag_state"
_STRONG = "Strong"
_ROWS_PER_CALL = 64  # 64 rows of 64 kB: 4 MB per insert, far below gRPC's message cap
_KEYS_PER_QUERY = 1000
_SEP = "|"


def _lit(text: str) -> str:
    """A Milvus string literal (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


class MilvusCompanion(KVBackend):
    """A store's state in the ``nudge_rag_state`` collection beside it on a Milvus server.

    Args:
        client: The user's ``pymilvus.MilvusClient`` (its database holds the companion).
        scope: The store's identity key (``"milvus:<address>/<collection>"``).
        where: Where the server is, for messages.
        name: The companion collection's name.
    """

    kind = "milvus"
    chunk_bytes = 48_000

    def __init__(
        self, client: Any, scope: str, *, where: str = "", name: str = COMPANION_COLLECTION
    ) -> None:
        self._client = client
        self._name = name
        self.scope = scope
        self.where = f"milvus server {where} collection {name} scope {scope}".replace("  ", " ")
        if not client.has_collection(name):
            self._create()
        self._load()

    def _index(self) -> Any:
        index = self._client.prepare_index_params()
        index.add_index(field_name="v", index_type="FLAT", metric_type="L2")
        return index

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("k", DataType.VARCHAR, is_primary=True, max_length=2048)
        schema.add_field("scope", DataType.VARCHAR, max_length=1024)
        schema.add_field("data", DataType.VARCHAR, max_length=65535)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
        try:
            self._client.create_collection(
                self._name, schema=schema, index_params=self._index(), consistency_level=_STRONG
            )
        except Exception:
            # Another replica made it between our check and our call: use theirs.
            if not self._client.has_collection(self._name):
                raise

    def _load(self, attempts: int = 50) -> None:
        """Load the companion. Another replica may have created it and not yet its index
        (``create_collection`` makes the collection, then the index, then loads it): Milvus then
        answers "index not found". Make the same index (or find theirs made) and load again."""
        for attempt in range(attempts):
            try:
                self._client.load_collection(self._name)
                return
            except Exception as exc:
                if "index not found" not in str(exc).lower() or attempt == attempts - 1:
                    raise
            if not self._client.list_indexes(self._name):
                try:
                    self._client.create_index(self._name, self._index())
                except Exception:  # the creator's index came first: load it next time round
                    logger.debug("companion index made by another replica", exc_info=True)
            time.sleep(0.05 * min(attempt + 1, 10))

    def _id(self, key: str) -> str:
        return f"{self.scope}{_SEP}{key}"

    def _query(self, flt: str, fields: list[str], limit: int | None = None) -> list[dict[str, Any]]:
        kw: dict[str, Any] = {"limit": limit} if limit is not None else {}
        rows: list[dict[str, Any]] = self._client.query(
            self._name, filter=flt, output_fields=fields, consistency_level=_STRONG, **kw
        )
        return rows

    # -- the key-value interface --------------------------------------------------------------
    def _get(self, keys: Sequence[str]) -> dict[str, bytes]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, bytes] = {}
        prefix = len(self.scope) + len(_SEP)
        for start in range(0, len(keys), _ROWS_PER_CALL):
            part = [self._id(k) for k in keys[start : start + _ROWS_PER_CALL]]
            flt = f"k in [{', '.join(_lit(i) for i in part)}]"
            for row in self._query(flt, ["k", "scope", "data"]):
                if row.get("scope") == self.scope:
                    out[str(row["k"])[prefix:]] = unb64(str(row["data"]))
        return out

    def _put(self, items: Mapping[str, bytes]) -> None:
        # Chunks first, then the keys that name them (a head, CURRENT, a manifest).
        order = sorted(items, key=lambda k: "#" not in k)
        rows = [
            {"k": self._id(k), "scope": self.scope, "data": b64(items[k]), "v": [1.0, 0.0]}
            for k in order
        ]
        for start in range(0, len(rows), _ROWS_PER_CALL):
            self._client.upsert(self._name, rows[start : start + _ROWS_PER_CALL])
            checkpoint("state.put")

    def _delete(self, keys: Sequence[str]) -> None:
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            part = [self._id(k) for k in keys[start : start + _KEYS_PER_QUERY]]
            self._client.delete(self._name, filter=f"k in [{', '.join(_lit(i) for i in part)}]")

    def _keys(self, prefix: str) -> list[str]:
        # By primary key, ``k > last`` a page at a time, in key order (the flags the store
        # adapter uses, see nudge_rag.stores._milvus): every key once whatever its count.
        start = self._id(prefix)
        head = len(self.scope) + len(_SEP)
        out: list[str] = []
        last: str | None = None
        while True:
            flt = f"scope == {_lit(self.scope)} and k >= {_lit(start)}"
            if last is not None:
                flt += f" and k > {_lit(last)}"
            rows = self._client.query(
                self._name,
                filter=flt,
                output_fields=["k"],
                limit=_KEYS_PER_QUERY,
                consistency_level=_STRONG,
                iterator="True",
                reduce_stop_for_best="True",
            )
            if not rows:
                return out
            ks = sorted(str(r["k"]) for r in rows)
            out.extend(k[head:] for k in ks if k.startswith(start))
            if len(rows) < _KEYS_PER_QUERY:
                return out
            last = ks[-1]

    # -- the whole place ------------------------------------------------------------------------
    def forget(self) -> None:
        """Remove every row of this store (its whole state and feedback), not the collection."""
        self._client.delete(self._name, filter=f"scope == {_lit(self.scope)}")
