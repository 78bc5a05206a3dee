"""Settings: safe defaults pass, unsafe values are refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from supernode.config import ConfigError, Settings


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, chain_id=31337, **kw)  # type: ignore[call-arg]


def test_safe_defaults_pass() -> None:
    _settings().check_safe()


def test_missing_chain_id_refused() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="CHAIN_ID"):
        s.check_safe()


@pytest.mark.parametrize("token", ["changeme", "short-token"])
def test_default_or_short_operator_token_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="OPERATOR_TOKEN"):
        _settings(operator_token=token).check_safe()


def test_weak_passphrase_refused() -> None:
    with pytest.raises(ConfigError, match="passphrase"):
        _settings(keystore_passphrase="password", keystore_passphrase_file=None).check_safe()


@pytest.mark.parametrize("field", ["push_timeout_s", "chain_timeout_s", "anti_entropy_timeout_s"])
def test_zero_timeouts_refused(field: str) -> None:
    with pytest.raises(ValidationError):
        _settings(**{field: 0})
