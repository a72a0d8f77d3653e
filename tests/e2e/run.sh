#!/usr/bin/env bash
#
# tests/e2e/run.sh: end-to-end tests of wsechod under a real systemd.
#
# Every case boots its own throw-away container (systemd-nspawn --boot,
# volatile overlay, private network) from a cached Debian minbase rootfs.
# Needs root and a Debian 12 host; installs its host packages on first use.
#
# Usage: tests/e2e/run.sh [CASE_REGEX]   run the cases (all, or those matching)
#        tests/e2e/run.sh --prepare      only host tools + rootfs cache (e.g. in
#                                        the background while cargo builds)
#   E2E_DEBDIR=DIR   directory with the .debs to test (bound at /srv/debs)
#   E2E_KEEP=1       keep the work dir (logs, console logs) after success
#   E2E_CACHE        rootfs cache (default ~/.cache/wsechod)
#
# The last line of output is "e2e: N passed, N failed"; rc != 0 on failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

prepare=""
case ${1:-} in
  --prepare) prepare=1 ;;
  -h | --help)
    sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  -*)
    echo "run.sh: unknown option $1 (see --help)" >&2
    exit 2
    ;;
  *) E2E_ONLY=${1:-${E2E_ONLY:-}} ;;
esac
e2e_init

# --- host tools, then the rootfs in the background --------------------------
t=$(_e2e_now_us)
e2e_host_tools
e2e_log "stage: host tools $(e2e_since "$t") s"

t=$(_e2e_now_us)
e2e_rootfs_start
if [[ -n $prepare ]]; then
  e2e_rootfs_wait
  e2e_log "prepared: rootfs $E2E_ROOTFS ($(e2e_since "$t") s)"
  exit 0
fi

# --- build (while the rootfs is prepared) -----------------------------------
# Phase 2: cargo build --release, package the .deb into E2E_DEBDIR, lintian.
if [[ -z $E2E_DEBDIR ]]; then
  E2E_DEBDIR=$E2E_WORKDIR/debs
  mkdir -p "$E2E_DEBDIR"
fi
chmod 0755 "$E2E_DEBDIR" # readable by apt's _apt user inside the container

e2e_rootfs_wait
e2e_log "stage: rootfs $(e2e_since "$t") s ($E2E_ROOTFS)"

# --- cases ------------------------------------------------------------------

# Infrastructure smoke test: real systemd as PID 1, isolated network,
# read-only deb dir, volatile root, Prometheus in the container netns.
case_smoke() {
  local state out

  # systemd is PID 1 and the boot finished without failed units.
  state=$(C systemctl is-system-running) || true
  e2e_assert_eq "is-system-running" "$state" running
  e2e_assert_eq "container PID 1" "$(C cat /proc/1/comm)" systemd

  # --private-network: only a loopback interface, nothing listening on the
  # daemon's ports yet (curl rc 7 = connection refused).
  out=$(N cat /proc/net/dev | awk -F: 'NR > 2 { gsub(/ /, "", $1); print $1 }' | sort | tr '\n' ' ')
  e2e_assert_eq "network interfaces" "$out" "lo "
  out=0
  N curl -sS --max-time 3 -o /dev/null http://127.0.0.1:9180/metrics 2>/dev/null || out=$?
  e2e_assert_eq "curl 127.0.0.1:9180 exit code" "$out" 7

  # /srv/debs is the host's deb dir, read-only.
  C test -d /srv/debs
  if C touch /srv/debs/.probe 2>/dev/null; then
    e2e_fail "/srv/debs is writable"
  fi

  # --volatile=overlay: writes land in a tmpfs, never in the cached rootfs.
  C sh -c 'echo probe >/etc/e2e-probe'
  [[ ! -e $E2E_ROOTFS/etc/e2e-probe ]] || e2e_fail "write reached the cached rootfs"

  # The things later cases rely on exist in the minbase rootfs.
  C test -x /usr/bin/apt-get
  C test -x /usr/bin/deb-systemd-helper
  C journalctl --no-pager -n 1 >/dev/null

  # Prometheus in the container netns: it scrapes itself (up 1) and the
  # daemon's metrics port, where nothing listens yet (up 0).
  e2e_prometheus_start 9180
  e2e_prom_wait 'up{job="prometheus"}' 1 15
  e2e_prom_wait 'up{job="wsechod"}' 0 5
  e2e_prom_wait 'prometheus_tsdb_head_series' '>0' 5
}

e2e_case smoke case_smoke

e2e_log "total $(e2e_since "$E2E_T0") s"
e2e_summary
