# shellcheck shell=bash
# helm v3, a client tool (no process): the tests render charts/message-pipeline-operator with
# `helm template` and send the result to the rig's API server. Built from the Go module proxy
# through the wrapper module devstack/helm (its go.mod pins the version; v3.19 is built on
# client-go v0.34, the rig's Kubernetes minor). Exposed as HELM=<path> in rig.env.
# See the conventions for tools at the top of lib.sh.

# _helm_required MODULE GO_MOD: the version of MODULE that GO_MOD requires.
_helm_required() {
  awk -v m="$1" '/^[[:space:]]*\/\// { next } { for (i = 1; i < NF; i++) if ($i == m) { print $(i + 1); exit } }' "$2"
}
HELM_VERSION=$(_helm_required helm.sh/helm/v3 "$MP_DEVSTACK_DIR/helm/go.mod")

_helm_build() { mp_build_dir helm "$HELM_VERSION"; }
helm_path() { printf '%s/bin/helm\n' "$(_helm_build)"; }
helm_installed() { [[ -x $(helm_path) ]]; }
helm_env() { printf 'HELM=%s\n' "$(helm_path)"; }

helm_install() {
  local build hash src=$MP_DEVSTACK_DIR/helm ldflags k8s_minor p
  [[ -n $HELM_VERSION ]] || mp_die "helm: cannot read the version from devstack/helm/go.mod"
  command -v go >/dev/null 2>&1 || mp_die "helm: Go >= 1.24 is required (not in Debian 12's packages)"
  build=$(_helm_build)
  # "ldflags-v1" stands for the build recipe below: change it when changing the recipe.
  hash=$(mp_inputs_hash "$src/go.mod" "$src/go.sum" <(echo ldflags-v1))
  helm_installed && mp_stamp_ok "$build" "$hash" && return 0
  mp_log "helm: building helm $HELM_VERSION into $build (a cold build takes ~2 min on 2 cores)"
  # The stamps helm's own Makefile sets: `helm version` reports the first; the Kubernetes version
  # (that of its client-go, v0.N -> 1.N) is what `helm template` and `helm lint` assume for
  # .Capabilities.KubeVersion when no cluster is asked.
  k8s_minor=$(_helm_required k8s.io/client-go "$src/go.mod")
  k8s_minor=${k8s_minor#v0.}
  k8s_minor=${k8s_minor%%.*}
  [[ $k8s_minor =~ ^[0-9]+$ ]] || mp_die "helm: cannot read k8s.io/client-go's version from devstack/helm/go.mod"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
  done
  mkdir -p "$build/bin"
  (cd "$src" && mp_run_logged "$build/install.log" \
    env CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$build/bin/helm.tmp" helm.sh/helm/v3/cmd/helm) || return 1
  mv -f "$build/bin/helm.tmp" "$build/bin/helm"
  mp_stamp_write "$build" "$hash"
}
