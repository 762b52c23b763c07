"""``keys``: make a key offline (``new``: the key once, and its entry for a keys file, TOML or
JSON), or list (with each key's spend this month), create, update and revoke a running
wrapper's keys (admin key)."""

# ruff: noqa: T201 - a command's output is what it prints

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from ...gateway.keys import hash_key, new_key, parse_entries
from ._output import money, number, table
from .errors import CliError
from .remote import call

__all__ = [
    "KEY_LIMITS",
    "keys_create",
    "keys_list",
    "keys_new",
    "keys_revoke",
    "keys_update",
]

# (header, the key record's field, how a value is written)
KEY_LIMITS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("rpm", "rpm", number),
    ("tpm", "tpm", number),
    ("max streams", "max_streams", number),
    ("budget USD/month", "monthly_budget_usd", money),
)
# The flags that set each limit (``keys update``'s --clear takes the flag's name too).
_FLAGS = {"rpm": "rpm", "tpm": "tpm", "max_streams": "max_streams", "budget": "monthly_budget_usd"}


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given on the command line; one left out takes the VLLM_DEFAULT_* one."""
    given = {field: getattr(args, flag) for flag, field in _FLAGS.items()}
    return {k: v for k, v in given.items() if v is not None}


def _share(value: Any) -> str:
    return "-" if value is None else f"{value:.0%}" if value >= 0.01 or value == 0 else "<1%"


def _describe_key(record: dict[str, Any]) -> str:
    limits = (f"{header} {show(record.get(f))}" for header, f, show in KEY_LIMITS)
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
        [
            r["name"], r["role"], r["source"],
            *(show(r.get(f)) for _, f, show in KEY_LIMITS),
            money(r.get("month_spend_usd")), _share(r.get("budget_used")),
        ]
        for r in records
    ]  # fmt: skip
    headers = ["name", "role", "source", *(header for header, _, _ in KEY_LIMITS),
               "spent USD (month)", "of budget"]  # fmt: skip
    caption = "- = unlimited (limits), not known yet (spend); spend is this UTC month's"
    table("API keys", headers, rows, text_columns=3, caption=caption)
    return 0


def keys_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "role": args.role, **_limits(args)}
    record = call(args, "POST", "/v1/keys", body=body)
    token = record.pop("key")
    closed = record.pop("closed_wrapper", None)
    if closed is None:
        print(f"key (shown once): {token}")
        print(_describe_key(record))
        return 0
    # The first key of an open wrapper: from now on nothing works without one, so this
    # key must not scroll by unnoticed.
    rule = "=" * 72
    print(rule)
    print(f"  {record.get('role', 'user').upper()} KEY (shown once, store it now):")
    print(f"  {token}")
    print(rule)
    print(_describe_key(record))
    print(
        f"warning: {closed}. Send it as --api-key / VLLM_AUTOSCALE_API_KEY (or "
        "Authorization: Bearer) from now on.",
        file=sys.stderr,
    )
    if record.get("role") != "admin":
        print(
            "warning: this key is not an admin key: no key can manage keys now until an "
            "admin key is configured (VLLM_WRAPPER_API_KEY) and the wrapper restarted",
            file=sys.stderr,
        )
    return 0


def keys_update(args: argparse.Namespace) -> int:
    """Change a key's role or limits in place; its secret stays."""
    body: dict[str, Any] = _limits(args)
    if args.role is not None:
        body["role"] = args.role
    for flag in args.clear or ():
        field = _FLAGS[flag.replace("-", "_")]
        if field in body:
            raise CliError(f"--{flag} is both given and cleared: pick one")
        body[field] = None
    if not body:
        raise CliError(
            "nothing to change",
            "give --rpm, --tpm, --max-streams, --budget or --role, or --clear LIMIT",
        )
    record = call(args, "PATCH", f"/v1/keys/{quote(args.name, safe='')}", body=body)
    print(f"updated key {args.name!r} (its secret is unchanged; other wrappers take it "
          "within their key sync interval)")  # fmt: skip
    print(_describe_key(record))
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    call(args, "DELETE", f"/v1/keys/{quote(args.name, safe='')}")
    print(f"revoked key {args.name!r} (other wrappers drop it within their key sync interval)")
    return 0
