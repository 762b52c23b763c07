"""``keys``: make a key offline (``new``: the key once, and its entry for a keys file, TOML or
JSON), or list, create and revoke a running wrapper's keys (admin key)."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from ...gateway.keys import hash_key, new_key, parse_entries
from ._output import number, table
from .errors import CliError
from .remote import call

__all__ = ["KEY_LIMITS", "keys_create", "keys_list", "keys_new", "keys_revoke"]

# (header, the key record's field, decimal places or None for a whole number)
KEY_LIMITS = (
    ("rpm", "rpm", None),
    ("tpm", "tpm", None),
    ("max streams", "max_streams", None),
    ("budget USD/month", "monthly_budget_usd", 2),
)


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line; one left out takes the VLLM_DEFAULT_* one."""
    given = {
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_streams": args.max_streams,
        "monthly_budget_usd": args.budget,
    }
    return {k: v for k, v in given.items() if v is not None}


def _describe_key(record: dict[str, Any]) -> str:
    limits = (f"{header} {number(record.get(f), p)}" for header, f, p in KEY_LIMITS)
    return (
        f"name {record.get('name')} | role {record.get('role')} | "
        + " | ".join(limits)
        + f" | source {record.get('source')}  (- = unlimited)"
    )


def _toml_entry(entry: dict[str, Any]) -> str:
    """A ``[[keys]]`` entry of a TOML keys file."""
    # JSON's strings and numbers are TOML's too (names and hashes are plain ASCII).
    return "\n".join(["[[keys]]", *(f"{k} = {json.dumps(v)}" for k, v in entry.items())])


def keys_new(args: argparse.Namespace) -> int:
    token = new_key()
    entry = {"name": args.name, "sha256": hash_key(token), "role": args.role, **_limits(args)}
    try:
        parse_entries([entry], "keys new")  # what the wrapper will read must load
    except ValueError as exc:
        raise CliError(str(exc).split(": ", 1)[-1]) from None
    # The key on stderr, the entry alone on stdout: `keys new NAME >> keys.toml` appends an
    # entry that loads, and the key is still shown once.
    print(f"key (shown once): {token}", file=sys.stderr)
    print(_toml_entry(entry) if args.format == "toml" else json.dumps([entry], indent=2))
    print(
        f"add the entry to a .{args.format} keys file (VLLM_API_KEYS_FILE)"
        + (" or to the list in VLLM_API_KEYS" if args.format == "json" else "")
        + "; it holds the key's sha256, never the key",
        file=sys.stderr,
    )
    return 0


def keys_list(args: argparse.Namespace) -> int:
    records = [
        {k: v for k, v in r.items() if k not in ("key", "sha256")}
        for r in call(args, "GET", "/v1/keys")["data"]
    ]
    if args.json:
        print(json.dumps({"object": "list", "data": records}, indent=2))
        return 0
    rows = [
        [r["name"], r["role"], r["source"], *(number(r.get(f), p) for _, f, p in KEY_LIMITS)]
        for r in records
    ]
    headers = ["name", "role", "source", *(header for header, _, _ in KEY_LIMITS)]
    table("API keys", headers, rows, text_columns=3, caption="- = unlimited")
    return 0


def keys_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "role": args.role, **_limits(args)}
    record = call(args, "POST", "/v1/keys", body=body)
    print(f"key (shown once): {record.pop('key')}")
    print(_describe_key(record))
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    call(args, "DELETE", f"/v1/keys/{quote(args.name, safe='')}")
    print(f"revoked key {args.name!r} (other wrappers drop it within their key sync interval)")
    return 0
