# The commands of the README. The rig (devstack/) keeps its builds, data and logs in
# $(MP_CACHE_DIR), outside the repo, and writes its endpoints to $(MP_CACHE_DIR)/run/rig.env,
# which the tests read.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
MP_CACHE_DIR ?= $(HOME)/.cache/message-pipeline
export MP_CACHE_DIR
# Where cargo builds (CARGO_TARGET_DIR when set, as .ci/run does).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: deps up down status image test test-pods test-rest test-opensearch3 demo-rig demo-bins unit e2e-full check lint fmt bench bench-rebuild bench-api bench-fairness bench-e2e bench-operator bench-peers demo

## The whole pipeline on the rig's node: the operator installed with its chart, a MessagePipeline
## whose workers run as pods, messages through the api-server's Service, and `kubectl get mp -o
## wide` with every condition (e2e/demo.sh says what it shows).
## It takes only what it needs: the rig's demo profile (Kafka, FerretDB, OpenSearch 2.19, the
## control plane, the node, helm) and, beside it, a build of the three binaries the image ships;
## `make up` and `make test` build and start the rest when first run.
demo: deps
	$(MAKE) --no-print-directory -j2 demo-rig demo-bins
	devstack/image $(TARGET_DIR)/debug
	e2e/demo.sh

demo-rig:
	devstack/up --profile demo

demo-bins:
	cargo build -p api-server -p indexer -p operator --bins

## The Debian packages of devstack/packages that are missing (apt-get, as root), and a check of
## the toolchains the machine brings (Go >= 1.24, cargo). Quick when everything is there.
deps:
	devstack/deps

## Start the rig (its first step is deps; builds what is missing, returns when every service
## answers).
up: deps
	devstack/up

## Stop exactly what the rig started.
down:
	devstack/down

## Each service of the rig: address, health, pid, log file.
status:
	devstack/status

## The worker image (the Dockerfile's runtime stage on a Debian base the rig makes, with the
## binaries the tests build) imported into the rig's node; its name goes to run/image.env.
image: up
	cargo test --workspace --no-run
	devstack/image $(TARGET_DIR)/debug

## The test command: the rig up beside formatting and clippy with warnings denied (the rig's
## builds and the Rust build share the cores better than either alone), the worker image on the
## rig's node, then every test of the workspace (on OpenSearch 2.19) in the lanes of
## e2e/test-lanes: those that stop a service of the rig alone, then the pods' lane beside the
## rest, which ends with the search engine's tests again on OpenSearch 3. Each lane's output is
## printed whole when it ends.
test: deps
	$(MAKE) --no-print-directory -j2 up check
	$(MAKE) --no-print-directory image
	cargo test --workspace $$(e2e/test-lanes alone)
	$(MAKE) --no-print-directory -j2 --output-sync=target test-pods test-rest

## The lane of the tests whose workers run as pods on the rig's node (after make image).
test-pods:
	cargo test --workspace $$(e2e/test-lanes pods)

## Every test no other lane names, then the OpenSearch 3 pass.
test-rest:
	cargo test --workspace $$(e2e/test-lanes rest)
	cargo test --workspace --doc
	$(MAKE) --no-print-directory test-opensearch3

## The tests of everything that talks to the search engine, again on the rig's OpenSearch 3 (the
## same tests, ELASTICSEARCH_URL pointing at the other engine): the installer (search_smoke),
## the indexer (all its tests), the API's search, and the operator's reconcile.
test-opensearch3: up
	set -a; . "$${MP_RIG_ENV:-$(MP_CACHE_DIR)/run/rig.env}"; set +a; \
	export ELASTICSEARCH_URL="$$OPENSEARCH3_URL" ELASTICSEARCH_POD_URL="$$OPENSEARCH3_POD_URL"; \
	echo "search engine tests on $$ELASTICSEARCH_URL"; \
	cargo test -p e2e --test search_smoke; \
	cargo test -p indexer --tests; \
	cargo test -p api-server --test search; \
	cargo test -p operator --test reconcile; \
	echo "search engine tests on OpenSearch 3: done"

## Every test that needs no rig: the unit tests of each crate, and the checks of the repository
## itself (the committed CRD, the seed events, document references, the prerequisites list).
## Seconds once built; `make test` runs these too.
unit:
	cargo test --workspace --lib --bins --test seed --test generated --test documents --test prerequisites --test settings_read

## The long cluster scenarios (indexer 1 -> 3 -> 1, a minute of chaos with pods killed at 100+
## writes/s) and the fault suite's long mode (more hang-ups, kill rounds, the rebuild Job killed
## at each phase); not part of `make test`, which runs the suite's short mode. Its image holds
## release builds (the chaos asks for a write rate the debug builds of `make image` do not reach
## on 2 cores). CHAOS_SECS (default 60).
e2e-full: up
	cargo build --release -p api-server -p indexer -p operator
	devstack/image $(TARGET_DIR)/release
	cargo test -p e2e --features full --test cluster_full --test faults -- --nocapture --test-threads 1

## Benchmarks against the rig (release build): indexer throughput vs the raw _bulk ceiling,
## freshness, peak RSS. BENCH_EVENTS (default 200000), BENCH_RATE, BENCH_STEADY_SECS tune it.
bench: up
	cargo bench -p indexer --bench throughput

## indexer rebuild and audit on 200,000 messages vs a raw MongoDB scan and a raw _bulk of the same
## documents, peak RSS. BENCH_DOCS (200000), BENCH_ROUNDS (3) tune it.
bench-rebuild: up
	cargo bench -p indexer --bench rebuild_audit

## api-server create rate vs raw MongoDB insert_one of the same documents, p50/p99, peak RSS, and
## a second api-server tracing every request in the same rounds (traced / untraced).
## BENCH_SECS (default 5), BENCH_ROUNDS (3), BENCH_MAX_CONCURRENCY (32) tune it.
bench-api: up
	cargo bench -p api-server --bench create

## Tenant B's freshness (201 -> returned by its /v1/search) at a trickle, with and without tenant
## A flooding the same api-server at its limit (half the API's capacity), alternating rounds.
## BENCH_SECS (8), BENCH_ROUNDS (3), BENCH_FLOOD_CONCURRENCY (32), BENCH_TRICKLE (20) tune it.
bench-fairness: up
	cargo build --release -p indexer
	cargo bench -p api-server --bench fairness

## End-to-end freshness (201 -> returned by /v1/search) at 1,000 creates/s and the highest rate
## the pipeline sustains with p99 under the refresh interval + 0.5 s.
bench-e2e: up
	cargo build --release -p indexer
	cargo bench -p api-server --bench e2e

## The operator managing 200 MessagePipelines: time to converge, peak RSS, time to delete.
## BENCH_PIPELINES (200), BENCH_STEADY_SECS (60), BENCH_OPERATOR_CONCURRENCY tune it.
bench-operator: up
	cargo bench -p operator --bench pipelines

## The indexer beside Benthos v4 (built by devstack/up) on the same 200,000 changes (creates,
## edits, deletes) from the same topic into the same engine: events/s, peak RSS, CPU seconds,
## and the index checked against the changes after one pass and after a replay of the first half.
## BENCH_EVENTS (200000), BENCH_ROUNDS (3), BENTHOS_BATCH, BENTHOS_MAX_IN_FLIGHT tune it.
bench-peers: up
	cargo bench -p indexer --bench peers

## Static checks only (no rig needed; the build's packages are).
check: deps fmt lint

fmt:
	cargo fmt --all -- --check

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p e2e --all-targets --features full -- -D warnings
	# No function of the workers or the operator (tests aside) longer than clippy.toml allows.
	cargo clippy -p api-server -p indexer -p operator --lib --bins -- -D warnings -D clippy::too_many_lines
