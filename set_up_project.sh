#!/usr/bin/env bash
# One command to make this checkout runnable and testable: Python venv and pinned
# packages, the Petals environment (.petals-venv: petals needs transformers 4.34), anvil
# (npm @foundry-rs/anvil, project-local), the operator keystore, and the ledger migrations.
# Idempotent and non-interactive; a second run changes nothing.
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

# --- the Petals environment: its own venv (petals 2.2.0.post1 needs transformers 4.34) ----
PETALS_VERSION="2.2.0.post1"
if [ ! -x .petals-venv/bin/python ]; then
  say "creating .petals-venv"
  "$PYTHON" -m venv .petals-venv
fi
pstamp=".petals-venv/.requirements.sha256"
pwant="$(sha256sum requirements-petals.txt | cut -d' ' -f1) petals==$PETALS_VERSION"
if [ ! -f "$pstamp" ] || [ "$(cat "$pstamp")" != "$pwant" ]; then
  plog=".petals-venv/install.log"
  say "installing the Petals environment's packages (torch CPU, hivemind, transformers 4.34;"
  say "  about 1.6 GB, a few minutes the first time; log in $plog)"
  if ! .petals-venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
    -r requirements-petals.txt >"$plog" 2>&1; then
    tail -40 "$plog"; exit 1
  fi
  say "installing petals $PETALS_VERSION (without its pins: the shim makes it run on these)"
  .petals-venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    "petals==$PETALS_VERSION"
  echo "$pwant" > "$pstamp"
else
  say "Petals environment up to date"
fi
say "checking that petals imports (with the shim) and that hivemind's p2pd is there"
PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 .petals-venv/bin/python - <<'PY'
import warnings
warnings.filterwarnings("ignore")
from pathlib import Path
from supernode.petals.swarm import shim
shim.apply()
import hivemind, petals
from petals import AutoDistributedModelForCausalLM  # noqa: F401
p2pd = Path(hivemind.__file__).parent / "hivemind_cli" / "p2pd"
assert p2pd.is_file(), f"no p2pd at {p2pd}"
print(f"petals {petals.__version__}, hivemind {hivemind.__version__}: ok")
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
