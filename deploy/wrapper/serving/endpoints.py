"""Which OpenAI routes a served model answers: a chat model the generating ones, an embedding
model (vLLM's pooling runner) ``/v1/embeddings`` only. A request to a route its model does not
serve is refused before it is admitted, naming the model and what it serves."""

from __future__ import annotations

from http import HTTPStatus

from ...core.contract import Endpoint
from ...core.errors import InvalidRequest
from .registry import ServedModel

__all__ = ["CHAT", "COMPLETIONS", "EMBEDDINGS", "RESPONSES", "check_endpoint"]

CHAT: Endpoint = "/v1/chat/completions"
COMPLETIONS: Endpoint = "/v1/completions"
EMBEDDINGS: Endpoint = "/v1/embeddings"
RESPONSES: Endpoint = "/v1/responses"


def check_endpoint(served: ServedModel, endpoint: Endpoint, param: str = "model") -> None:
    """400 naming ``param`` when ``served`` does not answer on ``endpoint``."""
    if endpoint not in served.info.endpoints:
        kind = "an embedding" if served.info.runner == "pooling" else "a generative"
        raise InvalidRequest(
            f"model {served.name!r} is {kind} model: it serves "
            + ", ".join(served.info.endpoints)
            + f", not {endpoint}",
            param,
            HTTPStatus.BAD_REQUEST,
        )
