# shellcheck shell=bash
# FerretDB 1.24.2 (MongoDB wire protocol) over Debian's PostgreSQL 15 (on loopback). FerretDB 1
# listens on one TCP address only: the rig's bridge address, which this machine's clients and
# the node's pods both reach (so MONGODB_URI and MONGODB_POD_URI are the same).
# FerretDB is built from devstack/ferretdb (a wrapper embedding github.com/FerretDB/FerretDB/ferretdb,
# which also has the `--ping` health probe). PostgreSQL runs from its own data dir under
# run/ferretdb/pgdata on a non-default port, with the postgres user when started as root.
# See the conventions at the top of lib.sh.

FERRETDB_VERSION=1.24.2
FERRETDB_PORT=27017
FERRETDB_PG_PORT=54329
FERRETDB_PG_BIN=${FERRETDB_PG_BIN:-/usr/lib/postgresql/15/bin}
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
FERRETDB_START_TIMEOUT=60

_ferretdb_build() { mp_build_dir ferretdb "$FERRETDB_VERSION"; }
_ferretdb_bin() { printf '%s/ferretdb\n' "$(_ferretdb_build)"; }
_ferretdb_run() { mp_run_dir ferretdb; }
_ferretdb_pidfile() { printf '%s/ferretdb.pid\n' "$(_ferretdb_run)"; }
_ferretdb_marker() { printf '%s --listen-addr=\n' "$(_ferretdb_bin)"; }
_ferretdb_pgdata() { printf '%s/pgdata\n' "$(_ferretdb_run)"; }
_ferretdb_pg_pidfile() { printf '%s/postgres.pid\n' "$(_ferretdb_run)"; }
_ferretdb_pg_log() { printf '%s/postgres.log\n' "$(_ferretdb_run)"; }
_ferretdb_pg_marker() { printf -- '-D %s\n' "$(_ferretdb_pgdata)"; }
_ferretdb_pg_url() { printf 'postgres://postgres@127.0.0.1:%s/ferretdb\n' "$FERRETDB_PG_PORT"; }

# PostgreSQL refuses to run as root. As root, run its programs as the postgres user; setpriv
# (rather than runuser) execs in place, so the pid file holds postgres' own pid, and the ambient
# CAP_DAC_READ_SEARCH lets it traverse a mode-700 $HOME (/root) to reach MP_CACHE_DIR.
_FERRETDB_AS_PG=()
if [[ $(id -u) -eq 0 ]]; then
  _FERRETDB_AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups
    --inh-caps=+dac_read_search --ambient-caps=+dac_read_search --)
fi

ferretdb_address() { printf '%s:%s\n' "$MP_RIG_ADDRESS" "$FERRETDB_PORT"; }
ferretdb_log() { printf '%s/ferretdb.log\n' "$(_ferretdb_run)"; }
ferretdb_env() {
  printf 'MONGODB_URI=mongodb://%s/\nMONGODB_POD_URI=mongodb://%s/\n' "$(ferretdb_address)" "$(ferretdb_address)"
}

ferretdb_install() {
  local build hash src=$MP_DEVSTACK_DIR/ferretdb
  command -v go >/dev/null 2>&1 || mp_die "ferretdb: Go >= 1.24 is required (not in Debian 12's packages)"
  mp_require_cmd "$FERRETDB_PG_BIN/postgres" postgresql-15
  mp_require_cmd setpriv util-linux
  build=$(_ferretdb_build)
  hash=$(mp_inputs_hash "$src/go.mod" "$src/go.sum" "$src/main.go")
  [[ -x $build/ferretdb ]] && mp_stamp_ok "$build" "$hash" && return 0
  mp_log "ferretdb: building FerretDB $FERRETDB_VERSION into $build (a cold build takes ~2 min)"
  mkdir -p "$build"
  (cd "$src" && mp_run_logged "$build/install.log" go build -trimpath -buildvcs=false -o "$build/ferretdb.tmp" .) || return 1
  mv -f "$build/ferretdb.tmp" "$build/ferretdb"
  mp_stamp_write "$build" "$hash"
}

_ferretdb_pg_running() { mp_pid_running "$(_ferretdb_pg_pidfile)" "$(_ferretdb_pg_marker)"; }

_ferretdb_pg_ready() {
  "$FERRETDB_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$FERRETDB_PG_PORT" -U postgres -d postgres -t 2
}

_ferretdb_pg_start() {
  local run pgdata i
  run=$(_ferretdb_run)
  pgdata=$(_ferretdb_pgdata)
  if ! _ferretdb_pg_running; then
    mp_require_port_free 127.0.0.1 "$FERRETDB_PG_PORT" "ferretdb (postgresql)"
    # Nothing serves our port, so a postmaster.pid left by a killed server is stale (its pid may
    # have been reused, which would make PostgreSQL refuse to start).
    rm -f "$pgdata/postmaster.pid"
    if [[ ! -f $pgdata/PG_VERSION ]]; then
      mp_log "ferretdb: initdb $pgdata"
      rm -rf "$pgdata"
      mkdir -m 700 "$pgdata"
      [[ $(id -u) -ne 0 ]] || chown postgres:postgres "$pgdata"
      mp_run_logged "$run/initdb.log" "${_FERRETDB_AS_PG[@]}" "$FERRETDB_PG_BIN/initdb" -D "$pgdata" \
        -U postgres --auth=trust --encoding=UTF8 --no-locale || return 1
    fi
    # Test data: commits are not waited for on disk (a crash loses the last ones, never corrupts).
    # No Unix socket: TCP on loopback only.
    mp_daemon_start "$(_ferretdb_pg_pidfile)" "$(_ferretdb_pg_log)" \
      "${_FERRETDB_AS_PG[@]}" "$FERRETDB_PG_BIN/postgres" -D "$pgdata" -p "$FERRETDB_PG_PORT" \
      -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c synchronous_commit=off \
      -c max_connections=200
  fi
  for ((i = 0; i < 60; i++)); do
    _ferretdb_pg_ready && break
    _ferretdb_pg_running || break
    sleep 0.5
  done
  if ! _ferretdb_pg_ready; then
    mp_log "ferretdb: PostgreSQL did not start; last 40 lines of $(_ferretdb_pg_log):"
    tail -n 40 "$(_ferretdb_pg_log)" >&2
    return 1
  fi
  if [[ $("$FERRETDB_PG_BIN/psql" -h 127.0.0.1 -p "$FERRETDB_PG_PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'") != 1 ]]; then
    "$FERRETDB_PG_BIN/createdb" -h 127.0.0.1 -p "$FERRETDB_PG_PORT" -U postgres ferretdb || return 1
  fi
}

ferretdb_running() {
  mp_pid_running "$(_ferretdb_pidfile)" "$(_ferretdb_marker)" && _ferretdb_pg_running
}

ferretdb_start() {
  ferretdb_running && return 0
  _ferretdb_pg_start || return 1
  mp_pid_running "$(_ferretdb_pidfile)" "$(_ferretdb_marker)" && return 0
  mp_require_port_free "$MP_RIG_ADDRESS" "$FERRETDB_PORT" ferretdb
  # The embedded FerretDB never sends telemetry; --telemetry is accepted for the record.
  mp_daemon_start "$(_ferretdb_pidfile)" "$(ferretdb_log)" \
    "$(_ferretdb_bin)" --listen-addr="$(ferretdb_address)" --handler=postgresql \
    --postgresql-url="$(_ferretdb_pg_url)" --telemetry=disable
}

# Health: a MongoDB `ping` command; FerretDB answers it after querying PostgreSQL's status.
ferretdb_health() {
  "$(_ferretdb_bin)" --ping="mongodb://$(ferretdb_address)/" --timeout=2s
}

ferretdb_stop() {
  mp_daemon_stop "$(_ferretdb_pidfile)" "$(_ferretdb_marker)" TERM 20
  # SIGINT = PostgreSQL's fast shutdown.
  mp_daemon_stop "$(_ferretdb_pg_pidfile)" "$(_ferretdb_pg_marker)" INT 30
}
