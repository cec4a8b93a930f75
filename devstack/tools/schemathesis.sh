# shellcheck shell=bash
# schemathesis, a client tool (no process): property-based tests of the api-server against its
# own /openapi.json (api-server/tests/openapi_conformance.rs). From PyPI into a virtualenv under
# the build cache, every package pinned by devstack/schemathesis/requirements.txt. Exposed as
# SCHEMATHESIS=<path> in rig.env. See the conventions for tools at the top of lib.sh.

_schemathesis_requirements=$MP_DEVSTACK_DIR/schemathesis/requirements.txt
SCHEMATHESIS_VERSION=$(sed -n 's/^schemathesis==//p' "$_schemathesis_requirements")

_schemathesis_build() { mp_build_dir schemathesis "$SCHEMATHESIS_VERSION"; }
schemathesis_path() { printf '%s/venv/bin/schemathesis\n' "$(_schemathesis_build)"; }
schemathesis_installed() { [[ -x $(schemathesis_path) ]]; }
schemathesis_env() { printf 'SCHEMATHESIS=%s\n' "$(schemathesis_path)"; }

schemathesis_install() {
  local build hash python=/usr/bin/python3
  [[ -n $SCHEMATHESIS_VERSION ]] || mp_die "schemathesis: no schemathesis==VERSION line in $_schemathesis_requirements"
  build=$(_schemathesis_build)
  hash=$(mp_inputs_hash "$_schemathesis_requirements")
  schemathesis_installed && mp_stamp_ok "$build" "$hash" && return 0
  # Debian's Python (python3-venv in devstack/packages), not whatever python3 a PATH finds first.
  [[ -x $python ]] || python=$(command -v python3) || mp_die "schemathesis: python3 is required (devstack/packages)"
  mp_log "schemathesis: installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $build (~1 min)"
  rm -rf "$build/venv"
  mkdir -p "$build"
  mp_run_logged "$build/install.log" "$python" -m venv "$build/venv" || return 1
  mp_run_logged "$build/install.log" "$build/venv/bin/pip" install --no-input --disable-pip-version-check \
    -r "$_schemathesis_requirements" || return 1
  mp_stamp_write "$build" "$hash"
}
