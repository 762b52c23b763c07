"""The serving layer's face: what the routes call, from a validated request to its answer.

``Serving`` puts the parts together, one job each:

- ``prepare.py``: the model check and the engine's body; which engine (or cold fallback);
- ``completion.py``: a plain completion, and the response cache's path;
- ``streams.py`` / ``stream_run.py``: a stream, from its admission to its books;
- ``batch.py``: many completions in one engine call;
- ``meta.py``: what an answer reports (meta, headers, cost); ``books.py``: the ledger;
- ``lifecycle.py``: admission while draining, what is in flight, the drain.

It answers types, not HTTP: a ``Completion`` (body and meta), a ``StreamRun`` or a
``Replay``; the routes (``deploy/wrapper/routes``) make them responses. Its methods are the
parts' own (bound once, here): the hot path makes no call through the facade.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ...gateway import Gateway
from ...settings.settings import Settings
from ...transports.fallback import ColdRouter
from ..metrics import Metrics
from .batch import Batches
from .books import Books
from .completion import Completions
from .direct import DirectCalls
from .lifecycle import Lifecycle
from .prepare import Preparer
from .registry import ModelRegistry
from .streams import Streams

__all__ = ["Service", "Serving", "get_service"]


class Serving:
    """One per app (``app.state.service``): the served models, the settings, the metrics and
    the gateway the routes share, and what they call."""

    def __init__(
        self,
        models: ModelRegistry,
        settings: Settings,
        metrics: Metrics,
        gateway: Gateway,
        cold: ColdRouter | None = None,
    ) -> None:
        self.models, self.settings, self.metrics = models, settings, metrics
        self.gateway, self.cold = gateway, cold
        self.transport = models.default.transport
        """The default model's transport (the seed's routes, ``/status``)."""
        self.model_name = models.default.name
        self.lifecycle = Lifecycle()
        prep = Preparer(models, settings, cold)
        books = Books(gateway, metrics, self.model_name)
        completions = Completions(prep, self.lifecycle, books, gateway)
        streams = Streams(prep, self.lifecycle, books, gateway, metrics, settings)
        batches = Batches(prep, self.lifecycle, books, gateway)

        self.check_model = prep.check_model
        """The served model a request's ``model`` names (404 listing what is served)."""
        self.engine_body = prep.engine_body
        """vLLM's body for an OpenAI request."""
        self.seed_body = prep.seed_body
        """vLLM's body for the seed's ``/chat`` request."""
        self.complete = completions.complete
        """A ``Completion``: the answer (from the cache when it can be) and its meta."""
        self.stream = streams.open
        """A ``StreamRun`` (its first item in), or a cache hit's ``Replay``."""
        self.batch = batches.run
        """A batch's ``Completion``: every item in its slot, and the call's meta."""
        self.direct = DirectCalls(prep, self.lifecycle, books, gateway).call
        """An embeddings or Responses answer, straight from its model's engine, and the
        call's meta."""
        self.drain = self.lifecycle.drain
        """Shutting down: no new work, what is in flight finishes, open streams end."""

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining


def get_service(request: Request) -> Serving:
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[Serving, Depends(get_service)]
"""A route parameter ``service: Service`` gets the app's ``Serving``."""
