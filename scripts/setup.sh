#!/usr/bin/env bash
# Takes a fresh Debian 12 machine to one that builds, installs and tests datajoint.
# Idempotent: a second run checks each step and changes nothing. Used by the README, .ci/run and
# docker/Dockerfile alike.
#   DJ_SETUP_PYTHON=0   skip the Python venv for client tests (the Docker build does)
#   DJ_SETUP_GUESTS=0   skip the wasm32-wasip2 target (guests then come from committed fixtures)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
PGRX_VERSION=0.18.1

say() { printf '[setup] %s\n' "$*"; }

# 1. System packages.
apt_packages=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang pkg-config libssl-dev zlib1g-dev sudo make
              python3-venv)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's postgresql package starts a cluster on 5432 of its own; ours run elsewhere, and that one
# is left as the system has it.

# 2. cargo-pgrx, exactly the version the crate pins.
if [[ "$(cargo pgrx --version 2>/dev/null || true)" != "cargo-pgrx $PGRX_VERSION" ]]; then
  say "installing cargo-pgrx $PGRX_VERSION (about 5 minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

# 3. Point pgrx at the system PostgreSQL (the default init downloads sources: not possible here).
pgrx_config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -qs "pg$PG_MAJOR = \"$PG_CONFIG\"" "$pgrx_config"; then
  say "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
fi

# 4. The guest target. Refusal is not fatal: the committed fixture components keep tests running.
if [[ "${DJ_SETUP_GUESTS:-1}" == 1 ]] && ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  say "adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2 >/dev/null 2>&1 ||
    say "WARNING: could not add wasm32-wasip2; guest sources will not be rebuilt (committed fixtures are used)"
fi

# 5. Python venv for client tests, reinstalled only when the requirements change.
if [[ "${DJ_SETUP_PYTHON:-1}" == 1 ]]; then
  req="$here/tests/client/requirements.txt"
  venv="$here/.venv"
  stamp="$venv/.requirements.sha256"
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    say "creating the client-test venv in .venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
  fi
fi
say "ready"
