#!/usr/bin/env bash
# `make bench`: the populate, pipeline, query-algebra and object benchmarks, each side by side with its baseline in
# one run, on a throwaway "bench" cluster with the release build. Figures go to stdout (quote them
# with the date and machine they print). BENCH_KEYS (default 100000), BENCH_DJPY_KEYS (default
# 2000), BENCH_PIPELINE_KEYS (default 20000), BENCH_NEURONS (default 1000000) and BENCH_OBJECT_MB
# (default 1024) set the sizes;
# BENCH_ONLY=populate, pipeline, algebra or objects runs one.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
echo "[bench] building and installing the extension (release build)"
(cd extension && cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config) >/dev/null
scripts/cluster.sh --name bench destroy
scripts/cluster.sh --name bench start
trap 'scripts/cluster.sh --name bench stop >/dev/null' EXIT
eval "$(scripts/cluster.sh --name bench env)"
if [[ ${BENCH_ONLY:-populate} == populate ]]; then
  .venv/bin/python tests/bench/populate.py
  echo
  echo "== P4 per-key overhead of a cached module (no database work)"
  cargo run --quiet --release -p datajoint-core --example make_overhead udfs/components/misbehave.wasm 20000
  echo
fi
if [[ ${BENCH_ONLY:-pipeline} == pipeline ]]; then
  .venv/bin/python tests/bench/pipeline.py
fi
if [[ ${BENCH_ONLY:-algebra} == algebra ]]; then
  .venv/bin/python tests/bench/algebra.py
fi
if [[ ${BENCH_ONLY:-objects} == objects ]]; then
  .venv/bin/python tests/bench/objects.py
fi
