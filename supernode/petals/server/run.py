"""Running a Petals node: ``supernode petals-node`` (and ``python -m supernode.petals.server``).

Its options, the offline switches for a local model, making the tiny random model when asked,
and serving the app (``app.py``) with uvicorn until stopped. ``--engine transformers`` (the
default) runs the model here; ``--engine petals`` runs it over a Petals swarm
(``--initial-peers``), in the Petals environment: started from any other, the command replaces
itself with the same command there (the same pid).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from loguru import logger

from supernode.petals.server.app import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_STEP_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    create_petals_app,
)
from supernode.petals.swarm.env import PetalsEnvMissing, exec_in_petals_env, in_petals_env
from supernode.petals.swarm.options import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_PERIOD_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    SwarmOptions,
)

DEFAULT_PORT = 5000  # chat.petals.dev's port


def run_petals_node(
    host: str,
    port: int,
    model_path: str | None = None,
    tiny_random_dir: Path | None = None,
    *,
    tiny_seed: int = 0,
    model_name: str | None = None,
    max_new_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
    threads: int | None = None,
    log_level: str = "INFO",
    swarm: SwarmOptions | None = None,
) -> int:
    """Serve until stopped (uvicorn with uvloop); returns a process exit status. With
    ``swarm``, the model's blocks run on that Petals swarm (in the Petals environment)."""
    from supernode.logs import setup_logging
    from supernode.serve import ConnectionLimits, serve

    setup_logging(log_level, 1000, None)
    if model_path is None and tiny_random_dir is None:
        raise ValueError("give model_path or tiny_random_dir")
    try:
        if tiny_random_dir is not None:
            _offline()
            from supernode.petals.server.tiny_model import make_tiny_model

            model_path = str(make_tiny_model(Path(tiny_random_dir), tiny_seed))
        elif Path(str(model_path)).is_dir():
            _offline()
        elif str(model_path).startswith(("/", ".", "~")):
            raise FileNotFoundError(f"no model folder at {model_path}")
        engine = None
        if swarm is not None:
            from supernode.petals.swarm.engine import PetalsEngine

            engine = PetalsEngine(str(model_path), swarm, threads=threads)
        app = create_petals_app(
            str(model_path),
            model_name,
            max_new_tokens_limit,
            timeout_s=timeout_s,
            step_timeout_s=step_timeout_s,
            threads=threads,
            engine=engine,
        )
    except (OSError, ValueError, RuntimeError) as exc:  # no model, no swarm, a bad limit
        source = tiny_random_dir if tiny_random_dir is not None else model_path
        logger.error("petals node not started: cannot load {}: {}", source, exc)
        return 1
    # its clients are the operator's daemons; on this host they are never refused
    local = ConnectionLimits(trusted=frozenset({"127.0.0.1", "::1"}))
    return 0 if serve(app, host, port, local) else 1


def _offline() -> None:
    """A local model needs no network; say so before transformers is imported."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``supernode petals-node`` (and of ``python -m supernode.petals.server``)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a local model folder or a (cached) hub model name")
    source.add_argument(
        "--tiny-random", metavar="DIR", help="make (or reuse) a tiny random model in DIR"
    )
    parser.add_argument(
        "--tiny-seed",
        type=int,
        default=0,
        help="seed of the tiny random model's weights (--tiny-random; the tokenizer is the same)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--model-name", default=None, help="name to serve (default: folder name)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    parser.add_argument("--step-timeout", type=float, default=DEFAULT_STEP_TIMEOUT_S)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log-level", default="INFO")
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        choices=("transformers", "petals"),
        default="transformers",
        help="transformers: the model on this machine; petals: its blocks on a Petals swarm",
    )
    engine.add_argument(
        "--initial-peers", nargs="+", metavar="MADDR", help="petals: multiaddrs of swarm servers"
    )
    engine.add_argument("--dht-prefix", help="petals: the swarm's name for the model")
    engine.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        help="petals: re-routes after a server fails, per call",
    )
    engine.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="petals: seconds for one call to a server",
    )
    engine.add_argument(
        "--swarm-health-period",
        type=float,
        default=DEFAULT_PERIOD_S,
        help="petals: seconds between looks at the swarm's state",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Serve as the parsed options say; returns a process exit status."""
    swarm = None
    if args.engine == "petals":
        if args.tiny_random or not args.initial_peers:
            logger.error(
                "--engine petals needs --model (the folder the swarm's servers load)"
                " and --initial-peers"
            )
            return 2
        if args.max_retries < 0 or args.request_timeout <= 0 or args.swarm_health_period <= 0:
            logger.error("--max-retries, --request-timeout and --swarm-health-period: too small")
            return 2
        if not in_petals_env():
            try:
                exec_in_petals_env("supernode.petals.server", to_argv(args))
            except PetalsEnvMissing as exc:
                logger.error("petals node not started: {}", exc)
                return 1
        swarm = SwarmOptions(
            initial_peers=tuple(args.initial_peers),
            dht_prefix=args.dht_prefix,
            max_retries=args.max_retries,
            request_timeout_s=args.request_timeout,
            health_period_s=args.swarm_health_period,
        )
    return run_petals_node(
        args.host,
        args.port,
        args.model,
        Path(args.tiny_random) if args.tiny_random else None,
        tiny_seed=args.tiny_seed,
        model_name=args.model_name,
        max_new_tokens_limit=args.max_new_tokens,
        timeout_s=args.timeout,
        step_timeout_s=args.step_timeout,
        threads=args.threads,
        log_level=args.log_level,
        swarm=swarm,
    )


def to_argv(args: argparse.Namespace) -> list[str]:
    """The command line that parses back into ``args`` (for the same command elsewhere)."""
    argv: list[str] = []
    for key, value in vars(args).items():
        if key in ("func", "command") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def main(argv: list[str] | None = None) -> int:
    """``python -m supernode.petals.server``: parse ``argv`` and serve."""
    parser = argparse.ArgumentParser(
        prog="supernode petals-node",
        description="Serve the Petals API from a local model or a Petals swarm.",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
