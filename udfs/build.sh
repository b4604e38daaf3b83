#!/usr/bin/env bash
# Rebuilds every example make function into udfs/components/<name>.wasm (committed as test fixtures,
# so that the extension's tests need no guest toolchain).
#
#   udfs/build.sh                 # everything
#   udfs/build.sh --rust-only     # the cargo workspace in udfs/rust
#   udfs/build.sh --python-only   # the apps in udfs/python/<name>/app.py
#   udfs/build.sh --force ...     # rebuild Python components whose inputs did not change, too
#
# Rust: cargo + the wasm32-wasip2 target (added with rustup when missing). Python: componentize-py,
# installed at a pinned version into udfs/.venv-guests when missing. JOBS sets cargo's parallelism
# (default 1).
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

udfs=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$udfs")
wit="$root/wasm-make/wit"
out="$udfs/components"
venv="$udfs/.venv-guests"

rust=1
python=1
force=0
for arg in "$@"; do
  case "$arg" in
    --rust-only) python=0 ;;
    --python-only) rust=0 ;;
    --force) force=1 ;;
    *) echo "usage: $0 [--rust-only | --python-only] [--force]" >&2; exit 2 ;;
  esac
done

mkdir -p "$out"
built=()

# Prints how long the command took, after running it.
timed() {
  local start=$SECONDS
  "$@"
  echo "   ($((SECONDS - start)) s)"
}

build_rust() {
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "== adding the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
  fi
  echo "== rust: cargo build --release --target wasm32-wasip2 (udfs/rust)"
  (cd "$udfs/rust" && cargo build --release --target wasm32-wasip2 -j "${JOBS:-1}")
  local crate
  for crate in $(sed -n 's/^members = \[\(.*\)\]/\1/p' "$udfs/rust/Cargo.toml" | tr -d '",'); do
    cp "$udfs/rust/target/wasm32-wasip2/release/$crate.wasm" "$out/$crate.wasm"
    built+=("$crate")
  done
}

build_python() {
  local cpy="$venv/bin/componentize-py"
  if ! [ -x "$cpy" ] || [ "$("$cpy" --version)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
    echo "== installing componentize-py $COMPONENTIZE_PY_VERSION into udfs/.venv-guests"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
  fi
  local app name stamp inputs
  for app in "$udfs"/python/*/app.py; do
    name=$(basename "$(dirname "$app")")
    # componentize-py output differs from build to build (the interpreter's heap is snapshotted),
    # so a 19 MB fixture is rebuilt only when what goes into it changed: the stamp beside it is a
    # hash of the app's sources, the helper, the WIT and the componentize-py version.
    stamp="$out/$name.wasm.inputs"
    inputs=$( (cd "$udfs/python/$name" && find . -name '*.py' -print0 | sort -z | xargs -0 sha256sum
      cd "$root/wasm-make" && sha256sum python/*.py wit/*.wit
      echo "componentize-py $COMPONENTIZE_PY_VERSION") | sha256sum | cut -d' ' -f1)
    built+=("$name")
    if [ "$force" = 0 ] && [ -f "$out/$name.wasm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
      echo "== python: $name is up to date (--force rebuilds it)"
      continue
    fi
    echo "== python: $name"
    # The Python path: the app's folder, the datajoint_make helper, and (as componentize-py always
    # adds a site-packages) the guests venv's, rather than the active or the system one.
    (cd "$(dirname "$app")" && export VIRTUAL_ENV="$venv" && timed "$cpy" -d "$wit" -w make componentize app \
      -p . -p "$root/wasm-make/python" -o "$out/$name.wasm")
    echo "$inputs" >"$stamp"
  done
}

[ "$rust" = 1 ] && timed build_rust
[ "$python" = 1 ] && build_python

echo "== components"
for name in "${built[@]}"; do
  printf '%10s  %s\n' "$(stat -c %s "$out/$name.wasm")" "udfs/components/$name.wasm"
done
