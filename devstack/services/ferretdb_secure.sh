# shellcheck shell=bash
# A second FerretDB 1.24 process for the secured hop to MongoDB: a TLS listener only (a
# certificate from the rig's CA, on the bridge address, so this machine and the node's pods reach
# it), with authentication, over the PostgreSQL that ferretdb.sh runs, in a database of its own
# (ferretdb_secure). The plaintext FerretDB stays for every test that is not about security.
#
# FerretDB 1.x has no users or roles of its own: a client authenticates with PLAIN, and FerretDB
# opens its PostgreSQL connections with those credentials, so PostgreSQL decides. Each principal
# is a PostgreSQL role with a password (scram-sha-256 in pg_hba.conf; `postgres` keeps trust on
# loopback for the plaintext FerretDB and this set-up): mp-api may create and write (it owns what
# it creates), mp-audit may read what mp-api made (default privileges) and nothing else. A client
# that does not authenticate gets the base URL's role, mp-nobody, which may connect and nothing
# more; a wrong password fails the client's first command. So read-only access exists, by
# PostgreSQL's privileges, not by a FerretDB role.
# See the conventions at the top of lib.sh.

FERRETDB_SECURE_PORT=27018
FERRETDB_SECURE_DATABASE=ferretdb_secure
# Principals with a password of their own (mp_secret); mp-nobody is the unauthenticated default.
FERRETDB_SECURE_USERS=(mp-api mp-audit)
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
FERRETDB_SECURE_START_TIMEOUT=60

_ferretdb_secure_run() { mp_run_dir ferretdb_secure; }
_ferretdb_secure_pidfile() { printf '%s/ferretdb.pid\n' "$(_ferretdb_secure_run)"; }
_ferretdb_secure_marker() { printf '%s --listen-addr= --listen-tls=\n' "$(_ferretdb_bin)"; }
_ferretdb_secure_psql() {
  "$FERRETDB_PG_BIN/psql" -h 127.0.0.1 -p "$FERRETDB_PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"
}

ferretdb_secure_address() { printf '%s:%s\n' "$MP_RIG_ADDRESS" "$FERRETDB_SECURE_PORT"; }
ferretdb_secure_log() { printf '%s/ferretdb.log\n' "$(_ferretdb_secure_run)"; }
ferretdb_secure_env() {
  printf 'MONGODB_SECURE_URI=mongodb://%s/\n' "$(ferretdb_secure_address)"
  mp_passwords_env MONGODB mongodb "${FERRETDB_SECURE_USERS[@]}"
}

# The FerretDB binary is ferretdb.sh's; nothing of its own to build.
ferretdb_secure_install() { ferretdb_install; }

ferretdb_secure_running() {
  mp_pid_running "$(_ferretdb_secure_pidfile)" "$(_ferretdb_secure_marker)" && _ferretdb_pg_running
}

# Passwords for every role but postgres; the roles, their database and their privileges.
_ferretdb_secure_pg_setup() {
  local pgdata user db=$FERRETDB_SECURE_DATABASE
  pgdata=$(_ferretdb_pgdata)
  {
    printf '# devstack (ferretdb_secure.sh): postgres without a password on loopback, every other role with one\n'
    printf 'host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n'
  } >"$pgdata/pg_hba.conf.new"
  if ! cmp -s "$pgdata/pg_hba.conf.new" "$pgdata/pg_hba.conf"; then
    [[ $(id -u) -ne 0 ]] || chown postgres:postgres "$pgdata/pg_hba.conf.new"
    mv -f "$pgdata/pg_hba.conf.new" "$pgdata/pg_hba.conf"
    _ferretdb_secure_psql -d postgres -c 'SELECT pg_reload_conf()' >/dev/null || return 1
  fi
  rm -f "$pgdata/pg_hba.conf.new"
  if [[ $(_ferretdb_secure_psql -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'") != 1 ]]; then
    "$FERRETDB_PG_BIN/createdb" -h 127.0.0.1 -p "$FERRETDB_PG_PORT" -U postgres "$db" || return 1
  fi
  for user in mp-nobody "${FERRETDB_SECURE_USERS[@]}"; do
    _ferretdb_secure_psql -d postgres -v user="$user" -v password="$(mp_secret "mongodb-$user")" <<'SQL' || return 1
SELECT format('CREATE ROLE %I LOGIN', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" PASSWORD :'password';
SQL
  done
  _ferretdb_secure_psql -d "$db" <<SQL || return 1
REVOKE ALL ON DATABASE ferretdb FROM PUBLIC;
REVOKE ALL ON DATABASE $db FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE $db TO "mp-nobody", "mp-api", "mp-audit";
GRANT CREATE ON DATABASE $db TO "mp-api";
GRANT USAGE ON SCHEMA public TO "mp-api", "mp-audit";
ALTER DEFAULT PRIVILEGES FOR ROLE "mp-api" GRANT USAGE ON SCHEMAS TO "mp-audit";
ALTER DEFAULT PRIVILEGES FOR ROLE "mp-api" GRANT SELECT ON TABLES TO "mp-audit";
SQL
}

ferretdb_secure_start() {
  local pki run
  ferretdb_secure_running && return 0
  _ferretdb_pg_start || return 1
  _ferretdb_secure_pg_setup || return 1
  mp_require_port_free "$MP_RIG_ADDRESS" "$FERRETDB_SECURE_PORT" ferretdb_secure
  pki=$(mp_rig_cert ferretdb) || return 1
  run=$(_ferretdb_secure_run)
  mkdir -p "$run"
  # The base URL's role is mp-nobody; its password is in a passfile, not on the command line.
  (
    umask 077
    printf '127.0.0.1:%s:%s:mp-nobody:%s\n' "$FERRETDB_PG_PORT" "$FERRETDB_SECURE_DATABASE" \
      "$(mp_secret mongodb-mp-nobody)" >"$run/pgpass"
  )
  mp_daemon_start "$(_ferretdb_secure_pidfile)" "$(ferretdb_secure_log)" \
    env PGPASSFILE="$run/pgpass" \
    "$(_ferretdb_bin)" --listen-addr= --listen-tls="$(ferretdb_secure_address)" \
    --listen-tls-cert-file="$pki/ferretdb.crt" --listen-tls-key-file="$pki/ferretdb.key" \
    --handler=postgresql --telemetry=disable \
    --postgresql-url="postgres://mp-nobody@127.0.0.1:$FERRETDB_PG_PORT/$FERRETDB_SECURE_DATABASE"
}

# Health: a MongoDB `ping` over TLS trusting only the rig's CA (FerretDB answers it after
# querying PostgreSQL as mp-nobody).
ferretdb_secure_health() {
  "$(_ferretdb_bin)" --ping="mongodb://$(ferretdb_secure_address)/" \
    --ping-ca-file="$(mp_pki_dir)/ca.crt" --timeout=2s
}

ferretdb_secure_stop() { mp_daemon_stop "$(_ferretdb_secure_pidfile)" "$(_ferretdb_secure_marker)" TERM 20; }
