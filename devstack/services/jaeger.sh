# shellcheck shell=bash
# Jaeger v2 (the all-in-one: an OpenTelemetry Collector with Jaeger's storage and query
# extensions), the collector the workers send their traces to over OTLP and the tests read them
# back from through the query API (/api/v3, OTLP JSON). Built from the Go module proxy through
# the wrapper module devstack/jaeger (its go.mod pins the version; `go build` of the tool it
# names). OTLP/gRPC and OTLP/HTTP listen on the rig's bridge address, which the node's pods and
# this machine's processes both reach; query and health on loopback. Memory storage.
# See the conventions at the top of lib.sh.

JAEGER_OTLP_GRPC_PORT=4317
JAEGER_OTLP_HTTP_PORT=4318
JAEGER_QUERY_PORT=16686
JAEGER_QUERY_GRPC_PORT=16685
JAEGER_HEALTH_PORT=13133
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
JAEGER_START_TIMEOUT=60

_jaeger_version() {
  awk '$1 == "github.com/jaegertracing/jaeger" { print $2; exit }' "$MP_DEVSTACK_DIR/jaeger/go.mod"
}
_jaeger_build() { mp_build_dir jaeger "$(_jaeger_version)"; }
_jaeger_bin() { printf '%s/jaeger\n' "$(_jaeger_build)"; }
_jaeger_run() { mp_run_dir jaeger; }
_jaeger_pidfile() { printf '%s/jaeger.pid\n' "$(_jaeger_run)"; }
_jaeger_config() { printf '%s/config.yaml\n' "$(_jaeger_run)"; }
_jaeger_marker() { printf -- '--config=%s\n' "$(_jaeger_config)"; }

jaeger_address() { printf '%s:%s\n' "$MP_RIG_ADDRESS" "$JAEGER_OTLP_HTTP_PORT"; }
jaeger_log() { printf '%s/jaeger.log\n' "$(_jaeger_run)"; }
jaeger_env() {
  printf 'OTEL_COLLECTOR_URL=http://%s\n' "$(jaeger_address)"
  printf 'JAEGER_QUERY_URL=http://127.0.0.1:%s\n' "$JAEGER_QUERY_PORT"
}

jaeger_install() {
  local build hash version src=$MP_DEVSTACK_DIR/jaeger
  command -v go >/dev/null 2>&1 || mp_die "jaeger: Go >= 1.24 is required (not in Debian 12's packages)"
  version=$(_jaeger_version)
  [[ -n $version ]] || mp_die "jaeger: cannot read the version from devstack/jaeger/go.mod"
  build=$(_jaeger_build)
  hash=$(mp_inputs_hash "$src/go.mod" "$src/go.sum")
  [[ -x $build/jaeger ]] && mp_stamp_ok "$build" "$hash" && return 0
  mp_log "jaeger: building Jaeger $version into $build (a cold build takes ~5 min on 2 cores)"
  mkdir -p "$build"
  (cd "$src" && mp_run_logged "$build/install.log" go build -trimpath -buildvcs=false -ldflags="-s -w" \
    -o "$build/jaeger.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) || return 1
  mv -f "$build/jaeger.tmp" "$build/jaeger"
  mp_stamp_write "$build" "$hash"
}

jaeger_running() { mp_pid_running "$(_jaeger_pidfile)" "$(_jaeger_marker)"; }

jaeger_start() {
  local port
  jaeger_running && return 0
  for port in "$JAEGER_QUERY_PORT" "$JAEGER_QUERY_GRPC_PORT" "$JAEGER_HEALTH_PORT"; do
    mp_require_port_free 127.0.0.1 "$port" jaeger
  done
  for port in "$JAEGER_OTLP_GRPC_PORT" "$JAEGER_OTLP_HTTP_PORT"; do
    mp_require_port_free "$MP_RIG_ADDRESS" "$port" jaeger
  done
  mp_render "$MP_DEVSTACK_DIR/jaeger/config.yaml" "$(_jaeger_config)" \
    OTLP_ADDRESS="$MP_RIG_ADDRESS" OTLP_GRPC_PORT="$JAEGER_OTLP_GRPC_PORT" \
    OTLP_HTTP_PORT="$JAEGER_OTLP_HTTP_PORT" QUERY_PORT="$JAEGER_QUERY_PORT" \
    QUERY_GRPC_PORT="$JAEGER_QUERY_GRPC_PORT" HEALTH_PORT="$JAEGER_HEALTH_PORT" || return 1
  mp_daemon_start "$(_jaeger_pidfile)" "$(jaeger_log)" "$(_jaeger_bin)" --config="$(_jaeger_config)"
}

# Health: the collector's health check (every component up), and the query API answering.
jaeger_health() {
  curl -fsS --max-time 3 -o /dev/null "http://127.0.0.1:$JAEGER_HEALTH_PORT/status" &&
    curl -fsS --max-time 3 -o /dev/null "http://127.0.0.1:$JAEGER_QUERY_PORT/api/v3/services"
}

jaeger_stop() { mp_daemon_stop "$(_jaeger_pidfile)" "$(_jaeger_marker)" TERM 20; }
