#!/usr/bin/env bash
# Development and test clusters of the system PostgreSQL 15, run as the postgres OS user (initdb
# refuses root), with datajoint preloaded.
#
#   scripts/cluster.sh [--name NAME] [--port PORT] [--no-preload] COMMAND
#   COMMAND: init | start | stop | restart | status | psql [ARGS] | env | destroy | dir
#
# NAME (default "dev") picks the cluster; each has its own data folder, socket folder and log.
# The folder is .cluster/NAME under the repository when the postgres user can reach it there,
# otherwise /var/tmp/datajoint-<hash of the repository path>/NAME. The dev cluster listens on
# 55432; every other cluster on a port derived from its folder (56000-57999), so that two
# checkouts never fight over one. A cluster keeps the port it was created with.
# `eval "$(scripts/cluster.sh env)"` exports PGHOST, PGPORT, PGUSER and PGDATABASE for psql,
# psycopg, datajoint-python and other tools.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
name=dev port= preload=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --no-preload) preload=0; shift ;;
    *) break ;;
  esac
done
cmd=${1:-status}; shift || true
[[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "cluster name must be [A-Za-z0-9_-]+" >&2; exit 2; }
DB=datajoint
# A server started from a shell with RUST_BACKTRACE set would put a Rust backtrace in every
# error's DETAIL, and symbolizing it loads the library's debug info (hundreds of MB per backend).
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

# From /, so that the postgres user is never asked to enter a folder it cannot read.
as_pg() { if [[ $(id -un) == postgres ]]; then (cd / && "$@"); else (cd / && sudo -u postgres -- "$@"); fi; }

base_dir() {
  local in_repo="$here/.cluster"
  mkdir -p "$in_repo" 2>/dev/null && chown postgres:postgres "$in_repo" 2>/dev/null || true
  if as_pg test -w "$in_repo" 2>/dev/null; then
    echo "$in_repo"
  else
    local h d; h=$(printf '%s' "$here" | sha256sum | cut -c1-10); d=/var/tmp/datajoint-$h
    # A predictable name in a shared folder: create it ourselves, or accept it only if the
    # postgres user owns it and no one else can write to it.
    if mkdir -m 700 "$d" 2>/dev/null; then
      chown postgres:postgres "$d"
    elif [[ $(stat -c '%U %a' "$d" 2>/dev/null) != "postgres 700" ]]; then
      echo "$d exists but is not a postgres-owned folder of mode 700; remove it" >&2; exit 1
    fi
    echo "$d"
  fi
}
root=$(base_dir)/$name
data=$root/data sock=$root/sock log=$root/postgres.log
if [[ -z "$port" ]]; then
  port=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$data/postgresql.conf" 2>/dev/null | tail -n 1 || true)
fi
if [[ -z "$port" ]]; then
  if [[ $name == dev ]]; then port=55432; else port=$((56000 + $(printf '%s' "$root" | cksum | cut -d' ' -f1) % 2000)); fi
fi

running() { as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; }

do_init() {
  if [[ -f "$data/PG_VERSION" ]]; then return 0; fi
  as_pg mkdir -p "$root" "$sock"
  as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  {
    echo "# datajoint $name cluster"
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '${sock//\'/\'\'}'"
    [[ $preload == 1 ]] && echo "shared_preload_libraries = 'datajoint'"
    echo "max_worker_processes = 16"
    echo "fsync = off  # development and test clusters only"
    echo "lc_messages = 'C'"
  } | as_pg tee -a "$data/postgresql.conf" >/dev/null
}

do_start() {
  do_init
  if ! running && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "cluster $name: port $port is taken by another server; stop it, or destroy this cluster and pass --port" >&2
    exit 1
  fi
  running || as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null || {
    echo "cluster $name failed to start; last log lines:" >&2; tail -20 "$log" >&2; exit 1; }
  as_pg "$PG_BIN/psql" -h "$sock" -p "$port" -U postgres -d postgres -Atqc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 ||
    as_pg "$PG_BIN/createdb" -h "$sock" -p "$port" -U postgres "$DB"
}

case "$cmd" in
  init) do_init ;;
  start) do_start; echo "cluster $name running: $sock port $port (database $DB)" ;;
  stop) running && as_pg "$PG_BIN/pg_ctl" -D "$data" -w -m fast stop >/dev/null; true ;;
  restart) running && as_pg "$PG_BIN/pg_ctl" -D "$data" -w -m fast stop >/dev/null; do_start ;;
  status) if running; then echo "cluster $name running: $sock port $port"; else echo "cluster $name stopped ($data)"; exit 3; fi ;;
  psql) exec "$PG_BIN/psql" -h "$sock" -p "$port" -U postgres -d "$DB" "$@" ;;
  env) printf 'export PGHOST=%q PGPORT=%q PGUSER=postgres PGDATABASE=%q\n' "$sock" "$port" "$DB" ;;
  dir) echo "$root" ;;
  destroy) running && as_pg "$PG_BIN/pg_ctl" -D "$data" -w -m immediate stop >/dev/null; rm -rf "$root" ;;
  *) echo "unknown command: $cmd (init|start|stop|restart|status|psql|env|dir|destroy)" >&2; exit 2 ;;
esac
