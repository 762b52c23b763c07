"""Shared test settings. Integration tests get the live local stack from
``tests/integration_tests/conftest.py``; unit tests run with the network disabled."""
