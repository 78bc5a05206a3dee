"""`supernode client ...`: the SDK from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from supernode.client import SupernodeAPIError, SupernodeClient, choose_supernode
from supernode.client_orders import default_orders_file


def _identity(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from supernode.crypto.keys import Identity, load_keystore, read_passphrase

    keystore = args.keystore
    if args.key:
        text = Path(args.key).read_text().strip()
        if not text.startswith("{"):
            return Identity.from_hex(text)
        keystore = args.key  # an eth-account keystore
    if keystore:
        pass_file = Path(args.passphrase_file) if args.passphrase_file else None
        passphrase = read_passphrase(os.environ.get("SUPERNODE_KEYSTORE_PASSPHRASE"), pass_file)
        return load_keystore(Path(keystore), passphrase)
    if args.key_env and os.environ.get(args.key_env):
        return Identity.from_hex(os.environ[args.key_env])
    return None


def _progress(msg: str) -> None:
    sys.stderr.write(f"  {msg}\n")
    sys.stderr.flush()


def _run(args: argparse.Namespace) -> int:
    url = args.supernode
    if args.choose:
        try:
            url = choose_supernode(url)
        except (SupernodeAPIError, httpx.HTTPError) as exc:
            sys.stderr.write(f"supernode client: cannot list the supernodes at {url}: {exc}\n")
            return 1
        _progress(f"using {url} (the best by reputation)")
    client = SupernodeClient(
        url,
        identity=_identity(args),
        operator_token=os.environ.get("SUPERNODE_OPERATOR_TOKEN") or args.token,
        fallback_urls=args.fallback or [],
        orders_file=Path(args.orders_file) if args.orders_file else default_orders_file(),
    )
    try:
        result: Any
        if args.action == "info":
            result = client.info()
        elif args.action == "supernodes":
            result = client.supernodes()
        elif args.action == "messages":
            result = client.messages(args.minutes, args.type)
        elif args.action == "broadcast":
            result = client.broadcast_to_all(args.type or "note", args.text, wait_s=5)
        elif args.action == "send-user-message":
            result = client.send_user_message(args.to, args.text)
        elif args.action == "user-messages":
            result = client.user_messages()
        elif args.action == "buy-credits":
            if not args.credits:
                raise ValueError("--credits N is required")
            result = client.buy_credits(args.credits, args.rpc_url, progress=_progress)
        elif args.action == "infer":
            if not (args.model and args.pack and args.text):
                raise ValueError('infer needs --model M --pack P "prompt"')
            for chunk in client.infer(
                args.pack, args.model, args.text, stream=True, max_new_tokens=args.max_new_tokens
            ):
                sys.stdout.write(chunk)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        elif args.action == "delegate":
            if not (args.pack and args.max_credits and args.expires):
                raise ValueError("delegate needs --pack P --max-credits M --expires T")
            now = int(time.time())
            ttl = args.expires - now if args.expires > 10**9 else args.expires
            if ttl <= 0:
                raise ValueError("--expires is in the past")
            sys.stdout.write(client.delegate(args.pack, args.max_credits, ttl) + "\n")
            return 0
        elif args.action == "keys":
            result = _keys(client, args)
            if isinstance(result, str):
                sys.stdout.write(result + "\n")
                return 0
        elif args.action == "menu":
            result = client.model_menu()
        elif args.action == "pack-balance":
            result = client.pack_balance(args.pack)
        elif args.action == "purchase-status":
            result = client.purchase_status(args.purchase)
        elif args.action == "packs":
            who = args.to or (client.identity.address if client.identity else None)
            if who is None:
                raise ValueError("give --to ADDRESS or a key")
            result = client.packs(who)
        elif args.action == "rate":
            if not args.text or args.value is None or not args.value.isdigit():
                raise ValueError("rate needs REQUEST_ID and a rating 1..5")
            result = client.rate(args.text, int(args.value))
        elif args.action == "reputation":
            result = client.reputation()
        elif args.action == "resend-orders":
            result = client.resend_pending()
        elif args.action == "logs":
            sys.stdout.write("\n".join(client.show_logs(args.minutes)) + "\n")
            return 0
        else:  # pragma: no cover - argparse restricts choices
            return 2
    except SupernodeAPIError as exc:
        sys.stderr.write(f"supernode client: {exc}\n")
        return 1
    except (ValueError, OSError, TimeoutError) as exc:
        sys.stderr.write(f"supernode client: {exc}\n")
        return 2
    finally:
        client.close()
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def _keys(client: SupernodeClient, args: argparse.Namespace) -> Any:
    """`client keys create | list | usage KEY_ID | revoke KEY_ID`."""
    from supernode.client_keys import KeyBook, default_keys_file
    from supernode.inference.openai import decode_api_key

    book = KeyBook(Path(args.keys_file) if args.keys_file else default_keys_file())
    what = args.text or "list"
    if what == "create":
        if not (args.pack and args.max_credits and args.expires):
            raise ValueError("keys create needs --pack P --max-credits M --expires T")
        ttl = args.expires - int(time.time()) if args.expires > 10**9 else args.expires
        if ttl <= 0:
            raise ValueError("--expires is in the past")
        key = client.delegate(
            args.pack,
            args.max_credits,
            ttl,
            rpm=args.rpm,
            tpm=args.tpm,
            max_in_flight=args.max_in_flight,
            models=args.models.split(",") if args.models else None,
        )
        d = decode_api_key(key)
        book.save(
            {
                "key_id": d["id"],
                "pack_id": args.pack,
                "supernode": client.base_url,
                "created_at": d["created_at"],
                "expires_at": d["expires_at"],
                "terms": {k: v for k, v in d["payload"].items() if k not in ("pack_id",)},
                "key": key,
            }
        )
        _progress(f"key {d['id']} (kept in {book.path})")
        return key
    if what == "list":
        now = time.time()
        return [
            {**{k: v for k, v in e.items() if k != "key"}, "expired": e["expires_at"] < now}
            for e in book.all()
        ]
    if what in ("usage", "revoke"):
        if not args.value:
            raise ValueError(f"keys {what} needs the KEY_ID (see `client keys list`)")
        if what == "usage":
            return client.key_usage(args.value, days=int(args.days))
        entry = book.find(args.value)
        if entry is None:
            raise ValueError(f"no key {args.value} in {book.path}")
        return client.revoke_key(entry["key"])
    raise ValueError("keys: create, list, usage KEY_ID or revoke KEY_ID")


def add_client_commands(sub: Any) -> None:
    c = sub.add_parser("client", help="talk to a supernode as a user or its operator")
    c.add_argument(
        "action",
        choices=[
            "info",
            "supernodes",
            "messages",
            "broadcast",
            "send-user-message",
            "user-messages",
            "buy-credits",
            "infer",
            "delegate",
            "keys",
            "menu",
            "pack-balance",
            "purchase-status",
            "packs",
            "logs",
            "resend-orders",
            "rate",
            "reputation",
        ],
    )
    c.add_argument(
        "text",
        nargs="?",
        default="",
        help="message text (rate: the request id; keys: create, list, usage or revoke)",
    )
    c.add_argument(
        "value",
        nargs="?",
        default=None,
        help="rate: the rating, 1 (bad) to 5 (good); keys usage/revoke: the key id",
    )
    c.add_argument(
        "--choose",
        action="store_true",
        help="use the best supernode by reputation that --supernode lists (never an invalid one)",
    )
    c.add_argument("--supernode", default="http://127.0.0.1:7123", help="the supernode's URL")
    c.add_argument(
        "--fallback",
        action="append",
        help="another supernode's URL, to resend a spend to while --supernode cannot (repeat)",
    )
    c.add_argument(
        "--orders-file",
        help="where signed spend orders wait until certified (default "
        "$SUPERNODE_ORDERS_FILE or ~/.supernode/pending-orders.json)",
    )
    c.add_argument("--key", help="user key: a file with a hex private key or a keystore")
    c.add_argument("--keystore", help="user key: an eth-account keystore file")
    c.add_argument("--credits", type=int, help="credits to buy (buy-credits)")
    c.add_argument(
        "--rpc-url",
        default="http://127.0.0.1:8545",
        help="the chain's JSON-RPC URL, to pay (buy-credits)",
    )
    c.add_argument("--pack", help="pack id (pack-balance, infer, delegate)")
    c.add_argument("--model", help="model name (infer); see `client menu`")
    c.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (infer)")
    c.add_argument("--max-credits", type=int, help="the delegation's cap (delegate)")
    c.add_argument(
        "--expires", type=int, help="delegate: seconds from now, or a unix time when it expires"
    )
    c.add_argument("--rpm", type=int, help="keys create: requests a minute at most")
    c.add_argument("--tpm", type=int, help="keys create: tokens a minute at most")
    c.add_argument("--max-in-flight", type=int, help="keys create: requests at once at most")
    c.add_argument("--models", help="keys create: the models it may use, comma-separated")
    c.add_argument("--days", type=int, default=30, help="keys usage: over the last DAYS days")
    c.add_argument(
        "--keys-file",
        help="where `keys create` keeps keys (default $SUPERNODE_KEYS_FILE or "
        "~/.supernode/keys.json)",
    )
    c.add_argument("--purchase", help="purchase id (purchase-status)")
    c.add_argument("--passphrase-file", help="its passphrase (else $SUPERNODE_KEYSTORE_PASSPHRASE)")
    c.add_argument(
        "--key-env",
        default="SUPERNODE_USER_KEY",
        help="env var holding a hex private key (default SUPERNODE_USER_KEY)",
    )
    c.add_argument("--token", help="operator token (else $SUPERNODE_OPERATOR_TOKEN)")
    c.add_argument("--to", help="recipient address")
    c.add_argument("--type", help="message type")
    c.add_argument("--minutes", type=float, default=60)
    c.set_defaults(func=_run)
