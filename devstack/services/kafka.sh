# shellcheck shell=bash
# Apache Kafka, single KRaft node (broker + controller) from Maven Central jars, Java 17.
# Sourced by devstack/lib.sh users; see the conventions at the top of lib.sh.

KAFKA_VERSION=4.1.2
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
# The listener pods use, on the rig's bridge address (advertised there, so their clients stay on it).
KAFKA_POD_PORT=9094
# The secured listeners (SASL_SSL, SCRAM-SHA-512, ACLs): loopback, and the rig's bridge for pods.
KAFKA_SECURE_PORT=9095
KAFKA_SECURE_POD_PORT=9096
# The principals of devstack/kafka/acls; each gets a password of its own (mp_secret).
KAFKA_USERS=(mp-api mp-indexer mp-replay mp-operator mp-audit)
KAFKA_HEAP=${KAFKA_HEAP:--Xms256m -Xmx512m}
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
KAFKA_START_TIMEOUT=120

_kafka_inputs() { printf '%s\n' "$MP_DEVSTACK_DIR/kafka/pom.xml"; }
_kafka_build() { mp_build_dir kafka "$KAFKA_VERSION"; }
_kafka_run() { mp_run_dir kafka; }
_kafka_pidfile() { printf '%s/kafka.pid\n' "$(_kafka_run)"; }
# Our broker's command line contains its config path under the run dir.
_kafka_marker() { printf '%s/server.properties\n' "$(_kafka_run)"; }

kafka_address() { printf '127.0.0.1:%s\n' "$KAFKA_PORT"; }
kafka_log() { printf '%s/kafka.log\n' "$(_kafka_run)"; }
kafka_env() {
  printf 'KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:%s\nKAFKA_POD_BOOTSTRAP_SERVERS=%s:%s\n' "$KAFKA_PORT" \
    "$MP_RIG_ADDRESS" "$KAFKA_POD_PORT"
  printf 'KAFKA_SECURE_BOOTSTRAP_SERVERS=127.0.0.1:%s\nKAFKA_SECURE_POD_BOOTSTRAP_SERVERS=%s:%s\n' \
    "$KAFKA_SECURE_PORT" "$MP_RIG_ADDRESS" "$KAFKA_SECURE_POD_PORT"
  mp_passwords_env KAFKA kafka "${KAFKA_USERS[@]}"
}

kafka_install() {
  local build hash
  mp_require_cmd java openjdk-17-jre-headless
  mp_require_cmd mvn maven
  mp_require_cmd javac openjdk-17-jdk-headless
  build=$(_kafka_build)
  hash=$(mp_inputs_hash "$MP_DEVSTACK_DIR/kafka/pom.xml" "$MP_DEVSTACK_DIR/kafka/Provision.java")
  mp_stamp_ok "$build" "$hash" && return 0
  mp_log "kafka: fetching Kafka $KAFKA_VERSION jars with Maven into $build"
  rm -rf "$build"
  mkdir -p "$build"
  # Maven runs on a copy of the pom so that nothing (target/) lands in the repo.
  cp "$MP_DEVSTACK_DIR/kafka/pom.xml" "$build/pom.xml"
  mp_run_logged "$build/install.log" mvn -B -f "$build/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$build/libs" || return 1
  mkdir -p "$build/provision"
  mp_run_logged "$build/install.log" javac -d "$build/provision" -cp "$build/libs/*" \
    "$MP_DEVSTACK_DIR/kafka/Provision.java" || return 1
  mp_stamp_write "$build" "$hash"
}

kafka_running() { mp_pid_running "$(_kafka_pidfile)" "$(_kafka_marker)"; }

kafka_start() {
  local run data cluster_id build pki
  if kafka_running; then
    # A broker started before the secured listeners existed: restart it with them.
    mp_tcp_open 127.0.0.1 "$KAFKA_SECURE_PORT" && return 0
    mp_log "kafka: restarting to open the secured listeners"
    kafka_stop || return 1
  fi
  mp_require_port_free 127.0.0.1 "$KAFKA_PORT" kafka
  mp_require_port_free 127.0.0.1 "$KAFKA_SECURE_PORT" kafka
  mp_require_port_free "$MP_RIG_ADDRESS" "$KAFKA_SECURE_POD_PORT" kafka
  mp_require_port_free 127.0.0.1 "$KAFKA_CONTROLLER_PORT" kafka
  mp_require_port_free "$MP_RIG_ADDRESS" "$KAFKA_POD_PORT" kafka
  build=$(_kafka_build)
  run=$(_kafka_run)
  data=$run/data
  pki=$(mp_rig_cert kafka) || return 1
  # Kafka's PEM keystore: the private key and the certificate in one file.
  mkdir -p "$run"
  (
    umask 077
    cat "$pki/kafka.key" "$pki/kafka.crt" >"$run/keystore.pem"
  )
  mp_render "$MP_DEVSTACK_DIR/kafka/server.properties.in" "$run/server.properties" \
    "PORT=$KAFKA_PORT" "CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT" "DATA_DIR=$data" \
    "POD_ADDRESS=$MP_RIG_ADDRESS" "POD_PORT=$KAFKA_POD_PORT" \
    "SECURE_PORT=$KAFKA_SECURE_PORT" "SECURE_POD_PORT=$KAFKA_SECURE_POD_PORT" \
    "KEYSTORE=$run/keystore.pem"
  cp "$MP_DEVSTACK_DIR/kafka/log4j2.properties" "$run/log4j2.properties"
  if [[ ! -f $data/meta.properties ]]; then
    # A cluster id is 16 random bytes in URL-safe base64 without padding (as `random-uuid`).
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)
    mp_log "kafka: formatting $data (cluster id $cluster_id)"
    mkdir -p "$data"
    mp_run_logged "$run/format.log" java -Dlog4j2.configurationFile="$run/log4j2.properties" \
      -cp "$build/libs/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$run/server.properties" || return 1
  fi
  # shellcheck disable=SC2086 # KAFKA_HEAP is a list of JVM options
  mp_daemon_start "$(_kafka_pidfile)" "$(kafka_log)" \
    java $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$run/log4j2.properties" \
    -cp "$build/libs/*" kafka.Kafka "$run/server.properties"
}

# Health: a real Kafka request in plain bash (no JVM per check): ApiVersions v0 with
# correlation id 42; the reply must echo the correlation id with error code 0.
kafka_health() {
  local reply
  local -a bytes
  # shellcheck disable=SC2016 # the inner shell expands $0
  reply=$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
    printf "\x00\x00\x00\x0e\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x04mpdv" >&3
    head -c 10 <&3 | od -An -tx1' "$KAFKA_PORT" 2>/dev/null) || return 1
  # size(4) correlation id(4) error code(2)
  read -ra bytes <<<"$reply"
  [[ ${#bytes[@]} -eq 10 && ${bytes[*]:4:6} == "00 00 00 2a 00 00" ]] || return 1
  mp_tcp_open 127.0.0.1 "$KAFKA_SECURE_PORT"
}

# After health: the secured listener's users and ACLs (devstack/kafka/acls), made through the
# Admin API once per data dir and inputs (users and ACLs live in the cluster's metadata).
kafka_ready() {
  local run build users stamp hash user
  run=$(_kafka_run)
  build=$(_kafka_build)
  users=$run/users
  (
    umask 077
    for user in "${KAFKA_USERS[@]}"; do
      printf '%s=%s\n' "$user" "$(mp_secret "kafka-$user")"
    done >"$users"
  )
  stamp=$run/data/.provisioned
  hash=$(mp_inputs_hash "$users" "$MP_DEVSTACK_DIR/kafka/acls" "$MP_DEVSTACK_DIR/kafka/Provision.java")
  [[ -f $stamp && $(<"$stamp") == "$hash" ]] && return 0
  mp_log "kafka: provisioning the secured listener's users and ACLs"
  mp_run_logged "$run/provision.log" java -Dlog4j2.configurationFile="$run/log4j2.properties" \
    -cp "$build/libs/*:$build/provision" Provision "127.0.0.1:$KAFKA_PORT" "$users" \
    "$MP_DEVSTACK_DIR/kafka/acls" || return 1
  printf '%s\n' "$hash" >"$stamp"
}

kafka_stop() { mp_daemon_stop "$(_kafka_pidfile)" "$(_kafka_marker)" TERM 60; }
