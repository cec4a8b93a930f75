#!/usr/bin/env bash
# e2e/demo.sh (`make demo`): the whole pipeline on the rig, end to end, and what `kubectl get mp`
# says about it.
#
# 1. Starts the rig, builds the three binaries, installs the CRD.
# 2. Runs the operator against the rig's API server (as its Deployment would, minus the pod).
# 3. Applies examples/minimal.yaml with the rig's endpoints (Kafka has one broker, so replication
#    factor 1; OpenSearch one node, so 0 replicas) and waits for topics and index.
# 4. Starts an api-server and an indexer locally as that pipeline's workers: they hold their Leases
#    on the rig's API server like pods would. There is no kubelet here, so the Deployments the
#    operator created exist but never get pods; the demo says so instead of pretending.
# 5. Creates, updates, deletes and searches messages through the API, then prints
#    `kubectl get mp -o wide` and every condition.
# Everything it started stops on exit; the rig keeps running (`make down` stops it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "rig"
devstack/up
set -a
# shellcheck disable=SC1091 # written by devstack/up
. "${MP_CACHE_DIR:-$HOME/.cache/message-pipeline}/run/rig.env"
set +a
kubectl() { "$KUBECTL" "$@"; }

say "build"
cargo build -q -p api-server -p indexer -p operator
bin=target/debug

run=$(mktemp -d "${TMPDIR:-/tmp}/mp-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo logs: $run"
}
trap cleanup EXIT

ns=demo
name=chat
say "CRD, namespace $ns, Secrets (keys by hash, MongoDB URI)"
kubectl apply --server-side --force-conflicts -f crds/messagepipeline.yaml >/dev/null
kubectl wait --for=condition=Established crd/messagepipelines.messagepipeline.io --timeout=60s >/dev/null
kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns" >/dev/null
key=$(openssl rand -hex 24)
printf -- '- name: demo\n  tenant: demo-tenant\n  sha256: %s\n' "$(printf %s "$key" | sha256sum | cut -d' ' -f1)" >"$run/keys.yaml"
kubectl -n "$ns" create secret generic chat-api-keys --from-file=keys.yaml="$run/keys.yaml" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$ns" create secret generic chat-mongodb --from-literal=uri="$MONGODB_URI" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

say "operator (logs: $run/operator.log)"
WATCH_NAMESPACE=$ns POD_NAMESPACE=$ns POD_NAME=operator-demo OPERATOR_HTTP_ADDR=127.0.0.1:18080 \
  "$bin/operator" >"$run/operator.log" 2>&1 &
pids+=($!)

say "apply examples/minimal.yaml with the rig's endpoints"
suffix=$(openssl rand -hex 3)
topic=demo-events-$suffix
alias=demo-messages-$suffix
sed -e "s|bootstrapServers: .*|bootstrapServers: $KAFKA_BOOTSTRAP_SERVERS\n    topic: {name: $topic, partitions: 3, replicationFactor: 1}|" \
  -e "s|url: http://elasticsearch.*|url: $ELASTICSEARCH_URL\n    alias: $alias\n    replicas: 0|" \
  -e "s|^  name: chat$|  name: $name\n  annotations: {demo/run: \"$suffix\"}|" \
  <(grep -v '^#' examples/minimal.yaml) | sed 's/\\n/\n/g' >"$run/pipeline.yaml"
kubectl -n "$ns" delete mp "$name" --ignore-not-found --wait=true >/dev/null
kubectl -n "$ns" apply -f "$run/pipeline.yaml"
kubectl -n "$ns" wait "mp/$name" --for=condition=TopicsReady --timeout=120s
kubectl -n "$ns" wait "mp/$name" --for=condition=IndexTemplateReady --timeout=120s

say "workers as the pipeline's (logs: $run/api-server.log, $run/indexer.log)"
common=("MP_PIPELINE_NAME=$name" "MP_PIPELINE_NAMESPACE=$ns" "KAFKA_TOPIC=$topic" "ELASTICSEARCH_ALIAS=$alias")
env "${common[@]}" POD_NAME=$name-api-local HTTP_ADDR=127.0.0.1:18081 API_KEYS_FILE="$run/keys.yaml" \
  MONGODB_DATABASE="demo_$suffix" "$bin/api-server" >"$run/api-server.log" 2>&1 &
pids+=($!)
env "${common[@]}" POD_NAME=$name-indexer-local HTTP_ADDR=127.0.0.1:18082 \
  "$bin/indexer" run >"$run/indexer.log" 2>&1 &
pids+=($!)
api=http://127.0.0.1:18081
for _ in $(seq 100); do curl -fs "$api/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "$api/ready" >/dev/null

call() { # method path [body]
  curl -s -X "$1" "$api$2" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -w '  → HTTP %{http_code}\n' ${3:+-d "$3"}
}
conv=$(cat /proc/sys/kernel/random/uuid)
say "create two messages"
first=$(call POST /v1/messages "{\"conversationId\":\"$conv\",\"senderId\":\"$(cat /proc/sys/kernel/random/uuid)\",\"content\":\"the quarterly planning moves to Thursday\"}")
echo "$first"
id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<<"$first")
call POST /v1/messages "{\"conversationId\":\"$conv\",\"senderId\":\"$(cat /proc/sys/kernel/random/uuid)\",\"content\":\"bring the figures on Thursday\"}"
say "update the first (If-Match \"1\"), then try again with the stale ETag"
curl -s -X PATCH "$api/v1/messages/$id" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -H 'If-Match: "1"' -d '{"content":"the quarterly planning moves to Friday"}' -w '  → HTTP %{http_code}\n'
curl -s -X PATCH "$api/v1/messages/$id" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -H 'If-Match: "1"' -d '{"content":"lost update"}' -w '  → HTTP %{http_code}\n'
say "search for 'Thursday' (lags writes by the pipeline's freshness: retried until indexed)"
for _ in $(seq 50); do
  found=$(curl -s "$api/v1/search?q=thursday" -H "Authorization: Bearer $key")
  [[ $found == *"bring the figures"* && $found != *"moves to Thursday"* ]] && break
  sleep 0.2
done
echo "$found"
say "delete the first; the conversation lists what is left"
call DELETE "/v1/messages/$id"
call GET "/v1/conversations/$conv/messages"

say "kubectl get mp -o wide"
sleep 1
kubectl -n "$ns" annotate mp "$name" demo/refresh="$(date +%s)" --overwrite >/dev/null
# The indexer reports ready once librdkafka's first statistics (every 5 s) show Kafka answering.
for _ in $(seq 100); do
  [[ $(kubectl -n "$ns" get mp "$name" -o jsonpath='{.status.workers.indexer.ready}/{.status.workers.api.ready}') == 1/1 ]] && break
  sleep 0.2
done
kubectl -n "$ns" get mp -o wide
say "conditions"
kubectl -n "$ns" get mp "$name" -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' | column -t -s $'\t'
cat <<EOF

What this shows, truthfully:
- LAG is the pipeline's consumer group behind the topic's end, read by the operator through the
  Kafka admin API (the status refreshes every 30 s, and on every worker Lease change).
- The operator created the topics ($topic, $topic.dlq), the index template, index and alias ($alias),
  and the Deployments, Services, PDBs and worker RBAC of '$name' in namespace '$ns'.
- The Deployments have no pods: this rig has an API server but no kubelet. So ApiServerAvailable and
  IndexerAvailable are False and Ready says so. The workers above ran as local processes with the
  pipeline's identity; they hold their Leases, which is why the API and Indexer columns count them
  as live and ready (1 each, of the 2 replicas the spec asks for).
EOF
