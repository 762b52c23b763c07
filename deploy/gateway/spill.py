"""Ledger rows the store could not take at shutdown, kept on local disk until it can.

A wrapper that stops while its store is down (a full disk, a Dict error) writes what it could
not flush to one JSON file in ``VLLM_STATE_SPILL_DIR``; the next wrapper on the same store
writes it there at start (and at each sync until the store takes it) and removes the file.
Until then the spend it holds still counts against budgets. The documents are whole (one
writer's rows, see ledger.py), so a file written twice counts nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .store import StateStore

__all__ = ["Spill"]

log = logging.getLogger("vllm_autoscale.gateway")


class Spill:
    """The spill files of one store (named by a hash of its URL) in ``folder``."""

    def __init__(self, folder: Path, store_url: str) -> None:
        self.folder = Path(folder).expanduser()
        self.tag = hashlib.sha256(store_url.encode()).hexdigest()[:12]

    def keep(self, writer: str, tables: dict[str, dict[str, Any]]) -> Path:
        """Write ``tables`` (table -> documents) to this writer's file, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.tag}-{writer}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(tables))
        os.replace(tmp, path)  # a reader never sees half a file
        return path

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"{self.tag}-*.json"))

    def pending(self) -> bool:
        """Whether a spill file waits to be written."""
        return bool(self._files())

    def documents(self, table: str) -> dict[str, Any]:
        """The documents of ``table`` in every spill file not yet written (unreadable files
        count as empty): what the store does not hold yet, for a wrapper that must count it."""
        docs: dict[str, Any] = {}
        for path in self._files():
            try:
                docs.update(json.loads(path.read_text()).get(table) or {})
            except (OSError, ValueError) as exc:
                log.warning("cannot read the spill file %s (%s)", path, exc)
        return docs

    def replay(self, store: StateStore) -> int:
        """Write every spill file of this store to it; return how many documents. A file is
        removed only once all of it is written (a failure leaves it for the next start)."""
        written = 0
        for path in self._files():
            tables = json.loads(path.read_text())
            for table, docs in tables.items():
                store.put_many(table, docs)
                written += len(docs)
            path.unlink()
            log.info("wrote %d spilled document(s) from %s to the state store", written, path)
        return written
