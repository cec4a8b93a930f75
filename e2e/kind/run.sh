#!/usr/bin/env bash
# e2e/kind/run.sh: the cluster end-to-end scenarios on a Docker host, in a kind cluster. It runs
# the same test binary as `make test` runs on the rig (e2e/tests/cluster.rs; with E2E_FULL=1
# also e2e/tests/cluster_full.rs), pointed at the kind cluster by an env file in the rig's format:
#
#   1. create a kind cluster (or reuse one of the same name),
#   2. build the image (Dockerfile at the repo root), tag it a second time (a scenario changes a
#      pipeline's image to that name) and load both names into the cluster,
#   3. install Kafka (one KRaft node), MongoDB and Elasticsearch from e2e/kind/manifests/ in one
#      namespace (Pod Security `restricted`),
#   4. port-forward them to this machine: the scenarios read MongoDB, the index and the topics
#      directly (Kafka's second listener is advertised as 127.0.0.1:19092 for this),
#   5. write the env file: kubeconfig, kubectl, helm, the two image names, each service as this
#      machine and as pods reach it (cluster DNS names), the kind network's gateway (pods reach
#      this machine there; the search-outage scenario's proxy listens on it), and
#      SERVICE_ACCESS=port-forward: a ClusterIP is not routed to this machine, so the scenarios
#      reach each api-server Service through the API server's port-forward to its ready
#      endpoints,
#   6. `cargo test -p e2e --test cluster` with MP_RIG_ENV naming that file. Each scenario applies
#      the CRD (server-side) and installs the operator's chart itself, in a namespace of its own.
#
# Needs: rootful Docker on Linux (the install scenario reads the pods' processes in /proc, as it
# does on the rig's node), kind, kubectl, helm 3, curl, and cargo with what the workspace builds
# with (a C toolchain, cmake, pkg-config, libcurl and libssl headers).
# Settings (environment):
#   KIND_CLUSTER        cluster name (default message-pipeline-e2e)
#   E2E_NAMESPACE       namespace of the backing services (default mp-e2e)
#   KEEP_CLUSTER        1: leave the cluster when done (default: delete it if this run created it)
#   TIMEOUT             seconds to wait for each rollout (default 600)
#   MONGODB_LOCAL_PORT  local end of MongoDB's port-forward (default 27117)
#   SEARCH_LOCAL_PORT   local end of Elasticsearch's port-forward (default 19200)
#   E2E_FULL            1: also the long scenarios (cargo feature `full`)
# Exit status 0 only when every scenario passed; on failure the state of the cluster is printed.
#
# The server-side dry-run test (e2e/tests/manifests_dry_run.rs) checks every manifest applied
# here against a real API server, and the rig's install scenario goes through the same
# port-forward path once; this script itself cannot run where there is no Docker engine.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MANIFESTS=$HERE/manifests

CLUSTER=${KIND_CLUSTER:-message-pipeline-e2e}
NS=${E2E_NAMESPACE:-mp-e2e}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
TIMEOUT=${TIMEOUT:-600}
MONGODB_LOCAL_PORT=${MONGODB_LOCAL_PORT:-27117}
SEARCH_LOCAL_PORT=${SEARCH_LOCAL_PORT:-19200}
E2E_FULL=${E2E_FULL:-0}
# kafka.yaml advertises its host listener as 127.0.0.1:19092: the local end must be that port.
KAFKA_LOCAL_PORT=19092
# Two names of one image, only inside the cluster (loaded; imagePullPolicy Never).
IMAGE=message-pipeline:e2e
IMAGE_NEXT=message-pipeline:e2e-next

log() { printf 'kind-e2e: %s\n' "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

for cmd in docker kind kubectl helm cargo curl; do
  command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required and not on PATH"
done
docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer"
[[ $(uname -s) == Linux ]] ||
  die "the scenarios read the pods' processes in /proc: a Linux Docker host is needed"

work=$(mktemp -d)
created_cluster=0
forwards=()
kubeconfig=$work/kubeconfig
kubectl_cluster() { kubectl --kubeconfig "$kubeconfig" "$@"; }
kubectl_ns() { kubectl_cluster -n "$NS" "$@"; }

diagnostics() {
  log "state of the cluster:"
  kubectl_cluster get mp,deployments,pods,services -A -o wide >&2 || true
  kubectl_cluster get events -A --sort-by=.lastTimestamp >&2 || true
  local log_file
  for log_file in "$work"/forward-*.log; do
    [[ -s $log_file ]] && log "$(basename "$log_file"): $(tail -5 "$log_file")"
  done
}

cleanup() {
  local rc=$? pid
  for pid in "${forwards[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((rc != 0)); then
    diagnostics
  fi
  rm -rf "$work"
  if ((created_cluster)) && [[ $KEEP_CLUSTER != 1 ]]; then
    log "deleting kind cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# --- 1. cluster ----------------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 180s
  created_cluster=1
fi
kind get kubeconfig --name "$CLUSTER" >"$kubeconfig"

# --- 2. image ------------------------------------------------------------------------------------
log "building $IMAGE from $ROOT/Dockerfile"
DOCKER_BUILDKIT=1 docker build -t "$IMAGE" "$ROOT"
docker tag "$IMAGE" "$IMAGE_NEXT"
kind load docker-image "$IMAGE" "$IMAGE_NEXT" --name "$CLUSTER"

# --- 3. backing services -------------------------------------------------------------------------
kubectl_cluster create namespace "$NS" --dry-run=client -o yaml | kubectl_cluster apply -f -
kubectl_cluster label namespace "$NS" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
log "installing Kafka, MongoDB and Elasticsearch in $NS"
kubectl_ns apply -f "$MANIFESTS/kafka.yaml" -f "$MANIFESTS/mongodb.yaml" \
  -f "$MANIFESTS/elasticsearch.yaml"
for d in kafka mongodb elasticsearch; do
  kubectl_ns rollout status "deployment/$d" --timeout="${TIMEOUT}s"
done

# --- 4. port-forwards ----------------------------------------------------------------------------
# forward NAME LOCAL REMOTE: `kubectl port-forward` to the Deployment's pod, until it accepts.
forward() {
  local name=$1 local_port=$2 remote_port=$3 i
  kubectl_ns port-forward "deployment/$name" "$local_port:$remote_port" \
    >"$work/forward-$name.log" 2>&1 &
  forwards+=($!)
  for ((i = 0; i < 60; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$local_port") 2>/dev/null; then
      return 0
    fi
    kill -0 "${forwards[-1]}" 2>/dev/null ||
      die "the port-forward to $name exited: $(cat "$work/forward-$name.log")"
    sleep 1
  done
  die "the port-forward to $name: 127.0.0.1:$local_port does not accept connections"
}
forward kafka "$KAFKA_LOCAL_PORT" 19092
forward mongodb "$MONGODB_LOCAL_PORT" 27017
forward elasticsearch "$SEARCH_LOCAL_PORT" 9200
curl -fsS --max-time 70 \
  "http://127.0.0.1:$SEARCH_LOCAL_PORT/_cluster/health?wait_for_status=yellow&timeout=60s" \
  >/dev/null || die "Elasticsearch does not answer through its port-forward"

# --- 5. the env file -----------------------------------------------------------------------------
# Pods reach this machine at the kind network's IPv4 gateway.
gateway=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' |
  tr ' ' '\n' | grep -m1 -E '^[0-9]+(\.[0-9]+){3}$') ||
  die "the docker network 'kind' has no IPv4 gateway"
svc=svc.cluster.local
{
  echo "KUBECONFIG=$kubeconfig"
  echo "KUBECTL=$(command -v kubectl)"
  echo "HELM=$(command -v helm)"
  echo "NODE_NAME=$CLUSTER-control-plane"
  echo "RIG_ADDRESS=$gateway"
  echo "SERVICE_ACCESS=port-forward"
  echo "WORKER_IMAGE=$IMAGE"
  echo "WORKER_IMAGE_NEXT=$IMAGE_NEXT"
  echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_LOCAL_PORT"
  echo "KAFKA_POD_BOOTSTRAP_SERVERS=kafka.$NS.$svc:9092"
  echo "MONGODB_URI=mongodb://127.0.0.1:$MONGODB_LOCAL_PORT/"
  echo "MONGODB_POD_URI=mongodb://mongodb.$NS.$svc:27017/"
  echo "ELASTICSEARCH_URL=http://127.0.0.1:$SEARCH_LOCAL_PORT"
  echo "ELASTICSEARCH_POD_URL=http://elasticsearch.$NS.$svc:9200"
} >"$work/rig.env"

# --- 6. the scenarios ----------------------------------------------------------------------------
args=(-p e2e --test cluster)
if [[ $E2E_FULL == 1 ]]; then
  args+=(--features full --test cluster_full)
fi
log "running the cluster scenarios against kind cluster $CLUSTER"
(cd "$ROOT" && MP_RIG_ENV=$work/rig.env cargo test "${args[@]}" -- --nocapture)
log "PASSED"
