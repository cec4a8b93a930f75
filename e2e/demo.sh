#!/usr/bin/env bash
# e2e/demo.sh (`make demo`, after `make image`): the whole pipeline on the rig's Kubernetes node,
# installed as users install it, and what `kubectl get mp` says about it.
#
# 1. The CRD with `kubectl apply --server-side`; the operator with `helm upgrade --install` of
#    charts/message-pipeline-operator into namespace mp-system, watching namespace demo (a pod
#    with the chart's RBAC and in-cluster config), from the image `make image` imported.
# 2. In namespace demo: the API keys (hashes only) and the MongoDB URI as Secrets, then
#    examples/minimal.yaml with the rig's pod-reachable endpoints (Kafka has one broker, so
#    replication factor 1; OpenSearch one node, so 0 replicas) and the same image.
# 3. Waits until the resource is Ready (its Deployments available, every worker's Lease ready).
# 4. Creates, updates, deletes and searches messages through the api-server's Service, then
#    prints `kubectl get mp -o wide`, every condition and the pods.
# The pipeline stays installed (so it can be looked at); `make down` stops the rig with it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

run_root=${MP_CACHE_DIR:-$HOME/.cache/message-pipeline}/run
set -a
# shellcheck disable=SC1091 # written by devstack/up
. "$run_root/rig.env"
# shellcheck disable=SC1091 # written by devstack/image (make image)
. "$run_root/image.env"
set +a
kubectl() { "$KUBECTL" "$@"; }
helm() { "$HELM" "$@"; }
run=$(mktemp -d "${TMPDIR:-/tmp}/mp-demo.XXXXXX")

say "CRD (server-side apply)"
kubectl apply --server-side --force-conflicts -f crds/messagepipeline.yaml
kubectl wait --for=condition=Established crd/messagepipelines.messagepipeline.io --timeout=60s >/dev/null

ns=demo
name=chat
# Watching only the demo's namespace: the tests' pipelines elsewhere on the rig are not its own.
say "operator: helm upgrade --install, watching namespace $ns (image $WORKER_IMAGE)"
kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns" >/dev/null
helm upgrade --install message-pipeline-operator charts/message-pipeline-operator \
  --namespace mp-system --create-namespace --skip-crds --wait --timeout 180s \
  --set watchNamespace="$ns" \
  --set image.repository="${WORKER_IMAGE%:*}" --set image.tag="${WORKER_IMAGE##*:}" \
  --set image.pullPolicy=Never
kubectl -n mp-system get pods -o wide

say "Secrets in $ns (API key hashes, MongoDB URI)"
key=$(openssl rand -hex 24)
printf -- '- name: demo\n  tenant: demo-tenant\n  sha256: %s\n' "$(printf %s "$key" | sha256sum | cut -d' ' -f1)" >"$run/keys.yaml"
kubectl -n "$ns" create secret generic chat-api-keys --from-file=keys.yaml="$run/keys.yaml" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$ns" create secret generic chat-mongodb --from-literal=uri="$MONGODB_POD_URI" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

say "apply examples/minimal.yaml with the rig's endpoints"
suffix=$(openssl rand -hex 3)
topic=demo-events-$suffix
alias=demo-messages-$suffix
sed -e "s|image: .*|image: $WORKER_IMAGE\n  imagePullPolicy: Never|" \
  -e "s|bootstrapServers: .*|bootstrapServers: $KAFKA_POD_BOOTSTRAP_SERVERS\n    topic: {name: $topic, partitions: 3, replicationFactor: 1}|" \
  -e "s|url: http://elasticsearch.*|url: $ELASTICSEARCH_POD_URL\n    alias: $alias\n    replicas: 0|" \
  -e "s|^  name: chat$|  name: $name\n  annotations: {demo/run: \"$suffix\"}|" \
  -e "s|^  mongodb:$|  mongodb:\n    database: demo_$suffix|" \
  <(grep -v '^#' examples/minimal.yaml) | sed 's/\\n/\n/g' >"$run/pipeline.yaml"
kubectl -n "$ns" delete mp "$name" --ignore-not-found --wait=true >/dev/null
kubectl -n "$ns" apply -f "$run/pipeline.yaml"
t=$SECONDS
kubectl -n "$ns" wait "mp/$name" --for=condition=Ready --timeout=240s
echo "Ready after $((SECONDS - t)) s"

ip=$(kubectl -n "$ns" get service "$name-api" -o jsonpath='{.spec.clusterIP}')
api=http://$ip
call() { # method path [body]
  curl -s -X "$1" "$api$2" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -w '  → HTTP %{http_code}\n' ${3:+-d "$3"}
}
conv=$(cat /proc/sys/kernel/random/uuid)
say "create two messages through the Service $name-api ($api)"
first=$(call POST /v1/messages "{\"conversationId\":\"$conv\",\"senderId\":\"$(cat /proc/sys/kernel/random/uuid)\",\"content\":\"the quarterly planning moves to Thursday\"}")
echo "$first"
id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<<"$first")
[[ -n $id ]] || { echo "demo: the create failed" >&2; exit 1; }
call POST /v1/messages "{\"conversationId\":\"$conv\",\"senderId\":\"$(cat /proc/sys/kernel/random/uuid)\",\"content\":\"bring the figures on Thursday\"}"
say "update the first (If-Match \"1\"), then try again with the stale ETag"
curl -s -X PATCH "$api/v1/messages/$id" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -H 'If-Match: "1"' -d '{"content":"the quarterly planning moves to Friday"}' -w '  → HTTP %{http_code}\n'
curl -s -X PATCH "$api/v1/messages/$id" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -H 'If-Match: "1"' -d '{"content":"lost update"}' -w '  → HTTP %{http_code}\n'
say "search for 'Thursday' (lags writes by the pipeline's freshness: retried until indexed)"
found=
for _ in $(seq 100); do
  found=$(curl -s "$api/v1/search?q=thursday" -H "Authorization: Bearer $key")
  [[ $found == *"bring the figures"* && $found != *"moves to Thursday"* ]] && break
  sleep 0.2
done
echo "$found"
say "delete the first; the conversation lists what is left"
call DELETE "/v1/messages/$id"
call GET "/v1/conversations/$conv/messages"

say "kubectl get mp -o wide"
kubectl -n "$ns" get mp -o wide
say "conditions"
kubectl -n "$ns" get mp "$name" -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' | column -t -s $'\t'
say "pods"
kubectl -n "$ns" get pods -o wide
cat <<EOF

What this shows:
- The operator runs as a pod in mp-system (helm release message-pipeline-operator); it created
  the topics ($topic, $topic.dlq), the index template, index and alias ($alias), and the
  Deployments, Services, PDBs and worker RBAC of '$name' in namespace '$ns'.
- API and INDEXER count the workers whose Leases say ready, of the replicas the spec asks for;
  Ready=True needs the Deployments available (the kubelet's readiness probes) as well.
- LAG is the consumer group behind the topic's end, read by the operator through the Kafka admin
  API. The messages went through the Service $name-api (kube-proxy) to the api-server pods.
EOF
