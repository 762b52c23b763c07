"""The always-on wrapper: a FastAPI app in front of an engine transport.

``create_app(transport, settings)`` builds the same app locally (``LocalTransport``) and on
Modal (``ModalTransport``). Where each job lives (``docs/architecture.md``):

- ``app.py``: assembly (settings, state, handlers, routers, middleware, OpenAPI);
- ``middleware.py``: request ids, the body-size limit, metrics and one log line a request;
- ``handlers.py``: the wrapper's own errors and every error's JSON answer;
- ``auth.py``: the bearer-key dependency;
- ``routes_seed.py``, ``routes_openai.py``, ``routes_service.py``: the routes, by area;
- ``service.py``: inference (model check, request preparation, completion, batch, metadata);
- ``streaming.py``: the stream pump and the SSE response.

It imports no engine code (no vLLM, no subprocess, no aiohttp): on Modal it runs in a
container without them.
"""

from .app import create_app

__all__ = ["create_app"]
