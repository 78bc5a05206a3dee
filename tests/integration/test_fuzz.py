"""Schema fuzzing: schemathesis sends what the OpenAPI document allows (and breaks it, as
its negative mode does) to every operation of a real daemon, anonymously and with the
operator's token. No answer may be a 5xx, and no daemon may die. Bounded: a few dozen
examples per operation, no deadline, no shrinking beyond a few steps."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from supernode.devnet import LocalFederation
from tests.conftest import TEST_SETTINGS

pytestmark = pytest.mark.integration
EXAMPLES = 25  # per operation, caller and mode (allowed / not allowed by the schema)
CALL_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    settings_ = {**TEST_SETTINGS, "SUPERNODE_QUORUM_TIMEOUT_S": "2"}
    with LocalFederation(root=tmp_path_factory.mktemp("fuzz"), peers=4, settings=settings_) as f:
        yield f


@pytest.fixture(scope="module")
def operations(fuzzed: LocalFederation) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{fuzzed.daemons[0].url}/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) > 40, len(ops)
    return ops


def fuzz(
    fed: LocalFederation, ops: list[schemathesis.APIOperation], headers: dict[str, str]
) -> list[str]:
    """Every operation, both with what its schema allows and with what it does not; the
    5xx answers found (one line each)."""
    found: list[str] = []
    sent = 0
    for op in ops:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(mode))
            @FUZZ
            def run(case: schemathesis.Case) -> None:
                nonlocal sent
                response = case.call(headers=headers, timeout=CALL_TIMEOUT_S)
                sent += 1
                if response.status_code >= 500:
                    found.append(
                        f"{case.method} {case.formatted_path} -> "
                        f"{response.status_code}: {response.text[:200]}"
                    )

            try:
                run()
            except Unsatisfiable:
                pass  # nothing to send in this mode (an operation with no parameters)
        assert all(d.running for d in fed.daemons), f"a daemon died fuzzing {op.label}"
    assert sent >= EXAMPLES * len(ops), sent  # it did send (each operation, both modes)
    return found


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples each run: a failure can be replayed
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


def test_anonymous_fuzzing_gets_no_5xx(
    fuzzed: LocalFederation, operations: list[schemathesis.APIOperation]
) -> None:
    assert fuzz(fuzzed, operations, {}) == []


def test_operator_fuzzing_gets_no_5xx(
    fuzzed: LocalFederation, operations: list[schemathesis.APIOperation]
) -> None:
    token = {"Authorization": f"Bearer {fuzzed.daemons[0].token}"}
    assert fuzz(fuzzed, operations, token) == []


def test_every_body_has_a_schema_and_every_daemon_survived(fuzzed: LocalFederation) -> None:
    doc = httpx.get(f"{fuzzed.daemons[0].url}/openapi.json", timeout=10).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method == "post":
                assert "requestBody" in op, f"POST {path} has no body schema"
    for d in fuzzed.daemons:
        assert d.running, f"daemon {d.index} died; see {d.log_path}"
        assert httpx.get(f"{d.url}/health", timeout=5).status_code == 200
        assert "Traceback" not in d.log_path.read_text(errors="replace")
