"""The always-on wrapper: a FastAPI app in front of an engine transport.

``create_app(transport, settings)`` builds the same app locally (``LocalTransport``) and on
Modal (``ModalTransport``). Where each job lives (``docs/architecture.md``):

- ``app.py``: assembly (settings, state, handlers, routers, middleware, OpenAPI);
- ``middleware.py``: request ids, the body-size limit, metrics and one log line a request;
- ``handlers.py``: every error's JSON answer; ``auth.py``: the caller's key and role;
- ``protocol.py``: request models and the limits they enforce;
- ``routes/``: the routes, one module per area, thin;
- ``serving/``: from a validated request to its answer (completion, streams, batch, books);
- ``tokenize/``: token counts without the engine;
- ``http_server.py``: the local server's connection hygiene.

It imports no engine code (no vLLM, no subprocess, no aiohttp): on Modal it runs in a
container without them.
"""

from .app import create_app

__all__ = ["create_app"]
