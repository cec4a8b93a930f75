# shellcheck shell=bash
# devstack/lib.sh: shared helpers of the local service rig. Sourced by devstack/up, down, status
# (and by nothing else); it sources every devstack/services/<name>.sh itself.
#
# ------------------------------------------------------------------------------------------------
# Conventions
# ------------------------------------------------------------------------------------------------
# Layout (nothing is ever written into the repo):
#   MP_CACHE_DIR            cache root, default $HOME/.cache/message-pipeline
#   $MP_CACHE_DIR/build/<service>-<version>/   builds and downloads; a version bump = a new dir.
#                           A `.inputs` stamp (hash of the repo's build inputs) inside it makes
#                           `<service>_install` rebuild when those inputs change.
#   $MP_CACHE_DIR/run/<service>/               runtime state: data dirs, configs rendered from
#                           templates, `<service>.log`, `<service>.pid` (the main process).
#                           Extra processes of a service get their own `<proc>.pid`/`<proc>.log`
#                           in the same dir (e.g. run/ferretdb/postgres.pid).
#   $MP_CACHE_DIR/run/rig.env                  KEY=VALUE lines, written by `up` once all the
#                           services it brought up are healthy (readable by make's `include` and
#                           by `set -a; . file; set +a`).
#
# Services: SERVICES below lists them in start order. Adding one = add its name to SERVICES and
# write devstack/services/<name>.sh defining these functions (all addresses on 127.0.0.1):
#   <name>_install   idempotent: build/download only what is missing into mp_build_dir.
#   <name>_start     start as a daemon (mp_daemon_start) unless already running; returns at once
#                    (up then calls mp_wait_for_health).
#   <name>_running   cheap: are its processes alive (pid files + /proc cmdline, mp_pid_running)?
#   <name>_health    one real request to the service, quick (a few seconds at most), exit 0/1.
#   <name>_stop      stop what <name>_start started, by pid files only (mp_daemon_stop).
#   <name>_env       print its KEY=VALUE lines for rig.env.
#   <name>_address   print its address (e.g. 127.0.0.1:9092).
#   <name>_log       print its main log file path.
# and may set <NAME>_START_TIMEOUT (seconds, upper case name; default 180) for mp_wait_for_health.
# `up` calls <name>_install and <name>_start outside any condition, so `set -e` stops at a failing
# step; still end critical steps with `|| return 1` (a function called as `f || ...` runs without
# errexit). Return non-zero on failure; never exit 0 half-done.
#
# Tools: TOOLS below lists client programs the tests run that are no services (no process, no
# address): `up` installs each (always, whatever services are selected: a cached one costs a
# stamp check), and rig.env carries their paths. Adding one = add its name to TOOLS and write
# devstack/tools/<name>.sh defining:
#   <name>_install   idempotent: build only what is missing into mp_build_dir (stamp as above).
#   <name>_installed cheap: is the program there?
#   <name>_path      print the program's path.
#   <name>_env       print its KEY=VALUE lines for rig.env (e.g. HELM=<path>).
#
# Helpers (all prefixed mp_):
#   mp_log MSG... / mp_die MSG...           messages on stderr ("devstack: ...")
#   mp_build_dir SERVICE VERSION            prints $MP_CACHE_DIR/build/SERVICE-VERSION
#   mp_run_dir SERVICE                      prints (and creates) $MP_CACHE_DIR/run/SERVICE
#   mp_inputs_hash FILE...                  sha256 over the files' contents
#   mp_stamp_ok DIR HASH / mp_stamp_write DIR HASH   DIR/.inputs stamp check / write
#   mp_run_logged LOGFILE CMD...            run CMD with output to LOGFILE, saying every 30 s
#                                           that it still runs; on failure print its last 40
#                                           lines and return non-zero
#   mp_render TEMPLATE OUT KEY=VALUE...     copy TEMPLATE to OUT replacing @KEY@ by VALUE
#   mp_require_cmd CMD [DEBIAN_PACKAGE]     fail, naming the package, if CMD is missing (devstack/deps
#                                           installs devstack/packages)
#   mp_daemon_start PIDFILE LOGFILE CMD...  start CMD detached (setsid, stdin /dev/null, output
#                                           appended to LOGFILE), its pid written to PIDFILE
#   mp_pid_running PIDFILE MARKER           0 if PIDFILE's pid is alive and its /proc cmdline
#                                           contains MARKER (guards against reused pids)
#   mp_pid PIDFILE                          print the pid in PIDFILE (empty if none)
#   mp_daemon_stop PIDFILE MARKER [SIGNAL] [TIMEOUT]  signal (default TERM), wait up to TIMEOUT
#                                           (default 30 s), then KILL; removes PIDFILE.
#                                           Never stops anything by name.
#   mp_tcp_open HOST PORT                   0 if something accepts TCP connections there
#   mp_require_port_free HOST PORT WHO      die if the port is already taken (by someone else)
#   mp_wait_for_health SERVICE TIMEOUT      poll <service>_health until OK; fail early when
#                                           <service>_running says it died; on failure print the
#                                           last 40 lines of <service>_log and return 1
#   mp_load_service NAME                    source services/NAME.sh
#   mp_load_all_tools                       source tools/NAME.sh for each of TOOLS
# ------------------------------------------------------------------------------------------------

MP_DEVSTACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MP_CACHE_DIR=${MP_CACHE_DIR:-$HOME/.cache/message-pipeline}
MP_BUILD_ROOT=$MP_CACHE_DIR/build
MP_RUN_ROOT=$MP_CACHE_DIR/run
MP_ENV_FILE=$MP_RUN_ROOT/rig.env
export MP_DEVSTACK_DIR MP_CACHE_DIR MP_BUILD_ROOT MP_RUN_ROOT MP_ENV_FILE

# The rig's own network: a bridge on this machine with one address, on which the services that
# pods use listen (besides 127.0.0.1 where the server can listen twice), and the node's pods get
# addresses of the same /24. Nothing is routed off the machine: no masquerading, and the
# FORWARD chain rejects what pods send anywhere but the bridge.
MP_RIG_BRIDGE=mp0
MP_RIG_ADDRESS=10.244.0.1
MP_RIG_PREFIX=24
# The cluster's Service addresses (kube.sh). Routed to the bridge, so that a ClusterIP without
# kube-proxy's rules (yet) goes nowhere instead of out of the default route.
MP_RIG_SERVICE_CIDR=10.96.0.0/12
export MP_RIG_BRIDGE MP_RIG_ADDRESS MP_RIG_SERVICE_CIDR

# Start order; `down` stops in reverse order.
SERVICES=(kafka ferretdb ferretdb_secure opensearch opensearch_secure opensearch3 jaeger kube node)
# Client tools (see "Tools" above).
TOOLS=(helm schemathesis benthos)
# Profiles: what a command needs of the rig (`devstack/up --profile NAME`). `demo` is what
# `make demo` uses: one Kafka, FerretDB, OpenSearch 2.19, the control plane, the node and helm;
# the secured endpoints, OpenSearch 3, Jaeger, schemathesis and Benthos are for the tests and the
# benchmarks, built and started by `make up` / `make test` when first needed. `test` (the
# default) is everything.
PROFILE_DEMO_SERVICES=(kafka ferretdb opensearch kube node)
PROFILE_DEMO_TOOLS=(helm)

mp_log() { printf 'devstack: %s\n' "$*" >&2; }
mp_die() {
  mp_log "ERROR: $*"
  exit 1
}

mp_build_dir() { printf '%s/%s-%s\n' "$MP_BUILD_ROOT" "$1" "$2"; }

mp_run_dir() {
  mkdir -p "$MP_RUN_ROOT/$1"
  printf '%s/%s\n' "$MP_RUN_ROOT" "$1"
}

mp_inputs_hash() { cat -- "$@" | sha256sum | cut -c1-16; }
mp_stamp_ok() { [[ -f $1/.inputs && $(<"$1/.inputs") == "$2" ]]; }
mp_stamp_write() { printf '%s\n' "$2" >"$1/.inputs"; }

mp_run_logged() {
  local logfile=$1 pid rc=0 started=$SECONDS next=30
  shift
  mkdir -p "$(dirname "$logfile")"
  # In the background, so that a long cold build says every 30 s that it is still going.
  "$@" >"$logfile" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.2
    if ((SECONDS - started >= next)); then
      mp_log "  still running after $((SECONDS - started)) s (log: $logfile)"
      next=$((next + 30))
    fi
  done
  wait "$pid" || rc=$?
  if ((rc != 0)); then
    mp_log "command failed: $* (last 40 lines of $logfile follow)"
    tail -n 40 "$logfile" >&2
    return 1
  fi
}

mp_render() {
  local template=$1 out=$2 content kv
  shift 2
  content=$(<"$template")
  for kv in "$@"; do
    content=${content//@${kv%%=*}@/${kv#*=}}
  done
  mkdir -p "$(dirname "$out")"
  printf '%s\n' "$content" >"$out.tmp"
  mv -f "$out.tmp" "$out"
}

mp_require_cmd() {
  local cmd=$1 pkg=${2:-}
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [[ -x $cmd ]] && return 0
  [[ -n $pkg ]] || mp_die "'$cmd' is required and not installed"
  mp_die "'$cmd' is missing: its Debian package $pkg is in devstack/packages; run make deps (as root) to install what is missing"
}

mp_pid() {
  local pid=
  [[ -r $1 ]] && pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] && printf '%s\n' "$pid"
  return 0
}

mp_pid_running() {
  local pidfile=$1 marker=$2 pid cmdline
  pid=$(mp_pid "$pidfile")
  [[ -n $pid ]] || return 1
  # A zombie or a reused pid has an empty or different command line.
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmdline == *"$marker"* ]]
}

mp_daemon_start() {
  local pidfile=$1 logfile=$2 i
  shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
  rm -f "$pidfile"
  printf '\n==== devstack: starting at %s: %s\n' "$(date '+%F %T')" "$*" >>"$logfile"
  # The inner bash records its own pid then execs the command, so the pid file is right whether
  # or not setsid had to fork. fd 9 (up's lock) is closed so the daemon does not hold the lock.
  # shellcheck disable=SC2016 # $$ and $@ are for the inner shell
  setsid bash -c 'echo "$$" >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
    </dev/null >>"$logfile" 2>&1 9>&- &
  for ((i = 0; i < 100; i++)); do
    [[ -s $pidfile ]] && return 0
    sleep 0.05
  done
  mp_log "could not start: $* (see $logfile)"
  return 1
}

mp_daemon_stop() {
  local pidfile=$1 marker=$2 sig=${3:-TERM} timeout=${4:-30} pid deadline
  if ! mp_pid_running "$pidfile" "$marker"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(mp_pid "$pidfile")
  kill -s "$sig" "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while mp_pid_running "$pidfile" "$marker"; do
    if ((SECONDS >= deadline)); then
      mp_log "pid $pid ($pidfile) still running after ${timeout}s: KILL"
      kill -s KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
}

mp_tcp_open() {
  # The subshell keeps the descriptor out of the caller; timeout bounds a hanging connect.
  # shellcheck disable=SC2016 # $0 and $1 are for the inner shell
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

mp_require_port_free() {
  if mp_tcp_open "$1" "$2"; then
    mp_die "$3: $1:$2 is already in use by another process (not started by devstack, or its pid file is gone); free it first"
  fi
}

mp_wait_for_health() {
  local name=$1 timeout=$2 deadline log
  deadline=$((SECONDS + timeout))
  log=$("${name}_log")
  while ! "${name}_health" >/dev/null 2>&1; do
    # Twice, half a second apart: a process in the middle of exec (the wrappers that wait for a
    # dependency, then exec the server) has an empty /proc cmdline for a moment.
    if ! "${name}_running" && { sleep 0.5; ! "${name}_running"; }; then
      mp_log "$name exited during start-up; last 40 lines of $log:"
      tail -n 40 "$log" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      mp_log "$name not healthy after ${timeout}s; last 40 lines of $log:"
      tail -n 40 "$log" >&2
      return 1
    fi
    sleep 1
  done
}

mp_load_service() {
  local file=$MP_DEVSTACK_DIR/services/$1.sh
  [[ -f $file ]] || mp_die "unknown service '$1' (no $file)"
  # shellcheck source=/dev/null
  . "$file"
}

# Take the rig lock on fd 9 (up and down must not interleave). Daemons close fd 9.
mp_lock() {
  mkdir -p "$MP_RUN_ROOT"
  exec 9>"$MP_RUN_ROOT/.lock"
  flock 9
}

# Selected services: the arguments (validated), a profile's (`--profile NAME`), or all of
# SERVICES.
mp_select_services() {
  local s known
  if (($# == 0)); then
    printf '%s\n' "${SERVICES[@]}"
    return 0
  fi
  if [[ $1 == --profile ]]; then
    (($# == 2)) || mp_die "usage: --profile NAME, alone (profiles: demo, test)"
    _mp_profile "$2" SERVICES
    return 0
  fi
  for s in "$@"; do
    for known in "${SERVICES[@]}"; do
      [[ $s == "$known" ]] && continue 2
    done
    mp_die "unknown service '$s' (known: ${SERVICES[*]})"
  done
  printf '%s\n' "$@"
}

# The tools to install: a profile's with `--profile NAME`, else all of TOOLS.
mp_select_tools() {
  if [[ ${1:-} == --profile ]]; then
    _mp_profile "$2" TOOLS
  else
    printf '%s\n' "${TOOLS[@]}"
  fi
}

# _mp_profile NAME SERVICES|TOOLS: print that list of profile NAME.
_mp_profile() {
  case $1:$2 in
    demo:SERVICES) printf '%s\n' "${PROFILE_DEMO_SERVICES[@]}" ;;
    demo:TOOLS) printf '%s\n' "${PROFILE_DEMO_TOOLS[@]}" ;;
    test:SERVICES) printf '%s\n' "${SERVICES[@]}" ;;
    test:TOOLS) printf '%s\n' "${TOOLS[@]}" ;;
    *) mp_die "unknown profile '$1' (profiles: demo, test)" ;;
  esac
}

# --- the rig's CA ------------------------------------------------------------------------------
# One CA for the services' secured listeners (the control plane keeps its own, run/kube/pki):
# run/pki/ca.crt, written to rig.env as RIG_CA_CERT. Its key never leaves run/pki (mode 700).

mp_pki_dir() { printf '%s/pki\n' "$MP_RUN_ROOT"; }

# The CA, made once.
mp_rig_ca() {
  local pki
  pki=$(mp_pki_dir)
  [[ -s $pki/ca.crt && -s $pki/ca.key ]] && return 0
  mp_require_cmd openssl openssl
  mkdir -p "$pki"
  chmod 700 "$pki"
  (
    umask 077
    openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null &&
      openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=devstack-rig-ca" -days 3650 -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$pki/ca.crt" 2>/dev/null
  ) || {
    mp_log "pki: openssl failed to make the rig's CA in $pki"
    return 1
  }
  chmod 644 "$pki/ca.crt"
}

# mp_rig_cert NAME: NAME.key (PKCS#8, unencrypted) and NAME.crt signed by the rig's CA for
# 127.0.0.1, localhost and MP_RIG_ADDRESS; made again when the rig's address is not among its
# names. Prints the directory.
mp_rig_cert() {
  local pki name=$1
  mp_rig_ca || return 1
  pki=$(mp_pki_dir)
  if [[ ! -s $pki/$name.crt || ! -s $pki/$name.key ]] ||
    ! openssl x509 -noout -ext subjectAltName -in "$pki/$name.crt" 2>/dev/null |
    grep -q "IP Address:$MP_RIG_ADDRESS\(,\|$\)"; then
    (
      umask 077
      printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' \
        "$MP_RIG_ADDRESS" >"$pki/$name.ext"
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/$name.key" 2>/dev/null &&
        openssl req -new -key "$pki/$name.key" -subj "/CN=devstack-$name" -out "$pki/$name.csr" &&
        openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
          -set_serial "0x$(openssl rand -hex 12)" -days 3650 -sha256 -extfile "$pki/$name.ext" \
          -out "$pki/$name.crt" 2>/dev/null
    ) || {
      mp_log "pki: openssl failed to make $pki/$name.crt"
      return 1
    }
    rm -f "$pki/$name.csr" "$pki/$name.ext"
  fi
  printf '%s\n' "$pki"
}

# mp_secret NAME: a random password kept in run/pki/NAME.password (made once, mode 600).
mp_secret() {
  local file
  file=$(mp_pki_dir)/$1.password
  if [[ ! -s $file ]]; then
    mkdir -p "$(mp_pki_dir)"
    (
      umask 077
      openssl rand -hex 16 >"$file"
    )
  fi
  cat -- "$file"
}

# mp_passwords_env VAR SECRET USER...: a line VAR_PASSWORD_<USER without mp-, upper case>=... per
# user, from the secret SECRET-<user>.
mp_passwords_env() {
  local var=$1 secret=$2 user name
  shift 2
  for user in "$@"; do
    name=${user#mp-}
    printf '%s_PASSWORD_%s=%s\n' "$var" "${name^^}" "$(mp_secret "$secret-$user")"
  done
}

# Write rig.env from the services whose processes are running (after `up` that is every service
# it brought up), plus the installed tools; remove it when no service runs.
mp_write_env() {
  local s lines=()
  for s in "${SERVICES[@]}"; do
    if "${s}_running"; then
      mapfile -t -O "${#lines[@]}" lines < <("${s}_env")
    fi
  done
  mkdir -p "$MP_RUN_ROOT"
  if ((${#lines[@]} == 0)); then
    rm -f "$MP_ENV_FILE"
    return 0
  fi
  lines+=("RIG_ADDRESS=$MP_RIG_ADDRESS")
  [[ -s $(mp_pki_dir)/ca.crt ]] && lines+=("RIG_CA_CERT=$(mp_pki_dir)/ca.crt")
  for s in "${TOOLS[@]}"; do
    if "${s}_installed"; then
      mapfile -t -O "${#lines[@]}" lines < <("${s}_env")
    fi
  done
  # Mode 600: it holds the rig's passwords.
  (
    umask 077
    printf '%s\n' "${lines[@]}" >"$MP_ENV_FILE.tmp"
  )
  mv -f "$MP_ENV_FILE.tmp" "$MP_ENV_FILE"
}

# The bridge MP_RIG_BRIDGE with MP_RIG_ADDRESS, made before any service starts (they listen on
# it). Creating an interface needs root: the rig does not run without it.
mp_network_up() {
  [[ $(id -u) -eq 0 ]] || mp_die "the rig needs root: it creates the bridge $MP_RIG_BRIDGE for its services and pods, and runs a Kubernetes node (run as root, e.g. sudo make up)"
  mp_require_cmd ip iproute2
  if ! ip link show "$MP_RIG_BRIDGE" >/dev/null 2>&1; then
    ip link add "$MP_RIG_BRIDGE" type bridge || return 1
  fi
  if ! ip -4 addr show dev "$MP_RIG_BRIDGE" | grep -q "inet $MP_RIG_ADDRESS/"; then
    ip addr add "$MP_RIG_ADDRESS/$MP_RIG_PREFIX" dev "$MP_RIG_BRIDGE" || return 1
  fi
  ip link set "$MP_RIG_BRIDGE" up
  ip route replace "$MP_RIG_SERVICE_CIDR" dev "$MP_RIG_BRIDGE"
  # Pods reach this machine, each other and Services; nothing they send is forwarded off it.
  mp_require_cmd iptables iptables
  iptables -C FORWARD "${_mp_rig_egress[@]}" 2>/dev/null ||
    iptables -I FORWARD 1 "${_mp_rig_egress[@]}" || return 1
}
_mp_rig_egress=(-i "$MP_RIG_BRIDGE" ! -o "$MP_RIG_BRIDGE" -j REJECT)

# Removes the bridge (once no service runs: they listen on it).
mp_network_down() {
  while iptables -C FORWARD "${_mp_rig_egress[@]}" 2>/dev/null; do
    iptables -D FORWARD "${_mp_rig_egress[@]}" || break
  done
  if ip link show "$MP_RIG_BRIDGE" >/dev/null 2>&1; then
    ip link delete "$MP_RIG_BRIDGE"
  fi
  return 0
}

mp_load_all_tools() {
  local t file
  for t in "${TOOLS[@]}"; do
    file=$MP_DEVSTACK_DIR/tools/$t.sh
    [[ -f $file ]] || mp_die "unknown tool '$t' (no $file)"
    # shellcheck source=/dev/null
    . "$file"
  done
}

# Services and tools (mp_write_env needs both).
mp_load_all_services() {
  local s
  for s in "${SERVICES[@]}"; do mp_load_service "$s"; done
  mp_load_all_tools
}
