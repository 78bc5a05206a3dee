"""`supernode run | keygen | migrate | network init | devnet | petals-node | petals-server |
client ...`"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from pydantic import ValidationError

ETH = 10**18


def _fail(msg: str) -> int:
    sys.stderr.write(f"supernode: {msg}\n")
    return 2


def _settings(env_file: str | None):  # type: ignore[no-untyped-def]
    from supernode.config import Settings

    try:
        return Settings(_env_file=env_file) if env_file else Settings()
    except ValidationError as exc:
        problems = "\n  - ".join(
            f"SUPERNODE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise SystemExit(_fail(f"refusing to start:\n  - {problems}")) from exc


def cmd_run(args: argparse.Namespace) -> int:
    from supernode.api.app import create_app
    from supernode.config import ConfigError
    from supernode.crypto.keys import KeystoreError, load_keystore, read_passphrase
    from supernode.federation.network import NetworkFile
    from supernode.logs import setup_logging
    from supernode.node import StartupError, Supernode
    from supernode.serve import serve

    s = _settings(args.env_file)
    try:
        s.check_safe()
    except ConfigError as exc:
        return _fail(str(exc))
    if s.cpu_nice > os.nice(0):  # first, on the one thread: every later thread inherits it
        os.nice(s.cpu_nice - os.nice(0))
    ring = setup_logging(s.log_level, s.log_ring_lines, Path(s.data_dir) / "supernode.log")
    try:
        passphrase = read_passphrase(s.keystore_passphrase, s.keystore_passphrase_file)
        identity = load_keystore(Path(s.keystore_file), passphrase)
        network = NetworkFile.load(Path(s.network_file))
        node = Supernode(s, identity, network, ring)
    except (KeystoreError, FileNotFoundError, StartupError, ValidationError, ValueError) as exc:
        return _fail(str(exc))
    app = create_app(node)
    try:
        started = serve(app, s.host, s.port, node.connections)
    except StartupError as exc:
        return _fail(str(exc))
    return 0 if started else 1


def cmd_keygen(args: argparse.Namespace) -> int:
    from supernode.crypto.keys import (
        Identity,
        KeystoreError,
        read_passphrase,
        write_keystore,
        write_secret_file,
    )

    keystore = Path(args.keystore)
    pass_file = Path(args.passphrase_file) if args.passphrase_file else None
    if keystore.exists():
        if args.if_missing:
            return 0
        return _fail(f"{keystore} exists; refusing to overwrite a keystore")
    if args.generate_passphrase:
        if pass_file is None:
            return _fail("--generate-passphrase needs --passphrase-file")
        if not pass_file.exists():
            write_secret_file(pass_file, secrets.token_urlsafe(32))
    try:
        passphrase = read_passphrase(os.environ.get("SUPERNODE_KEYSTORE_PASSPHRASE"), pass_file)
        ident = Identity.generate()
        write_keystore(keystore, ident, passphrase, light=args.light_kdf)
    except KeystoreError as exc:
        return _fail(str(exc))
    sys.stdout.write(f"wrote {keystore}\naddress {ident.address}\n")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from supernode.ledger.db import run_migrations

    s = _settings(args.env_file)
    run_migrations(Path(s.database_file))
    sys.stdout.write(f"ledger {s.database_file} is at the newest schema\n")
    return 0


def cmd_network_init(args: argparse.Namespace) -> int:
    from supernode.crypto.keys import KeystoreError, read_passphrase, write_secret_file
    from supernode.federation.network import init_network

    out = Path(args.out)
    if (out / "network.json").exists():
        return _fail(f"{out / 'network.json'} exists; choose another --out")
    pass_file = Path(args.passphrase_file)
    if not pass_file.exists():
        write_secret_file(pass_file, secrets.token_urlsafe(32))
    try:
        passphrase = read_passphrase(None, pass_file)
        urls = [f"http://{args.host}:{args.base_port + i}" for i in range(args.members)]
        net, keystores = init_network(
            out,
            urls=urls,
            chain_id=args.chain_id,
            passphrase=passphrase,
            credit_price_wei=args.credit_price_wei,
            min_collateral_wei=args.min_collateral_wei,
            confirmations_required=args.confirmations,
            epoch_blocks=args.epoch_blocks,
            light_kdf=args.light_kdf,
            network_id=args.network_id,
        )
    except KeystoreError as exc:
        return _fail(str(exc))
    sys.stdout.write(f"wrote {out / 'network.json'} (network {net.network_id})\n")
    for m, ks in zip(net.members, keystores, strict=True):
        sys.stdout.write(f"  {m.address}  {m.url}  {ks}\n")
    sys.stdout.write(f"keystore passphrase in {pass_file}\n")
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    from supernode.devnet import run_devnet

    if args.peers < 1:
        return _fail("--peers must be at least 1")
    return run_devnet(args.peers, Path(args.dir), args.engine)


def cmd_petals_node(args: argparse.Namespace) -> int:
    from supernode.petals.server.run import run_from_args

    return run_from_args(args)


def cmd_petals_server(args: argparse.Namespace) -> int:
    from supernode.petals.swarm.server import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="supernode", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one daemon from .env (for operators)")
    run.add_argument("--env-file", default=None, help="settings file (default: ./.env)")
    run.set_defaults(func=cmd_run)

    kg = sub.add_parser("keygen", help="write an encrypted operator keystore")
    kg.add_argument("--keystore", default="data/operator.keystore.json")
    kg.add_argument(
        "--passphrase-file",
        default=None,
        help="file with the passphrase (else $SUPERNODE_KEYSTORE_PASSPHRASE)",
    )
    kg.add_argument(
        "--generate-passphrase",
        action="store_true",
        help="write a random passphrase to --passphrase-file if it is missing",
    )
    kg.add_argument("--if-missing", action="store_true", help="do nothing if the keystore exists")
    kg.add_argument("--light-kdf", action="store_true", help="cheap scrypt (devnets, tests)")
    kg.set_defaults(func=cmd_keygen)

    mg = sub.add_parser("migrate", help="upgrade the ledger schema")
    mg.add_argument("--env-file", default=None)
    mg.set_defaults(func=cmd_migrate)

    net = sub.add_parser("network", help="network files").add_subparsers(dest="net", required=True)
    ni = net.add_parser("init", help="keystores and a network file for a local federation")
    ni.add_argument("--members", type=int, required=True)
    ni.add_argument("--out", default="data/network")
    ni.add_argument("--chain-id", type=int, default=31337)
    ni.add_argument("--host", default="127.0.0.1")
    ni.add_argument("--base-port", type=int, default=7123)
    ni.add_argument("--passphrase-file", default="data/network/keys.pass")
    ni.add_argument("--network-id", default=None)
    ni.add_argument("--credit-price-wei", type=int, default=10**12)
    ni.add_argument("--min-collateral-wei", type=int, default=ETH)
    ni.add_argument("--confirmations", type=int, default=1)
    ni.add_argument("--epoch-blocks", type=int, default=10)
    ni.add_argument("--light-kdf", action="store_true")
    ni.set_defaults(func=cmd_network_init)

    dn = sub.add_parser("devnet", help="anvil + N local supernodes until Ctrl-C")
    dn.add_argument("--peers", type=int, default=4)
    dn.add_argument("--dir", default=".devnet", help="state and logs (wiped at start)")
    dn.add_argument(
        "--engine",
        choices=("petals", "transformers"),
        default="petals",
        help="petals: a private swarm of two servers behind the node; transformers: one process",
    )
    dn.set_defaults(func=cmd_devnet)

    pn = sub.add_parser("petals-node", help="serve the Petals HTTP API from a local model")
    from supernode.petals.server.run import add_arguments as petals_arguments

    petals_arguments(pn)
    pn.set_defaults(func=cmd_petals_node)

    ps = sub.add_parser(
        "petals-server", help="one Petals server holding some of a model's blocks (a swarm)"
    )
    from supernode.petals.swarm.server import add_arguments as server_arguments

    server_arguments(ps)
    ps.set_defaults(func=cmd_petals_server)

    from supernode.client_cli import add_client_commands

    add_client_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `supernode client infer --model M "prompt"`: argparse cannot put a positional
        # after options when two positionals are adjacent; the text comes back as extra
        if args.command == "client" and not args.text and not extra[0].startswith("-"):
            args.text = " ".join(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
