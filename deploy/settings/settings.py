"""Every setting of the service, in one place, read from the environment.

The same variables configure ``modal deploy`` (read at deploy time on your machine; the
wrapper and the GPU class read them again inside their containers from the image's env) and
``vllm-autoscale serve --local``. Names keep the seed's ``VLLM_`` spelling
(``VLLM_MODEL``, ``VLLM_WRAPPER_API_KEY``).

``Settings`` is one flat object made of parts, one concern each, whose fields it inherits:

- ``ModelPart`` (model.py): the model, its adapters, parsers, template, context and GPU;
- ``ScalingPart`` (scaling.py): mode, window, bounds, warm schedule, cold fallback, drain;
- ``GatewayPart`` (gateway.py): keys, default limits, state store, cost estimate, cache;
- ``HttpPart`` (http.py): the queue, request limits, the wrapper server's timeouts.

Presets and ``ModelSpec`` are in presets.py, the GPU string grammar in gpu.py, the shared
names in constants.py. This module composes the parts, checks what spans several of them,
loads the settings (environment or baked JSON), and re-exports what the rest of the
service imports from here.
"""

from __future__ import annotations

import json
import os

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .constants import (
    BAKED_SETTINGS_ENV,
    CONFIG_ENV,
    MINUTES,
    SECRET_ENV,
    SERVICE_NAME,
    SERVICE_VERSION,
)
from .gateway import GatewayPart
from .gpu import GPU_TYPES
from .http import HttpPart
from .model import ModelPart
from .presets import CHAT_TEMPLATES, MODEL_PRESETS, ModelPreset, ModelSpec
from .scaling import ScalingPart

__all__ = [
    "BAKED_SETTINGS_ENV",
    "CHAT_TEMPLATES",
    "GPU_TYPES",
    "MINUTES",
    "MODEL_PRESETS",
    "SECRET_ENV",
    "SERVICE_NAME",
    "SERVICE_VERSION",
    "GatewayPart",
    "HttpPart",
    "ModelPart",
    "ModelPreset",
    "ModelSpec",
    "ScalingPart",
    "Settings",
]

PARTS = (ModelPart, ScalingPart, GatewayPart, HttpPart)
"""The parts ``Settings`` is made of, in ``model_fields`` order; each field is in one."""
_SECRETS = {"wrapper_api_key", "api_keys", "cold_fallback_api_key"}
"""The fields that hold secrets: never baked into an image (``SECRET_ENV``)."""


# Pydantic collects fields from the farthest base first, hence the bases in reverse: the
# fields read model, scaling, gateway, HTTP, as ``PARTS`` lists them.
class Settings(HttpPart, GatewayPart, ScalingPart, ModelPart, BaseSettings):
    """Service settings; each field is the env var ``VLLM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="VLLM_", extra="ignore", frozen=True)

    @classmethod
    def load(cls) -> Settings:
        """The settings a process should run with: inside a Modal container, those baked into
        its image at deploy time (``BAKED_SETTINGS_ENV``) with secrets from the environment;
        elsewhere, the ``VLLM_*`` environment."""
        baked = os.environ.get(BAKED_SETTINGS_ENV)
        return cls(**json.loads(baked)) if baked else cls()

    def baked_env(self) -> dict[str, str]:
        """The image environment that makes ``load()`` in a container return these settings
        (secrets excluded: they come from the Modal Secret at run time)."""
        data = self.model_dump(mode="json", exclude=_SECRETS, exclude_none=True)
        return {BAKED_SETTINGS_ENV: json.dumps(data, sort_keys=True)}

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """Every ``VLLM_*`` variable the service reads: not vLLM's, so never passed to it."""
        return frozenset({CONFIG_ENV, *(f"VLLM_{name.upper()}" for name in cls.model_fields)})

    @property
    def concurrency_target(self) -> int:
        return self.target_inputs or max(1, self.max_num_seqs * 3 // 4)

    @model_validator(mode="after")
    def _check_gpu(self) -> Settings:
        # One check after the other, in this order: the first that fails is the error.
        self._check_gpu_spec()
        self._check_chat_template()
        if self.target_inputs is not None and self.target_inputs > self.max_num_seqs:
            raise ValueError(
                f"VLLM_TARGET_INPUTS={self.target_inputs} exceeds VLLM_MAX_NUM_SEQS="
                f"{self.max_num_seqs}: a container cannot aim for more than it can hold"
            )
        if self.models:
            try:
                self.served_models()  # each model's settings must hold on their own
            except ValueError as exc:
                text = str(exc)
                prefix = "" if text.startswith("VLLM_MODELS") else "VLLM_MODELS: "
                raise ValueError(prefix + text) from None
        self._check_warm_schedule()
        self._check_tensor_parallel()
        return self

    def served_models(self) -> list[Settings]:
        """One ``Settings`` per served model: each model of ``VLLM_MODELS`` with the
        service-wide settings under its own, or just this one."""
        if not self.models:
            return [self]
        out: list[Settings] = []
        for spec in self.model_specs():
            own = spec.model_dump(exclude_none=True, exclude={"name", "model"})
            own |= {"served_name": spec.name, "model": spec.model or spec.name, "models": None}
            out.append(type(self).model_validate({**self._plain(), **own}))
        return out

    def _plain(self) -> dict[str, object]:
        """The fields as constructor arguments (secrets kept as they are)."""
        return {name: getattr(self, name) for name in type(self).model_fields}
