"""The gateway: who may call (keys, their default limits and budgets, the docs), where its
shared state lives, what a request is assumed to cost, and the response cache."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

__all__ = ["GatewayPart"]


class GatewayPart(BaseModel):
    """The gateway settings of ``Settings`` (each field is the env var ``VLLM_<FIELD>``)."""

    public_docs: bool = False
    """Serve /docs, /redoc and /openapi.json without the key (with a key set, they need it
    like every route but / and /health)."""
    wrapper_api_key: SecretStr | None = None
    """When set, every route but / and /health needs ``Authorization: Bearer <key>``."""
    api_keys: SecretStr | None = None
    """More named keys, as a JSON list of entries ``{"name", "key" or "sha256", "role",
    "rpm", "tpm", "max_streams", "monthly_budget_usd"}`` (a secret: the Modal Secret or the
    environment). See deploy/gateway/keys.py."""
    api_keys_file: Path | None = None
    """A TOML (``[[keys]]``) or JSON file of key entries, the same fields as ``api_keys``
    (with ``sha256`` rather than the key: ``vllm-autoscale keys new`` writes one); JSON if
    it parses as JSON, else TOML, whatever its name."""
    default_rpm: int | None = Field(default=None, ge=0)
    """Requests per minute for a key that sets none (None: unlimited)."""
    default_tpm: int | None = Field(default=None, ge=0)
    """Tokens per minute (prompt plus ``max_tokens``, settled on the real usage)."""
    tpm_completion_reserve: int | None = Field(default=None, ge=0)
    """Completion tokens a request without ``max_tokens`` holds of its key's ``tpm`` until
    it is settled (at most the rest of the context). Default: the 95th percentile of the
    key's last 100 completions, 256 before it has any."""
    default_max_streams: int | None = Field(default=None, ge=0)
    """Streams a key may hold open at once."""
    default_monthly_budget_usd: float | None = Field(default=None, ge=0)
    """What a key may spend per UTC month at ``gpu_price_per_hour``; then 429
    ``insufficient_quota`` until the month ends."""
    state_url: str | None = None
    """Where the usage ledger, shared limit counters and stored keys live:
    ``sqlite:///PATH``, ``modal-dict://NAME`` or ``memory://``. Default: a SQLite file in
    ``~/.local/state/vllm-autoscale/`` locally; on Modal, Modal Dicts every wrapper
    container shares."""
    state_sync_interval: float = Field(default=2.0, gt=0, le=300)
    """Seconds between writes of the ledger and reads of other wrappers' counters: how far
    a limit shared by several wrapper containers can be overrun, and what a wrapper killed
    without a shutdown can lose."""
    require_key: bool = False
    """Never run open: with no key configured and none stored, every route but / and /health
    answers 401 (default: such a wrapper is open, for local use). A store that has ever held
    a key closes the wrapper for good whatever this says (docs/gateway.md)."""
    state_spill_dir: Path = Path("~/.local/state/vllm-autoscale/spill")
    """Where ledger rows that could not be written at shutdown (the store down) are kept,
    to be written at the next start. On Modal, a path on a Volume keeps them across
    containers."""
    state_key_grace: float = Field(default=60.0, gt=0)
    """Seconds stored keys (made with ``POST /v1/keys``) keep working from the last good read
    of an unreachable store; then their callers get 503 until it answers again."""
    request_cost_estimate_usd: float | None = Field(default=None, ge=0)
    """What an admitted request is assumed to cost until it is booked, for budgets (in-flight
    requests hold it). Default: the mean of the model's recent requests, at least 10 GPU
    seconds at ``gpu_price_per_hour``."""
    gpu_cost_allocation: Literal["proportional", "overhead"] = "proportional"
    """How a GPU container's boot and idle seconds (the scaledown tail, warm windows) are
    shared: ``proportional`` to the keys' use of that container, or ``overhead``: one
    ``(unallocated)`` line. Busy seconds always go to the keys that used them."""
    prefix_cache_isolation: Literal["shared", "per_key"] = "shared"
    """``per_key``: every request carries a ``cache_salt`` derived from its key, so vLLM's
    prefix cache is never shared between keys (closes a timing side channel; costs the
    cross-key prefix hits)."""
    cache_max_entries: int = Field(default=1024, ge=0)
    """Responses the cache keeps (0: no cache). Only deterministic requests are cached:
    temperature 0 or a seed set."""
    cache_max_bytes: int = Field(default=64 * 2**20, ge=1024)
    cache_ttl: float = Field(default=3600.0, gt=0)
    """Seconds an entry is replayed."""
    cache_shared: bool = False
    """Replay one key's answers to other keys (off: each key has its own entries)."""
