# shellcheck shell=bash
# A Kubernetes node on this machine, for the control plane of kube.sh: containerd (Debian) with
# runc and the CNI bridge plugin, kubelet, kube-scheduler and kube-proxy (iptables mode) built
# from the wrapper module devstack/kube, one node named $NODE_NAME, and the cluster DNS: CoreDNS
# built from the wrapper module devstack/coredns (only the plugins used), a process of this
# machine answering on $MP_RIG_ADDRESS:53, which the kubelet gives pods as their nameserver.
# It serves cluster.local from the API server (its own identity, read-only RBAC) and answers
# NXDOMAIN for every other name: nothing is forwarded off the machine. Starts after kube (the
# control plane).
#
# Nothing can be pulled here: the sandbox ("pause") image is built from devstack/node/pause with
# umoci and imported into containerd; pods use imagePullPolicy Never.
#
# Network: pods get addresses of $NODE_POD_CIDR on the rig's bridge $MP_RIG_BRIDGE (lib.sh makes
# it, with $MP_RIG_ADDRESS, before any service starts), host-local IPAM; the host is their gateway
# and nothing is masqueraded: pod traffic reaches only this machine (the services listening on
# $MP_RIG_ADDRESS), its bridge, pods and Services.
#
# Health: the Node is Ready and schedulable, a probe pod (the pause program answering HTTP)
# answers through the pod network, and CoreDNS is ready (its view of the API server synced).
#
# Root is required (containerd, kubelet, bridges, iptables). The VM lacks CAP_SYS_RESOURCE:
# containerd's CRI plugin runs with restrict_oom_score_adj. cgroup v1: kubelet with
# failCgroupV1: false and the cgroupfs driver.
# See the conventions at the top of lib.sh.

NODE_NAME=devstack-node
# Pods get addresses on the rig's bridge (lib.sh), which is their gateway.
NODE_POD_CIDR=10.244.0.0/24
NODE_KUBELET_PORT=10250
NODE_IMAGE_PAUSE=localhost/message-pipeline/pause:v1
# CoreDNS's readiness endpoint (loopback only).
NODE_DNS_READY=127.0.0.1:8181
# shellcheck disable=SC2034 # read by devstack/up through ${NAME}_START_TIMEOUT
NODE_START_TIMEOUT=120

_node_build() { mp_build_dir node "$KUBE_VERSION"; }
_node_bin() { printf '%s/bin/%s\n' "$(_node_build)" "$1"; }
_node_run() { mp_run_dir node; }
_node_sock() { printf '%s/containerd/containerd.sock\n' "$(_node_run)"; }
# The kubelet is the main process (node.pid, node.log), as devstack/status expects.
_node_pidfile() { printf '%s/%s.pid\n' "$(_node_run)" "${1/#kubelet/node}"; }
_node_logfile() { printf '%s/%s.log\n' "$(_node_run)" "${1/#kubelet/node}"; }
_node_marker() {
  case $1 in
    containerd) printf -- '--config %s/containerd/config.toml\n' "$(_node_run)" ;;
    kubelet) printf -- '--config=%s/kubelet.yaml\n' "$(_node_run)" ;;
    scheduler) printf -- '--kubeconfig=%s/scheduler.kubeconfig\n' "$(_node_run)" ;;
    proxy) printf -- '--kubeconfig=%s/proxy.kubeconfig\n' "$(_node_run)" ;;
    dns) printf -- '-conf %s/Corefile\n' "$(_node_run)" ;;
  esac
}
_node_proc_running() { mp_pid_running "$(_node_pidfile "$1")" "$(_node_marker "$1")"; }
_node_kubectl() { "$(_kube_bin kubectl)" --kubeconfig "$(_kube_kubeconfig)" "$@"; }
_node_ctr() { ctr --address "$(_node_sock)" --namespace k8s.io "$@"; }

node_address() { printf '%s (node %s)\n' "$MP_RIG_ADDRESS" "$NODE_NAME"; }
node_log() { _node_logfile kubelet; }
node_env() { printf 'NODE_NAME=%s\nNODE_ADDRESS=%s\n' "$NODE_NAME" "$MP_RIG_ADDRESS"; }

node_install() {
  local build hash src=$MP_DEVSTACK_DIR/kube pause_src=$MP_DEVSTACK_DIR/node/pause
  local dns_src=$MP_DEVSTACK_DIR/coredns
  [[ $(id -u) -eq 0 ]] || mp_die "node: needs root (containerd, kubelet, a bridge, iptables)"
  mp_require_cmd containerd containerd
  mp_require_cmd runc runc
  mp_require_cmd /usr/lib/cni/bridge containernetworking-plugins
  mp_require_cmd umoci umoci
  mp_require_cmd skopeo skopeo
  mp_require_cmd iptables iptables
  mp_require_cmd ip iproute2
  build=$(_node_build)
  # kubelet, kube-scheduler and kube-proxy come from the control plane's build (one go build for
  # all of Kubernetes' binaries); a stamp check when it is there.
  kube_install || return 1
  # "node-v4" stands for the recipe below: change it when changing the recipe.
  hash=$(mp_inputs_hash "$src/go.mod" "$src/go.sum" "$(_kube_build)/.inputs" "$pause_src/go.mod" \
    "$pause_src/main.go" "$dns_src/go.mod" "$dns_src/go.sum" "$dns_src/main.go" <(echo node-v4))
  if [[ -x $build/bin/kubelet && -x $build/bin/coredns && -s $build/images/pause.tar ]] &&
    mp_stamp_ok "$build" "$hash"; then
    return 0
  fi
  mp_log "node: building CoreDNS and the pause image into $build (~1 min with a warm Go cache, ~3 min cold)"
  rm -rf "$build/bin.tmp" "$build/images"
  mkdir -p "$build/bin.tmp" "$build/images"
  local b
  for b in kubelet kube-scheduler kube-proxy; do
    cp "$(_kube_build)/bin/$b" "$build/bin.tmp/$b" || return 1
  done
  (cd "$pause_src" && mp_run_logged "$build/pause.log" env CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" \
    -o "$build/bin.tmp/pause" .) || return 1
  (cd "$dns_src" && mp_run_logged "$build/coredns.log" env CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" \
    -o "$build/bin.tmp/coredns" .) || return 1
  # The image: one layer holding /pause, run as nobody (65535).
  local img=$build/images/work
  rm -rf "$img"
  mkdir -p "$img"
  {
    umoci init --layout "$img/oci" &&
      umoci new --image "$img/oci:pause" &&
      umoci unpack --image "$img/oci:pause" "$img/bundle" &&
      cp "$build/bin.tmp/pause" "$img/bundle/rootfs/pause" &&
      umoci repack --image "$img/oci:pause" "$img/bundle" &&
      umoci config --image "$img/oci:pause" --config.entrypoint /pause --config.user 65535:65535 &&
      skopeo copy --quiet "oci:$img/oci:pause" "docker-archive:$build/images/pause.tar:$NODE_IMAGE_PAUSE"
  } >"$build/image.log" 2>&1 || {
    mp_log "node: building the pause image failed (see $build/image.log)"
    tail -n 20 "$build/image.log" >&2
    return 1
  }
  rm -rf "$img"
  rm -rf "${build:?}/bin"
  mv "$build/bin.tmp" "$build/bin"
  mp_stamp_write "$build" "$hash"
}

# --- certificates, kubeconfigs, configs ---------------------------------------------------------

_node_pki() {
  local ext_client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  _kube_ensure_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$ext_client"
  _kube_ensure_cert kubelet-serving "/CN=$NODE_NAME" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$MP_RIG_ADDRESS,IP:127.0.0.1,DNS:$NODE_NAME"
  _kube_ensure_cert scheduler "/CN=system:kube-scheduler" "$ext_client"
  _kube_ensure_cert proxy "/CN=system:kube-proxy" "$ext_client"
  _kube_ensure_cert coredns "/CN=devstack:coredns" "$ext_client"
}

_node_configs() {
  local run pki
  run=$(_node_run)
  pki=$(_kube_pki)
  mkdir -p "$run/containerd" "$run/cni/net.d" "$run/kubelet"
  _kube_write_kubeconfig "$run/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
  _kube_write_kubeconfig "$run/scheduler.kubeconfig" system:kube-scheduler scheduler
  _kube_write_kubeconfig "$run/proxy.kubeconfig" system:kube-proxy proxy
  _kube_write_kubeconfig "$run/coredns.kubeconfig" devstack:coredns coredns
  # Two zones: the cluster's from the API server, and every other name answered NXDOMAIN (no
  # forwarding: pod traffic stays on this machine).
  cat >"$run/Corefile" <<EOF
cluster.local:53 {
  bind $MP_RIG_ADDRESS
  errors
  ready $NODE_DNS_READY
  kubernetes cluster.local {
    kubeconfig $run/coredns.kubeconfig
    pods disabled
  }
  cache 30
}
.:53 {
  bind $MP_RIG_ADDRESS
  errors
  template ANY ANY {
    rcode NXDOMAIN
  }
}
EOF
  cat >"$run/containerd/config.toml" <<EOF
version = 2
root = "$run/containerd/root"
state = "$run/containerd/state"
[grpc]
  address = "$(_node_sock)"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$NODE_IMAGE_PAUSE"
  # The VM lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$run/cni/net.d"
EOF
  cat >"$run/cni/net.d/10-devstack.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "devstack",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$MP_RIG_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$MP_RIG_ADDRESS"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$run/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$run/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $MP_RIG_ADDRESS
port: $NODE_KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
containerRuntimeEndpoint: unix://$(_node_sock)
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$MP_RIG_ADDRESS]
resolvConf: /etc/resolv.conf
podCIDR: $NODE_POD_CIDR
maxPods: 60
serializeImagePulls: false
# A shared development disk: evict only when it is really full, and never collect the
# locally built images (they cannot be pulled back).
evictionHard: {memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
}

# --- processes ---------------------------------------------------------------------------------

node_running() {
  _node_proc_running containerd && _node_proc_running kubelet && _node_proc_running scheduler &&
    _node_proc_running proxy && _node_proc_running dns
}

# What CoreDNS may read: Services, EndpointSlices and Namespaces, nothing else.
_node_dns_rbac() {
  _node_kubectl apply --server-side --field-manager=devstack -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: devstack:coredns
rules:
- apiGroups: [""]
  resources: [services, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: devstack:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: devstack:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: devstack:coredns
EOF
}

# Host settings the node changes, saved before the first change so `down` can put them back
# (kube-proxy sets route_localnet for NodePorts on loopback).
_node_sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet)

_node_host_network() {
  local saved k
  saved=$(_node_run)/sysctls.orig
  if [[ ! -s $saved ]]; then
    for k in "${_node_sysctls[@]}"; do
      sysctl -n "$k" >/dev/null 2>&1 && printf '%s=%s\n' "$k" "$(sysctl -n "$k")"
    done >"$saved.tmp" 2>/dev/null
    mv -f "$saved.tmp" "$saved"
  fi
  modprobe overlay 2>/dev/null || true
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  ip link show "$MP_RIG_BRIDGE" >/dev/null 2>&1 || {
    mp_log "node: the rig's bridge $MP_RIG_BRIDGE is missing (devstack/up makes it)"
    return 1
  }
}

_node_probe_pod() {
  _node_kubectl apply --server-side --field-manager=devstack -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: devstack-probe
  namespace: default
  labels: {app.kubernetes.io/name: devstack-probe}
spec:
  nodeName: $NODE_NAME
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: probe
    image: $NODE_IMAGE_PAUSE
    imagePullPolicy: Never
    command: ["/pause", "-http", ":8080"]
    securityContext:
      runAsNonRoot: true
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
    readinessProbe:
      httpGet: {path: /, port: 8080}
      periodSeconds: 2
EOF
}

# Starts containerd unless it runs, and waits until it answers.
_node_containerd() {
  local i
  _node_proc_running containerd && return 0
  mp_daemon_start "$(_node_pidfile containerd)" "$(_node_logfile containerd)" \
    containerd --config "$(_node_run)/containerd/config.toml" || return 1
  for ((i = 0; i < 100; i++)); do
    _node_ctr version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  mp_log "node: containerd does not answer on $(_node_sock)"
  return 1
}

# The pause image in containerd, imported again whenever the build made a new one (same name,
# new program) or it is gone (the kubelet removes unused images under disk pressure).
_node_pause_image() {
  local run build pause_sum
  run=$(_node_run)
  build=$(_node_build)
  pause_sum=$(sha256sum <"$build/images/pause.tar")
  if [[ $(cat "$run/pause.imported" 2>/dev/null) != "$pause_sum" ]] ||
    ! _node_ctr images check "name==$NODE_IMAGE_PAUSE" 2>/dev/null | grep -q complete; then
    _node_ctr images import "$build/images/pause.tar" >/dev/null || return 1
    printf '%s\n' "$pause_sum" >"$run/pause.imported"
  fi
}

node_start() {
  local run build
  if node_running; then
    # Running but not healthy: after disk pressure the pause image may be gone and the probe
    # pod ended; both come back.
    _node_pause_image || return 1
    _node_probe_reset
    return 0
  fi
  kube_running || mp_die "node: the control plane is not running (devstack/up kube node)"
  # up starts services concurrently: the node registers once the apiserver answers.
  mp_wait_for_health kube "$KUBE_START_TIMEOUT" || return 1
  run=$(_node_run)
  build=$(_node_build)
  _node_pki || return 1
  _node_configs
  _node_host_network || return 1

  _node_containerd || return 1
  _node_pause_image || return 1

  if ! _node_proc_running kubelet; then
    mp_daemon_start "$(_node_pidfile kubelet)" "$(_node_logfile kubelet)" \
      "$(_node_bin kubelet)" --config="$run/kubelet.yaml" --kubeconfig="$run/kubelet.kubeconfig" \
      --root-dir="$run/kubelet" --hostname-override="$NODE_NAME" --node-ip="$MP_RIG_ADDRESS" || return 1
  fi
  if ! _node_proc_running scheduler; then
    mp_daemon_start "$(_node_pidfile scheduler)" "$(_node_logfile scheduler)" \
      "$(_node_bin kube-scheduler)" --kubeconfig="$run/scheduler.kubeconfig" \
      --authentication-kubeconfig="$run/scheduler.kubeconfig" --authorization-kubeconfig="$run/scheduler.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false || return 1
  fi
  if ! _node_proc_running proxy; then
    mp_daemon_start "$(_node_pidfile proxy)" "$(_node_logfile proxy)" \
      "$(_node_bin kube-proxy)" --kubeconfig="$run/proxy.kubeconfig" --hostname-override="$NODE_NAME" \
      --proxy-mode=iptables --cluster-cidr="$NODE_POD_CIDR" --conntrack-max-per-core=0 \
      --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 || return 1
  fi
  if ! _node_proc_running dns; then
    _node_dns_rbac || {
      mp_log "node: applying CoreDNS's RBAC failed"
      return 1
    }
    mp_daemon_start "$(_node_pidfile dns)" "$(_node_logfile dns)" \
      "$(_node_bin coredns)" -conf "$run/Corefile" || return 1
  fi
}

# The probe pod deleted when it has ended (it is made again by the next health check).
_node_probe_reset() {
  local phase
  phase=$(_node_kubectl get pod -n default devstack-probe -o jsonpath='{.status.phase}' 2>/dev/null) || return 0
  if [[ $phase == Succeeded || $phase == Failed ]]; then
    _node_kubectl delete pod -n default devstack-probe --wait=false >/dev/null 2>&1 || true
  fi
}

node_health() {
  local ready ip
  node_running || return 1
  ready=$(_node_kubectl get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || return 1
  [[ $ready == True ]] || return 1
  # Schedulable: the node lifecycle controller has lifted the taint the kubelet registers with.
  [[ $(_node_kubectl get node "$NODE_NAME" -o jsonpath='{.spec.taints[*].key}' 2>/dev/null) != *not-ready* ]] ||
    return 1
  ip=$(_node_kubectl get pod -n default devstack-probe -o jsonpath='{.status.podIP}' 2>/dev/null) || ip=
  if [[ -z $ip ]]; then
    _node_probe_pod >/dev/null 2>&1 || true
    return 1
  fi
  [[ $(curl -sS --max-time 2 "http://$ip:8080/" 2>/dev/null) == ok ]] || return 1
  curl -fsS --max-time 2 "http://$NODE_DNS_READY/ready" >/dev/null 2>&1
}

# Stops the processes, then removes what they left on the host: pod sandboxes and containers,
# mounts under the kubelet's root, network namespaces, iptables chains, cgroups (the bridge is
# the rig's: down removes it with the last service).
node_stop() {
  local run task ns m
  run=$(_node_run)
  mp_daemon_stop "$(_node_pidfile dns)" "$(_node_marker dns)" TERM 10
  mp_daemon_stop "$(_node_pidfile proxy)" "$(_node_marker proxy)" TERM 10
  mp_daemon_stop "$(_node_pidfile scheduler)" "$(_node_marker scheduler)" TERM 10
  mp_daemon_stop "$(_node_pidfile kubelet)" "$(_node_marker kubelet)" TERM 20
  # Containers outlive a containerd that crashed (their shims keep running): start it again to
  # remove them.
  if [[ -s $run/containerd/config.toml && -d $run/containerd/state ]] && _node_containerd; then
    for task in $(_node_ctr tasks ls -q 2>/dev/null); do
      _node_ctr tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for task in $(_node_ctr tasks ls -q 2>/dev/null); do
      _node_ctr tasks delete -f "$task" >/dev/null 2>&1 || true
    done
    for task in $(_node_ctr containers ls -q 2>/dev/null); do
      _node_ctr containers delete "$task" >/dev/null 2>&1 || true
    done
  fi
  mp_daemon_stop "$(_node_pidfile containerd)" "$(_node_marker containerd)" TERM 20
  # Mounts the kubelet and containerd made under the rig's run dir (deepest first).
  if [[ -d $run ]]; then
    while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done < <(awk -v p="$run/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r)
  fi
  for ns in /var/run/netns/cni-*; do
    [[ -e $ns ]] && ip netns delete "$(basename "$ns")" 2>/dev/null
  done
  if [[ -x $(_node_bin kube-proxy) ]]; then
    "$(_node_bin kube-proxy)" --cleanup >/dev/null 2>&1 || true
  fi
  _node_iptables_cleanup
  _node_cgroups_cleanup
  if [[ -s $run/sysctls.orig ]]; then
    # shellcheck disable=SC2046 # one KEY=VALUE argument per line
    sysctl -qw $(<"$run/sysctls.orig") 2>/dev/null || true
    rm -f "$run/sysctls.orig"
  fi
  return 0
}

# The chains the kubelet makes, IPv4 and IPv6 (kube-proxy --cleanup removes its own).
_node_iptables_cleanup() {
  local cmd table chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-PROXY-CANARY KUBE-IPTABLES-HINT; do
        "$cmd" -t "$table" -S "$chain" >/dev/null 2>&1 || continue
        "$cmd" -t "$table" -S | awk -v c="$chain" '$1 == "-A" && $0 ~ "-j " c "( |$)" { $1 = "-D"; print }' |
          while read -r rule; do
            # shellcheck disable=SC2086 # the rule is a list of arguments
            "$cmd" -t "$table" $rule 2>/dev/null || true
          done
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# The kubelet's /kubepods hierarchy in every cgroup v1 controller (empty once the pods are gone).
_node_cgroups_cleanup() {
  local root
  for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d $root ]] || continue
    find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}
