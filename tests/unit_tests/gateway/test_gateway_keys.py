"""Named API keys (``deploy/gateway/keys.py``): entries, key files, the key ring."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from deploy.gateway.keys import (
    ANONYMOUS,
    KEY_PREFIX,
    KeyRecord,
    KeyRing,
    hash_key,
    load_file,
    new_key,
    parse_entries,
)

TOKEN = "vak-alice-secret-token"


def entry(**fields: Any) -> dict[str, Any]:
    return {"name": "alice", "key": TOKEN, **fields}


def ring(*records: KeyRecord, **defaults: Any) -> KeyRing:
    return KeyRing(list(records), defaults)


def one(**fields: Any) -> KeyRecord:
    (record,) = parse_entries([entry(**fields)], "test")
    return record


# -- hashing and new keys ------------------------------------------------------------------------


def test_hash_key_is_sha256_hex_of_the_token() -> None:
    assert hash_key(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert hash_key(TOKEN) != hash_key(TOKEN + "x")


def test_new_keys_are_prefixed_long_and_distinct() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(k.startswith(KEY_PREFIX) and len(k) >= len(KEY_PREFIX) + 43 for k in keys)


# -- parse_entries -------------------------------------------------------------------------------


def test_entry_with_key_stores_only_its_hash() -> None:
    record = one()
    assert record.sha256 == hash_key(TOKEN)
    assert TOKEN not in repr(record)
    assert record.sha256 not in repr(record)


def test_entry_with_sha256_is_lowercased() -> None:
    digest = hash_key(TOKEN)
    (record,) = parse_entries([{"name": "bob", "sha256": digest.upper()}], "test")
    assert record.sha256 == digest


def test_entry_defaults_role_user_and_unlimited() -> None:
    record = one()
    assert record.role == "user" and not record.is_admin
    assert (record.rpm, record.tpm, record.max_streams, record.monthly_budget_usd) == (None,) * 4


def test_entry_keeps_its_limits_and_role() -> None:
    record = one(role="admin", rpm=10, tpm=2000, max_streams=2, monthly_budget_usd=5.5)
    assert record.is_admin
    assert (record.rpm, record.tpm, record.max_streams, record.monthly_budget_usd) == (
        10,
        2000,
        2,
        5.5,
    )


def test_source_argument_wins_over_an_entry_source_field() -> None:
    (record,) = parse_entries([entry(source="config")], "store")
    assert record.source == "store"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not a dict", "entry 0"),
        ({"key": TOKEN}, "name"),
        ({"name": "-leading-dash", "key": TOKEN}, "name"),
        ({"name": "has space", "key": TOKEN}, "name"),
        ({"name": "x" * 65, "key": TOKEN}, "name"),
        ({"name": "alice"}, "exactly one of key and sha256"),
        ({"name": "alice", "key": TOKEN, "sha256": hash_key(TOKEN)}, "exactly one"),
        ({"name": "alice", "sha256": "abc"}, "64 hex digits"),
        ({"name": "alice", "sha256": "g" * 64}, "64 hex digits"),
        ({"name": "alice", "key": TOKEN, "role": "root"}, "role"),
        ({"name": "alice", "key": TOKEN, "rpm": -1}, "rpm"),
        ({"name": "alice", "key": TOKEN, "tpm": True}, "tpm"),
        ({"name": "alice", "key": TOKEN, "max_streams": float("nan")}, "max_streams"),
        ({"name": "alice", "key": TOKEN, "rpm": "60"}, "rpm"),
        ({"name": "alice", "key": TOKEN, "monthly_budget_usd": [1]}, "monthly_budget_usd"),
        ({"name": "alice", "key": TOKEN, "colour": "red"}, "colour"),
    ],
)
def test_bad_entries_are_value_errors_naming_the_problem(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_entries([bad], "VLLM_API_KEYS")


def test_bad_entry_error_names_source_and_index() -> None:
    with pytest.raises(ValueError, match=r"^VLLM_API_KEYS entry 1 \(bob\)"):
        parse_entries([entry(), {"name": "bob", "key": TOKEN, "role": "x"}], "VLLM_API_KEYS")


def test_zero_limits_are_allowed() -> None:
    record = one(rpm=0, tpm=0, max_streams=0, monthly_budget_usd=0)
    assert (record.rpm, record.tpm, record.max_streams, record.monthly_budget_usd) == (0, 0, 0, 0)


def test_public_view_hides_the_hash_and_to_doc_round_trips() -> None:
    record = one(rpm=5)
    assert "sha256" not in record.public()
    assert record.public()["name"] == "alice" and record.public()["rpm"] == 5
    doc = {k: v for k, v in record.to_doc().items() if k != "source"}
    (again,) = parse_entries([doc], record.source)
    assert again == record


# -- key files -----------------------------------------------------------------------------------


def test_load_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[[keys]]\nname = "alice"\nkey = "{TOKEN}"\nrpm = 30\n\n'
        f'[[keys]]\nname = "ops"\nsha256 = "{hash_key("ops-token")}"\nrole = "admin"\n'
    )
    alice, ops = load_file(path)
    assert (alice.name, alice.sha256, alice.rpm) == ("alice", hash_key(TOKEN), 30)
    assert ops.is_admin and ops.sha256 == hash_key("ops-token")
    assert alice.source == str(path)


def test_load_json_list_and_object_files(tmp_path: Path) -> None:
    as_list, as_object = tmp_path / "list.json", tmp_path / "object.json"
    as_list.write_text(json.dumps([entry(tpm=100)]))
    as_object.write_text(json.dumps({"keys": [entry(tpm=100)]}))
    (a,), (b,) = load_file(as_list), load_file(as_object)
    assert a.tpm == b.tpm == 100 and a.sha256 == b.sha256 == hash_key(TOKEN)


def test_load_file_with_a_bad_entry_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{"name": "alice"}]))
    with pytest.raises(ValueError, match=str(path)):
        load_file(path)


def test_load_toml_without_keys_table_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('title = "nothing here"\n')
    assert load_file(path) == []


# -- the key ring --------------------------------------------------------------------------------


def test_find_returns_the_matching_record_or_none() -> None:
    alice = one()
    (bob,) = parse_entries([{"name": "bob", "key": "bob-token"}], "test")
    keys = ring(alice, bob)
    assert keys.find(TOKEN) == alice
    assert keys.find("bob-token") == bob
    assert keys.find("nobody") is None
    assert keys.find("") is None


def test_find_matches_a_key_declared_by_its_hash() -> None:
    (ops,) = parse_entries([{"name": "ops", "sha256": hash_key("ops-token").upper()}], "test")
    keys = ring(one(), ops)
    assert keys.find("ops-token") == ops
    assert keys.find(hash_key("ops-token")) is None  # the hash itself is not a key


def test_an_empty_ring_is_empty_and_anonymous_is_admin_with_defaults() -> None:
    keys = ring(rpm=60, tpm=None)
    assert keys.empty
    assert keys.anonymous.is_admin and keys.anonymous.name == ANONYMOUS.name
    assert keys.anonymous.rpm == 60
    assert not ring(one()).empty


def test_duplicate_configured_names_are_refused() -> None:
    (other,) = parse_entries([{"name": "alice", "key": "another"}], "file")
    with pytest.raises(ValueError, match="alice"):
        ring(one(), other)


def test_defaults_fill_only_limits_left_out() -> None:
    keys = ring(one(rpm=5), rpm=100, tpm=1000, max_streams=3, role="admin", name="x")
    alice = keys.get("alice")
    assert alice is not None
    assert (alice.rpm, alice.tpm, alice.max_streams) == (5, 1000, 3)
    assert alice.role == "user" and alice.name == "alice"
    assert set(keys.defaults) == {"rpm", "tpm", "max_streams"}


def test_explicit_zero_limit_is_not_replaced_by_a_default() -> None:
    alice = ring(one(max_streams=0), max_streams=4).get("alice")
    assert alice is not None and alice.max_streams == 0


def test_stored_keys_are_found_and_get_defaults() -> None:
    keys = ring(one(), tpm=500)
    (stored,) = parse_entries([{"name": "svc", "key": "svc-token", "rpm": 7}], "store")
    keys.set_stored([stored])
    found = keys.find("svc-token")
    assert found is not None and found.source == "store"
    assert (found.rpm, found.tpm) == (7, 500)
    assert [k.name for k in keys.records()] == ["alice", "svc"]


def test_a_stored_key_cannot_shadow_a_configured_name() -> None:
    keys = ring(one())
    (impostor,) = parse_entries([{"name": "alice", "key": "stolen"}], "store")
    keys.set_stored([impostor])
    assert keys.find("stolen") is None
    assert keys.find(TOKEN) is not None
    assert [k.name for k in keys.records()] == ["alice"]


def test_add_stored_replaces_same_name_and_remove_stored_drops_it() -> None:
    keys = ring()
    (v1,) = parse_entries([{"name": "svc", "key": "old"}], "store")
    (v2,) = parse_entries([{"name": "svc", "key": "new"}], "store")
    keys.add_stored(v1)
    keys.add_stored(v2)
    assert keys.find("old") is None and keys.find("new") is not None
    assert len(keys.records()) == 1
    keys.remove_stored("svc")
    assert keys.find("new") is None and keys.get("svc") is None
    assert keys.empty


def test_set_stored_replaces_the_previous_stored_set() -> None:
    keys = ring(one())
    a, b = parse_entries([{"name": "a", "key": "ta"}, {"name": "b", "key": "tb"}], "store")
    keys.set_stored([a, b])
    keys.set_stored([b])
    assert keys.find("ta") is None and keys.find("tb") is not None
    assert keys.find(TOKEN) is not None  # configured keys stay
