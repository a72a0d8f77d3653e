# shellcheck shell=bash
#
# tests/e2e/lib.sh: bash library for wsechod's end-to-end tests under a real
# systemd (systemd-nspawn --boot on a cached Debian minbase rootfs).
#
# Source it from a `set -euo pipefail` script (see run.sh), then:
#
#   e2e_init                      work dir + EXIT/INT/TERM traps (cleanup)
#   e2e_host_tools                install missing host packages (idempotent)
#   e2e_rootfs_start              build/restore the cached rootfs in the background
#   e2e_rootfs_wait               wait (bounded) for it; sets E2E_ROOTFS
#   e2e_case NAME FUNCTION        run FUNCTION in a fresh container, record result
#   e2e_summary                   print "e2e: N passed, N failed"; rc!=0 on failure
#
# Inside a case function (the container is already booted; errexit is on):
#   C CMD...                      run CMD inside the container (nsenter -a), clean env
#   N CMD...                      run a HOST binary inside the container's netns
#   e2e_bg LOG CMD...             like N, in the background; killed on shutdown
#   e2e_install_deb [DEB...]      apt-get install /srv/debs/<deb> inside the container
#   e2e_put PATH [MODE]           write stdin to PATH inside the container
#   e2e_unit_prop UNIT PROP       systemctl show -p PROP --value UNIT
#   e2e_wait_unit UNIT STATE T    poll until ActiveState (or "Active/Sub") == STATE
#   e2e_journal UNIT              journalctl -u UNIT (short-monotonic)
#   e2e_journal_wait UNIT ERE T   poll until the unit's journal matches ERE
#   e2e_wait_tcp PORT T           poll until 127.0.0.1:PORT accepts (container netns)
#   e2e_wait_for T DESC CMD...    generic bounded poll until CMD succeeds
#   e2e_assert_eq DESC GOT WANT   fail the case unless GOT == WANT
#   e2e_fail MSG                  fail the case (exit from the case subshell)
#   e2e_metric SERIES [PORT]      value of SERIES in /metrics (direct, no Prometheus)
#   e2e_metric_wait SERIES WANT T poll /metrics until SERIES matches WANT
#   e2e_prometheus_start PORT     Prometheus in the container netns, scraping PORT
#   e2e_prom_query EXPR           instant query; prints one value per series
#   e2e_prom_wait EXPR WANT T     poll until the first value matches WANT
#   e2e_log MSG                   timestamped message on stderr
#
# Lower level (used by the above, usable on their own): e2e_rootfs (build or
# reuse in the foreground), e2e_rootfs_path, e2e_rootfs_prune (drop other
# keys), e2e_boot NAME DEBDIR, e2e_shutdown, e2e_prom_targets.
#
# Pitfalls worth knowing when writing cases:
#   * Inside a case, errexit is on, but (bash rule) NOT inside functions called
#     from `if`, `&&`, `||` or `!`. Use e2e_assert_eq / e2e_fail / explicit
#     `|| e2e_fail ...` for checks that must fail the case.
#   * `local x=$(C ...)` hides C's exit status; write `local x; x=$(C ...)`.
#   * `systemctl reload` on systemd 252 returns before the daemon has reloaded
#     (no Type=notify-reload): poll afterwards (e2e_wait_unit, e2e_prom_wait).
#   * Prometheus 2.42 needs 5-6 s for its first scrape: start it early and give
#     the first e2e_prom_wait >= 10 s.
#   * After `dpkg -r` the unit is masked; `dpkg -P` cleans up.

# Guard against being sourced twice.
if [[ -n "${_E2E_LIB_LOADED:-}" ]]; then
  return 0
fi
_E2E_LIB_LOADED=1

E2E_LIB=$(readlink -f "${BASH_SOURCE[0]}")

# ---------------------------------------------------------------------------
# Settings (override from the environment)
# ---------------------------------------------------------------------------
: "${E2E_CACHE:=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/wsechod}" # rootfs cache directory
: "${E2E_SUITE:=bookworm}"                         # Debian suite of the rootfs
: "${E2E_INCLUDE:=systemd,systemd-sysv,dbus}"      # debootstrap --include
: "${E2E_ROOTFS_TAG:=v2}"                          # bump to force a rebuild
: "${E2E_ROOTFS_TIMEOUT:=900}"                     # max s for build/restore
: "${E2E_BOOT_TIMEOUT:=60}"                        # max s until running/degraded
: "${E2E_CMD_TIMEOUT:=60}"                         # max s for one C / N command
: "${E2E_BG_TIMEOUT:=1800}"                        # max lifetime of e2e_bg jobs
: "${E2E_PROM_PORT:=9090}"                         # Prometheus port (container netns)
: "${E2E_METRICS_PORT:=9180}"                      # wsechod's metrics port
: "${E2E_JOURNAL_UNITS:=wsechod}"                  # journals printed on failure
: "${E2E_CONSOLE_LINES:=60}"                       # console lines printed on failure
: "${E2E_POLL:=0.1}"                               # poll interval of wait loops

E2E_HOST_PACKAGES=(debootstrap systemd-container prometheus lintian zstd curl)

# State. Globals on purpose: e2e_case runs each case in a subshell, so the
# state of one container never leaks into the next case.
E2E_T0=${E2E_T0:-}
E2E_ROOTFS=${E2E_ROOTFS:-}
E2E_WORKDIR=${E2E_WORKDIR:-}
E2E_DEBDIR=${E2E_DEBDIR:-}
E2E_CASE=""
E2E_CASE_DIR=""
E2E_MACHINE=""
E2E_NSPAWN_PID=""
E2E_LEADER=""
E2E_CONSOLE_LOG=""
E2E_PROM_PID=""
E2E_BG_PID=""
E2E_BOOT_STATE=""
_E2E_LEADER_START=""
_E2E_CASE_LEVEL=0
_E2E_CASE_PID=""
_E2E_WAIT_INTR=""
_E2E_SIGNALLED=""
_E2E_BG_PIDS=()
_E2E_PASSED=0
_E2E_FAILED=0
_E2E_FAILED_NAMES=()
_E2E_OWN_WORKDIR=""
_E2E_ROOTFS_BG_PID=""
_E2E_ROOTFS_BG_PIDFILE=""
_E2E_ROOTFS_BG_LOG=""
_E2E_POLICY_CREATED=""
_E2E_POLICY_BACKUP=""

# Use the system python (a pyenv shim costs ~0.1 s per call).
if [[ -x /usr/bin/python3 ]]; then
  _E2E_PY=/usr/bin/python3
else
  _E2E_PY=python3
fi

# ---------------------------------------------------------------------------
# Time and logging
# ---------------------------------------------------------------------------

# Current wall clock in microseconds (bash 5 EPOCHREALTIME, no fork).
_e2e_now_us() {
  local t=${EPOCHREALTIME/[.,]/}
  printf '%s\n' "$t"
}

# "1.5" (seconds) -> 1500000 (microseconds).
_e2e_us() {
  local s=$1 i f=""
  i=${s%%.*}
  [[ $s == *.* ]] && f=${s#*.}
  f="${f}000000"
  f=${f:0:6}
  printf '%s\n' $((10#${i:-0} * 1000000 + 10#$f))
}

# Microseconds -> "12.3".
_e2e_fmt() {
  local us=$1
  printf '%d.%d' $((us / 1000000)) $(((us % 1000000) / 100000))
}

# Seconds elapsed since a _e2e_now_us timestamp, e.g. "3.2".
e2e_since() {
  local now
  now=$(_e2e_now_us)
  _e2e_fmt $((now - $1))
}

E2E_T0=${E2E_T0:-$(_e2e_now_us)}

# Timestamped (seconds since start) message on stderr.
e2e_log() {
  printf '[e2e %6ss] %s\n' "$(e2e_since "$E2E_T0")" "$*" >&2
}

# Fail the current case (or the whole run outside a case). This `exit`s, so
# do not call it inside $(...).
e2e_fail() {
  e2e_log "FAIL${E2E_CASE:+ [$E2E_CASE]}: $*"
  exit 1
}

# ---------------------------------------------------------------------------
# Process helpers
# ---------------------------------------------------------------------------

# True if PID exists and is not a zombie.
_e2e_alive() {
  local st
  [[ -n ${1:-} ]] || return 1
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [[ ${st:0:1} != Z ]]
}

# Start time (clock ticks since boot) of PID: guards against PID reuse.
_e2e_starttime() {
  local st fields
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  read -r -a fields <<<"$st"
  printf '%s\n' "${fields[19]}"
}

# Wait (bounded) until PID is gone; returns 1 on timeout.
_e2e_wait_gone() {
  local pid=$1 deadline
  deadline=$(($(_e2e_now_us) + $(_e2e_us "$2")))
  while _e2e_alive "$pid"; do
    (($(_e2e_now_us) < deadline)) || return 1
    sleep 0.05
  done
}

# Stop a background job we started (its process group if it has its own):
# SIGTERM, bounded wait, SIGKILL; then reap it.
_e2e_stop_pid() {
  local pid=$1
  [[ -n $pid ]] || return 0
  if _e2e_alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    if ! _e2e_wait_gone "$pid" 5; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      _e2e_wait_gone "$pid" 5 || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# Remove a directory tree, unmounting anything below it first (an interrupted
# debootstrap leaves /proc, /sys, ... mounted in its target).
_e2e_rm_tree() {
  local d=$1 m
  [[ -n $d && -d $d && $d != / ]] || return 0
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET | awk -v p="$d/" 'index($0, p) == 1' | sort -r)
  rm -rf --one-file-system -- "$d"
}

# ---------------------------------------------------------------------------
# Run setup and teardown
# ---------------------------------------------------------------------------

# Create the work dir (logs, Prometheus TSDBs, console logs) and install the
# traps that clean everything up. The work dir is removed after a fully
# successful run unless E2E_KEEP=1.
e2e_init() {
  if [[ -z $E2E_WORKDIR ]]; then
    E2E_WORKDIR=$(mktemp -d /tmp/wsechod-e2e.XXXXXX)
    _E2E_OWN_WORKDIR=1
  fi
  mkdir -p "$E2E_WORKDIR"
  trap '_e2e_global_exit' EXIT
  trap '_e2e_on_signal 130' INT
  trap '_e2e_on_signal 143' TERM
  trap '_e2e_on_signal 129' HUP
}

_e2e_global_exit() {
  local rc=$?
  trap '' INT TERM HUP # a second Ctrl-C must not cut the cleanup short
  set +e
  trap - EXIT
  e2e_shutdown # no-op unless a container was booted outside e2e_case
  _e2e_rootfs_bg_kill
  _e2e_policy_restore
  if ((rc == 0 && _E2E_FAILED == 0)) && [[ -z ${E2E_KEEP:-} && -n $_E2E_OWN_WORKDIR ]]; then
    _e2e_rm_tree "$E2E_WORKDIR"
  elif [[ -n $E2E_WORKDIR ]]; then
    e2e_log "logs kept in $E2E_WORKDIR"
  fi
  exit "$rc"
}

# ---------------------------------------------------------------------------
# Host packages
# ---------------------------------------------------------------------------

_e2e_pkg_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

# Put back the host's policy-rc.d state (also called from the EXIT trap).
_e2e_policy_restore() {
  local policy=/usr/sbin/policy-rc.d
  if [[ -n $_E2E_POLICY_CREATED ]]; then
    rm -f "$policy"
    _E2E_POLICY_CREATED=""
  fi
  if [[ -n $_E2E_POLICY_BACKUP ]]; then
    mv -f "$_E2E_POLICY_BACKUP" "$policy"
    _E2E_POLICY_BACKUP=""
  fi
}

# Install the missing host packages (idempotent; apt-get update only when
# something is missing). Installing prometheus must never start a host
# prometheus service (PID 1 is not systemd, so invoke-rc.d would run the
# init script): unless the host's policy-rc.d already denies it (exit 101),
# a deny-all policy-rc.d is put in place for the duration of the install.
e2e_host_tools() {
  local p missing=() t0 rc=0 prc=0 log
  local policy=/usr/sbin/policy-rc.d
  for p in "${E2E_HOST_PACKAGES[@]}"; do
    _e2e_pkg_installed "$p" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    e2e_log "host tools: all present"
    return 0
  fi
  t0=$(_e2e_now_us)
  e2e_log "host tools: installing ${missing[*]}"
  if [[ -x $policy ]]; then
    "$policy" prometheus start >/dev/null 2>&1 || prc=$?
  fi
  if ((prc != 101)); then
    if [[ -e $policy || -L $policy ]]; then
      _E2E_POLICY_BACKUP="$policy.wsechod-e2e.$$"
      mv -f "$policy" "$_E2E_POLICY_BACKUP"
    fi
    printf '#!/bin/sh\n# Temporary (wsechod tests/e2e): start no services during apt-get install.\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    _E2E_POLICY_CREATED=1
  fi
  log=$(mktemp "${E2E_WORKDIR:-${TMPDIR:-/tmp}}/host-tools.XXXXXX.log")
  {
    DEBIAN_FRONTEND=noninteractive timeout 600 \
      apt-get -q -o DPkg::Lock::Timeout=300 update &&
      DEBIAN_FRONTEND=noninteractive timeout 900 \
        apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "${missing[@]}"
  } >"$log" 2>&1 || rc=$?
  _e2e_policy_restore
  grep -E '^(E:|W:|[0-9]+ upgraded|invoke-rc.d)' "$log" | sed 's/^/  [apt] /' >&2 || true
  if ((rc != 0)); then
    e2e_log "host tools: apt-get failed (rc=$rc); last lines of $log:"
    tail -n 30 "$log" >&2
    return "$rc"
  fi
  rm -f "$log"
  e2e_log "host tools: installed in $(e2e_since "$t0") s"
}

# ---------------------------------------------------------------------------
# Rootfs cache
# ---------------------------------------------------------------------------

# Mirror URL of the host's apt sources for E2E_SUITE (override: E2E_MIRROR).
_e2e_mirror() {
  local m=${E2E_MIRROR:-} f=/etc/apt/sources.list.d/debian.sources
  if [[ -z $m && -r $f ]]; then
    # deb822 stanzas: the first one whose Suites: lists E2E_SUITE.
    m=$(awk -v suite="$E2E_SUITE" '
      BEGIN { RS = ""; FS = "\n" }
      { uris = ""; suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)   { v = $i; sub(/^URIs:[ \t]*/, "", v); uris = v }
          if ($i ~ /^Suites:/) { v = $i; sub(/^Suites:[ \t]*/, "", v); suites = " " v " " }
        }
        if (uris != "" && index(suites, " " suite " ")) { split(uris, a, /[ \t]+/); print a[1]; exit }
      }' "$f")
  fi
  if [[ -z $m && -r /etc/apt/sources.list ]]; then
    m=$(awk -v suite="$E2E_SUITE" '$1 == "deb" {
          for (i = 2; i < NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($(i + 1) == suite) { print $i; exit } else break } }' \
      /etc/apt/sources.list)
  fi
  if [[ -z $m ]]; then
    e2e_log "rootfs: cannot find a mirror for $E2E_SUITE in the apt sources (set E2E_MIRROR)"
    return 1
  fi
  printf '%s\n' "${m%/}"
}

# Cache key: sha256 over suite, include list, mirror URL and version tag.
_e2e_rootfs_key() {
  printf 'suite=%s\ninclude=%s\nmirror=%s\ntag=%s\n' \
    "$E2E_SUITE" "$E2E_INCLUDE" "$1" "$E2E_ROOTFS_TAG" | sha256sum | cut -c1-16
}

# Print the rootfs directory for the current settings (it may not exist yet).
e2e_rootfs_path() {
  local mirror
  mirror=$(_e2e_mirror) || return 1
  printf '%s/rootfs-%s\n' "$E2E_CACHE" "$(_e2e_rootfs_key "$mirror")"
}

# Tweaks applied to a fresh debootstrap tree (bump E2E_ROOTFS_TAG on change).
_e2e_rootfs_customize() {
  local r=$1 u
  echo e2e >"$r/etc/hostname"
  # Drop the downloaded .debs and the package index (241 MB -> 153 MB): the
  # container has no network, so apt can only install what is in /srv/debs,
  # and a dependency missing from the rootfs fails clearly as "not installable".
  rm -f "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin
  find "$r/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
  # No background apt runs in a test container (no network anyway).
  for u in apt-daily.timer apt-daily-upgrade.timer; do
    ln -sfn /dev/null "$r/etc/systemd/system/$u"
  done
  printf 'suite=%s\ninclude=%s\ntag=%s\nbuilt=%s\n' \
    "$E2E_SUITE" "$E2E_INCLUDE" "$E2E_ROOTFS_TAG" "$(date -u +%FT%TZ)" >"$r/etc/wsechod-e2e-rootfs"
}

# Pack DIR into TAR atomically (temp file + rename); light on CPU (1 thread).
_e2e_rootfs_pack() {
  local dir=$1 tar=$2 tmp t0
  t0=$(_e2e_now_us)
  tmp="$tar.tmp.$$"
  if tar -C "$dir" --numeric-owner --xattrs --xattrs-include='*' -cf - . |
    zstd -q -T1 -6 -o "$tmp"; then
    mv -f "$tmp" "$tar"
    e2e_log "rootfs: packed $(du -h "$tar" | cut -f1) tarball in $(e2e_since "$t0") s"
  else
    rm -f "$tmp"
    e2e_log "rootfs: packing $tar failed"
    return 1
  fi
}

# Body of e2e_rootfs; runs with the cache lock held.
_e2e_rootfs_locked() {
  local mirror=$1 dir=$2 key=$3 tar="$2.tar.zst" tmp t0 stale
  local log="$E2E_CACHE/rootfs-$key.build.log"
  # Leftovers of an interrupted build or restore (safe: we hold the lock).
  for stale in "$E2E_CACHE/.rootfs-$key.tmp."* "$tar.tmp."*; do
    [[ -e $stale ]] || continue
    e2e_log "rootfs: removing stale $stale"
    if [[ -d $stale ]]; then _e2e_rm_tree "$stale"; else rm -f "$stale"; fi
  done
  if [[ -d $dir ]]; then
    e2e_log "rootfs: cached $dir"
    [[ -f $tar ]] || _e2e_rootfs_pack "$dir" "$tar" || return 1
    return 0
  fi
  if [[ -f $tar ]]; then
    t0=$(_e2e_now_us)
    tmp=$(mktemp -d "$E2E_CACHE/.rootfs-$key.tmp.XXXXXX") || return 1
    if zstd -q -dc -- "$tar" | tar -C "$tmp" --numeric-owner --xattrs --xattrs-include='*' -xpf -; then
      chmod 0755 "$tmp"
      mv -T "$tmp" "$dir" || return 1
      e2e_log "rootfs: restored from $tar in $(e2e_since "$t0") s"
      return 0
    fi
    e2e_log "rootfs: $tar is unusable, rebuilding"
    _e2e_rm_tree "$tmp"
    rm -f "$tar"
  fi
  t0=$(_e2e_now_us)
  e2e_log "rootfs: debootstrap $E2E_SUITE ($E2E_INCLUDE), log in $log"
  tmp=$(mktemp -d "$E2E_CACHE/.rootfs-$key.tmp.XXXXXX") || return 1
  chmod 0755 "$tmp" # mktemp gives 0700; "/" must be 0755 for non-root services
  if ! timeout -k 10 "$E2E_ROOTFS_TIMEOUT" debootstrap --variant=minbase \
    --include="$E2E_INCLUDE" "$E2E_SUITE" "$tmp" "$mirror" >"$log" 2>&1; then
    e2e_log "rootfs: debootstrap failed; last lines of $log:"
    tail -n 20 "$log" >&2
    _e2e_rm_tree "$tmp"
    return 1
  fi
  _e2e_rootfs_customize "$tmp"
  if [[ ! -x $tmp/lib/systemd/systemd && ! -x $tmp/usr/lib/systemd/systemd ]]; then
    e2e_log "rootfs: debootstrap produced no systemd"
    _e2e_rm_tree "$tmp"
    return 1
  fi
  mv -T "$tmp" "$dir" || return 1
  e2e_log "rootfs: built in $(e2e_since "$t0") s"
  _e2e_rootfs_pack "$dir" "$tar"
}

# Build (or reuse, or restore from the .tar.zst) the cached rootfs and set
# E2E_ROOTFS. Safe to run concurrently: a lock serialises builders, work
# happens in a temp dir that is renamed into place when complete.
e2e_rootfs() {
  local mirror key dir lock
  mirror=$(_e2e_mirror) || return 1
  key=$(_e2e_rootfs_key "$mirror")
  dir="$E2E_CACHE/rootfs-$key"
  lock="$E2E_CACHE/rootfs-$key.lock"
  mkdir -p "$E2E_CACHE" || return 1
  (
    if ! flock -w "$E2E_ROOTFS_TIMEOUT" 9; then
      e2e_log "rootfs: timed out waiting for $lock"
      exit 1
    fi
    _e2e_rootfs_locked "$mirror" "$dir" "$key"
  ) 9>"$lock" || return 1
  E2E_ROOTFS=$dir
}

# Start e2e_rootfs in the background (own session/process group, nice 10),
# e.g. while cargo builds. Its output is shown by e2e_rootfs_wait.
e2e_rootfs_start() {
  [[ -z $_E2E_ROOTFS_BG_PID ]] || return 0
  mkdir -p "$E2E_CACHE"
  _E2E_ROOTFS_BG_PIDFILE=$(mktemp "${TMPDIR:-/tmp}/wsechod-e2e-rootfs.XXXXXX")
  _E2E_ROOTFS_BG_LOG=$(mktemp "${E2E_WORKDIR:-${TMPDIR:-/tmp}}/rootfs-bg.XXXXXX.log")
  export WSECHOD_CACHE E2E_SUITE E2E_INCLUDE E2E_ROOTFS_TAG E2E_ROOTFS_TIMEOUT E2E_T0
  # setsid: the job and all its children form one process group we can kill.
  # The job writes its PID (= the process group id) first.
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid -w nice -n 10 bash -c 'echo "$$" >"$2"; set -euo pipefail; . "$1"; e2e_rootfs' \
    e2e-rootfs "$E2E_LIB" "$_E2E_ROOTFS_BG_PIDFILE" \
    >"$_E2E_ROOTFS_BG_LOG" 2>&1 </dev/null &
  _E2E_ROOTFS_BG_PID=$!
  e2e_log "rootfs: background job started (pid $_E2E_ROOTFS_BG_PID)"
}

# Kill the background rootfs job's process group (EXIT trap, timeouts).
_e2e_rootfs_bg_kill() {
  local pgid=""
  [[ -n $_E2E_ROOTFS_BG_PID ]] || return 0
  if _e2e_alive "$_E2E_ROOTFS_BG_PID"; then
    pgid=$(cat "$_E2E_ROOTFS_BG_PIDFILE" 2>/dev/null) || true
    pgid=${pgid:-$_E2E_ROOTFS_BG_PID}
    kill -TERM -- "-$pgid" 2>/dev/null || true
    _e2e_wait_gone "$_E2E_ROOTFS_BG_PID" 10 || kill -KILL -- "-$pgid" 2>/dev/null || true
    _e2e_wait_gone "$_E2E_ROOTFS_BG_PID" 5 || true
  fi
  wait "$_E2E_ROOTFS_BG_PID" 2>/dev/null || true
  if [[ -s $_E2E_ROOTFS_BG_LOG ]]; then
    e2e_log "rootfs: background job stopped; its last lines:"
    tail -n 10 "$_E2E_ROOTFS_BG_LOG" | sed 's/^/  [bg] /' >&2
  fi
  rm -f "$_E2E_ROOTFS_BG_PIDFILE" "$_E2E_ROOTFS_BG_LOG"
  _E2E_ROOTFS_BG_PID=""
}

# Wait (bounded by E2E_ROOTFS_TIMEOUT) for the background job, then set
# E2E_ROOTFS. Without a background job it simply runs e2e_rootfs.
e2e_rootfs_wait() {
  local pid=$_E2E_ROOTFS_BG_PID rc=0 deadline t0
  if [[ -n $pid ]]; then
    t0=$(_e2e_now_us)
    deadline=$((t0 + $(_e2e_us "$E2E_ROOTFS_TIMEOUT") + 30000000))
    while _e2e_alive "$pid"; do
      if (($(_e2e_now_us) >= deadline)); then
        e2e_log "rootfs: background job timed out; killing it"
        _e2e_rootfs_bg_kill
        return 1
      fi
      sleep 0.2
    done
    wait "$pid" || rc=$?
    rm -f "$_E2E_ROOTFS_BG_PIDFILE"
    _E2E_ROOTFS_BG_PID=""
    sed 's/^/  [bg] /' "$_E2E_ROOTFS_BG_LOG" >&2 || true
    rm -f "$_E2E_ROOTFS_BG_LOG"
    if ((rc != 0)); then
      e2e_log "rootfs: background job failed (rc=$rc)"
      return "$rc"
    fi
    e2e_log "rootfs: background job done (waited $(e2e_since "$t0") s)"
  fi
  e2e_rootfs # fast when cached; sets E2E_ROOTFS in this shell
}

# ---------------------------------------------------------------------------
# Container: boot, commands, shutdown
# ---------------------------------------------------------------------------

# Run CMD inside the container: all namespaces of its PID 1, clean
# environment, bounded by E2E_CMD_TIMEOUT (override per call:
# `E2E_CMD_TIMEOUT=120 C apt-get ...`). stdin is passed through (use it to
# feed files), except a terminal, which is replaced by /dev/null.
C() {
  if [[ -z $E2E_LEADER ]]; then
    e2e_log "C: no container is running"
    return 1
  fi
  if [[ -t 0 ]]; then
    _e2e_c "$@" </dev/null
  else
    _e2e_c "$@"
  fi
}

_e2e_c() {
  local t=$E2E_CMD_TIMEOUT
  # nsenter -a forks: its host-side parent waits for the command, which runs
  # in the container's PID namespace, and passes no signal on. If that
  # parent dies first, the command is orphaned to the host's init, and the
  # container's poweroff stalls on it (see _e2e_kill_entered). So:
  # * the inner timeout (in the container) bounds and signals the command;
  # * the host-side nsenter ignores INT/TERM/HUP (Ctrl-C, signals passed on
  #   by the outer timeout); only the outer timeout's last-resort SIGKILL
  #   (no -k: a passed-on signal must not turn into a SIGKILL) ends it;
  # * the command starts with default signal handling and a clean env.
  timeout --foreground -s KILL $((t + 15)) \
    env --ignore-signal=INT,TERM,HUP nsenter -t "$E2E_LEADER" -a \
    env -i --default-signal \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
    SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 \
    timeout -k 5 "$t" "$@"
}

# Run a HOST binary (curl, prometheus, a test client, ...) inside the
# container's network namespace; everything else stays the host's (files,
# environment). Bounded by E2E_CMD_TIMEOUT.
N() {
  if [[ -z $E2E_LEADER ]]; then
    e2e_log "N: no container is running"
    return 1
  fi
  timeout --foreground -k 5 "$E2E_CMD_TIMEOUT" nsenter -t "$E2E_LEADER" -n "$@"
}

# e2e_bg LOGFILE CMD...: like N but in the background, output to LOGFILE.
# Sets E2E_BG_PID; e2e_shutdown stops it (stop earlier: _e2e_stop_pid PID).
# Lifetime capped by E2E_BG_TIMEOUT.
e2e_bg() {
  local log=$1
  shift
  [[ -n $E2E_LEADER ]] || {
    e2e_log "e2e_bg: no container is running"
    return 1
  }
  # timeout (not --foreground) makes its own process group: killing
  # -PID takes the command down with it.
  timeout -k 5 "$E2E_BG_TIMEOUT" nsenter -t "$E2E_LEADER" -n "$@" >"$log" 2>&1 </dev/null &
  E2E_BG_PID=$!
  _E2E_BG_PIDS+=("$E2E_BG_PID")
}

# e2e_boot NAME DEBDIR: boot a fresh container from E2E_ROOTFS (volatile
# overlay, private network, DEBDIR read-only at /srv/debs), set E2E_LEADER
# and wait (bounded) until systemctl is-system-running says running or
# degraded. Console output goes to $E2E_CASE_DIR/console.log.
e2e_boot() {
  local name=$1 debdir=$2 deadline t0 c state="" pid kids
  if [[ -n $E2E_NSPAWN_PID ]]; then
    e2e_log "e2e_boot: a container is already running"
    return 1
  fi
  [[ -n $E2E_ROOTFS && -d $E2E_ROOTFS ]] || e2e_rootfs || return 1
  debdir=$(readlink -f "$debdir") || debdir=""
  if [[ ! -d $debdir || $debdir == *:* ]]; then
    e2e_log "e2e_boot: bad deb dir '$2'"
    return 1
  fi
  if [[ -z $E2E_CASE_DIR ]]; then
    E2E_CASE_DIR=$(mktemp -d "${E2E_WORKDIR:-/tmp}/case-$name.XXXXXX")
  fi
  mkdir -p "$E2E_CASE_DIR"
  # Machine (= host) name: [a-z0-9-], short, unique per run.
  E2E_MACHINE=$(printf '%s' "$name" | tr -c 'a-zA-Z0-9-' '-' | cut -c1-40)
  E2E_MACHINE="e2e-$E2E_MACHINE-$$"
  E2E_CONSOLE_LOG=$E2E_CASE_DIR/console.log
  if [[ $- == *m* ]]; then
    e2e_log "e2e_boot: job control (set -m) is not supported"
    return 1
  fi
  t0=$(_e2e_now_us)
  # --register=no --keep-unit: there is no host systemd/D-Bus.
  # --volatile=overlay: tmpfs over /, the cached rootfs stays pristine.
  # setsid: nspawn halts the container on SIGINT, so keep it out of the
  # terminal's process group; Ctrl-C goes through our traps instead. (A
  # background job is no group leader, so setsid execs without forking and
  # $! is nspawn's PID.)
  setsid systemd-nspawn -D "$E2E_ROOTFS" --boot --machine="$E2E_MACHINE" \
    --register=no --keep-unit --private-network --volatile=overlay \
    --link-journal=no --bind-ro="$debdir:/srv/debs" --console=read-only \
    </dev/null >"$E2E_CONSOLE_LOG" 2>&1 &
  E2E_NSPAWN_PID=$!
  pid=$E2E_NSPAWN_PID
  deadline=$((t0 + $(_e2e_us "$E2E_BOOT_TIMEOUT")))
  # The container's PID 1: the child of nspawn whose comm is "systemd".
  while [[ -z $E2E_LEADER ]]; do
    read -r -a kids < <(cat /proc/"$pid"/task/*/children 2>/dev/null) || true
    for c in "${kids[@]}"; do
      if [[ $(cat "/proc/$c/comm" 2>/dev/null) == systemd ]]; then
        E2E_LEADER=$c
        _E2E_LEADER_START=$(_e2e_starttime "$c") || E2E_LEADER=""
      fi
    done
    [[ -z $E2E_LEADER ]] || break
    if ! _e2e_alive "$pid" || (($(_e2e_now_us) >= deadline)); then
      e2e_log "e2e_boot: no container PID 1 (nspawn alive: $(_e2e_alive "$pid" && echo yes || echo no))"
      tail -n 30 "$E2E_CONSOLE_LOG" >&2
      return 1
    fi
    sleep 0.02
  done
  # Poll: `is-system-running --wait` fails until /run/systemd/private exists.
  while :; do
    state=$(E2E_CMD_TIMEOUT=5 C systemctl is-system-running 2>/dev/null) || true
    case $state in running | degraded) break ;; esac
    if ! _e2e_alive "$pid" || (($(_e2e_now_us) >= deadline)); then
      e2e_log "e2e_boot: system not up after ${E2E_BOOT_TIMEOUT}s (state '$state')"
      tail -n 30 "$E2E_CONSOLE_LOG" >&2
      return 1
    fi
    sleep "$E2E_POLL"
  done
  # shellcheck disable=SC2034 # for cases: "running" or "degraded"
  E2E_BOOT_STATE=$state
  e2e_log "boot: $E2E_MACHINE $state in $(e2e_since "$t0") s (leader $E2E_LEADER)"
  if [[ $state == degraded ]]; then
    C systemctl --failed --no-legend >&2 || true
  fi
}

# True while the recorded leader is still the same process.
_e2e_leader_alive() {
  [[ -n $E2E_LEADER ]] && _e2e_alive "$E2E_LEADER" &&
    [[ "$(_e2e_starttime "$E2E_LEADER" 2>/dev/null)" == "$_E2E_LEADER_START" ]]
}

# SIGKILL the processes that entered the container (C commands still
# running, or orphaned): processes in its PID namespace that do not descend
# from its PID 1. Left alone they stall the poweroff: systemd-shutdown
# SIGSTOPs every process first; the host-side nsenter parent mirrors its
# child's stop by stopping itself and is never continued, so the child is
# never reaped, and systemd-shutdown (and the PID namespace's teardown) wait
# for it for up to 90 s. Builtins only (no fork per process).
_e2e_kill_entered() {
  local p q st ppid comm ns="/proc/$E2E_LEADER/ns/pid" victims=()
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p != "$E2E_LEADER" && /proc/$p/ns/pid -ef $ns ]] || continue
    q=$p
    while :; do # climb while the parent is in the container too
      read -r st <"/proc/$q/stat" 2>/dev/null || break
      st=${st##*) }
      ppid=${st#* }
      ppid=${ppid%% *}
      if [[ $ppid == "$E2E_LEADER" ]]; then
        q="" # native: descends from the container's PID 1
        break
      fi
      [[ $ppid != 0 && /proc/$ppid/ns/pid -ef $ns ]] || break
      q=$ppid
    done
    [[ -z $q ]] || victims+=("$p:$ppid")
  done
  for p in "${victims[@]}"; do
    kill -KILL "${p%%:*}" 2>/dev/null || true
    # Its host-side nsenter may be stopped (it mirrors a stopped child).
    comm=""
    read -r comm <"/proc/${p#*:}/comm" 2>/dev/null || true
    [[ $comm != nsenter ]] || kill -CONT "${p#*:}" 2>/dev/null || true
  done
  if ((${#victims[@]})); then
    e2e_log "shutdown: killed ${#victims[@]} process(es) left inside the container by C"
  fi
}

# Tear down the container and everything started for it, in this order:
# background jobs (Prometheus, clients) by PID -> poweroff -> SIGTERM nspawn
# -> SIGKILL the container's PID 1 (ends its PID namespace) -> SIGKILL nspawn.
# Every step is bounded. Safe to call twice and when nothing is running.
e2e_shutdown() {
  local pid t0 how=poweroff
  for pid in "${_E2E_BG_PIDS[@]}"; do
    _e2e_stop_pid "$pid"
  done
  _E2E_BG_PIDS=()
  E2E_PROM_PID=""
  pid=$E2E_NSPAWN_PID
  if [[ -n $pid ]]; then
    t0=$(_e2e_now_us)
    if _e2e_alive "$pid" && _e2e_leader_alive; then
      _e2e_kill_entered
      # "Connection reset by peer" is normal here: PID 1 hangs up first.
      E2E_CMD_TIMEOUT=5 C systemctl poweroff --no-block >/dev/null 2>&1 || true
    fi
    # A clean poweroff takes 0.1-0.3 s. If it takes longer (a slow unit
    # stop, or a stalled systemd-shutdown, see _e2e_kill_entered), SIGTERM to
    # nspawn: a second shutdown request (poweroff becomes halt; units still
    # stop in order) that also moves a stalled systemd-shutdown on.
    if ! _e2e_wait_gone "$pid" 2; then
      how="poweroff+SIGTERM"
      kill -TERM "$pid" 2>/dev/null || true
      if ! _e2e_wait_gone "$pid" 10; then
        how="SIGKILL of the container's PID 1"
        if _e2e_leader_alive; then kill -KILL "$E2E_LEADER" 2>/dev/null || true; fi
        _e2e_wait_gone "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
    wait "$pid" 2>/dev/null || true
    e2e_log "shutdown: $E2E_MACHINE stopped by $how in $(e2e_since "$t0") s"
  fi
  # nspawn gone but the container's PID 1 orphaned (see notes, pitfall 6)?
  if _e2e_leader_alive; then
    e2e_log "shutdown: container PID 1 ($E2E_LEADER) survived nspawn; killing it"
    kill -KILL "$E2E_LEADER" 2>/dev/null || true
    _e2e_wait_gone "$E2E_LEADER" 5 || e2e_log "shutdown: PID $E2E_LEADER still alive!"
  fi
  E2E_NSPAWN_PID=""
  E2E_LEADER=""
  _E2E_LEADER_START=""
}

# ---------------------------------------------------------------------------
# Helpers for cases
# ---------------------------------------------------------------------------

# e2e_wait_for TIMEOUT_S DESCRIPTION CMD...: run CMD every E2E_POLL s until it
# succeeds; on timeout print its last output and return 1. CMD runs in a
# subshell (it cannot set variables) and should be a side-effect-free check.
e2e_wait_for() {
  local timeout=$1 desc=$2 t0 deadline out=""
  shift 2
  t0=$(_e2e_now_us)
  deadline=$((t0 + $(_e2e_us "$timeout")))
  while :; do
    if out=$("$@" 2>&1); then
      e2e_log "ok: $desc ($(e2e_since "$t0") s)"
      return 0
    fi
    if (($(_e2e_now_us) >= deadline)); then
      e2e_log "timeout after ${timeout}s: $desc; last output:"
      printf '%s\n' "$out" | tail -n 20 >&2
      return 1
    fi
    sleep "$E2E_POLL"
  done
}

# e2e_assert_eq DESC GOT WANT
e2e_assert_eq() {
  if [[ $2 != "$3" ]]; then
    e2e_fail "$1: got '$2', want '$3'"
  fi
  e2e_log "ok: $1 = '$3'"
}

# e2e_unit_prop UNIT PROP: value of a unit property (ActiveState, SubState,
# StatusText, Result, ExecMainStatus, MainPID, ...).
e2e_unit_prop() {
  C systemctl show -p "$2" --value "$1"
}

_e2e_unit_is() {
  local want=$2 got
  got=$(e2e_unit_prop "$1" ActiveState) || return 1
  if [[ $want == */* ]]; then
    got="$got/$(e2e_unit_prop "$1" SubState)" || return 1
  fi
  printf '%s\n' "$got"
  [[ $got == "$want" ]]
}

# e2e_wait_unit UNIT STATE TIMEOUT: STATE is an ActiveState ("active") or
# "ActiveState/SubState" ("active/running", "inactive/dead", "failed/failed").
e2e_wait_unit() {
  e2e_wait_for "$3" "$1 is $2" _e2e_unit_is "$1" "$2"
}

# e2e_journal UNIT [journalctl args...]
e2e_journal() {
  local u=$1
  shift
  C journalctl -u "$u" --no-pager -o short-monotonic "$@"
}

_e2e_journal_has() {
  local out
  out=$(C journalctl -u "$1" --no-pager -o cat) || return 1
  grep -E -- "$2" <<<"$out"
}

# e2e_journal_wait UNIT ERE TIMEOUT
e2e_journal_wait() {
  e2e_wait_for "$3" "journal of $1 matches /$2/" _e2e_journal_has "$1" "$2"
}

_e2e_tcp_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  E2E_CMD_TIMEOUT=3 N bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1"
}

# e2e_wait_tcp PORT TIMEOUT: until 127.0.0.1:PORT accepts in the container netns.
e2e_wait_tcp() {
  e2e_wait_for "$2" "127.0.0.1:$1 accepts connections" _e2e_tcp_open "$1"
}

# e2e_put PATH [MODE]: write stdin to PATH inside the container.
#   e2e_put /etc/wsechod/wsechod.toml <<'EOF' ... EOF
e2e_put() {
  # shellcheck disable=SC2016 # expanded by the inner sh
  C sh -c 'mkdir -p "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1"' _ "$1" "${2:-0644}"
}

# e2e_install_deb [DEB...]: apt-get install the given .debs (paths in or
# basenames of files in E2E_DEBDIR; default: the only wsechod_*.deb there)
# from /srv/debs inside the container. Offline: dependencies must already be
# in the rootfs. Keeps locally modified conffiles on upgrade.
e2e_install_deb() {
  local f args=()
  if (($# == 0)); then
    set -- "$E2E_DEBDIR"/wsechod_*.deb
    if (($# != 1)) || [[ ! -f $1 ]]; then
      e2e_log "e2e_install_deb: need exactly one wsechod_*.deb in $E2E_DEBDIR (found: $*)"
      return 1
    fi
  fi
  for f in "$@"; do
    f=${f##*/}
    if [[ ! -f $E2E_DEBDIR/$f ]]; then
      e2e_log "e2e_install_deb: no $f in $E2E_DEBDIR"
      return 1
    fi
    args+=("/srv/debs/$f")
  done
  E2E_CMD_TIMEOUT=${E2E_INSTALL_TIMEOUT:-120} C apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${args[@]}"
}

# e2e_metric SERIES [PORT]: the value of one series in the text exposition at
# http://127.0.0.1:PORT/metrics (default E2E_METRICS_PORT), fetched directly
# (no Prometheus, no 5 s wait). SERIES is the name plus labels exactly as
# exposed, e.g. 'wsechod_connections' or 'x_total{result="ok"}'. Prints
# nothing if the series is absent; fails if /metrics cannot be fetched.
e2e_metric() {
  local body
  body=$(E2E_CMD_TIMEOUT=10 N curl -fsS --max-time 5 \
    "http://127.0.0.1:${2:-$E2E_METRICS_PORT}/metrics") || return 1
  awk -v s="$1" '$1 == s { print $2; exit }' <<<"$body"
}

_e2e_metric_is() {
  local v
  v=$(e2e_metric "$1" "${3:-}") || return 1
  printf '%s\n' "$v"
  _e2e_match "$v" "$2"
}

# e2e_metric_wait SERIES WANT TIMEOUT [PORT]: poll /metrics until the value
# matches WANT (same forms as e2e_prom_wait: 1, '>=2', absent, ...).
e2e_metric_wait() {
  e2e_wait_for "$3" "metric $1 $2" _e2e_metric_is "$1" "$2" "${4:-}"
}

# ---------------------------------------------------------------------------
# Prometheus (host binary, container netns, own temp TSDB)
# ---------------------------------------------------------------------------

# e2e_prometheus_start METRICS_PORT: start Prometheus on
# 127.0.0.1:E2E_PROM_PORT in the container netns, scraping every 1 s job
# "wsechod" (127.0.0.1:METRICS_PORT) and job "prometheus" (itself). Waits
# (bounded) for /-/ready. The first scrape still takes 5-6 s: start early.
e2e_prometheus_start() {
  local port=$1 dir t0
  dir=$E2E_CASE_DIR/prometheus
  mkdir -p "$dir/tsdb"
  cat >"$dir/prometheus.yml" <<EOF
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: wsechod
    static_configs: [{targets: ['127.0.0.1:${port}']}]
  - job_name: prometheus
    static_configs: [{targets: ['127.0.0.1:${E2E_PROM_PORT}']}]
EOF
  promtool check config "$dir/prometheus.yml" >/dev/null || {
    e2e_log "prometheus: bad config $dir/prometheus.yml"
    return 1
  }
  t0=$(_e2e_now_us)
  e2e_bg "$dir/prometheus.log" prometheus --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/tsdb" --web.listen-address="127.0.0.1:$E2E_PROM_PORT" \
    --log.level=warn || return 1
  E2E_PROM_PID=$E2E_BG_PID
  if ! e2e_wait_for 15 "prometheus ready" \
    N curl -fsS --max-time 2 "http://127.0.0.1:$E2E_PROM_PORT/-/ready"; then
    tail -n 20 "$dir/prometheus.log" >&2
    return 1
  fi
}

# Turns a /api/v1/query JSON answer (stdin) into one value per series,
# series sorted by their labels. rc 2 on an API error.
_E2E_PY_PROM='
import json, sys
d = json.load(sys.stdin)
if d.get("status") != "success":
    sys.stderr.write("prometheus: %s: %s\n" % (d.get("errorType"), d.get("error")))
    sys.exit(2)
r = d["data"]["result"]
t = d["data"]["resultType"]
if t in ("scalar", "string"):
    print(r[1])
else:
    for s in sorted(r, key=lambda s: json.dumps(s["metric"], sort_keys=True)):
        print(s["value"][1] if t == "vector" else s["values"][-1][1])
'

# e2e_prom_query EXPR: instant query; prints one value per series (nothing
# for an empty result). Use sum()/max() to get a single number.
e2e_prom_query() {
  local json
  json=$(E2E_CMD_TIMEOUT=10 N curl -fsS --max-time 5 --data-urlencode "query=$1" \
    "http://127.0.0.1:$E2E_PROM_PORT/api/v1/query") || return 1
  "$_E2E_PY" -c "$_E2E_PY_PROM" <<<"$json"
}

# e2e_prom_targets: one line per target: job health lastError.
e2e_prom_targets() {
  local json
  json=$(E2E_CMD_TIMEOUT=10 N curl -fsS --max-time 5 \
    "http://127.0.0.1:$E2E_PROM_PORT/api/v1/targets") || return 1
  "$_E2E_PY" -c '
import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    print(t["labels"].get("job"), t["health"], t.get("lastError") or "-")' <<<"$json"
}

# _e2e_match VALUE WANT: WANT is a number (==), or OP NUMBER with OP one of
# == != > >= < <=, or "absent" (empty result) / "present".
_e2e_match() {
  local v=${1%%$'\n'*} want=$2 op num
  case $want in
    absent) [[ -z $1 ]]; return ;;
    present) [[ -n $1 ]]; return ;;
    '>='* | '<='* | '=='* | '!='*) op=${want:0:2} num=${want:2} ;;
    '>'* | '<'*) op=${want:0:1} num=${want:1} ;;
    *) op='==' num=$want ;;
  esac
  [[ $v =~ ^[-+]?([0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?|Inf|NaN)$ ]] || return 1
  if [[ $v == NaN || $num == NaN ]]; then # awk compares NaN equal to anything
    [[ ($op == '==' && $v == "$num") || ($op == '!=' && $v != "$num") ]]
    return
  fi
  awk -v a="$v" -v b="$num" -v op="$op" 'BEGIN {
    a += 0; b += 0
    if (op == "==") ok = (a == b); else if (op == "!=") ok = (a != b)
    else if (op == ">") ok = (a > b); else if (op == ">=") ok = (a >= b)
    else if (op == "<") ok = (a < b); else ok = (a <= b)
    exit !ok }'
}

# e2e_prom_wait EXPR WANT TIMEOUT: poll (bounded) until the first value of
# EXPR matches WANT (see _e2e_match), e.g.
#   e2e_prom_wait 'up{job="wsechod"}' 1 15
#   e2e_prom_wait 'wsechod_reloads_total' '>=1' 5
e2e_prom_wait() {
  local expr=$1 want=$2 timeout=$3 t0 deadline v=""
  t0=$(_e2e_now_us)
  deadline=$((t0 + $(_e2e_us "$timeout")))
  while :; do
    v=$(e2e_prom_query "$expr" 2>&1) || v="<error: ${v//$'\n'/ }>"
    if _e2e_match "$v" "$want"; then
      e2e_log "ok: prometheus $expr = ${v%%$'\n'*} ($(e2e_since "$t0") s)"
      return 0
    fi
    if (($(_e2e_now_us) >= deadline)); then
      e2e_log "timeout after ${timeout}s: prometheus $expr = '${v//$'\n'/ }', want $want; targets:"
      e2e_prom_targets >&2 || true
      return 1
    fi
    sleep 0.25
  done
}

# ---------------------------------------------------------------------------
# Test cases
# ---------------------------------------------------------------------------

# e2e_case NAME FUNCTION: boot a fresh container, run FUNCTION in a subshell
# with errexit (any failing command fails the case), tear down, record the
# result and time. On failure, print the journals of E2E_JOURNAL_UNITS, the
# failed units and the end of the console log. Cases not matching the regex
# E2E_ONLY are skipped. Needs E2E_DEBDIR (bound at /srv/debs).
e2e_case() {
  local name=$1 fn=$2 t0 rc=0
  if [[ -n ${E2E_ONLY:-} && ! $name =~ $E2E_ONLY ]]; then
    e2e_log "skip: $name"
    return 0
  fi
  if [[ -z $E2E_WORKDIR ]]; then
    e2e_log "e2e_case: call e2e_init first"
    return 1
  fi
  t0=$(_e2e_now_us)
  e2e_log "=== case $name"
  # The case runs as a background subshell so that a signal to this shell
  # interrupts `wait` at once; _e2e_on_signal then stops the case, whose EXIT
  # trap tears its container down. (Background jobs get stdin from /dev/null.)
  (
    set -eEuo pipefail
    _e2e_case_body "$name" "$fn"
  ) &
  _E2E_CASE_PID=$!
  while :; do
    _E2E_WAIT_INTR=""
    rc=0
    wait "$_E2E_CASE_PID" || rc=$?
    [[ -n $_E2E_WAIT_INTR ]] || break # else: a trap interrupted wait
  done
  _E2E_CASE_PID=""
  if ((rc == 0)); then
    _E2E_PASSED=$((_E2E_PASSED + 1))
    e2e_log "PASS $name ($(e2e_since "$t0") s)"
  else
    _E2E_FAILED=$((_E2E_FAILED + 1))
    _E2E_FAILED_NAMES+=("$name")
    e2e_log "FAIL $name (rc=$rc, $(e2e_since "$t0") s)"
  fi
  if [[ -n $_E2E_SIGNALLED ]]; then
    e2e_log "interrupted; not running further cases"
    exit "$_E2E_SIGNALLED"
  fi
  return 0
}

# Descendants of PID (parents before children), not entering systemd-nspawn:
# the container is stopped by the case's own teardown (journal first).
_e2e_descendants() {
  local c kids=()
  read -r -a kids < <(cat /proc/"$1"/task/*/children 2>/dev/null) || true
  for c in "${kids[@]}"; do
    [[ $(cat "/proc/$c/comm" 2>/dev/null) != systemd-nspawn ]] || continue
    printf '%s\n' "$c"
    _e2e_descendants "$c"
  done
}

# True if PID is nsenter or the (outer) timeout wrapping one.
_e2e_is_nsenter_wrapper() {
  local c kids=()
  [[ $(cat "/proc/$1/comm" 2>/dev/null) != nsenter ]] || return 0
  read -r -a kids < <(cat /proc/"$1"/task/*/children 2>/dev/null) || true
  for c in "${kids[@]}"; do
    [[ $(cat "/proc/$c/comm" 2>/dev/null) != nsenter ]] || return 0
  done
  return 1
}

# INT/TERM/HUP trap of the main shell (installed by e2e_init). Outside a case:
# exit (the EXIT trap cleans up). During a case: SIGTERM the case subshell and
# the commands it waits for, let its EXIT trap print diagnostics and tear
# down, then exit from e2e_case. The nsenter of a C command (and its outer
# timeout) is spared: the command inside the container gets the signal and
# the chain unwinds (see _e2e_c).
_e2e_on_signal() {
  local p
  _E2E_SIGNALLED=${_E2E_SIGNALLED:-$1}
  if [[ -z $_E2E_CASE_PID ]] || ! _e2e_alive "$_E2E_CASE_PID"; then
    exit "$1"
  fi
  _E2E_WAIT_INTR=1
  e2e_log "signal: stopping case (pid $_E2E_CASE_PID)"
  kill -TERM "$_E2E_CASE_PID" 2>/dev/null || true
  for p in $(_e2e_descendants "$_E2E_CASE_PID"); do
    _e2e_is_nsenter_wrapper "$p" || kill -TERM "$p" 2>/dev/null || true
  done
}

_e2e_case_body() {
  E2E_CASE=$1
  E2E_CASE_DIR=$E2E_WORKDIR/${1//[^a-zA-Z0-9_.-]/_}
  mkdir -p "$E2E_CASE_DIR"
  trap '_e2e_case_exit' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  # Report where errexit hit (once: not from inside command substitutions).
  _E2E_CASE_LEVEL=$BASH_SUBSHELL
  trap '_e2e_on_err $? "$LINENO" "$BASH_COMMAND"' ERR
  [[ -n $E2E_DEBDIR ]] || e2e_fail "E2E_DEBDIR is not set"
  e2e_boot "$1" "$E2E_DEBDIR" || e2e_fail "boot failed"
  "$2"
}

# ERR trap of a case subshell: the failing command and the call chain, e.g.
#   command failed (rc=1): timeout ... nsenter ...
#   at case_x(run.sh:40) > C(lib.sh:540) > _e2e_c(lib.sh:555)
_e2e_on_err() {
  local rc=$1 line=$2 cmd=$3 i trace=""
  ((BASH_SUBSHELL == _E2E_CASE_LEVEL)) || return 0
  for ((i = ${#FUNCNAME[@]} - 1; i >= 1; i--)); do
    case ${FUNCNAME[i]} in _e2e_case_body | e2e_case | main) continue ;; esac
    ((i == 1)) || line=${BASH_LINENO[i - 1]}
    ((i != 1)) || line=$2
    trace+="${trace:+ > }${FUNCNAME[i]}(${BASH_SOURCE[i]##*/}:$line)"
  done
  ((${#cmd} <= 160)) || cmd="${cmd:0:157}..."
  e2e_log "command failed (rc=$rc$( ((rc != 124)) || echo ', timed out')): $cmd"
  e2e_log "  at ${trace:-?}"
}

# EXIT trap of a case subshell: diagnostics on failure, then teardown.
_e2e_case_exit() {
  local rc=$? u lines=0
  trap '' INT TERM HUP # finish diagnostics and teardown whatever comes
  trap - EXIT ERR
  set +eE
  # Console lines written before teardown (the shutdown messages are noise).
  [[ ! -f $E2E_CONSOLE_LOG ]] || lines=$(wc -l <"$E2E_CONSOLE_LOG")
  if ((rc != 0)) && _e2e_leader_alive; then
    for u in $E2E_JOURNAL_UNITS; do
      echo "----- journalctl -u $u --no-pager ($E2E_CASE)" >&2
      E2E_CMD_TIMEOUT=10 C journalctl -u "$u" --no-pager -o short-monotonic >&2
    done
    echo "----- systemctl --failed ($E2E_CASE)" >&2
    E2E_CMD_TIMEOUT=10 C systemctl --failed --no-legend >&2
  fi
  e2e_shutdown
  if ((rc != 0)); then
    if [[ -n $E2E_PROM_PID || -f $E2E_CASE_DIR/prometheus/prometheus.log ]]; then
      echo "----- prometheus.log (tail, $E2E_CASE)" >&2
      tail -n 20 "$E2E_CASE_DIR/prometheus/prometheus.log" >&2
    fi
    if [[ -f $E2E_CONSOLE_LOG ]]; then
      echo "----- console log up to the failure (last $E2E_CONSOLE_LINES lines; all: $E2E_CONSOLE_LOG)" >&2
      head -n "$lines" "$E2E_CONSOLE_LOG" | tail -n "$E2E_CONSOLE_LINES" |
        sed 's/\x1b\[[0-9;]*m//g' >&2
    fi
    echo "----- end of diagnostics ($E2E_CASE)" >&2
  fi
  exit "$rc"
}

# Print the summary; the last line is exactly "e2e: N passed, N failed".
# Returns 1 if any case failed.
e2e_summary() {
  if ((_E2E_FAILED > 0)); then
    e2e_log "failed cases: ${_E2E_FAILED_NAMES[*]}"
  fi
  echo "e2e: $_E2E_PASSED passed, $_E2E_FAILED failed"
  ((_E2E_FAILED == 0))
}

# e2e_rootfs_prune: delete cached rootfs dirs/tarballs of other keys (old
# tags, other mirrors). Not called automatically.
e2e_rootfs_prune() {
  local keep f
  keep=$(basename "$(e2e_rootfs_path)") || return 1
  for f in "$E2E_CACHE"/rootfs-*; do
    [[ -e $f && ${f##*/} =~ ^rootfs-[0-9a-f]{16}(\.tar\.zst|\.build\.log|\.lock)?$ ]] || continue
    case ${f##*/} in "$keep" | "$keep".*) continue ;; esac
    e2e_log "rootfs: pruning $f"
    if [[ -d $f ]]; then _e2e_rm_tree "$f"; else rm -f "$f"; fi
  done
}
