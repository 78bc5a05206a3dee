"""Schema fuzzing: schemathesis sends what the OpenAPI document allows (and breaks it, as
its negative mode does) to every operation of a real daemon, anonymously and with the
operator's token. No answer may be a 5xx, and no daemon may die. Bounded: a few dozen
examples per operation, no deadline, no shrinking beyond a few steps."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from supernode.devnet import LocalFederation
from tests.conftest import TEST_SETTINGS

pytestmark = pytest.mark.integration
EXAMPLES = 25  # per operation and caller
CALL_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    settings_ = {**TEST_SETTINGS, "SUPERNODE_QUORUM_TIMEOUT_S": "2"}
    with LocalFederation(root=tmp_path_factory.mktemp("fuzz"), peers=4, settings=settings_) as f:
        yield f


@pytest.fixture(scope="module")
def api_schema(fuzzed: LocalFederation) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed.daemons[0].url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples each run: a failure can be replayed
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


def _no_server_error(fed: LocalFederation, case: schemathesis.Case, headers: dict[str, str]) -> None:
    response = case.call(headers=headers, timeout=CALL_TIMEOUT_S)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
    assert fed.daemons[0].running


@schema.parametrize()
@FUZZ
def test_anonymous_fuzzing_gets_no_5xx(fuzzed: LocalFederation, case: schemathesis.Case) -> None:
    _no_server_error(fuzzed, case, {})


@schema.parametrize()
@FUZZ
def test_operator_fuzzing_gets_no_5xx(fuzzed: LocalFederation, case: schemathesis.Case) -> None:
    _no_server_error(fuzzed, case, {"Authorization": f"Bearer {fuzzed.daemons[0].token}"})


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
