#!/usr/bin/env bash
# Every test tier, in one command (the README's `make test`; .ci/run runs exactly that):
#   1. core unit tests       cargo test -p datajoint-core -p datajoint-blob (pure Rust, no PostgreSQL)
#   2. pg_tests              cargo pgrx test pg15                   (#[pg_test] in a pgrx-managed cluster)
#   3. golden SQL files      pg_regress tests/sql -> tests/expected (a throwaway "test" cluster)
#   4. isolation specs       pg_isolation_regress tests/isolation   (concurrent sessions, same cluster)
#   5. client tests          pytest tests/client                    (psycopg against the same cluster)
# Every tier runs even when an earlier one fails; the exit code is non-zero if any failed.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
PG_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
PG_ISOLATION_REGRESS=/usr/lib/postgresql/15/lib/pgxs/src/test/isolation/pg_isolation_regress

scripts/setup.sh || { echo "setup failed"; exit 1; }

results=() status=0
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
tier() {
  local name=$1; shift
  printf '\n==== %s ====\n' "$name"
  local log="$log_dir/${#results[@]}.log" rc
  "$@" 2>&1 | tee "$log"; rc=${PIPESTATUS[0]}
  # The runner's own closing line(s), repeated at the end of the run.
  local lines; lines=$(grep -E '^test result: |^golden: [0-9]+ passed|^[0-9]+ (passed|failed).* in [0-9.]+s' "$log" | sed "s/^/$name | /")
  [[ -n "$lines" ]] || lines="$name | no summary line (exit $rc)"
  if [[ $rc == 0 ]]; then results+=("$lines"); else results+=("$lines"$'\n'"$name | FAILED (exit $rc)"); status=1; fi
}

pg_tests() {
  local d; d=$(scripts/cluster.sh --name pgrx dir)
  sudo -u postgres mkdir -p "$d"
  (cd extension && cargo pgrx test pg15 --runas postgres --pgdata "$d/pgdata")
}

install_and_start() {
  # The released 0.1.0 install script too, for the upgrade test (CREATE EXTENSION ... VERSION
  # '0.1.0', then ALTER EXTENSION ... UPDATE with data in place).
  (cd extension && cargo pgrx install --pg-config "$PG_CONFIG") >/dev/null &&
    install -m 644 tests/upgrade/datajoint--0.1.0.sql "$("$PG_CONFIG" --sharedir)/extension/" &&
    scripts/cluster.sh --name test destroy && scripts/cluster.sh --name test start
}

golden() {
  eval "$(scripts/cluster.sh --name test env)"
  local tests=() t
  for t in tests/sql/*.sql; do tests+=("$(basename "$t" .sql)"); done
  rm -rf tests/results && mkdir -p tests/results
  # --use-existing leaves database creation to us: a fresh one per run.
  "$PG_BIN/dropdb" --if-exists dj_regress && "$PG_BIN/createdb" dj_regress || return 1
  "$PG_REGRESS" --use-existing --bindir="$PG_BIN" --host="$PGHOST" --port="$PGPORT" --user=postgres \
    --inputdir=tests --outputdir=tests/results --dbname=dj_regress "${tests[@]}" | tee tests/results/summary.txt
  local rc=${PIPESTATUS[0]} failed passed
  passed=$(grep -cE '\.\.\. ok' tests/results/summary.txt)
  failed=$(grep -cE '\.\.\. FAILED' tests/results/summary.txt)
  [[ -f tests/results/regression.diffs ]] && cat tests/results/regression.diffs
  echo "golden: $passed passed, $failed failed"
  [[ $rc == 0 && $failed == 0 && $passed == ${#tests[@]} ]]
}

isolation() {
  eval "$(scripts/cluster.sh --name test env)"
  local specs=() t
  for t in tests/isolation/specs/*.spec; do specs+=("$(basename "$t" .spec)"); done
  rm -rf tests/isolation/results && mkdir -p tests/isolation/results
  "$PG_BIN/dropdb" --if-exists dj_isolation && "$PG_BIN/createdb" dj_isolation || return 1
  "$PG_ISOLATION_REGRESS" --use-existing --bindir="$PG_BIN" --host="$PGHOST" --port="$PGPORT" --user=postgres \
    --inputdir=tests/isolation --outputdir=tests/isolation/results --dbname=dj_isolation "${specs[@]}" |
    tee tests/isolation/results/summary.txt
  local rc=${PIPESTATUS[0]} failed passed
  passed=$(grep -cE '\.\.\. ok|^ok ' tests/isolation/results/summary.txt)
  failed=$(grep -cE 'FAILED|^not ok' tests/isolation/results/summary.txt)
  [[ -f tests/isolation/results/regression.diffs ]] && cat tests/isolation/results/regression.diffs
  echo "golden: $passed passed, $failed failed (isolation)"
  [[ $rc == 0 && $failed == 0 && $passed == ${#specs[@]} ]]
}

client() {
  eval "$(scripts/cluster.sh --name test env)"
  local rc=0
  .venv/bin/python -m pytest tests/client -q -p no:cacheprovider || rc=$?
  [[ $rc == 0 ]]
}

tier "core unit tests" cargo test -p datajoint-core -p datajoint-blob
tier "pg_tests" pg_tests
if install_and_start; then
  tier "golden SQL" golden
  tier "isolation specs" isolation
  tier "client tests" client
else
  results+=("install + test cluster | FAILED"); status=1
fi
scripts/cluster.sh --name test stop

printf '\n==== summary ====\n'
printf '%s\n' "${results[@]}"
# One plain line over all tiers: cargo's "N passed; N failed", pg_regress's and pytest's counts.
summary=$(printf '%s\n' "${results[@]}")
passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | awk '{s += $1} END {print s + 0}')
failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | awk '{s += $1} END {print s + 0}')
(( status == 0 || failed > 0 )) || failed=1  # a tier that failed without counting still fails
echo "total: $passed passed, $failed failed"
exit $status
