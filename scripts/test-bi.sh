#!/usr/bin/env bash
# `make test-bi`: Apache Superset against the extension (optional; not part of `make test` or CI:
# Superset is ~825 MB and takes minutes to install). Installs Superset 6.1.0 in .venv-bi (once),
# builds and installs the extension, starts a throwaway "bi" cluster, loads tests/bi/pipeline.sql
# and runs tests/bi/superset_check.py: datasets on dj.pipeline_tables, a dj.create_view view and a
# virtual dataset calling dj.fetch_json, each reflected and charted by Superset itself.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
SUPERSET_VERSION=6.1.0
if [[ ! -x .venv-bi/bin/superset || "$(cat .venv-bi/.superset 2>/dev/null)" != "$SUPERSET_VERSION" ]]; then
  echo "[test-bi] installing Apache Superset $SUPERSET_VERSION into .venv-bi (a few minutes)"
  python3 -m venv .venv-bi
  # Superset 6.1.0's requirements leave out cachetools and allow a flask-caching it cannot use.
  .venv-bi/bin/pip install --quiet --disable-pip-version-check "apache-superset==$SUPERSET_VERSION" \
    "psycopg2-binary==2.9.13" "flask-caching==2.3.1" "cachetools==8.0.2"
  echo "$SUPERSET_VERSION" >.venv-bi/.superset
fi
(cd extension && cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config) >/dev/null
scripts/cluster.sh --name bi destroy
scripts/cluster.sh --name bi start
trap 'scripts/cluster.sh --name bi stop >/dev/null' EXIT
eval "$(scripts/cluster.sh --name bi env)"
/usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION IF NOT EXISTS datajoint" \
  -f tests/bi/pipeline.sql >/dev/null
.venv-bi/bin/python tests/bi/superset_check.py
