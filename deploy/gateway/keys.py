"""Named API keys: who a request is, what it may do and how much.

A key is stored as its SHA-256 (keys are long random tokens, so a plain hash is enough; a
leaked keys file or state store gives nobody a working key). Where keys come from:

- ``VLLM_WRAPPER_API_KEY``: the seed's one key, the key named ``default`` (role admin);
- ``VLLM_API_KEYS``: a JSON list of key entries, from the environment or the Modal Secret;
- ``VLLM_API_KEYS_FILE``: a TOML (``[[keys]]`` tables) or JSON file of key entries, told
  apart by content (whatever its name);
- admin routes (``POST /v1/keys``): kept in the state store, seen by every wrapper.

An entry: ``{"name", "key" or "sha256", "role": "user"|"admin", "rpm", "tpm",
"max_streams", "monthly_budget_usd"}``; a limit left out takes the ``VLLM_DEFAULT_*`` one.
With no key configured and none ever stored, every request is the admin ``anonymous`` (local
use); see ``Gateway.is_open`` for the whole rule.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ANONYMOUS",
    "KeyRecord",
    "KeyRing",
    "KeysFileError",
    "hash_key",
    "load_file",
    "new_key",
    "parse_entries",
]

Role = Literal["user", "admin"]
KEY_PREFIX = "vak-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_LIMIT_FIELDS = ("rpm", "tpm", "max_streams", "monthly_budget_usd")


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyRecord:
    """One key, without the key itself. A limit of None is unlimited."""

    name: str
    sha256: str = field(repr=False)
    role: Role = "user"
    rpm: int | None = None
    tpm: int | None = None
    max_streams: int | None = None
    monthly_budget_usd: float | None = None
    source: str = "config"
    """Where it was declared: "config" (environment, Secret, file) or "store" (admin route)."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def public(self) -> dict[str, Any]:
        """What the key routes show: everything but the hash."""
        data = asdict(self)
        data.pop("sha256")
        return data

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)


ANONYMOUS = KeyRecord("anonymous", "", role="admin", source="none")


def parse_entries(entries: Iterable[Any], source: str) -> list[KeyRecord]:
    """Key entries (dicts) as records; a bad entry is a ``ValueError`` naming it."""
    records = []
    for i, entry in enumerate(entries):
        where = f"{source} entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: a key entry is an object with name and key or sha256")
        name = str(entry.get("name", ""))
        if not _NAME.match(name):
            raise ValueError(f"{where}: name {name!r} must be 1-64 of A-Z a-z 0-9 _ . @ -")
        if ("key" in entry) == ("sha256" in entry):
            raise ValueError(f"{where} ({name}): give exactly one of key and sha256")
        digest = hash_key(str(entry["key"])) if "key" in entry else str(entry["sha256"]).lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"{where} ({name}): sha256 must be 64 hex digits")
        role = entry.get("role", "user")
        if role not in ("user", "admin"):
            raise ValueError(f"{where} ({name}): role must be 'user' or 'admin'")
        limits: dict[str, Any] = {}
        for name_ in _LIMIT_FIELDS:
            value = entry.get(name_)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
            ):
                raise ValueError(f"{where} ({name}): {name_} must be a number >= 0")
            limits[name_] = value
        unknown = set(entry) - {"name", "key", "sha256", "role", "source", *_LIMIT_FIELDS}
        if unknown:
            raise ValueError(f"{where} ({name}): unknown field(s) {', '.join(sorted(unknown))}")
        records.append(KeyRecord(name, digest, role, source=source, **limits))
    return records


class KeysFileError(ValueError):
    """A keys file that cannot be read or loaded: one line naming the file."""


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _parse_keys_file(text: str, path: str) -> Any:
    """JSON if it parses as JSON, else TOML: the content decides, not the file's name
    (``keys.txt`` or a Secret mounted without a suffix load too)."""
    try:
        return json.loads(text)
    except ValueError as exc:
        json_error = _one_line(exc)
    if sys.version_info < (3, 11):
        raise KeysFileError(
            f"keys file {path} is not JSON ({json_error}); TOML keys files need Python 3.11+"
        )
    import tomllib  # noqa: PLC0415 - tomllib is Python 3.11+; read only for a TOML keys file

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeysFileError(
            f"keys file {path} is neither JSON ({json_error}) nor TOML ({_one_line(exc)})"
        ) from None


def load_file(path: Path) -> list[KeyRecord]:
    """A keys file's entries: ``[[keys]]`` tables (TOML), or a JSON list (or ``{"keys":
    [...]}``). Any failure is a ``KeysFileError`` naming the file, on one line."""
    shown = str(path)
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
        raise KeysFileError(f"keys file {shown} cannot be read: {reason}") from None
    data = _parse_keys_file(text, shown)
    entries = data.get("keys", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise KeysFileError(
            f"keys file {shown} holds no list of key entries ([[keys]] tables or a JSON list)"
        )
    try:
        return parse_entries(entries, shown)
    except ValueError as exc:
        raise KeysFileError(f"keys file {_one_line(exc)}") from None


class KeyRing:
    """The keys a wrapper knows: configured ones, plus those the store holds (refreshed by
    the gateway's sync)."""

    def __init__(self, configured: list[KeyRecord], defaults: dict[str, Any]) -> None:
        names = [k.name for k in configured]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"API key name(s) declared twice: {', '.join(sorted(duplicates))}")
        self.defaults = {k: v for k, v in defaults.items() if k in _LIMIT_FIELDS}
        self._configured = [self._with_defaults(k) for k in configured]
        self.anonymous = self._with_defaults(ANONYMOUS)
        """Who every caller of an open wrapper is (built once: asked on every request)."""
        self._stored: list[KeyRecord] = []
        self._index(self._configured)

    def _index(self, records: list[KeyRecord]) -> None:
        self._all = records
        self._by_digest = {r.sha256: r for r in records}

    def _with_defaults(self, record: KeyRecord) -> KeyRecord:
        filled = {k: v for k, v in self.defaults.items() if getattr(record, k) is None}
        return replace(record, **filled) if filled else record

    @property
    def empty(self) -> bool:
        """No key in this ring. Whether the wrapper is open is the gateway's decision, which
        also asks the store (``Gateway.is_open``): an empty ring alone never opens it."""
        return not self._all

    @property
    def configured(self) -> list[KeyRecord]:
        return list(self._configured)

    def find(self, token: str) -> KeyRecord | None:
        # Looked up by the token's SHA-256: what a timing difference could tell is about
        # the hash, which gives nobody the key; the match itself is compared in constant time.
        digest = hash_key(token)
        record = self._by_digest.get(digest)
        if record is not None and hmac.compare_digest(digest, record.sha256):
            return record
        return None

    def get(self, name: str) -> KeyRecord | None:
        return next((k for k in self._all if k.name == name), None)

    def records(self) -> list[KeyRecord]:
        return list(self._all)

    def set_stored(self, records: list[KeyRecord]) -> None:
        configured = {k.name for k in self._configured}
        self._stored = [self._with_defaults(r) for r in records if r.name not in configured]
        self._index(self._configured + self._stored)

    def add_stored(self, record: KeyRecord) -> None:
        self.set_stored([*(r for r in self._stored if r.name != record.name), record])

    def remove_stored(self, name: str) -> None:
        self.set_stored([r for r in self._stored if r.name != name])
