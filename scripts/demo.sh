#!/usr/bin/env bash
# The README's first command: set the machine up, build and install the extension (release),
# start the local "dev" cluster with datajoint preloaded, and run the demo pipeline.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
echo "[demo] building and installing the extension (release build; the first one takes a while)"
(cd extension && cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config) >/dev/null
# A preloaded library is read at server start: restart so a rebuilt one is the one in use.
if scripts/cluster.sh status >/dev/null 2>&1; then scripts/cluster.sh restart; else scripts/cluster.sh start; fi
scripts/cluster.sh psql -v ON_ERROR_STOP=1 -X -f udfs/demo.sql
echo "[demo] pipeline diagram: $here/target/demo/pipeline.svg"
cat <<TXT

The dev cluster keeps running. Connect with:
  scripts/cluster.sh psql
or, for any tool that reads the PG* variables (psql, psycopg, datajoint-python):
  eval "\$(scripts/cluster.sh env)"; psql
Stop it with: scripts/cluster.sh stop
TXT
