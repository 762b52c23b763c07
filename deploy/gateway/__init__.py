"""The wrapper as a gateway: named keys, per-key limits and budgets, the usage ledger and the
response cache (``Gateway``), over a state store every wrapper shares.

    keys.py     who a request is: named keys stored as hashes, roles, per-key limits
    limiter.py  requests/tokens per minute and open streams (the ``limits`` library)
    ledger.py   usage per key, model and day; month-to-date spend for budgets
    cache.py    exact replays of deterministic requests (cachetools)
    store.py    where shared state lives: SQLite, a Modal Dict, or memory
    gateway.py  the above as the routes use them, and the background sync
"""

from .gateway import DEFAULT_LOCAL_STATE, Gateway
from .keys import KeyRecord
from .limiter import LimitExceeded

__all__ = ["DEFAULT_LOCAL_STATE", "Gateway", "KeyRecord", "LimitExceeded"]
