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
# The .deb under test (from E2E_DEBDIR, or built here), a second revision of it
# for the upgrade case, and the WebSocket client the cases run in the container
# network.
root=$(cd "$here/../.." && pwd)
# The cases get a directory of their own: cargo-deb deletes other versions from
# the directory it writes to, so the two revisions are built apart and copied.
debs_in=${E2E_DEBDIR:-}
E2E_DEBDIR=$E2E_WORKDIR/debs
mkdir -p "$E2E_DEBDIR" "$E2E_WORKDIR/build"
if [[ -z $debs_in ]]; then
  debs_in=$E2E_WORKDIR/build/v1
  (cd "$root" && packaging/build-deb.sh -o "$debs_in/" >&2)
fi
shopt -s nullglob
debs=("$debs_in"/wsechod_*-1_*.deb)
shopt -u nullglob
if ((${#debs[@]} != 1)); then
  e2e_log "need exactly one wsechod_*-1_*.deb in $debs_in, found ${#debs[@]}"
  exit 1
fi
DEB1=${debs[0]##*/}
DEB2=${DEB1/-1_/-2_}
cp "${debs[0]}" "$E2E_DEBDIR/"
(cd "$root" && packaging/build-deb.sh --no-build --deb-revision 2 -o "$E2E_WORKDIR/build/v2/" >&2)
cp "$E2E_WORKDIR/build/v2/$DEB2" "$E2E_DEBDIR/"
(cd "$root" && cargo build --locked --release --example wsclient >&2)
WSCLIENT=$root/target/release/examples/wsclient
chmod 0755 "$E2E_DEBDIR" # readable by apt's _apt user inside the container
chmod 0644 "$E2E_DEBDIR"/*.deb

e2e_rootfs_wait
e2e_log "stage: rootfs $(e2e_since "$t") s ($E2E_ROOTFS)"

# --- helpers ----------------------------------------------------------------

URL=ws://127.0.0.1:8080/ws

# Installs the first revision and checks the unit came up through READY=1.
install_v1() {
  e2e_install_deb "$DEB1"
  e2e_assert_eq "is-enabled" "$(C systemctl is-enabled wsechod)" enabled
  e2e_assert_eq "is-active" "$(C systemctl is-active wsechod)" active
}

# wsclient in the container network, in the background; sets HOLD_PID, HOLD_LOG.
hold() {
  HOLD_LOG=$E2E_CASE_DIR/hold.log
  e2e_bg "$HOLD_LOG" "$WSCLIENT" hold "$URL" "$@"
  HOLD_PID=$E2E_BG_PID
  e2e_wait_for 10 "wsclient holds its connections" grep -q '^held ' "$HOLD_LOG"
}

_exited() { ! kill -0 "$1" 2>/dev/null; }

# --- cases ------------------------------------------------------------------

# apt install: enabled, active only after READY=1 (StatusText comes from the
# daemon), text and binary echo, the sandbox rated 2.0 or lower.
case_install() {
  local status out score
  install_v1
  e2e_assert_eq "Type" "$(e2e_unit_prop wsechod Type)" notify
  status=$(e2e_unit_prop wsechod StatusText)
  [[ $status == "serving ws://0.0.0.0:8080/ws, metrics http://127.0.0.1:9180/metrics"* ]] ||
    e2e_fail "StatusText is '$status'"
  e2e_log "StatusText: $status"
  out=$(N "$WSCLIENT" echo "$URL") || e2e_fail "echo failed: $out"
  e2e_assert_eq "echo" "$out" "echo ok: text and binary"
  C test -f /etc/wsechod/wsechod.toml
  C test -f /usr/share/man/man8/wsechod.8.gz
  C test -f /usr/share/man/man5/wsechod.toml.5.gz
  out=$(C systemd-analyze security wsechod.service 2>&1) || true
  score=$(sed -n 's/.*Overall exposure level for wsechod.service: \([0-9.]*\).*/\1/p' <<<"$out")
  e2e_log "systemd-analyze security: $score"
  [[ -n $score ]] || e2e_fail "no score in: $out"
  awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || e2e_fail "exposure $score is above 2.0"
}

# A real Prometheus in the container network sees the connections we hold.
case_prometheus() {
  e2e_prometheus_start 9180
  install_v1
  hold 3
  e2e_prom_wait 'wsechod_connections{state="open"}' 3 20
  e2e_prom_wait 'up{job="wsechod"}' 1 5
  N curl -fsS http://127.0.0.1:9180/metrics | promtool check metrics ||
    e2e_fail "promtool check metrics complained"
}

# systemctl reload keeps a session (it goes on echoing) and counts the reload.
case_reload() {
  local before after
  install_v1
  hold 1 --every 100
  e2e_wait_for 10 "echoes flowing" grep -q '^echo 0 3$' "$HOLD_LOG"
  C sed -i 's/^#drain_timeout = .*/drain_timeout = "5s"/' /etc/wsechod/wsechod.toml
  C systemctl reload wsechod
  # systemd 252 returns before the daemon reloaded: wait for the counter.
  e2e_metric_wait 'wsechod_config_reloads_total{result="success"}' 1 10
  e2e_wait_unit wsechod active/running 10
  e2e_journal_wait wsechod 'shutdown.drain_timeout: "10s" -> "5s"' 5
  before=$(grep -c '^echo ' "$HOLD_LOG")
  e2e_wait_for 10 "the session still echoes after the reload" \
    bash -c "(( \$(grep -c '^echo ' '$HOLD_LOG') >= $before + 5 ))"
  _exited "$HOLD_PID" && e2e_fail "the client ended: $(cat "$HOLD_LOG")"
  after=$(e2e_unit_prop wsechod StatusText)
  [[ $after == *"last reload OK"* ]] || e2e_fail "StatusText after reload: $after"
}

# systemctl stop with clients: each gets close 1000, the journal shows the
# drain, the unit ends with Result=success.
case_stop_drains() {
  local closes
  install_v1
  hold 5
  e2e_metric_wait 'wsechod_connections{state="open"}' 5 10
  C systemctl stop wsechod
  e2e_wait_for 10 "wsclient saw every close" _exited "$HOLD_PID"
  wait "$HOLD_PID" || e2e_fail "wsclient failed: $(cat "$HOLD_LOG")"
  closes=$(grep -c '^close 1000 server shutting down$' "$HOLD_LOG")
  e2e_assert_eq "close 1000 frames" "$closes" 5
  e2e_journal_wait wsechod 'SIGTERM: draining' 5
  e2e_journal_wait wsechod 'drain complete, exiting.*closed=5 aborted=0' 5
  e2e_assert_eq "Result" "$(e2e_unit_prop wsechod Result)" success
  e2e_assert_eq "ExecMainStatus" "$(e2e_unit_prop wsechod ExecMainStatus)" 0
}

# kill -9: systemd starts it again.
case_kill9_restarts() {
  local pid
  install_v1
  pid=$(e2e_unit_prop wsechod MainPID)
  C sh -c "kill -9 $pid"
  e2e_wait_for 15 "restarted with a new PID" \
    bash -c "p=\$(nsenter -t $E2E_LEADER -a systemctl show -p MainPID --value wsechod); [ \"\$p\" != 0 ] && [ \"\$p\" != $pid ]"
  e2e_wait_unit wsechod active/running 10
  e2e_assert_eq "NRestarts" "$(e2e_unit_prop wsechod NRestarts)" 1
  N "$WSCLIENT" echo "$URL" >/dev/null || e2e_fail "no echo after the restart"
}

# An invalid config: restart fails, the journal names file and key, and the
# unit stays failed instead of restarting in a loop (exit 78 is exempt).
case_bad_config() {
  install_v1
  C sed -i 's/^\[server\]$/[server]\nmax_conections = 5/' /etc/wsechod/wsechod.toml
  if C systemctl restart wsechod 2>/dev/null; then
    e2e_fail "restart succeeded with an invalid configuration"
  fi
  # shellcheck disable=SC2016 # backquotes are literal: the daemon quotes the key so
  e2e_journal_wait wsechod '/etc/wsechod/wsechod.toml: key `server.max_conections`' 5
  e2e_wait_unit wsechod failed 10
  e2e_assert_eq "ExecMainStatus" "$(e2e_unit_prop wsechod ExecMainStatus)" 78
  # A pending Restart=on-failure would show as SubState auto-restart; failed/failed
  # means systemd scheduled none.
  e2e_assert_eq "SubState" "$(e2e_unit_prop wsechod SubState)" failed
  e2e_assert_eq "NRestarts" "$(e2e_unit_prop wsechod NRestarts)" 0
}

# Upgrading keeps a locally edited conffile and restarts (drains) the daemon.
case_upgrade() {
  local pid version drains want
  install_v1
  C sed -i 's|^#path = "/ws"|path = "/echo"|' /etc/wsechod/wsechod.toml
  C systemctl restart wsechod
  N "$WSCLIENT" echo ws://127.0.0.1:8080/echo >/dev/null || e2e_fail "edited path not served"
  pid=$(e2e_unit_prop wsechod MainPID)
  drains=$(C journalctl -u wsechod -o cat --no-pager | grep -c 'SIGTERM: draining' || true)
  e2e_install_deb "$DEB2"
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's, not the shell's
  version=$(C dpkg-query -W -f='${Version}' wsechod)
  want=${DEB2#wsechod_}
  e2e_assert_eq "installed version" "$version" "${want%%_*}"
  C grep -q '^path = "/echo"' /etc/wsechod/wsechod.toml || e2e_fail "the local edit was lost"
  e2e_wait_unit wsechod active/running 10
  [[ $(e2e_unit_prop wsechod MainPID) != "$pid" ]] || e2e_fail "not restarted on upgrade"
  # The old process drained on the way out.
  e2e_assert_eq "drains in the journal" \
    "$(C journalctl -u wsechod -o cat --no-pager | grep -c 'SIGTERM: draining')" $((drains + 1))
  N "$WSCLIENT" echo ws://127.0.0.1:8080/echo >/dev/null || e2e_fail "no echo after the upgrade"
}

# Remove leaves the conffile and masks the unit; purge leaves nothing.
case_remove_purge() {
  local left
  install_v1
  C apt-get remove -y -q wsechod
  C test ! -e /usr/bin/wsechod || e2e_fail "binary still there after remove"
  C test -f /etc/wsechod/wsechod.toml || e2e_fail "conffile gone after remove"
  e2e_assert_eq "is-enabled after remove" "$(C systemctl is-enabled wsechod 2>&1 || true)" masked
  C apt-get purge -y -q wsechod
  # (The test root file system's own marker, /etc/wsechod-e2e-rootfs, is not ours.)
  left=$(C sh -c 'find /etc /usr /var/lib/systemd -name "*wsechod*" ! -name wsechod-e2e-rootfs 2>/dev/null' || true)
  e2e_assert_eq "files left after purge" "$left" ""
  C test ! -e /etc/wsechod || e2e_fail "/etc/wsechod left after purge"
}

# The shipped socket unit: off by default; enabled, systemd passes the port.
case_socket_activation() {
  install_v1
  e2e_assert_eq "socket enabled by default" "$(C systemctl is-enabled wsechod.socket || true)" disabled
  C systemctl stop wsechod.service
  C systemctl enable --now wsechod.socket
  C systemctl start wsechod.service
  e2e_journal_wait wsechod 'using sockets passed by systemd' 10
  N "$WSCLIENT" echo "$URL" >/dev/null || e2e_fail "no echo over the passed socket"
}

e2e_case install case_install
e2e_case prometheus case_prometheus
e2e_case reload case_reload
e2e_case stop_drains case_stop_drains
e2e_case kill9_restarts case_kill9_restarts
e2e_case bad_config case_bad_config
e2e_case upgrade case_upgrade
e2e_case remove_purge case_remove_purge
e2e_case socket_activation case_socket_activation

e2e_log "total $(e2e_since "$E2E_T0") s"
e2e_summary
