"""``PetalsEngine``: the node's model run over a Petals swarm.

The node holds the model's embeddings and head; its transformer blocks run on the swarm's
servers (``supernode petals-server``), found through Petals' DHT from ``initial_peers``.
Generation and scoring are ``TransformersEngine``'s own code: a generation runs inside a
Petals inference session (the servers keep its attention caches), a scoring pass is one
forward call through the swarm. So greedy output is the same as on one machine with the same
weights.

Every wait is bounded: petals' client retries forever by default, here at most
``max_retries`` times, each call within ``request_timeout_s``. A server lost mid-generation is
replaced by another holder of its blocks, which rebuilds the attention cache from the session's
history (``mends`` fixes two bugs of petals' client that stop this from working).

A ``SwarmMonitor`` keeps the swarm's state; while a block is served by nobody the engine is
unhealthy and the node refuses requests at once (503) rather than letting them wait out the
retries.

Runs in the Petals environment (``supernode petals-node --engine petals`` starts it there).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from loguru import logger

from supernode.petals.server.engine import EngineHealth
from supernode.petals.server.transformers_engine import TransformersEngine
from supernode.petals.swarm.health import SwarmMonitor
from supernode.petals.swarm.options import SwarmOptions

DAEMON_STARTUP_TIMEOUT_S = 30.0  # the client's p2p daemon reaching the initial peers


class PetalsEngine(TransformersEngine):
    """A ``TransformersEngine`` whose blocks are on a Petals swarm."""

    name = "petals"
    forward_options: dict[str, Any] = {}  # petals' forward refuses use_cache=False

    def __init__(self, model_path: str, swarm: SwarmOptions, threads: int | None = None) -> None:
        if not swarm.initial_peers:
            raise ValueError("the petals engine needs the swarm's initial peers")
        self.swarm = swarm
        self.monitor: SwarmMonitor | None = None
        super().__init__(model_path, threads)
        sequence = self.model.transformer.h.sequence_manager
        self.monitor = SwarmMonitor(
            sequence.dht, list(sequence.block_uids), period_s=swarm.health_period_s
        )
        self.monitor.start()
        logger.info(
            "petals engine: {} blocks on the swarm {} ({})",
            len(sequence.block_uids),
            swarm.prefix_for(model_path),
            "healthy" if self.monitor.state.ok else self.monitor.state.reason,
        )

    def _load_model(self, model_path: str) -> Any:
        from supernode.petals.swarm import mends, shim

        shim.apply()
        mends.apply()
        from petals import AutoDistributedModelForCausalLM

        s = self.swarm
        return AutoDistributedModelForCausalLM.from_pretrained(
            model_path,
            initial_peers=list(s.initial_peers),
            dht_prefix=s.prefix_for(model_path),
            max_retries=s.max_retries,
            request_timeout=s.request_timeout_s,
            connect_timeout=s.connect_timeout_s,
            daemon_startup_timeout=DAEMON_STARTUP_TIMEOUT_S,
            min_backoff=0.5,
            max_backoff=5.0,
            update_period=10.0,
            show_route=False,
            torch_dtype=self._torch.float32,
        )

    def _warm_up(self) -> None:
        """Nothing: the swarm may not be whole yet when the node starts; ``health`` says."""

    def _generation(self, length: int) -> Any:
        return self.model.inference_session(max_length=length)

    def health(self) -> EngineHealth:
        if self.monitor is None:
            return EngineHealth(False, "the swarm client is starting")
        state = self.monitor.state
        return EngineHealth(state.ok, state.reason, {"swarm": state.detail()})

    def close(self) -> None:
        """Stop looking at the swarm, shut the client's DHT down, and end every process the
        client started (its DHT process and that one's ``p2pd``), so that none outlives the
        node."""
        if self.monitor is not None:
            self.monitor.stop()
        sequence = self.model.transformer.h.sequence_manager
        for step in (sequence.shutdown, sequence.dht.shutdown):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - stopping: nothing left to do about it
                logger.debug("swarm client shutdown: {}", exc)
        end_children()


def end_children(timeout_s: float = 3.0) -> None:
    """SIGTERM to every process this one started (and theirs), SIGKILL to those still there
    after ``timeout_s``."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        with suppress(psutil.Error):
            child.kill()
