# shellcheck shell=bash
# Benthos v4, a client tool (no process of the rig's): the peer the indexer runs beside in
# `make bench-peers` (indexer/benches/peers.rs), a Kafka → OpenSearch pipeline of Benthos's own
# components. v4.27.0 is the last MIT-licensed release of github.com/benthosdev/benthos before
# the project split (its successors are another licence or have no connectors). Built from the
# Go module proxy through the wrapper module devstack/benthos (its go.mod pins the version; its
# main.go imports only the components the benchmark uses). Exposed as BENTHOS=<path> in rig.env.
# See the conventions for tools at the top of lib.sh.

BENTHOS_VERSION=$(awk '$1 == "require" && $2 == "github.com/benthosdev/benthos/v4" { print $3; exit }' \
  "$MP_DEVSTACK_DIR/benthos/go.mod")

_benthos_build() { mp_build_dir benthos "$BENTHOS_VERSION"; }
benthos_path() { printf '%s/benthos\n' "$(_benthos_build)"; }
benthos_installed() { [[ -x $(benthos_path) ]]; }
benthos_env() { printf 'BENTHOS=%s\n' "$(benthos_path)"; }

benthos_install() {
  local build hash src=$MP_DEVSTACK_DIR/benthos
  [[ -n $BENTHOS_VERSION ]] || mp_die "benthos: cannot read the version from devstack/benthos/go.mod"
  command -v go >/dev/null 2>&1 || mp_die "benthos: Go >= 1.24 is required (not in Debian 12's packages)"
  build=$(_benthos_build)
  hash=$(mp_inputs_hash "$src/go.mod" "$src/go.sum" "$src/main.go")
  benthos_installed && mp_stamp_ok "$build" "$hash" && return 0
  mp_log "benthos: building Benthos $BENTHOS_VERSION into $build"
  mkdir -p "$build"
  (cd "$src" && mp_run_logged "$build/install.log" go build -trimpath -buildvcs=false -ldflags="-s -w" \
    -o "$build/benthos.tmp" .) || return 1
  mv -f "$build/benthos.tmp" "$build/benthos"
  mp_stamp_write "$build" "$hash"
}
