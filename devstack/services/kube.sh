# shellcheck shell=bash
# Kubernetes control plane: etcd 3.6 on loopback (client 127.0.0.1:2379, peer 127.0.0.1:2380),
# kube-apiserver on the rig's bridge address (https://$MP_RIG_ADDRESS:6443, which pods reach
# through the `kubernetes` Service and in-cluster config accepts; Node and RBAC authorization, the
# ServiceAccount and NodeRestriction admission plugins, a client certificate for kubelets) and a
# kube-controller-manager running the controllers in KUBE_CONTROLLERS. The scheduler and the
# kubelet are node.sh's.
# Binaries are built from the Go module proxy through the wrapper modules devstack/kube (kube-
# apiserver, kube-controller-manager, kubectl) and devstack/etcd. Flags follow controller-runtime's
# envtest. A CA, serving and client certificates and the service-account key pair are made with
# openssl under run/kube/pki; the admin identity (CN=admin, O=system:masters) is in the kubeconfig
# $MP_RUN_ROOT/kubeconfig (KUBECONFIG in rig.env), certificates embedded.
# See the conventions at the top of lib.sh.
#
# kube_start returns at once: the apiserver and the controller-manager are started behind a small
# wait loop (for etcd, resp. the apiserver) that then execs them, so every pid file is right from
# the start and a dependency that never comes up makes its dependant exit (and `up` fail).

# _kube_required MODULE GO_MOD: the version of MODULE that GO_MOD requires.
_kube_required() {
  awk -v m="$1" '/^[[:space:]]*\/\// { next } { for (i = 1; i < NF; i++) if ($i == m) { print $(i + 1); exit } }' "$2"
}
# The versions come from the wrapper modules, so a bump there is a new build dir.
KUBE_VERSION=$(_kube_required k8s.io/kubernetes "$MP_DEVSTACK_DIR/kube/go.mod")
KUBE_ETCD_VERSION=$(_kube_required go.etcd.io/etcd/server/v3 "$MP_DEVSTACK_DIR/etcd/go.mod")
KUBE_PORT=6443
KUBE_ETCD_PORT=2379
KUBE_ETCD_PEER_PORT=2380
KUBE_CM_PORT=10257
KUBE_SERVICE_CIDR=$MP_RIG_SERVICE_CIDR
# The controllers kube-controller-manager runs (names as in k8s.io/kubernetes
# cmd/kube-controller-manager/names): workloads (Deployments, ReplicaSets, Jobs, CronJobs, PDB
# status), EndpointSlices for Services, every namespace's `default` ServiceAccount and
# kube-root-ca.crt ConfigMap (in-cluster config), the node lifecycle controller (lifts the
# not-ready taint a kubelet registers with, node.sh), and garbage collection of objects, pods of a
# node that went away, and finished Jobs.
KUBE_CONTROLLERS=garbage-collector-controller,namespace-controller,node-lifecycle-controller,pod-garbage-collector-controller,deployment-controller,replicaset-controller,endpointslice-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,disruption-controller,job-controller,cronjob-controller,ttl-after-finished-controller
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
KUBE_START_TIMEOUT=120
# How long the apiserver waits for etcd, and the controller-manager for the apiserver, before
# giving up (exiting).
KUBE_DEP_WAIT=100

_kube_build() { mp_build_dir kube "$KUBE_VERSION"; }
# Every Kubernetes binary of the rig, the control plane's and the node's, from one go build
# (kube_install); node.sh takes its three from there.
KUBE_BINARIES=(kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy)
_kube_bin() { printf '%s/bin/%s\n' "$(_kube_build)" "$1"; }
_kube_etcd_build() { mp_build_dir etcd "$KUBE_ETCD_VERSION"; }
_kube_etcd_bin() { printf '%s/bin/etcd\n' "$(_kube_etcd_build)"; }
_kube_run() { mp_run_dir kube; }
_kube_pki() { printf '%s/pki\n' "$(_kube_run)"; }
_kube_kubeconfig() { printf '%s/kubeconfig\n' "$MP_RUN_ROOT"; }
_kube_cm_kubeconfig() { printf '%s/controller-manager.kubeconfig\n' "$(_kube_run)"; }

# Pid files, logs and /proc cmdline markers of the three processes. The apiserver is the main one
# (kube.pid, kube.log), as devstack/status expects.
_kube_pidfile() {
  case $1 in
    apiserver) printf '%s/kube.pid\n' "$(_kube_run)" ;;
    *) printf '%s/%s.pid\n' "$(_kube_run)" "$1" ;;
  esac
}
_kube_logfile() {
  case $1 in
    apiserver) printf '%s/kube.log\n' "$(_kube_run)" ;;
    *) printf '%s/%s.log\n' "$(_kube_run)" "$1" ;;
  esac
}
_kube_marker() {
  case $1 in
    etcd) printf -- '--data-dir=%s/etcd-data\n' "$(_kube_run)" ;;
    apiserver) printf -- '--tls-cert-file=%s/apiserver.crt\n' "$(_kube_pki)" ;;
    controller-manager) printf -- '--kubeconfig=%s\n' "$(_kube_cm_kubeconfig)" ;;
  esac
}
_kube_proc_running() { mp_pid_running "$(_kube_pidfile "$1")" "$(_kube_marker "$1")"; }

kube_address() { printf '%s:%s\n' "$MP_RIG_ADDRESS" "$KUBE_PORT"; }
kube_log() { _kube_logfile apiserver; }
kube_env() { printf 'KUBECONFIG=%s\nKUBECTL=%s\n' "$(_kube_kubeconfig)" "$(_kube_bin kubectl)"; }

# The linker flags of every Kubernetes binary the rig builds (node.sh's too): no symbol tables,
# and the version stamps that Kubernetes' own build (hack/lib/version.sh) sets: /version and
# `kubectl version` report them, clients parse gitVersion, and a kubelet reports it as the
# node's version. The date is the tag's (from the Go module proxy).
_kube_ldflags() {
  local date major minor ldflags p
  date=$(cd "$MP_DEVSTACK_DIR/kube" && go list -m -f '{{.Time.Format "2006-01-02T15:04:05Z07:00"}}' k8s.io/kubernetes) || return 1
  major=${KUBE_VERSION#v}
  minor=${major#*.}
  major=${major%%.*}
  minor=${minor%%.*}
  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitCommit= -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  printf '%s\n' "$ldflags"
}

kube_install() {
  local build etcd_build hash src=$MP_DEVSTACK_DIR/kube etcd_src=$MP_DEVSTACK_DIR/etcd
  [[ -n $KUBE_VERSION && -n $KUBE_ETCD_VERSION ]] || mp_die "kube: cannot read versions from devstack/kube/go.mod, devstack/etcd/go.mod"
  command -v go >/dev/null 2>&1 || mp_die "kube: Go >= 1.24 is required (not in Debian 12's packages)"
  mp_require_cmd openssl openssl
  mp_require_cmd curl curl
  # Static binaries (CGO_ENABLED=0); -trimpath and no symbol tables keep them reproducible and small.

  etcd_build=$(_kube_etcd_build)
  hash=$(mp_inputs_hash "$etcd_src/go.mod" "$etcd_src/go.sum" "$etcd_src/main.go")
  if ! [[ -x $etcd_build/bin/etcd ]] || ! mp_stamp_ok "$etcd_build" "$hash"; then
    mp_log "kube: building etcd $KUBE_ETCD_VERSION into $etcd_build (a cold build takes ~1 min)"
    mkdir -p "$etcd_build/bin"
    (cd "$etcd_src" && mp_run_logged "$etcd_build/install.log" \
      env CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$etcd_build/bin/etcd.tmp" .) || return 1
    mv -f "$etcd_build/bin/etcd.tmp" "$etcd_build/bin/etcd"
    mp_stamp_write "$etcd_build" "$hash"
  fi

  build=$(_kube_build)
  # "ldflags-v2" stands for the build recipe below: change it when changing the recipe.
  hash=$(mp_inputs_hash "$src/go.mod" "$src/go.sum" <(echo ldflags-v2))
  local b missing=0
  for b in "${KUBE_BINARIES[@]}"; do
    [[ -x $build/bin/$b ]] || missing=1
  done
  if ((missing)) || ! mp_stamp_ok "$build" "$hash"; then
    mp_log "kube: building ${KUBE_BINARIES[*]} $KUBE_VERSION into $build (a cold build takes ~9 min on 2 cores, up to 2 GiB per compiler process)"
    local ldflags
    ldflags=$(_kube_ldflags) || return 1
    rm -rf "$build/bin.tmp"
    mkdir -p "$build/bin.tmp"
    # One go build for the control plane's and the node's binaries: they share most packages,
    # which one invocation compiles once and links beside each other. The main packages are
    # listed as `tool`s in devstack/kube/go.mod, which keeps their dependencies in go.mod/go.sum.
    (cd "$src" && mp_run_logged "$build/install.log" env CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" \
      -o "$build/bin.tmp/" "${KUBE_BINARIES[@]/#/k8s.io/kubernetes/cmd/}") || return 1
    rm -rf "${build:?}/bin"
    mv "$build/bin.tmp" "$build/bin"
    mp_stamp_write "$build" "$hash"
  fi
}

# --- certificates and kubeconfigs -------------------------------------------------------------

# _kube_cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the rig's CA.
_kube_cert() {
  local pki name=$1 subj=$2 ext=$3
  pki=$(_kube_pki)
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr"
  printf '%s\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 12)" -days 3650 -sha256 -extfile "$pki/$name.ext" \
    -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# _kube_ensure_cert NAME SUBJECT EXTENSIONS: the certificate, made once (for identities added
# after the PKI was first made, e.g. the node's).
_kube_ensure_cert() {
  local pki
  pki=$(_kube_pki)
  [[ -s $pki/$1.crt && -s $pki/$1.key ]] && return 0
  (
    umask 077
    _kube_cert "$@"
  )
  [[ -s $pki/$1.crt ]] || {
    mp_log "kube: openssl failed to make $pki/$1.crt"
    return 1
  }
}

_kube_pki_complete() {
  local pki f
  pki=$(_kube_pki)
  for f in ca.crt ca.key admin.crt admin.key controller-manager.crt \
    controller-manager.key sa.key sa.pub; do
    [[ -s $pki/$f ]] || return 1
  done
}

# Made once; kept across restarts (etcd's data refers to the service-account key).
_kube_make_pki() {
  local pki
  pki=$(_kube_pki)
  _kube_pki_complete && return 0
  mp_log "kube: making a CA, certificates and service-account keys in $pki"
  rm -rf "$pki"
  mkdir -p "$pki"
  chmod 700 "$pki"
  # (set -e does not apply inside a `( ) ||` list: completeness is checked afterwards.)
  (
    umask 077
    openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=devstack-kube-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$pki/ca.crt"
    local client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    _kube_cert admin "/O=system:masters/CN=admin" "$client"
    # With --use-service-account-credentials=false every controller acts as this identity; the
    # garbage collector deletes objects of any kind, so it is in system:masters too.
    _kube_cert controller-manager "/O=system:masters/CN=system:kube-controller-manager" "$client"
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  )
  _kube_pki_complete || {
    mp_log "kube: openssl failed to make the certificates in $pki"
    return 1
  }
}

# The apiserver's serving certificate: its address on the rig's bridge, 10.96.0.1 (the ClusterIP
# of the `kubernetes` Service, first address of KUBE_SERVICE_CIDR) and the Service's names. Made
# again when it does not name the bridge address (a PKI made before the rig had its network).
_kube_apiserver_cert() {
  local pki
  pki=$(_kube_pki)
  if [[ -s $pki/apiserver.crt ]] &&
    ! openssl x509 -noout -ext subjectAltName -in "$pki/apiserver.crt" 2>/dev/null | grep -q "IP Address:$MP_RIG_ADDRESS\(,\|$\)"; then
    rm -f "$pki/apiserver.crt" "$pki/apiserver.key"
  fi
  _kube_ensure_cert apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$MP_RIG_ADDRESS,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
}

# The apiserver's identity towards kubelets (logs, exec, port-forward).
_kube_kubelet_client_cert() {
  _kube_ensure_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
}

# _kube_write_kubeconfig FILE USER CERT_NAME: certificates embedded, so FILE is self-contained.
_kube_write_kubeconfig() {
  local file=$1 user=$2 name=$3 pki
  pki=$(_kube_pki)
  mkdir -p "$(dirname "$file")"
  (
    umask 077
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: devstack
  cluster:
    server: https://$(kube_address)
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$name.crt")
    client-key-data: $(base64 -w0 <"$pki/$name.key")
contexts:
- name: devstack
  context:
    cluster: devstack
    user: $user
current-context: devstack
EOF
  )
  mv -f "$file.tmp" "$file"
}

# --- processes ---------------------------------------------------------------------------------

kube_running() {
  _kube_proc_running etcd && _kube_proc_running apiserver && _kube_proc_running controller-manager
}

# _kube_wait_then_exec URL LIMIT CURL_ARGS... --: prints (NUL-separated) a command prefix that
# waits until URL answers (giving up, exit 1, after LIMIT seconds) and then execs the rest of its
# arguments, keeping the pid that mp_daemon_start recorded.
_kube_wait_then_exec() {
  # shellcheck disable=SC2016 # for the inner shell
  local script='url=$1 deadline=$((SECONDS + $2)); shift 2; args=(); while [ "$1" != -- ]; do args+=("$1"); shift; done; shift; until curl -sf --max-time 2 "${args[@]}" -o /dev/null "$url"; do if [ $SECONDS -ge $deadline ]; then echo "devstack: $url not ready, giving up" >&2; exit 1; fi; sleep 0.3; done; exec "$@"'
  printf '%s\0' bash -c "$script" kube-wait "$@"
}

kube_start() {
  local run pki pid_args etcd_url api_url
  kube_running && return 0
  run=$(_kube_run)
  pki=$(_kube_pki)
  _kube_make_pki || return 1
  _kube_apiserver_cert || return 1
  _kube_kubelet_client_cert || return 1
  _kube_write_kubeconfig "$(_kube_kubeconfig)" admin admin
  _kube_write_kubeconfig "$(_kube_cm_kubeconfig)" system:kube-controller-manager controller-manager
  etcd_url=http://127.0.0.1:$KUBE_ETCD_PORT
  api_url=https://$(kube_address)

  if ! _kube_proc_running etcd; then
    mp_require_port_free 127.0.0.1 "$KUBE_ETCD_PORT" "kube (etcd)"
    mp_require_port_free 127.0.0.1 "$KUBE_ETCD_PEER_PORT" "kube (etcd peer)"
    # Throw-away test data: no fsync.
    mp_daemon_start "$(_kube_pidfile etcd)" "$(_kube_logfile etcd)" \
      "$(_kube_etcd_bin)" --name=devstack --data-dir="$run/etcd-data" \
      --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
      --listen-peer-urls="http://127.0.0.1:$KUBE_ETCD_PEER_PORT" \
      --initial-advertise-peer-urls="http://127.0.0.1:$KUBE_ETCD_PEER_PORT" \
      --initial-cluster="devstack=http://127.0.0.1:$KUBE_ETCD_PEER_PORT" \
      --unsafe-no-fsync --log-level=warn || return 1
  fi

  if ! _kube_proc_running apiserver; then
    mp_require_port_free "$MP_RIG_ADDRESS" "$KUBE_PORT" "kube (kube-apiserver)"
    mapfile -d '' -t pid_args < <(_kube_wait_then_exec "$etcd_url/health" "$KUBE_DEP_WAIT" --)
    mp_daemon_start "$(_kube_pidfile apiserver)" "$(_kube_logfile apiserver)" "${pid_args[@]}" \
      "$(_kube_bin kube-apiserver)" \
      --etcd-servers="$etcd_url" \
      --bind-address="$MP_RIG_ADDRESS" --advertise-address="$MP_RIG_ADDRESS" --secure-port="$KUBE_PORT" \
      --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
      --client-ca-file="$pki/ca.crt" \
      --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction,ServiceAccount \
      --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
      --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
      --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
      --service-cluster-ip-range="$KUBE_SERVICE_CIDR" \
      --allow-privileged=true \
      --cert-dir="$run/apiserver-certs" \
      --profiling=false || return 1
  fi

  if ! _kube_proc_running controller-manager; then
    mp_require_port_free 127.0.0.1 "$KUBE_CM_PORT" "kube (kube-controller-manager)"
    mapfile -d '' -t pid_args < <(_kube_wait_then_exec "$api_url/readyz" "$KUBE_DEP_WAIT" \
      --cacert "$pki/ca.crt" --cert "$pki/controller-manager.crt" --key "$pki/controller-manager.key" --)
    mp_daemon_start "$(_kube_pidfile controller-manager)" "$(_kube_logfile controller-manager)" "${pid_args[@]}" \
      "$(_kube_bin kube-controller-manager)" \
      --kubeconfig="$(_kube_cm_kubeconfig)" \
      --bind-address=127.0.0.1 --secure-port="$KUBE_CM_PORT" --cert-dir="$run/controller-manager-certs" \
      --controllers="$KUBE_CONTROLLERS" \
      --root-ca-file="$pki/ca.crt" \
      --use-service-account-credentials=false --leader-elect=false \
      --profiling=false || return 1
  fi
}

# Health: the apiserver's /readyz (covers etcd) as the admin, and the controller-manager's
# /healthz (self-signed serving certificate).
kube_health() {
  local pki
  pki=$(_kube_pki)
  [[ $(curl -sS --max-time 3 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://$(kube_address)/readyz") == ok ]] &&
    [[ $(curl -sSk --max-time 3 "https://127.0.0.1:$KUBE_CM_PORT/healthz") == ok ]]
}

kube_stop() {
  mp_daemon_stop "$(_kube_pidfile controller-manager)" "$(_kube_marker controller-manager)" TERM 20
  mp_daemon_stop "$(_kube_pidfile apiserver)" "$(_kube_marker apiserver)" TERM 30
  mp_daemon_stop "$(_kube_pidfile etcd)" "$(_kube_marker etcd)" TERM 20
}
