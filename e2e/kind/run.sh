#!/usr/bin/env bash
# e2e/kind/run.sh: the end-to-end run on a Docker host, in a kind cluster.
#
#   1. create a kind cluster (or reuse one of the same name),
#   2. build the image (Dockerfile at the repo root) and load it into the cluster,
#   3. install Kafka (one KRaft node), MongoDB and Elasticsearch from e2e/kind/manifests/,
#   4. install the CRD and the operator's chart (watching the run's namespace only),
#   5. create the Secrets and the MessagePipeline (e2e/kind/manifests/pipeline.yaml),
#   6. wait for `Ready`, then a smoke check through a port-forward to the api-server Service:
#      create a message with a word of its own, search for that word until it is found, read it
#      back by id.
#
# Needs: docker (running daemon), kind, kubectl, helm 3, curl, openssl, sha256sum.
# Settings (environment):
#   KIND_CLUSTER   cluster name (default message-pipeline-e2e)
#   E2E_NAMESPACE  namespace of everything the run installs (default mp-e2e)
#   KEEP_CLUSTER   1: leave the cluster when done (default: delete it if this run created it)
#   TIMEOUT        seconds to wait for each rollout and for Ready (default 600)
#   LOCAL_PORT     local end of the port-forward (default 18080)
# Exit status 0 only when every step passed; on failure the state of the namespace is printed.
#
# The server-side dry-run test (e2e/tests/manifests_dry_run.rs) checks every manifest applied
# here against a real API server; this script itself cannot run without Docker.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MANIFESTS=$HERE/manifests
CHART=$ROOT/charts/message-pipeline-operator

CLUSTER=${KIND_CLUSTER:-message-pipeline-e2e}
NS=${E2E_NAMESPACE:-mp-e2e}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
TIMEOUT=${TIMEOUT:-600}
LOCAL_PORT=${LOCAL_PORT:-18080}
# pipeline.yaml names this image (imagePullPolicy: Never): it only exists inside the cluster.
IMAGE=message-pipeline:e2e
PIPELINE=e2e
RELEASE=mpo

log() { printf 'kind-e2e: %s\n' "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

for cmd in docker kind kubectl helm curl openssl sha256sum; do
  command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is required and not on PATH"
done
docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer"

work=$(mktemp -d)
created_cluster=0
port_forward_pid=
kubectl_ns() { kubectl --context "kind-$CLUSTER" -n "$NS" "$@"; }
kubectl_cluster() { kubectl --context "kind-$CLUSTER" "$@"; }

diagnostics() {
  log "state of namespace $NS:"
  kubectl_ns get mp,deployments,pods,services,leases -o wide >&2 || true
  kubectl_ns describe mp "$PIPELINE" >&2 || true
  kubectl_ns get events --sort-by=.lastTimestamp >&2 || true
  local d
  for d in "$RELEASE-message-pipeline-operator" "$PIPELINE-api" "$PIPELINE-indexer"; do
    log "last 50 log lines of deployment/$d:"
    kubectl_ns logs "deployment/$d" --tail=50 --all-containers >&2 || true
  done
}

cleanup() {
  local rc=$?
  if [[ -n $port_forward_pid ]]; then
    kill "$port_forward_pid" 2>/dev/null || true
    wait "$port_forward_pid" 2>/dev/null || true
  fi
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

# --- 2. image ------------------------------------------------------------------------------------
log "building $IMAGE from $ROOT/Dockerfile"
DOCKER_BUILDKIT=1 docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

# --- 3. backing services ---------------------------------------------------------------------------
# The namespace enforces the `restricted` Pod Security Standard: the operator, the workers it
# creates and the backing services must all run non-root without privileges.
kubectl_cluster create namespace "$NS" --dry-run=client -o yaml | kubectl_cluster apply -f -
kubectl_cluster label namespace "$NS" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
log "installing Kafka, MongoDB and Elasticsearch in $NS"
kubectl_ns apply -f "$MANIFESTS/kafka.yaml" -f "$MANIFESTS/mongodb.yaml" -f "$MANIFESTS/elasticsearch.yaml"
for d in kafka mongodb elasticsearch; do
  kubectl_ns rollout status "deployment/$d" --timeout="${TIMEOUT}s"
done

# --- 4. CRD and operator -------------------------------------------------------------------------
# Server-side apply of the CRD first: Helm installs crds/ only on a first install and never
# upgrades it, and a reused cluster may hold an older one.
kubectl_cluster apply --server-side --force-conflicts -f "$CHART/crds/"
kubectl_cluster wait crd/messagepipelines.messagepipeline.io --for=condition=Established --timeout=60s
log "installing the operator chart (release $RELEASE, watching $NS)"
helm upgrade --install "$RELEASE" "$CHART" --kube-context "kind-$CLUSTER" --namespace "$NS" \
  --skip-crds --set image.repository="${IMAGE%%:*}" --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=Never --set watchNamespace="$NS" \
  --wait --timeout "${TIMEOUT}s"

# --- 5. Secrets and the pipeline -----------------------------------------------------------------
# A key made for this run; the Secret holds only its SHA-256.
api_key=$(openssl rand -hex 24)
printf -- '- name: e2e\n  tenant: e2e\n  sha256: %s\n' \
  "$(printf %s "$api_key" | sha256sum | cut -d' ' -f1)" >"$work/keys.yaml"
kubectl_ns create secret generic e2e-api-keys --from-file=keys.yaml="$work/keys.yaml" \
  --dry-run=client -o yaml | kubectl_ns apply -f -
kubectl_ns create secret generic e2e-mongodb --from-literal=uri="mongodb://mongodb.$NS.svc:27017/" \
  --dry-run=client -o yaml | kubectl_ns apply -f -
kubectl_ns apply -f "$MANIFESTS/pipeline.yaml"
log "waiting for MessagePipeline $PIPELINE to be Ready"
kubectl_ns wait "mp/$PIPELINE" --for=condition=Ready --timeout="${TIMEOUT}s"
kubectl_ns get mp "$PIPELINE" -o wide

# --- 6. smoke check ------------------------------------------------------------------------------
kubectl_ns port-forward "service/$PIPELINE-api" "$LOCAL_PORT:80" >"$work/port-forward.log" 2>&1 &
port_forward_pid=$!
base=http://127.0.0.1:$LOCAL_PORT
for ((i = 0; i < 60; i++)); do
  curl -fsS --max-time 2 "$base/ready" >/dev/null 2>&1 && break
  kill -0 "$port_forward_pid" 2>/dev/null || die "port-forward exited: $(cat "$work/port-forward.log")"
  sleep 1
done
curl -fsS --max-time 2 "$base/ready" >/dev/null || die "the api-server is not ready through the port-forward"

word=kind$(openssl rand -hex 6)
conversation=$(cat /proc/sys/kernel/random/uuid)
sender=$(cat /proc/sys/kernel/random/uuid)
auth=(-H "Authorization: Bearer $api_key")
log "creating a message containing '$word'"
created=$(curl -fsS --max-time 10 "${auth[@]}" -H 'Content-Type: application/json' \
  -d "{\"conversationId\":\"$conversation\",\"senderId\":\"$sender\",\"content\":\"hello from kind $word\"}" \
  "$base/v1/messages") || die "POST /v1/messages failed"
id=$(printf '%s' "$created" | sed -n 's/.*"id":"\([0-9a-f-]\{36\}\)".*/\1/p')
[[ -n $id ]] || die "no id in the created message: $created"
curl -fsS --max-time 10 "${auth[@]}" "$base/v1/messages/$id" | grep -q "$word" ||
  die "GET /v1/messages/$id does not return the message"

log "searching for '$word' (through MongoDB -> relay -> Kafka -> indexer -> Elasticsearch)"
found=0
for ((i = 0; i < 60; i++)); do
  if curl -fsS --max-time 5 "${auth[@]}" "$base/v1/search?q=$word" | grep -q "\"$id\""; then
    found=1
    break
  fi
  sleep 1
done
((found)) || die "message $id was not found by search within 60 s"
log "found message $id by search"

kubectl_ns get mp "$PIPELINE" -o wide
log "PASSED"
