"""The gateway's routes: ``GET /v1/usage`` (a key sees its own usage, an admin every key's)
and key management for admins (``GET``/``POST /v1/keys``, ``PATCH``/``DELETE
/v1/keys/{name}``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from http import HTTPStatus
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ...core.errors import StoreUnavailable
from ...gateway import Gateway, KeyRecord
from ...gateway.ledger import total
from ...gateway.store import describe
from ..auth import Admin, Caller
from ..handlers import Forbidden, InvalidRequest, parse_body
from ..responses import ADMIN_ERRORS, errors, json_body

__all__ = ["KeyChanges", "NewKey", "router"]

router = APIRouter(responses=ADMIN_ERRORS)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _store_down(gateway: Gateway, op: str, exc: Exception) -> StoreUnavailable:
    """A store call failed: counted and logged, answered 503 naming the store (never 500)."""
    gateway.store_failed(op, exc)
    return StoreUnavailable(
        f"the gateway's state store ({describe(gateway.store_url)}) cannot be "
        f"{'read' if op.startswith('read') else 'written'}; retry shortly",
        retry_after=max(1.0, gateway.settings.state_sync_interval),
    )


def _date(value: str | None, param: str) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidRequest(f"{param} must be a date, YYYY-MM-DD", param) from None


@router.get("/v1/usage", responses=errors(422, 503))
async def usage(
    request: Request,
    caller: Caller,
    start: str | None = Query(None, description="First day (UTC, YYYY-MM-DD), inclusive"),
    end: str | None = Query(None, description="Last day (UTC, YYYY-MM-DD), inclusive"),
    key: str | None = Query(None, description="Only this key (admins; others see their own)"),
) -> dict[str, Any]:
    """Usage per day, key and model, with totals. ``gpu_seconds`` and ``cost_usd`` are the
    GPU's up-time allocated to the row (``busy_seconds``, ``boot_seconds``, ``idle_seconds``;
    ``engine_seconds``: the requests' own), with an ``(unallocated)`` row for what no key
    used (admins). Cache hits count apart from engine work."""
    if not caller.is_admin:
        if key not in (None, caller.name):
            raise Forbidden(f"key {caller.name!r} may only see its own usage")
        key = caller.name
    first, last = _date(start, "start"), _date(end, "end")
    gateway = _gateway(request)

    def read() -> list[Any]:
        # This wrapper's latest counts too; a failed write leaves them for the next sync,
        # and the rows the store holds are still shown.
        with contextlib.suppress(Exception):
            gateway.ledger.flush()
        with contextlib.suppress(Exception):
            gateway.uptime.flush(gateway.store)
        return gateway.usage(key, first, last)

    gateway.keep_books()  # answers already sent are in the ledger before it is read
    try:
        rows = await asyncio.to_thread(read)
    except Exception as exc:
        raise _store_down(gateway, "read ledger", exc) from None
    return {
        "object": "list",
        "data": [row.to_dict() for row in rows],
        "totals": total(rows),
        "key": key,
        "start": first,
        "end": last,
    }


class NewKey(BaseModel):
    """A key to create; a limit left out takes the ``VLLM_DEFAULT_*`` one."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no true for 1: say what you mean

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    role: Literal["user", "admin"] = "user"
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    max_streams: int | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)


class KeyChanges(BaseModel):
    """What to change of a key: any of its role and limits; a limit set to null takes the
    ``VLLM_DEFAULT_*`` one again."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user", "admin"] = "user"
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    max_streams: int | None = Field(None, ge=0)
    monthly_budget_usd: float | None = Field(None, ge=0)

    def given(self) -> dict[str, Any]:
        """The fields the body named (a null one included), and only those."""
        return self.model_dump(include=self.model_fields_set)


def _spend(gateway: Gateway, record: KeyRecord) -> dict[str, Any]:
    """The key's month-to-date spend (every wrapper's, as of the last sync; None while it
    was never read) and, with a budget, the share of it used."""
    if not gateway.ledger.spend_known:
        return {"month_spend_usd": None, "budget_used": None}
    spent = gateway.ledger.month_spend(record.name)
    budget = record.monthly_budget_usd
    share = None if budget is None else (spent / budget if budget > 0 else float(spent > 0))
    return {"month_spend_usd": spent, "budget_used": share}


@router.get("/v1/keys")
async def list_keys(request: Request, _: Admin) -> dict[str, Any]:
    """Every key's name, role, limits and source, its spend this UTC month and, with a
    budget, the share used (``budget_used``, 1.0 = all); never a key or its hash."""
    gateway = _gateway(request)
    gateway.keep_books()  # answers already sent count in the spend
    return {
        "object": "list",
        "data": [{**k.public(), **_spend(gateway, k)} for k in gateway.keys.records()],
    }


@router.post(
    "/v1/keys", status_code=HTTPStatus.CREATED, responses=errors(400, 409, 422, 503),
    openapi_extra=json_body(NewKey),
)  # fmt: skip
async def create_key(request: Request, _: Admin) -> dict[str, Any]:
    """A new key, kept (hashed) in the state store: its secret is in this answer only.
    The first key closes an open wrapper for good (``closed_wrapper`` says so)."""
    # The body is read after the admin key is checked: no key, no parsing.
    new = parse_body(NewKey, await request.body())
    gateway = _gateway(request)
    was_open = gateway.is_open()
    try:
        token, record = await asyncio.to_thread(gateway.create_key, new.model_dump())
    except KeyError:
        raise InvalidRequest(f"a key named {new.name!r} exists", "name",
                             HTTPStatus.CONFLICT) from None  # fmt: skip
    except Exception as exc:  # the store: no key was made (the caller may send it again)
        raise _store_down(gateway, "write keys", exc) from None
    answer = {"key": token, **record.public()}
    if was_open:
        answer["closed_wrapper"] = (
            "the wrapper was open and is now closed: every route but / and /health needs a "
            "key from now on, on every wrapper of this store"
        )
    return answer


@router.patch(
    "/v1/keys/{name}", responses=errors(404, 409, 422, 503),
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": KeyChanges.model_json_schema()}}}},
)  # fmt: skip
async def update_key(request: Request, name: str, _: Admin) -> dict[str, Any]:
    """Change a stored key's role or limits in place; its secret stays. It holds from the
    next request here, and on other wrappers from their next sync."""
    changes = parse_body(KeyChanges, await request.body()).given()  # after the admin key
    gateway = _gateway(request)
    record = gateway.keys.get(name)
    if record is not None and record.source != "store":
        raise InvalidRequest(
            f"key {name!r} is configured ({record.source}), not made with POST /v1/keys: "
            f"change its limits in {record.source} and restart the wrapper",
            "name", HTTPStatus.CONFLICT,
        )  # fmt: skip
    try:
        updated = await asyncio.to_thread(gateway.update_key, name, changes)
    except KeyError:
        raise InvalidRequest(f"no key named {name!r}", "name", HTTPStatus.NOT_FOUND) from None
    except Exception as exc:  # the store: nothing was changed (send it again)
        raise _store_down(gateway, "write keys", exc) from None
    return {**updated.public(), **_spend(gateway, updated)}


@router.delete(
    "/v1/keys/{name}", status_code=HTTPStatus.NO_CONTENT, responses=errors(404, 409, 503)
)
async def revoke_key(request: Request, name: str, _: Admin) -> Response:
    """Revoke a key created here; other wrappers drop it within a sync interval."""
    gateway = _gateway(request)
    record = gateway.keys.get(name)
    if record is None:
        raise InvalidRequest(f"no key named {name!r}", "name", HTTPStatus.NOT_FOUND)
    if record.source != "store":
        raise InvalidRequest(
            f"key {name!r} comes from {record.source}: remove it there",
            "name", HTTPStatus.CONFLICT,
        )  # fmt: skip
    try:
        await asyncio.to_thread(gateway.revoke_key, name)
    except Exception as exc:  # the store: the key is not revoked yet (send it again)
        raise _store_down(gateway, "write keys", exc) from None
    return Response(status_code=HTTPStatus.NO_CONTENT)
