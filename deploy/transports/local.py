"""The local transport: a vLLM process on this machine that lives the life of a Modal container.

``LocalTransport`` owns a ``VLLMEngine`` and gives it Modal's life: started by the first
request (or ``warmup``), stopped after ``scaledown_window`` idle seconds, with requests that
arrive during a start waiting in a bounded queue. It is what ``vllm-autoscale serve --local``,
the tests and the benchmarks run; on Modal the wrapper uses ``ModalTransport`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.contract import (
    BatchResults,
    ContainerLife,
    EngineState,
    EngineStatus,
    Facts,
    Reply,
)
from ..core.errors import (
    EngineError,
    EngineRequestError,
    EngineStartError,
    EngineUnavailable,
    Overloaded,
)
from ..core.logs import wake_cause
from ..engine.process import EngineConfig, VLLMEngine

if TYPE_CHECKING:
    from ..core.schedule import WarmSchedule

__all__ = ["LocalTransport"]

log = logging.getLogger("vllm_autoscale.engine")

RESTART_BACKOFF_S = 5.0
"""After a failed start, the next attempt waits this long, doubling with each failure..."""
RESTART_BACKOFF_CAP_S = 300.0
"""...up to this: a broken configuration is not relaunched in a loop."""
_LIVES_KEPT = 256  # engine lives remembered for the meter (it keeps its own once synced)


class LocalTransport:
    """A local vLLM process that starts on demand and stops when idle, like a Modal container."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        scaledown_window: float | None = 120.0,
        max_queue: int = 256,
        queue_timeout: float = 600.0,
        schedule: WarmSchedule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = VLLMEngine(config)
        self.schedule = schedule if schedule else None
        """Warm windows: the engine is started when one opens and not stopped inside one."""
        self.clock = clock
        """The schedule's clock (Unix time); tests pass one they control."""
        self._window_open = False
        self._schedule_task: asyncio.Task[None] | None = None
        self.model_name = config.served_model_name
        self.scaledown_window = scaledown_window
        """Idle seconds before the engine stops; None keeps it up until shutdown."""
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.state: EngineState = "cold"
        self.cold_starts = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        """Unix time of ``last_error``; a later success clears both."""
        self.last_request_at: float | None = None
        self.failed_starts = 0
        """Failed starts in a row (the backoff's exponent)."""
        self.next_start_at: float | None = None
        """Unix time before which a failed engine is not relaunched (requests get 503)."""
        self._last_activity = time.monotonic()
        self._waiting = 0
        self._in_flight = 0
        self._start_task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._adapter_lock: asyncio.Lock | None = None
        self._lives: deque[ContainerLife] = deque(maxlen=_LIVES_KEPT)
        """Each engine process's life (``Metered``): the GPU up-time meter reads them."""

    # -- lifecycle -----------------------------------------------------------------------------

    async def _start(self, cause: str) -> None:
        self.state = "starting"
        self.cold_starts += 1
        self._lives.append(ContainerLife(uuid.uuid4().hex[:12], time.time()))
        log.info("the engine of %s is starting, for %s", self.model_name, cause,
                 extra={"event": "engine_starting", "model": self.model_name,
                        "cause": cause})  # fmt: skip
        try:
            await self.engine.start()
        except EngineStartError as exc:
            self._ended()
            self._start_failed(exc)
            raise
        except BaseException:
            self.state = "cold"
            await asyncio.to_thread(self.engine.stop)
            self._ended()
            raise
        life = self._lives[-1]
        life.ready_at = time.time()
        boot = life.ready_at - life.up_since
        log.info("the engine of %s is warm after %.1f s", self.model_name, boot,
                 extra={"event": "engine_warm", "model": self.model_name,
                        "boot_s": round(boot, 2)})  # fmt: skip
        self.state = "warm"
        self.failed_starts, self.next_start_at = 0, None
        self._clear_error()
        self._last_activity = time.monotonic()
        self._ensure_idle_watch()

    def _start_failed(self, exc: EngineStartError) -> None:
        """Back off before the next attempt; the operator gets the whole cause in the log."""
        self.state = "failed"
        self.failed_starts += 1
        delay = min(RESTART_BACKOFF_CAP_S, RESTART_BACKOFF_S * 2 ** (self.failed_starts - 1))
        self.next_start_at = time.time() + delay
        exc.retry_after = delay
        self._set_error(exc.message)
        log.error(
            "the engine failed to start (%d in a row; next attempt in %.0f s): %s\n%s",
            self.failed_starts, delay, exc.message, exc.detail,
        )  # fmt: skip

    def _set_error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, time.time()

    def _clear_error(self) -> None:
        self.last_error = self.last_error_at = None

    def _begin_start(self, cause: str | None = None) -> asyncio.Task[None]:
        if self._start_task is None or self._start_task.done():
            cause = cause or wake_cause.get() or "a request"
            self._start_task = asyncio.create_task(self._start(cause))
            # A start nobody waits for (warmup) must not log "exception never retrieved".
            self._start_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._start_task

    def _ended(self) -> None:
        """The current engine process is gone: its life ends now."""
        if self._lives and self._lives[-1].stopped_at is None:
            self._lives[-1].stopped_at = time.time()

    def lives(self) -> list[ContainerLife]:
        """Each engine process's life, oldest first (``Metered``)."""
        return list(self._lives)

    def _refresh_state(self) -> None:
        if self.state == "warm" and not self.engine.is_running():
            self._ended()
            self.state = "cold"  # the process died; the next request starts a new one
            self._set_error(f"the engine process exited (code {self.engine.exit_code})")
            log.error("the engine of %s crashed: %s; the next request starts a new one",
                      self.model_name, self.last_error,
                      extra={"event": "engine_crashed", "model": self.model_name})  # fmt: skip

    async def _ready(self, facts: Facts) -> None:
        """Return once the engine is warm, starting it if needed (the queue of a cold start)."""
        self._refresh_state()
        if self.state == "warm":
            return
        if self.state == "failed" and self.next_start_at and time.time() < self.next_start_at:
            wait = self.next_start_at - time.time()
            raise EngineStartError(
                f"{self.last_error} (next start attempt in {math.ceil(wait)} s)",
                retry_after=math.ceil(wait),
            )
        if self._waiting >= self.max_queue:
            raise Overloaded(
                f"{self._waiting} requests are already waiting for the engine to start",
                retry_after=10,
            )
        self._waiting += 1
        began = time.monotonic()
        facts.cold_start = True
        try:
            await asyncio.wait_for(asyncio.shield(self._begin_start()), self.queue_timeout)
        except asyncio.TimeoutError:
            raise Overloaded(
                f"the engine is still starting after {self.queue_timeout:.0f} s", retry_after=30
            ) from None
        finally:
            self._waiting -= 1
            facts.queue_wait_s = time.monotonic() - began

    @contextlib.asynccontextmanager
    async def _serving(self, facts: Facts) -> AsyncIterator[None]:
        await self._ready(facts)
        if self._lives:  # which process served it, as a GPU container's facts say
            life = self._lives[-1]
            facts.container, facts.booted_at, facts.up_since = (
                life.container, life.ready_at, life.up_since)  # fmt: skip
        self._in_flight += 1
        self.last_request_at = time.time()
        try:
            yield
        except EngineUnavailable as exc:
            await self._note_failure(exc)
            raise
        else:
            if self.last_error is not None:
                self._clear_error()  # served again: the error is history
        finally:
            self._in_flight -= 1
            self._last_activity = time.monotonic()

    async def _note_failure(self, exc: EngineError) -> None:
        self._set_error(exc.message)
        if self.engine.is_running() and not await self.engine.health():
            # The server is up but its engine is not (a dead EngineCore): restart it. The
            # caller got a 503 with Retry-After; its retry starts a fresh engine.
            log.error("the engine is unhealthy, restarting it: %s", exc.message)
            await self.engine.aclose()
            await asyncio.to_thread(self.engine.stop, 5.0)
        if not self.engine.is_running():
            self._ended()
            self.state = "cold"

    # -- warm schedule -------------------------------------------------------------------------

    async def apply_schedule(self) -> bool:
        """Follow the schedule at ``clock()``: start the engine when a window is open; when it
        closes, the idle countdown starts then (or at the last request, if later). Returns
        whether a window is open. The schedule loop calls it at every change."""
        if self.schedule is None:
            return False
        was_open, self._window_open = self._window_open, self.schedule.is_open(self.clock())
        if self._window_open:
            self._refresh_state()
            backing_off = self.state == "failed" and (self.next_start_at or 0) > time.time()
            if self.state in ("cold", "failed") and not backing_off:
                self._begin_start("the warm schedule")
        elif was_open:
            self._last_activity = max(self._last_activity, time.monotonic())
            self._ensure_idle_watch()
        return self._window_open

    def start_schedule(self) -> None:
        """Run ``apply_schedule`` at each window change (checked at least every minute)."""
        if self.schedule is not None and (
            self._schedule_task is None or self._schedule_task.done()
        ):
            self._schedule_task = asyncio.create_task(self._schedule_loop())

    async def _schedule_loop(self) -> None:
        assert self.schedule is not None
        while True:
            try:
                await self.apply_schedule()
            except Exception:  # a failed start is the engine's to report; keep following
                log.exception("applying the warm schedule failed")
            change = self.schedule.next_change(self.clock())
            wait = 60.0 if change is None else change - self.clock()
            await asyncio.sleep(min(60.0, max(1.0, wait)))

    def _ensure_idle_watch(self) -> None:
        if self.scaledown_window is None:
            return
        if self._idle_task is None or self._idle_task.done():
            self._idle_task = asyncio.create_task(self._idle_watch())

    async def _idle_watch(self) -> None:
        assert self.scaledown_window is not None
        tick = min(1.0, self.scaledown_window / 4)
        while True:
            await asyncio.sleep(tick)
            idle = time.monotonic() - self._last_activity
            if self._window_open:  # a warm window holds the engine
                continue
            if self.state == "warm" and self._in_flight == 0 and idle >= self.scaledown_window:
                up = time.time() - self._lives[-1].up_since if self._lives else 0.0
                log.info("the engine of %s scaled down after %.0f s idle (up %.0f s)",
                         self.model_name, idle, up,
                         extra={"event": "engine_scaled_down", "model": self.model_name,
                                "idle_s": round(idle, 1), "up_s": round(up, 1)})  # fmt: skip
                await self.scale_down()
                return

    async def ensure_warm(self) -> None:
        """Start the engine if needed and wait until it serves."""
        await self._ready(Facts())

    async def scale_down(self) -> None:
        """Stop the engine now (what the idle timer does after ``scaledown_window``)."""
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            with contextlib.suppress(BaseException):
                await self._start_task
        self.state = "cold"
        await self.engine.aclose()
        await asyncio.to_thread(self.engine.stop)
        self._ended()

    def engine_config(self) -> EngineConfig:
        """The configuration the engine starts from (``Describes``): the served model's truth."""
        return self.engine.config

    # -- LoRA adapters (``AdapterHost``) ---------------------------------------------------------

    def adapters(self) -> dict[str, str]:
        """The LoRA adapters this model serves (name -> path): those it was configured with and
        those loaded since, whether the engine is warm or cold."""
        return dict(self.engine.config.lora_modules)

    async def load_adapter(self, name: str, path: str) -> None:
        """Serve a LoRA adapter under ``name`` (requests say ``"model": name``).

        It is remembered in the engine's config, so every later start (after a scale-down)
        serves it from the start. A warm engine loads it at once; a cold one is not started
        for it. Loading a name again with another path replaces its weights.
        """
        self._require_lora()
        self._check_adapter(name, path)
        async with self._adapters_locked():
            known = self.engine.config.lora_modules.get(name)
            if known == path:
                return
            if await self._warm_after_start():
                async with self._admin_call():
                    await self.engine.load_adapter(name, path, replace=known is not None)
            self._set_adapters({**self.engine.config.lora_modules, name: path})
            log.info("LoRA adapter %r loaded from %s", name, path)

    async def unload_adapter(self, name: str) -> None:
        """Stop serving a LoRA adapter, now and at every later start."""
        self._require_lora()
        async with self._adapters_locked():
            modules = self.engine.config.lora_modules
            if name not in modules:
                raise EngineRequestError(
                    f"the model {self.model_name} serves no LoRA adapter named {name!r}",
                    status_code=404,
                    param="lora_name",
                )
            if await self._warm_after_start():
                try:
                    async with self._admin_call():
                        await self.engine.unload_adapter(name)
                except EngineRequestError as exc:
                    if exc.status_code != 404:  # vLLM no longer has it: forgetting it is all
                        raise
            self._set_adapters({k: v for k, v in modules.items() if k != name})
            log.info("LoRA adapter %r unloaded", name)

    def _require_lora(self) -> None:
        if not self.engine.config.enable_lora:
            raise EngineRequestError(
                f"the model {self.model_name} was not started with LoRA: "
                "declare adapters or set enable_lora for it",
                status_code=400,
            )

    def _check_adapter(self, name: str, path: str) -> None:
        """What can be checked without vLLM, so that a bad adapter remembered while the engine
        is cold cannot break its next start (vLLM refuses to start on one)."""
        if not name or not name.strip() or "=" in name:
            raise EngineRequestError(
                f"{name!r} is not a valid adapter name", status_code=400, param="lora_name"
            )
        if name == self.model_name:
            raise EngineRequestError(
                f"the adapter name {name!r} is the base model's own", status_code=400,
                param="lora_name",
            )  # fmt: skip
        if not path:
            raise EngineRequestError("no adapter path given", status_code=400, param="lora_path")
        folder = Path(path).expanduser()
        looks_local = folder.is_absolute() or path.startswith((".", "~"))
        if not folder.exists():
            if looks_local:
                raise EngineRequestError(
                    f"no LoRA adapter at {path}", status_code=404, param="lora_path"
                )
            return  # a Hub repo id: vLLM fetches it (where the network is allowed)
        config = folder / "adapter_config.json"
        if not config.is_file():
            raise EngineRequestError(
                f"{path} is not a LoRA adapter (no adapter_config.json)",
                status_code=400, param="lora_path",
            )  # fmt: skip
        try:
            rank = int(json.loads(config.read_text()).get("r") or 0)
        except (OSError, ValueError, TypeError, AttributeError):
            rank = 0  # vLLM judges it
        limit = self.engine.config.max_lora_rank
        if rank > limit:
            raise EngineRequestError(
                f"the adapter {name!r} has rank {rank}, above this model's max_lora_rank "
                f"{limit}",
                status_code=400, param="lora_path",
            )  # fmt: skip

    @contextlib.asynccontextmanager
    async def _adapters_locked(self) -> AsyncIterator[None]:
        if self._adapter_lock is None:  # created on the loop that uses it
            self._adapter_lock = asyncio.Lock()
        async with self._adapter_lock:
            yield

    async def _warm_after_start(self) -> bool:
        """Whether the engine is warm, once a start in flight has ended: an engine launched
        before an adapter was remembered must get it through the route."""
        task = self._start_task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        self._refresh_state()
        return self.state == "warm"

    @contextlib.asynccontextmanager
    async def _admin_call(self) -> AsyncIterator[None]:
        """A call to the engine that the idle timer must not cut short."""
        self._in_flight += 1
        try:
            yield
        except EngineUnavailable as exc:
            await self._note_failure(exc)
            raise
        finally:
            self._in_flight -= 1
            self._last_activity = time.monotonic()

    def _set_adapters(self, modules: dict[str, str]) -> None:
        # enable_lora stays on with no adapters left: later loads still work.
        self.engine.config = dataclasses.replace(self.engine.config, lora_modules=modules)

    # -- EngineTransport (deploy/core/contract.py) --------------------------------------------

    async def chat(self, body: dict[str, Any]) -> Reply[dict[str, Any]]:
        facts = Facts()
        async with self._serving(facts):
            return Reply(await self.engine.chat(body), facts)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Reply[dict[str, Any]]]:
        facts = Facts()
        async with self._serving(facts):
            first = True
            async for chunk in self.engine.stream(body):
                yield Reply(chunk, facts if first else None)  # the first chunk carries them
                first = False

    async def batch(
        self, bodies: Sequence[dict[str, Any]], max_concurrency: int | None = None
    ) -> Reply[BatchResults]:
        facts = Facts()
        async with self._serving(facts):
            results = await self.engine.batch(bodies, max_concurrency)
        for result in results:
            if isinstance(result, EngineUnavailable):
                await self._note_failure(result)
                break
        return Reply(results, facts)

    async def status(self) -> EngineStatus:
        self._refresh_state()
        return EngineStatus(
            state=self.state,
            queue_depth=self._waiting,
            in_flight=self._in_flight,
            cold_starts=self.cold_starts,
            scaledown_window=self.scaledown_window,
            last_request_at=self.last_request_at,
            last_error=self.last_error,
            extra={
                "last_error_at": self.last_error_at,
                "next_start_at": self.next_start_at if self.state == "failed" else None,
                "failed_starts": self.failed_starts,
                "engine_pid": self.engine.pid if self.engine.is_running() else None,
                "engine_url": self.engine.base_url,
                # When the boot under way began (its progress and estimate, serving/progress.py).
                **(
                    {"starting_since": self._lives[-1].up_since}
                    if self.state == "starting" and self._lives
                    else {}
                ),
                **(
                    {"warm_schedule": self.schedule.describe(self.clock())}
                    if self.schedule is not None
                    else {}
                ),
            },
        )

    def state_hint(self) -> EngineState:
        self._refresh_state()
        return self.state

    async def warmup(self) -> EngineStatus:
        self._refresh_state()
        backing_off = self.state == "failed" and (self.next_start_at or 0) > time.time()
        if self.state != "warm" and not backing_off:
            self._begin_start(f"a warm-up ({wake_cause.get() or 'no key'})")
            await asyncio.sleep(0)  # let the start task set state to "starting"
        return await self.status()

    async def aclose(self) -> None:
        for task in (self._idle_task, self._schedule_task):
            if task is not None:
                task.cancel()
        await self.scale_down()
