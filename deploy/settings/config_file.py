"""The settings file a team commits, ``vllm-autoscale.toml``: flat keys named as the settings
(``scaledown_window = 300``), under the ``VLLM_*`` environment, which still wins.

Found at ``--config PATH``, else ``VLLM_CONFIG``, else ``vllm-autoscale.toml`` in the current
directory. ``[adapters]`` is a table; ``models`` may be an array of tables (``[[models]]``),
passed on as the JSON ``VLLM_MODELS`` takes. A relative ``api_keys_file`` or
``state_spill_dir`` is read from the file's folder. Secrets never go in the file.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .constants import CONFIG_ENV
from .settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # the file needs Python 3.11+; the environment alone works everywhere
    tomllib = None

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE",
    "ConfigFileError",
    "LoadedSettings",
    "find_config",
    "load_settings",
    "read_config",
]

CONFIG_FILE = "vllm-autoscale.toml"
Source = Literal["default", "file", "env"]

_SECRETS = frozenset({"wrapper_api_key", "api_keys", "cold_fallback_api_key"})
_PATHS = ("api_keys_file", "state_spill_dir")  # relative to the file's folder


class ConfigFileError(ValueError):
    """The settings file cannot be used: one line naming the file (and the key)."""


@dataclass(frozen=True)
class LoadedSettings:
    """The settings, the file they were read from (if any), and where each value came from."""

    settings: Settings
    path: Path | None
    sources: dict[str, Source] = field(default_factory=dict)

    def described(self) -> list[tuple[str, str, Source]]:
        """Each setting as ``(VLLM_NAME, value, source)``; secrets shown only as set."""
        rows = []
        for name, source in self.sources.items():
            value = getattr(self.settings, name)
            if name in _SECRETS:
                shown = "(set)" if value is not None else "(unset)"
            else:
                shown = json.dumps(value, default=str)
            rows.append((f"VLLM_{name.upper()}", shown, source))
        return rows


def find_config(explicit: str | Path | None = None, cwd: Path | None = None) -> Path | None:
    """The settings file to read: ``explicit``, else ``VLLM_CONFIG``, else the current
    directory's ``vllm-autoscale.toml`` if there is one. A named file must exist."""
    named = explicit or os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigFileError(f"settings file {path} does not exist")
        return path.resolve()
    default = (cwd or Path.cwd()) / CONFIG_FILE
    return default.resolve() if default.is_file() else None


def read_config(path: Path) -> dict[str, Any]:
    """The file's settings, as ``Settings`` arguments; unknown keys and secrets refused."""
    if tomllib is None:
        raise ConfigFileError(f"settings file {path}: reading TOML needs Python 3.11+")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"settings file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"settings file {path} is not TOML: {exc}") from None
    for key in data:
        if key in _SECRETS:
            raise ConfigFileError(
                f"settings file {path}: {key!r} is a secret; put VLLM_{key.upper()} in the "
                "vllm-secrets Modal Secret (or the environment), never in a committed file"
            )
        if key not in Settings.model_fields:
            raise ConfigFileError(f"settings file {path}: unknown setting {key!r}")
    if isinstance(data.get("models"), list):
        data["models"] = json.dumps(data["models"])
    for key in _PATHS:
        if isinstance(data.get(key), str):
            value = Path(data[key]).expanduser()
            data[key] = str(value if value.is_absolute() else path.parent / value)
    return data


def _set_in_environment() -> set[str]:
    """The settings a ``VLLM_*`` variable sets (names compared case-insensitively, as
    pydantic-settings reads them)."""
    present = {name.upper() for name in os.environ}
    return {name for name in Settings.model_fields if f"VLLM_{name.upper()}" in present}


def load_settings(explicit: str | Path | None = None) -> LoadedSettings:
    """The settings a command runs with: defaults, under the settings file, under the
    environment. ``ValueError`` (``ConfigFileError`` for the file itself) when they do not
    hold."""
    path = find_config(explicit)
    from_file = read_config(path) if path else {}
    from_env = _set_in_environment()
    # Constructor arguments win over the environment in pydantic-settings: pass the file's
    # values only where no variable sets the same setting.
    settings = Settings(**{k: v for k, v in from_file.items() if k not in from_env})
    sources: dict[str, Source] = {
        name: "env" if name in from_env else "file" if name in from_file else "default"
        for name in Settings.model_fields
    }
    return LoadedSettings(settings, path, sources)
