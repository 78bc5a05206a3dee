#!/usr/bin/env bash
# One command to make this checkout runnable and testable: Python venv and pinned
# packages, anvil (npm @foundry-rs/anvil, project-local), the operator keystore, and the
# ledger migrations. Idempotent and non-interactive; a second run changes nothing.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
ANVIL_VERSION="1.7.1"
ANVIL_DIR=".tools/anvil"
ANVIL_BIN="$ANVIL_DIR/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"

say() { printf '[set_up_project] %s\n' "$*"; }

# --- system packages (only if missing) ---------------------------------------------
need_apt=()
command -v "$PYTHON" >/dev/null || need_apt+=(python3 python3-venv)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v gcc >/dev/null || need_apt+=(build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

# --- Python ------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.requirements.sha256"
want="$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing pinned Python packages"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
else
  say "Python packages up to date"
fi
.venv/bin/python - <<'PY'
import coincurve  # noqa: F401  (eth-keys uses libsecp256k1 when this imports)
from eth_keys.backends import get_backend
assert type(get_backend()).__name__ == "CoinCurveECCBackend", "coincurve backend not active"
PY

# --- anvil (the binary ships inside the npm package; nothing is fetched at run time) -----
if [ ! -x "$ANVIL_BIN" ]; then
  say "installing anvil $ANVIL_VERSION from npm into $ANVIL_DIR"
  npm install --silent --no-audit --no-fund --prefix "$ANVIL_DIR" "@foundry-rs/anvil@$ANVIL_VERSION"
fi
"$ANVIL_BIN" --version | head -1

# --- operator keystore and ledger ----------------------------------------------------
mkdir -p data
chmod 700 data
.venv/bin/supernode keygen --keystore data/operator.keystore.json \
  --passphrase-file data/operator.pass --generate-passphrase --if-missing
.venv/bin/supernode migrate
say "done. Run: .venv/bin/supernode devnet --peers 4   Test: .venv/bin/python -m pytest"
