#!/usr/bin/env bash
# tests/run-all.sh: every test of wsechod, in one command (README.md "Test").
#
# Stages, each run even if an earlier one failed, with a summary at the end:
#   lint       cargo fmt --check, cargo clippy -D warnings, shellcheck and pyflakes of our scripts
#   test       cargo test --locked (unit + integration; promtool and prometheus from Debian)
#   monitoring the shipped Grafana dashboard and alert rules: promtool check/test, then every
#              query against the release daemon scraped by a real Prometheus
#   man        man pages match their Markdown sources and render without warnings
#   autobahn   Autobahn|Testsuite sections 1-13 against the release binary, shipped config
#   http2      WebSockets over HTTP/2 (h2c) with Python's h2: echo, statuses, streams, drain,
#              keepalive and hostile HTTP/2, against the release binary
#   browser    the console page, permessage-deflate and HTTP/2 in Debian's headless Chromium;
#              close codes seen by Node's ws, directly and through HAProxy and nginx
#   fuzz       the fuzz targets for a bounded time (FUZZ_SECONDS, default 60)
#   examples   the shipped HAProxy and Kubernetes examples, checked for form: haproxy -c,
#              kubernetes-validate (PyPI, in a venv in the cache), the daemon's --check-config
#   deb        the .deb with cargo-deb, then lintian: no error, no warning
#   e2e        real systemd in systemd-nspawn: apt install, reload, drain, upgrade, purge
#   fleet      the shipped HAProxy example run for real in front of three instances under
#              systemd: 200 clients echoing while each instance restarts in turn
#
# Needs root on Debian 12 (it installs Debian packages it lacks). Slow parts are cached
# under ${XDG_CACHE_HOME:-~/.cache}/wsechod. Ends with "run-all: N passed, N failed".
# Run a subset with e.g. `tests/run-all.sh test man`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD

stages=(lint test monitoring man autobahn http2 browser fuzz examples deb e2e fleet)
if (($# > 0)); then stages=("$@"); fi
passed=0 failed=0 failures=()

log() { printf '\n==> %s\n' "$*"; }

# Debian packages the stages need; installed once, without starting any service.
deps() {
  local pkgs=(prometheus lintian debootstrap systemd-container zstd curl pandoc man-db groff-base shellcheck
    python3-pyflakes python3-venv haproxy)
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  # The prometheus and haproxy packages would start services; tests run their own.
  local policy=/usr/sbin/policy-rc.d created=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends "${missing[@]}" >/dev/null
  local rc=$?
  [[ -n $created ]] && rm -f "$policy"
  return $rc
}

stage_lint() {
  cargo fmt --all -- --check &&
    (cd fuzz && cargo fmt --all -- --check) &&
    (cd bench && cargo fmt --all -- --check) &&
    cargo clippy --locked --all-targets -- -D warnings &&
    shellcheck -x tests/run-all.sh tests/autobahn/*.sh tests/browser/*.sh \
      man/render.sh packaging/build-deb.sh bench/run.sh tests/fuzz.sh fuzz/seeds.sh .ci/run &&
    /usr/bin/python3 -m pyflakes tests/e2e tests/monitoring tests/http2 tests/fleet tests/examples tests/pylib
}

stage_test() { cargo test --locked; }

# Two builds, as elsewhere: the example's dev-dependency features must not leak into the
# daemon binary that is tested (and shipped).
stage_monitoring() {
  cargo build --locked --release &&
    cargo build --locked --release --example wsclient &&
    /usr/bin/python3 tests/monitoring/run.py
}

stage_man() { man/render.sh --check; }

stage_autobahn() {
  cargo build --locked --release && tests/autobahn/run.sh target/release/wsechod etc/wsechod.toml
}

# run.py makes (once) a venv with a pinned h2 under the cache and runs itself in it.
stage_http2() { cargo build --locked --release && /usr/bin/python3 tests/http2/run.py; }

stage_browser() {
  cargo build --locked --release && tests/browser/install.sh && node tests/browser/run.mjs
}

# Nothing else builds meanwhile, so the fuzz build may use both CPUs.
stage_fuzz() { CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} tests/fuzz.sh; }

debdir=$root/target/debian
stage_deb() {
  rm -f "$debdir"/wsechod_*.deb
  packaging/build-deb.sh &&
    lintian --fail-on error,warning \
      "$debdir"/wsechod_*.deb &&
    echo "lintian: no errors, no warnings"
}

stage_e2e() { E2E_DEBDIR=$debdir tests/e2e/run.py; }

# The form of the examples; the fleet stage runs the HAProxy one.
stage_examples() { cargo build --locked --release && /usr/bin/python3 tests/examples/run.py; }

# The .deb of the deb stage (built here if that stage did not run).
stage_fleet() {
  compgen -G "$debdir/wsechod_*.deb" >/dev/null || packaging/build-deb.sh || return 1
  cargo build --locked --release --example fleet && E2E_DEBDIR=$debdir tests/fleet/run.py
}

started=$(date +%s)
log "dependencies"
deps || { echo "run-all: installing Debian packages failed"; exit 1; }
# The e2e root file system downloads while cargo compiles.
if [[ " ${stages[*]} " == *" e2e "* || " ${stages[*]} " == *" fleet "* ]]; then
  tests/e2e/run.py --prepare >/tmp/wsechod-e2e-prepare.log 2>&1 &
fi

for s in "${stages[@]}"; do
  log "stage $s"
  t=$(date +%s)
  if "stage_$s"; then
    passed=$((passed + 1))
    echo "stage $s: ok ($(($(date +%s) - t)) s)"
  else
    failed=$((failed + 1))
    failures+=("$s")
    echo "stage $s: FAILED ($(($(date +%s) - t)) s)"
  fi
done
wait

log "summary ($(($(date +%s) - started)) s)"
((failed > 0)) && echo "failed stages: ${failures[*]}"
echo "run-all: $passed passed, $failed failed"
((failed == 0))
