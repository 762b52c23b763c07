"""Shared test settings. Integration tests get the live local stack from
``tests/integration_tests/conftest.py``; unit tests run with the network disabled."""

import os

# The gateway's state (ledger, stored keys) stays in memory unless a test names a store:
# test runs never write into the user's ~/.local/state.
os.environ.setdefault("VLLM_STATE_URL", "memory://")
