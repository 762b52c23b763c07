"""What was deployed: the record ``vllm-autoscale deploy`` bakes into each image beside the
settings (``DEPLOYMENT_ENV``), and that ``GET /status`` and ``vllm-autoscale status`` show.

The record says which server version, which commit of which tree (and whether it had
uncommitted changes), which settings (their hash) and when; the deploy command gathers the
facts, this module shapes and reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from typing import Any

from ..core.version import __version__
from .constants import BAKED_SETTINGS_ENV, DEPLOYMENT_ENV
from .settings import Settings

__all__ = ["deployment_env", "deployment_record", "read_deployment", "settings_hash"]


def settings_hash(settings: Settings) -> str:
    """The baked settings' sha256 (secrets excluded): equal hashes, equal deployed settings."""
    baked = settings.baked_env()[BAKED_SETTINGS_ENV]
    return hashlib.sha256(baked.encode()).hexdigest()


def deployment_record(
    settings: Settings,
    *,
    commit: str | None,
    dirty: bool | None,
    config_file: str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """The record of one deploy of ``settings`` (``commit`` None: not from a git tree)."""
    return {
        "package_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "settings_sha256": settings_hash(settings),
        "config_file": config_file,
        "deployed_at": (at or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
    }


def deployment_env(record: dict[str, Any]) -> dict[str, str]:
    """The image environment that carries ``record`` into the containers."""
    return {DEPLOYMENT_ENV: json.dumps(record, sort_keys=True)}


def read_deployment() -> dict[str, Any] | None:
    """This container's deployment record; None where nothing was deployed (a local stack)."""
    baked = os.environ.get(DEPLOYMENT_ENV)
    return json.loads(baked) if baked else None
