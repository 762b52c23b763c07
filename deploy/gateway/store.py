"""Where the gateway's shared state lives: named tables of JSON documents.

Every wrapper process (locally) or container (on Modal) writes only documents it owns
(its ledger rows, its published rate-limit counts), so no backend needs an atomic
read-modify-write: a ``put`` replaces a whole document, and readers add the documents up.

- ``sqlite:///PATH``: the local default, one file (WAL mode, several processes may share it).
- ``modal-dict://NAME``: on Modal, one ``modal.Dict`` per table (``NAME-ledger`` ...). Every
  wrapper container reaches it and it outlives them all. A SQLite file on a Volume would
  not do: a Volume is committed and reloaded as a whole, last writer wins, so two
  containers writing one database lose each other's rows.
- ``memory://``: one process, nothing kept (tests, throwaway runs).

The calls block (disk, network): the gateway makes them from a worker thread, never on the
request path.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

__all__ = [
    "FORMAT",
    "SEALED",
    "STATE_FORMAT",
    "MemoryStore",
    "ModalDictStore",
    "SQLiteStore",
    "StateStore",
    "StoreHealth",
    "describe",
    "open_store",
]

Doc = dict[str, Any]
TABLES = ("ledger", "spend", "limits", "keys", "meta", "uptime")
SEALED = "sealed"
"""The ``meta`` document a store gets when it first holds a key: from then on no wrapper on
that store is ever open, even once every key is gone (gateway.py)."""
FORMAT = "format"
"""The ``meta`` document that says which format the store's documents are in."""
STATE_FORMAT = 1
"""The documents' format this code writes. 0 (no ``format`` document): before the mark, the
same tables but ``uptime``, read as they are; 1: the ``uptime`` table and the mark. A wrapper
reads every format up to its own; a store marked newer is used as it is, and said so."""


class StateStore(Protocol):
    """Tables of JSON documents keyed by string."""

    def put_many(self, table: str, docs: Mapping[str, Doc]) -> None: ...

    def get(self, table: str, key: str) -> Doc | None: ...

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, Doc]]: ...

    def delete(self, table: str, key: str) -> bool: ...

    def close(self) -> None: ...


class MemoryStore:
    """A process's own dicts: state that need not outlive it."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Doc]] = {t: {} for t in TABLES}
        self._lock = threading.Lock()

    def put_many(self, table: str, docs: Mapping[str, Doc]) -> None:
        with self._lock:
            self._tables[table].update({k: json.loads(json.dumps(v)) for k, v in docs.items()})

    def get(self, table: str, key: str) -> Doc | None:
        return self._tables[table].get(key)

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, Doc]]:
        with self._lock:
            rows = [(k, v) for k, v in self._tables[table].items() if k.startswith(prefix)]
        return iter(rows)

    def delete(self, table: str, key: str) -> bool:
        with self._lock:
            return self._tables[table].pop(key, None) is not None

    def close(self) -> None:
        pass


class SQLiteStore:
    """One SQLite file; one connection per thread (sqlite3 objects stay in their thread)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS docs (tbl TEXT NOT NULL, key TEXT NOT NULL, "
                "doc TEXT NOT NULL, PRIMARY KEY (tbl, key))"
            )

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # timeout: wait for another process's write instead of failing at once.
            db = self._local.db = sqlite3.connect(self.path, timeout=30)
        return db

    def put_many(self, table: str, docs: Mapping[str, Doc]) -> None:
        if not docs:
            return
        with self._db() as db:  # one transaction: all rows or none
            db.executemany(
                "INSERT INTO docs (tbl, key, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (tbl, key) DO UPDATE SET doc = excluded.doc",
                [(table, k, json.dumps(v)) for k, v in docs.items()],
            )

    def get(self, table: str, key: str) -> Doc | None:
        row = (
            self._db()
            .execute("SELECT doc FROM docs WHERE tbl = ? AND key = ?", (table, key))
            .fetchone()
        )
        return json.loads(row[0]) if row else None

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, Doc]]:
        # `key >= prefix AND key < prefix + U+10FFFF`: the primary key's index, not a scan.
        rows = (
            self._db()
            .execute(
                "SELECT key, doc FROM docs WHERE tbl = ? AND key >= ? AND key < ? ORDER BY key",
                (table, prefix, prefix + "\U0010ffff"),
            )
            .fetchall()
        )
        return ((k, json.loads(d)) for k, d in rows)

    def delete(self, table: str, key: str) -> bool:
        with self._db() as db:
            cur = db.execute("DELETE FROM docs WHERE tbl = ? AND key = ?", (table, key))
        return cur.rowcount > 0

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class ModalDictStore:
    """One ``modal.Dict`` per table, created on first use. ``dicts`` replaces them (the
    Modal boundary, in tests)."""

    def __init__(self, name: str, dicts: Mapping[str, Any] | None = None) -> None:
        if dicts is None:
            import modal  # noqa: PLC0415 - modal is the 'modal' extra, needed only for a modal-dict:// store

            dicts = {t: modal.Dict.from_name(f"{name}-{t}", create_if_missing=True) for t in TABLES}
        self.name, self._dicts = name, dict(dicts)

    def put_many(self, table: str, docs: Mapping[str, Doc]) -> None:
        if docs:
            self._dicts[table].update(dict(docs))

    def get(self, table: str, key: str) -> Doc | None:
        value = self._dicts[table].get(key)
        return value if isinstance(value, dict) else None

    def items(self, table: str, prefix: str = "") -> Iterator[tuple[str, Doc]]:
        return ((k, v) for k, v in self._dicts[table].items() if str(k).startswith(prefix))

    def delete(self, table: str, key: str) -> bool:
        return self._dicts[table].pop(key, None) is not None

    def close(self) -> None:
        pass


def open_store(url: str) -> StateStore:
    """``sqlite:///PATH`` (``~`` expands), ``modal-dict://NAME`` or ``memory://``."""
    parsed = urlparse(url)
    if parsed.scheme == "memory":
        return MemoryStore()
    if parsed.scheme == "sqlite":
        path = url[len("sqlite://") :]
        if path.startswith("/~"):
            path = path[1:]
        return SQLiteStore(Path(path))
    if parsed.scheme == "modal-dict" and parsed.netloc:
        return ModalDictStore(parsed.netloc)
    raise ValueError(f"VLLM_STATE_URL={url!r}: use sqlite:///PATH, modal-dict://NAME or memory://")


def describe(url: str) -> str:
    """The store's URL as errors and ``/status`` may show it (no query, no credentials)."""
    parsed = urlparse(url)
    where = parsed.netloc.rpartition("@")[2] + parsed.path
    return f"{parsed.scheme}://{where}"


@dataclass
class StoreHealth:
    """How the gateway's calls to its store went: failures by operation, the last error, the
    last success. Written from the sync thread, read by ``/status`` and ``/metrics``."""

    failures: Counter[str] = field(default_factory=Counter)
    consecutive: int = 0
    last_ok: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def ok(self) -> None:
        self.consecutive, self.last_ok = 0, time.time()

    def failed(self, op: str, exc: BaseException) -> None:
        self.failures[op] += 1
        self.consecutive += 1
        # The exception's type and first line: a store error never carries a key (keys are
        # stored hashed), and a path or Dict name is the operator's to see.
        first = str(exc).splitlines()[0] if str(exc) else ""
        self.last_error = f"{op}: {type(exc).__name__}: {first}"
        self.last_error_at = time.time()

    def to_dict(self) -> dict[str, object]:
        now = time.time()
        return {
            "ok": self.consecutive == 0 and self.last_ok is not None,
            "consecutive_failures": self.consecutive,
            "failures": dict(self.failures),
            "last_ok_s_ago": None if self.last_ok is None else round(now - self.last_ok, 1),
            "last_error": self.last_error,
            "last_error_s_ago": (
                None if self.last_error_at is None else round(now - self.last_error_at, 1)
            ),
        }
