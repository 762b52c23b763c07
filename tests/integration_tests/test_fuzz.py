"""Schema fuzzing (schemathesis) of the wrapper's OpenAPI, against a real wrapper over the
live engine: no 5xx, responses as documented. Bounded: a fixed number of cases per route, and
a wrapper whose limits keep each generation to a few tokens."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.specs.openapi.checks import positive_data_acceptance

from deploy.settings.settings import Settings
from deploy.wrapper import create_app
from tests.integration_tests.conftest import API_KEY, serve_on_stack

FUZZ_CASES = 40  # per operation
SEEN: Counter = Counter()


@pytest.fixture(scope="module")
def fuzz_url(stack) -> Iterator[str]:
    """A second wrapper app over the session's engine, with tight generation limits."""
    limits = Settings(
        wrapper_api_key=SecretStr(API_KEY),
        default_max_tokens=4,
        max_tokens_limit=8,
        max_messages=8,
        max_batch=4,
        heartbeat_interval=2.0,
    )
    stack.wait_warm()
    with serve_on_stack(stack, create_app(stack.transport, limits)) as url:
        yield url
    print(f"\nfuzz: {sum(SEEN.values())} cases, status counts {dict(sorted(SEEN.items()))}")


def test_openapi_fuzz(fuzz_url) -> None:
    # schemathesis's own pytest plugin predates this pytest; drive it with hypothesis directly.
    schema = schemathesis.openapi.from_url(
        fuzz_url + "/openapi.json", headers={"authorization": f"Bearer {API_KEY}"}
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9

    # Valid bodies (must be answered as documented) and invalid ones (must get a 4xx).
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    for operation, mode in itertools.product(operations, modes):
        if mode is schemathesis.GenerationMode.NEGATIVE and not len(operation.body):
            continue  # nothing to break in a request without a body

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=FUZZ_CASES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case) -> None:
            response = case.call_and_validate(
                base_url=fuzz_url,
                headers={"authorization": f"Bearer {API_KEY}"},
                timeout=120,
                # Free-form fields (tools, response_format, stop, ...) pass through to vLLM,
                # which answers semantically invalid ones with 400: a schema cannot promise
                # that every schema-valid body is accepted.
                excluded_checks=[positive_data_acceptance],
            )
            SEEN[response.status_code] += 1
            assert response.status_code < 500, response.text

        fuzz()
    assert sum(SEEN.values()) >= len(operations) * 5
    assert not [status for status in SEEN if status >= 500]
