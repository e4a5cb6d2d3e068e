#!/usr/bin/env bash
# A team's shared MLflow on one machine: PostgreSQL holds runs and the model registry, `mlflow server` serves the
# REST API, the UI and the artifacts (mlflow-artifacts:). Idempotent: run `start` as often as you like.
#
#   bash scripts/team-mlflow.sh start     install what is missing, create the database once, start what is not running
#   bash scripts/team-mlflow.sh stop      stop mlflow server, then PostgreSQL
#   bash scripts/team-mlflow.sh status    what runs where; exit 0 only when both run and the server answers
#
# Settings (environment):
#   SSLPIPE_TEAM_DIR       state folder (default <repo>/.team): postgres/ (the database cluster, owned by the
#                          postgres user, its log in postgres/postgres.log), artifacts/, mlflow.log, mlflow.pid, pgpass
#   PGPORT                 PostgreSQL port, on 127.0.0.1 only (default 5432)
#   SSLPIPE_MLFLOW_HOST    address mlflow server listens on (default 127.0.0.1; 0.0.0.0 to serve other machines)
#   SSLPIPE_MLFLOW_PORT    its port (default 5000)
#   SSLPIPE_MLFLOW_WORKERS its worker processes (default 2)
#   SSLPIPE_ARTIFACTS_DESTINATION  where the server keeps artifacts (default <team dir>/artifacts; s3://... works)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
source "$REPO/scripts/lib.sh" # apt_install

TEAM="${SSLPIPE_TEAM_DIR:-$REPO/.team}"
PG_PORT="${PGPORT:-5432}"
ML_HOST="${SSLPIPE_MLFLOW_HOST:-127.0.0.1}"
ML_PORT="${SSLPIPE_MLFLOW_PORT:-5000}"
ML_WORKERS="${SSLPIPE_MLFLOW_WORKERS:-2}"
DB=mlflow # database and its owner role
VENV="$REPO/.venv"

say() { echo "team-mlflow: $*"; }
die() {
  echo "team-mlflow: error: $*" >&2
  exit 1
}

# Where to find the server binaries: Debian keeps them in /usr/lib/postgresql/<version>/bin (newest wins).
pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
    echo "$dir"
  elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"
  fi
}

install_postgres() {
  say "installing Debian package postgresql (initdb/pg_ctl are missing)"
  # Debian's package creates and starts its own cluster on port 5432; keep it from starting during the install
  # (policy-rc.d: the standard "start no services now" switch), so it does not take the port this cluster uses.
  local policy=/usr/sbin/policy-rc.d created=""
  if [ "$(id -u)" -eq 0 ] && [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local ok=0
  DEBIAN_FRONTEND=noninteractive apt_install postgresql || ok=$?
  [ -z "$created" ] || rm -f "$policy"
  [ "$ok" -eq 0 ] || die "could not install postgresql with apt-get; install PostgreSQL (initdb, pg_ctl, psql) and run this again"
}

# Run a PostgreSQL program as the user that owns the cluster: `postgres` when we are root (initdb refuses root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
pg_super() { if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi; }

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pg_running() { [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
pg_port_now() { sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null; }

ml_pid() {
  local pid
  pid="$(cat "$TEAM/mlflow.pid" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "mlflow server" && echo "$pid"
  return 0
}

url_host() { if [ "$ML_HOST" = 0.0.0.0 ] || [ "$ML_HOST" = "::" ]; then hostname -f 2>/dev/null || hostname; else echo "$ML_HOST"; fi; }

healthy() { "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=3).read()' "$1" 2>/dev/null; }

write_atomic() { # write_atomic FILE MODE: stdin -> FILE, replaced in one rename
  local tmp
  tmp="$(dirname "$1")/.$(basename "$1").tmp"
  (umask 077 && cat >"$tmp")
  chmod "$2" "$tmp"
  mv -f "$tmp" "$1"
}

ensure_cluster() {
  [ -f "$PGDATA/PG_VERSION" ] && return 0
  rmdir "$PGDATA" 2>/dev/null || true # an empty folder may go; anything else is not ours to replace
  [ ! -e "$PGDATA" ] || die "$PGDATA exists but holds no PostgreSQL cluster; move it away or use another SSLPIPE_TEAM_DIR"
  local tmp="$TEAM/.postgres.init.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  chmod 700 "$tmp"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$tmp"
  as_pg test -w "$tmp" ||
    die "user $(pg_super) cannot write to $tmp (a parent folder is private?); use SSLPIPE_TEAM_DIR=/srv/sslpipe-team or make the parents searchable (chmod o+x)"
  say "creating the database cluster in $PGDATA"
  # written beside its final place and renamed when complete, so a failed initdb leaves no half cluster behind
  as_pg "$PGBIN/initdb" -D "$tmp" -U "$(pg_super)" -E UTF8 --locale=C --auth-local=peer --auth-host=scram-sha-256 >"$TEAM/initdb.log" 2>&1 ||
    die "initdb failed; see $TEAM/initdb.log"
  mv "$tmp" "$PGDATA"
}

start_postgres() {
  if pg_running; then
    local now
    now="$(pg_port_now)"
    [ "$now" = "$PG_PORT" ] || say "PostgreSQL already runs on port $now (not PGPORT=$PG_PORT); using it (\`stop\` first to move it)"
    PG_PORT="$now"
    say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
    return 0
  fi
  port_busy 127.0.0.1 "$PG_PORT" &&
    die "port $PG_PORT is taken by another program (Debian's own cluster? see \`pg_lsclusters\`); choose another with PGPORT=5433"
  local sock="$PGDATA/.s.PGSQL.$PG_PORT"
  [ "${#sock}" -lt 100 ] || die "the socket path $sock is too long for PostgreSQL; use a shorter SSLPIPE_TEAM_DIR"
  say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/postgres.log" -w -t 120 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k '$PGDATA'" start >/dev/null 9>&- ||
    die "PostgreSQL did not start; see $PGDATA/postgres.log"
}

ensure_database() {
  local password
  if [ -s "$TEAM/pgpass" ]; then
    password="$(cut -d: -f5 "$TEAM/pgpass")"
  else
    password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    # libpq reads the password from this file (PGPASSFILE): it never shows in a command line or a log
    echo "127.0.0.1:*:$DB:$DB:$password" | write_atomic "$TEAM/pgpass" 600
  fi
  # SQL on stdin, as the cluster's superuser over the cluster's own socket (peer authentication)
  as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGDATA" -p "$PG_PORT" -U "$(pg_super)" -d postgres >/dev/null <<SQL ||
SELECT 'CREATE ROLE $DB LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB')\gexec
ALTER ROLE $DB WITH LOGIN PASSWORD '$password';
SELECT 'CREATE DATABASE $DB OWNER $DB' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB')\gexec
SQL
    die "could not create the $DB role and database; see $PGDATA/postgres.log"
}

ensure_python() {
  [ -x "$VENV/bin/mlflow" ] || bash "$REPO/scripts/setup.sh"
  if ! "$VENV/bin/python" -c "import psycopg2" 2>/dev/null; then
    say "installing psycopg2-binary into .venv (the team extra)"
    "$VENV/bin/python" -m pip install -q "psycopg2-binary>=2.9"
  fi
}

start_mlflow() {
  local url pid
  url="http://$(url_host):$ML_PORT"
  pid="$(ml_pid)"
  if [ -n "$pid" ]; then
    url="$(cat "$TEAM/tracking_uri" 2>/dev/null || echo "$url")"
    ML_PORT="${url##*:}"
    say "mlflow server already running (pid $pid)"
  else
    rm -f "$TEAM/mlflow.pid"
    port_busy 127.0.0.1 "$ML_PORT" && die "port $ML_PORT is taken by another program; choose another with SSLPIPE_MLFLOW_PORT=5001"
    local artifacts="${SSLPIPE_ARTIFACTS_DESTINATION:-$TEAM/artifacts}"
    [[ "$artifacts" == *:* ]] || mkdir -p "$artifacts"
    say "starting mlflow server on $ML_HOST:$ML_PORT (log: $TEAM/mlflow.log)"
    # its own session (setsid), so `stop` signals it and its workers together. MLflow's job runner (GenAI scorers,
    # trace rollups: 8 more processes) is off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true; a registry needs none.
    PGPASSFILE="$TEAM/pgpass" MLFLOW_ENABLE_TELEMETRY="${MLFLOW_ENABLE_TELEMETRY:-false}" \
      MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" setsid "$VENV/bin/mlflow" server \
      --backend-store-uri "postgresql://$DB@127.0.0.1:$PG_PORT/$DB" \
      --serve-artifacts --artifacts-destination "$artifacts" \
      --host "$ML_HOST" --port "$ML_PORT" --workers "$ML_WORKERS" \
      </dev/null >>"$TEAM/mlflow.log" 2>&1 9>&- &
    pid=$!
    echo "$pid" | write_atomic "$TEAM/mlflow.pid" 644
  fi
  local deadline=$((SECONDS + 180))
  until healthy "http://127.0.0.1:$ML_PORT"; do
    kill -0 "$pid" 2>/dev/null || die "mlflow server exited; last lines of $TEAM/mlflow.log: $(tail -n 3 "$TEAM/mlflow.log" | tr '\n' ' ')"
    [ "$SECONDS" -lt "$deadline" ] || die "mlflow server did not answer /health within 180 s; see $TEAM/mlflow.log"
    sleep 1
  done
  echo "$url" | write_atomic "$TEAM/tracking_uri" 644
  say "ready: MLflow at $url (database postgresql://$DB@127.0.0.1:$PG_PORT/$DB, artifacts served by the server)"
  cat <<EOF
Point the pipeline at it, in params.yaml:
  register:
    tracking_uri: $url
    artifact_root:            # empty: the server keeps the artifacts (mlflow-artifacts:)
or per command: sslpipe run --set register.tracking_uri=$url --set register.artifact_root=
and for scripts: export MLFLOW_TRACKING_URI=$url
EOF
}

stop_all() {
  local pid
  pid="$(ml_pid)"
  if [ -n "$pid" ]; then
    say "stopping mlflow server (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  else
    say "mlflow server is not running"
  fi
  rm -f "$TEAM/mlflow.pid"
  if [ -n "$PGBIN" ] && pg_running; then
    say "stopping PostgreSQL"
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
  else
    say "PostgreSQL is not running"
  fi
}

status() {
  local ok=0 pid url
  if [ -n "$PGBIN" ] && pg_running; then
    say "PostgreSQL running on 127.0.0.1:$(pg_port_now) (data $PGDATA)"
  else
    say "PostgreSQL not running (data $PGDATA)"
    ok=1
  fi
  pid="$(ml_pid)"
  url="$(cat "$TEAM/tracking_uri" 2>/dev/null || echo "http://$(url_host):$ML_PORT")"
  if [ -z "$pid" ]; then
    say "mlflow server not running"
    ok=1
  elif healthy "http://127.0.0.1:${url##*:}"; then
    say "mlflow server running (pid $pid) at $url (log $TEAM/mlflow.log)"
  else
    say "mlflow server (pid $pid) does not answer /health; see $TEAM/mlflow.log"
    ok=1
  fi
  return "$ok"
}

mkdir -p "$TEAM"
TEAM="$(cd "$TEAM" && pwd)"
PGDATA="$TEAM/postgres"
PGBIN="$(pg_bin)"
if [ "${1:-}" = start ] || [ "${1:-}" = stop ]; then
  exec 9>"$TEAM/.lock" # one start or stop at a time on this folder (the servers do not inherit it: 9>&-)
  flock -w 600 9 || die "another start or stop holds $TEAM/.lock"
fi
case "${1:-}" in
  start)
    if [ -z "$PGBIN" ]; then
      install_postgres
      PGBIN="$(pg_bin)"
      [ -n "$PGBIN" ] || die "postgresql is installed but initdb/pg_ctl were not found under /usr/lib/postgresql/*/bin"
    fi
    ensure_python
    ensure_cluster
    start_postgres
    ensure_database
    start_mlflow
    ;;
  stop) stop_all ;;
  status) status ;;
  *)
    echo "usage: bash scripts/team-mlflow.sh start|stop|status (settings: see the top of this script)" >&2
    exit 2
    ;;
esac
