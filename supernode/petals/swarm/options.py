"""How a node reaches its swarm (``supernode petals-node --engine petals``'s options).

Standard library only: the command reads them in either environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_RETRIES = 2  # after a server fails: ban it, re-route, replay; this many times
DEFAULT_REQUEST_TIMEOUT_S = 30.0  # one call to a server (a step of a session, a forward)
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_PERIOD_S = 2.0  # between looks at the swarm's state


@dataclass(frozen=True)
class SwarmOptions:
    initial_peers: tuple[str, ...]
    dht_prefix: str | None = None  # default: the model folder's name (as the servers use)
    max_retries: int = DEFAULT_MAX_RETRIES
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    health_period_s: float = DEFAULT_PERIOD_S

    def prefix_for(self, model_path: str) -> str | None:
        """The DHT prefix: given, or the model folder's name (what ``petals-server`` uses)."""
        if self.dht_prefix:
            return self.dht_prefix
        return Path(model_path).name if Path(model_path).is_dir() else None
