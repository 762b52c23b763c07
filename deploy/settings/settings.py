"""Every setting of the service, in one place, read from the environment.

The same variables configure ``modal deploy`` (read at deploy time on your machine; the
wrapper and the GPU class read them again inside their containers from the image's env) and
``vllm-autoscale serve --local``. Names keep the seed's ``VLLM_`` spelling
(``VLLM_MODEL``, ``VLLM_WRAPPER_API_KEY``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..core.model_info import ModelInfo

if TYPE_CHECKING:
    from ..core.schedule import WarmSchedule

__all__ = [
    "BAKED_SETTINGS_ENV",
    "CHAT_TEMPLATES",
    "MINUTES",
    "MODEL_PRESETS",
    "SECRET_ENV",
    "SERVICE_NAME",
    "SERVICE_VERSION",
    "ModelPreset",
    "ModelSpec",
    "Settings",
]

MINUTES = 60  # seconds
CHAT_TEMPLATES = Path(__file__).resolve().parent.parent / "chat_templates"
BAKED_SETTINGS_ENV = "AUTOSCALE_SETTINGS_JSON"
"""The deploy-time settings, as one JSON value in each Modal image's environment. Not a
``VLLM_*`` name: vLLM warns about every ``VLLM_*`` variable it does not know."""
SECRET_ENV = (
    "VLLM_WRAPPER_API_KEY",
    "VLLM_API_KEYS",
    "VLLM_COLD_FALLBACK_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)
"""Secrets the containers get from the ``vllm-secrets`` Modal Secret: never baked into an
image, never handed to the vLLM process."""
SERVICE_NAME = "VLLM Auto-Scale Service"
SERVICE_VERSION = "2.0.0"  # the seed's API version, reported by GET /

GPU_TYPES = (
    "T4",
    "L4",
    "A10G",
    "A10",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H200",
    "B200",
)
_GPU_SPEC = re.compile(rf"^({'|'.join(re.escape(g) for g in GPU_TYPES)})(?::([1-8]))?$")


@dataclass(frozen=True)
class ModelPreset:
    """What a model family needs from vLLM for tool calling and reasoning, the GPU it fits
    on, and what it accepts (the wrapper reports it on ``/v1/models``)."""

    tool_call_parser: str | None
    chat_template: str | None
    gpu: str = "A100-80GB"
    max_model_len: int = 8192
    reasoning_parser: str | None = None
    image_inputs: bool = False
    """The model reads images (a vision-language model); every preset here is text-only."""


MODEL_PRESETS: dict[str, ModelPreset] = {
    # Llama 3.1 calls tools as bare JSON; the template that teaches it so is not in the wheel.
    "meta-llama/Llama-3.1-8B-Instruct": ModelPreset(
        "llama3_json", str(CHAT_TEMPLATES / "llama3.1_json_tools.jinja")
    ),
    "meta-llama/Llama-3.1-70B-Instruct": ModelPreset(
        "llama3_json", str(CHAT_TEMPLATES / "llama3.1_json_tools.jinja"), gpu="A100-80GB:2"
    ),
    # Mistral v0.2's own template has no tool turns, and vLLM's mistral parser needs v0.3+.
    "mistralai/Mistral-7B-Instruct-v0.2": ModelPreset(None, None, max_model_len=8192),
    # Reasoning models: the reasoning parser moves the thinking out of `content` into the
    # message's `reasoning` field. Thinking is long, hence the longer contexts.
    # Qwen3's own template renders tools and <tool_call> turns in the Hermes style.
    "Qwen/Qwen3-8B": ModelPreset("hermes", None, max_model_len=32768, reasoning_parser="qwen3"),
    # No vLLM tool parser reads the R1 distills' tool calls (`deepseek_v3` is for DeepSeek-V3
    # and R1-0528 with their own template, and the distills' template never renders `tools`):
    # tool calling stays off; reasoning and structured output work.
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": ModelPreset(
        None, None, max_model_len=32768, reasoning_parser="deepseek_r1"
    ),
    # vLLM renders gpt-oss prompts with the Harmony format itself (no chat template); its
    # `openai` tool parser and `openai_gptoss` reasoning parser read the Harmony channels.
    # MXFP4 weights: Hopper runs them natively (vLLM's gpt-oss recipe).
    "openai/gpt-oss-20b": ModelPreset(
        "openai", None, gpu="H100", max_model_len=32768, reasoning_parser="openai_gptoss"
    ),
}
_NO_PRESET = ModelPreset(None, None)


class ModelSpec(BaseModel):
    """One model of a service that serves several (``VLLM_MODELS``, a JSON list of these).
    Each is its own engine (its own GPU class on Modal) with its own window and bounds,
    behind the one wrapper; a field left out takes the service-wide setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}$")
    """What requests say in ``model``."""
    model: str | None = None
    """The weights (Hugging Face id); default: ``name``."""
    model_revision: str | None = None
    gpu: str | None = None
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=8)
    max_model_len: int | None = Field(default=None, ge=256)
    max_num_seqs: int | None = Field(default=None, ge=1, le=1024)
    scaledown_window: int | None = Field(default=None, ge=2, le=3600)
    max_containers: int | None = Field(default=None, ge=1, le=100)
    tool_call_parser: str | None = None
    chat_template: str | None = None
    reasoning_parser: str | None = None
    gpu_price_per_hour: float | None = Field(default=None, ge=0)
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters served on this model: name -> a local folder, a path on the models
    Volume, or a Hugging Face repo id. ``model=<adapter>`` routes here."""
    enable_lora: bool | None = None
    """Start with LoRA on even without declared adapters (to load them at run time)."""
    max_lora_rank: int = Field(default=16, ge=1, le=512)


class Settings(BaseSettings):
    """Service settings; each field is the env var ``VLLM_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="VLLM_", extra="ignore", frozen=True)

    # -- the model and its GPU (Modal) --------------------------------------------------------
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    """The model the GPU class serves (Hugging Face id)."""
    model_revision: str | None = None
    """Pin a revision to avoid surprises when the repo updates."""
    served_name: str | None = None
    """What requests say in ``model`` (default: ``model``)."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters on this model: name -> local folder, models-Volume path or Hub repo."""
    enable_lora: bool = False
    """Start vLLM with LoRA on even without adapters, so that admins can load some at run
    time (``POST /v1/adapters``); declared adapters turn it on anyway."""
    max_lora_rank: int = Field(default=16, ge=1, le=512)
    models: str | None = None
    """Several models behind one wrapper: a JSON list of ``ModelSpec`` entries (name, model,
    gpu, scaledown_window, max_containers, parsers, adapters...). The first is the default
    for requests that name none. Unset: the one model above."""
    gpu: str | None = None
    """Modal GPU spec, e.g. "A100-80GB" or "A100-80GB:2"; default from the model's preset."""
    tensor_parallel_size: int | None = Field(default=None, ge=1, le=8)
    """Defaults to the GPU count of ``gpu``; must equal it."""
    max_model_len: int | None = Field(default=None, ge=256)
    """Context length; default from the model's preset."""
    max_num_seqs: int = Field(default=64, ge=1, le=1024)
    """Sequences vLLM runs at once; also the GPU class's Modal concurrency."""
    enforce_eager: bool = True
    """Fast boots (no CUDA graph capture) at some throughput cost: users feel the cold start."""
    tool_call_parser: str | None = None
    """vLLM's ``--tool-call-parser`` (e.g. "hermes", "llama3_json"); default from the model's
    preset. "none" turns tool calling off. A model with no preset has none unless set."""
    chat_template: str | None = None
    """A chat template shipped in ``deploy/chat_templates/`` (file name), or the model's own."""
    reasoning_parser: str | None = None
    """vLLM's ``--reasoning-parser`` (e.g. "qwen3", "deepseek_r1"); default from the preset."""

    # -- scaling --------------------------------------------------------------------------------
    mode: Literal["autoscale", "integrated"] = "autoscale"
    """"integrated" keeps one GPU container warm (the seed's always-on alternative)."""
    scaledown_window: int = Field(default=2 * MINUTES, ge=2, le=3600)
    """Idle seconds before the GPU is released: 60-120 for rare use, 300-600 for frequent."""
    max_containers: int = Field(default=1, ge=1, le=100)
    """Upper bound on GPU containers (each is one A100: this is the cost ceiling)."""
    target_inputs: int | None = Field(default=None, ge=1)
    """Requests per GPU container Modal aims for before it starts another (up to
    ``max_containers``); default 3/4 of ``max_num_seqs``, so a second GPU boots before the
    first saturates."""
    startup_timeout: int = Field(default=20 * MINUTES, ge=60)
    """Time a GPU container may take to start; the first start downloads the weights."""
    warm_schedule: str | None = None
    """Windows in which one GPU container stays warm, scaled to zero outside them:
    ``CRON LENGTH [ZONE]`` separated by ``;``, e.g. "0 9 * * mon-fri 9h Europe/Paris"
    (deploy/core/schedule.py)."""
    cold_fallback_url: str | None = None
    """An OpenAI-compatible endpoint (its ``/v1`` root) that serves requests arriving while
    the engine is cold or starting; the engine is woken meanwhile
    (deploy/transports/fallback.py)."""
    cold_fallback_api_key: SecretStr | None = None
    """The fallback's bearer key (a secret: the Modal Secret or the environment)."""
    cold_fallback_model: str | None = None
    """The model name sent to the fallback (None: the request's own)."""
    cold_fallback_policy: Literal["always", "header", "after"] = "always"
    """Which cold-time requests go to the fallback: all; those with
    ``X-Allow-Fallback: true``; or those still waiting after ``cold_fallback_after``."""
    cold_fallback_after: float = Field(default=10.0, ge=0, le=600)
    """Seconds a request waits for the engine before the ``after`` policy falls back."""
    gpu_snapshot: bool = False
    """Use Modal's GPU memory snapshots to cut cold starts (experimental on Modal)."""
    drain_grace: float = Field(default=20.0, ge=0, le=600)
    """On shutdown (SIGTERM locally, container stop on Modal): seconds in-flight requests
    get to finish; streams still open then end with an error event and [DONE]."""
    public_docs: bool = False
    """Serve /docs, /redoc and /openapi.json without the key (with a key set, they need it
    like every route but / and /health)."""

    # -- the wrapper ----------------------------------------------------------------------------
    wrapper_api_key: SecretStr | None = None
    """When set, every route but / and /health needs ``Authorization: Bearer <key>``."""
    api_keys: SecretStr | None = None
    """More named keys, as a JSON list of entries ``{"name", "key" or "sha256", "role",
    "rpm", "tpm", "max_streams", "monthly_budget_usd"}`` (a secret: the Modal Secret or the
    environment). See deploy/gateway/keys.py."""
    api_keys_file: Path | None = None
    """A TOML (``[[keys]]``) or JSON file of key entries, the same fields as ``api_keys``
    (with ``sha256`` rather than the key: ``vllm-autoscale keys new`` writes one)."""
    default_rpm: int | None = Field(default=None, ge=0)
    """Requests per minute for a key that sets none (None: unlimited)."""
    default_tpm: int | None = Field(default=None, ge=0)
    """Tokens per minute (prompt plus ``max_tokens``, settled on the real usage)."""
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
    max_queue: int = Field(default=256, ge=1)
    """Requests that may wait for a starting engine; more get 503 with Retry-After."""
    queue_timeout: float = Field(default=10 * MINUTES, gt=0)
    """Longest wait for the engine before a 503; streams send heartbeats meanwhile."""
    heartbeat_interval: float = Field(default=10.0, gt=0)
    """Seconds between SSE comment heartbeats while a stream waits for a cold engine."""
    max_body_bytes: int = Field(default=4_000_000, ge=1024)
    max_messages: int = Field(default=1024, ge=1)
    max_tokens_limit: int = Field(default=8192, ge=1)
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int | None = Field(default=None, ge=1)
    """``max_tokens`` for requests that set none (None: up to the context length)."""
    max_batch: int = Field(default=256, ge=1)
    """Requests in one batch call."""
    gpu_price_per_hour: float = Field(default=2.50, ge=0)
    """For the cost estimate in each response's metadata (A100-80GB on Modal)."""
    # The wrapper's own HTTP server (deploy/wrapper/http_server.py, ``serve --local``); on Modal,
    # Modal's web front end holds the client connections.
    header_timeout: float = Field(default=10.0, gt=0)
    """Seconds a client connection has to send complete request headers, from connecting or
    from the previous response's end; then it is closed (idle and slow-header sockets)."""
    keepalive_timeout: float = Field(default=5.0, gt=0)
    """Seconds an idle keep-alive connection (not a byte since its last response) is kept."""
    body_timeout: float = Field(default=30.0, gt=0)
    """Seconds the whole request body has to arrive once its headers are in; then 408 and the
    connection is closed. Only receiving the request is timed: never a response or a wait."""
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request head (request line plus headers) the wrapper reads; a larger one gets
    431 and the connection is closed, before any route or key check sees it."""
    max_connections: int | None = Field(default=None, ge=1)
    """Client connections the wrapper holds at once; more get 503 ``overloaded`` (JSON,
    Retry-After) and are closed. Default ``min(10000, soft RLIMIT_NOFILE // 2)``: the other
    half of the descriptors stays for the engine's connections and files."""

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
        secrets = {"wrapper_api_key", "api_keys", "cold_fallback_api_key"}
        data = self.model_dump(mode="json", exclude=secrets, exclude_none=True)
        return {BAKED_SETTINGS_ENV: json.dumps(data, sort_keys=True)}

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """Every ``VLLM_*`` variable the service reads: not vLLM's, so never passed to it."""
        return frozenset(f"VLLM_{name.upper()}" for name in cls.model_fields)

    @cached_property
    def preset(self) -> ModelPreset:
        return MODEL_PRESETS.get(self.model, _NO_PRESET)

    @property
    def has_preset(self) -> bool:
        return self.model in MODEL_PRESETS

    @property
    def tool_parser(self) -> str | None:
        """The tool-call parser vLLM will use (None: tool calling off)."""
        if self.tool_call_parser is not None:
            return None if self.tool_call_parser.lower() == "none" else self.tool_call_parser
        return self.preset.tool_call_parser

    @property
    def chat_template_path(self) -> str | None:
        if self.chat_template is not None:
            return str(CHAT_TEMPLATES / self.chat_template)
        return self.preset.chat_template

    @property
    def reasoning(self) -> str | None:
        return self.reasoning_parser or self.preset.reasoning_parser

    @property
    def concurrency_target(self) -> int:
        return self.target_inputs or max(1, self.max_num_seqs * 3 // 4)

    def parser_warning(self) -> str | None:
        """What a deployer must hear about tool calling, or None when it is settled."""
        if self.has_preset or self.tool_call_parser is not None:
            return None
        return (
            f"{self.model} has no preset: tool calling is OFF. Set VLLM_TOOL_CALL_PARSER "
            "(vLLM's parser for this model family, e.g. hermes, llama3_json, mistral, "
            "qwen3_coder) and, if the model's own template lacks tools, VLLM_CHAT_TEMPLATE; "
            "VLLM_REASONING_PARSER for a reasoning model."
        )

    @property
    def gpu_spec(self) -> str:
        return self.gpu or self.preset.gpu

    @property
    def gpu_count(self) -> int:
        match = _GPU_SPEC.match(self.gpu_spec)
        return int(match.group(2) or 1) if match else 1

    @property
    def tp_size(self) -> int:
        return self.tensor_parallel_size or self.gpu_count

    @model_validator(mode="after")
    def _check_gpu(self) -> Settings:
        if not _GPU_SPEC.match(self.gpu_spec):
            raise ValueError(
                f"VLLM_GPU={self.gpu_spec!r} is not a Modal GPU spec: use TYPE or TYPE:COUNT "
                f"with TYPE one of {', '.join(GPU_TYPES)} and COUNT 1-8 (e.g. 'A100-80GB:2')"
            )
        if self.chat_template is not None and not (CHAT_TEMPLATES / self.chat_template).is_file():
            shipped = sorted(p.name for p in CHAT_TEMPLATES.glob("*.jinja"))
            raise ValueError(
                f"VLLM_CHAT_TEMPLATE={self.chat_template!r} is not a template shipped in "
                f"deploy/chat_templates/ (those are: {', '.join(shipped)})"
            )
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
        if self.warm_schedule:
            from ..core.schedule import WarmSchedule  # croniter: only where a schedule is set

            try:
                WarmSchedule.parse(self.warm_schedule)
            except ValueError as exc:
                raise ValueError(f"VLLM_WARM_SCHEDULE: {exc}") from None
        if self.tensor_parallel_size and self.tensor_parallel_size != self.gpu_count:
            raise ValueError(
                f"VLLM_TENSOR_PARALLEL_SIZE={self.tensor_parallel_size} does not match the "
                f"{self.gpu_count} GPU(s) of VLLM_GPU={self.gpu_spec!r}: vLLM shards the model "
                "over exactly that many GPUs"
            )
        return self

    @cached_property
    def schedule(self) -> WarmSchedule:
        """The parsed ``warm_schedule`` (empty: no windows)."""
        from ..core.schedule import WarmSchedule

        return WarmSchedule.parse(self.warm_schedule)

    @property
    def name(self) -> str:
        """The served model's name, as requests say it."""
        return self.served_name or self.model

    @property
    def lora(self) -> bool:
        """Whether vLLM runs with LoRA (adapters declared, or ``enable_lora``)."""
        return self.enable_lora or bool(self.adapters)

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

    def model_specs(self) -> list[ModelSpec]:
        try:
            entries = json.loads(self.models or "[]")
        except ValueError:
            raise ValueError("VLLM_MODELS is not valid JSON (a list of models)") from None
        if not isinstance(entries, list) or not entries:
            raise ValueError("VLLM_MODELS must be a non-empty JSON list of models")
        specs = [ModelSpec.model_validate(e) for e in entries]
        names = [s.name for s in specs] + [a for s in specs for a in s.adapters]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"VLLM_MODELS: name(s) served twice: {', '.join(twice)}")
        return specs

    def _plain(self) -> dict[str, object]:
        """The fields as constructor arguments (secrets kept as they are)."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    def model_info(self) -> ModelInfo:
        """The model the GPU class serves, as ``engine.process.gpu_engine_config`` runs it: what the
        wrapper reports on ``/v1/models`` and tokenizes with, without waking the GPU."""
        return ModelInfo(
            name=self.name,
            max_model_len=self.max_model_len or self.preset.max_model_len,
            tool_parser=self.tool_parser,
            reasoning_parser=self.reasoning,
            image_inputs=self.preset.image_inputs,
            tokenizer=self.model,
            revision=self.model_revision,
            chat_template=self.chat_template_path,
        )
