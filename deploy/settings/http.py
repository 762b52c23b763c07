"""The wrapper's HTTP side: the queue in front of a starting engine, request size limits, and
its own server's connection limits and timeouts."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .constants import MINUTES

__all__ = ["HttpPart"]


class HttpPart(BaseModel):
    """The HTTP settings of ``Settings`` (each field is the env var ``VLLM_<FIELD>``)."""

    max_queue: int = Field(default=256, ge=1)
    """Requests that may wait for a starting engine; more get 503 with Retry-After."""
    queue_timeout: float = Field(default=10 * MINUTES, gt=0)
    """Longest wait for the engine before a 503; streams send heartbeats meanwhile."""
    heartbeat_interval: float = Field(default=10.0, gt=0)
    """Seconds between SSE comment heartbeats on a stream that has started."""
    progress_interval: float = Field(default=2.0, gt=0)
    """Seconds between progress events (SSE comments ``ChatVLLMAutoscale`` reads) while a
    stream waits for a cold engine; the first goes with the headers after half a second."""
    max_body_bytes: int = Field(default=4_000_000, ge=1024)
    max_messages: int = Field(default=1024, ge=1)
    max_tokens_limit: int = Field(default=8192, ge=1)
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int | None = Field(default=None, ge=1)
    """``max_tokens`` for requests that set none (None: up to the context length)."""
    max_batch: int = Field(default=256, ge=1)
    """Requests in one batch call."""
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
