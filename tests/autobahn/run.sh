#!/usr/bin/env bash
# Autobahn|Testsuite conformance run (fuzzingclient, sections 1-13, including
# permessage-deflate) against
# the wsechod daemon.
#
#   tests/autobahn/run.sh BINARY CONFIG
#
# Starts `BINARY -c CONFIG` on ephemeral ports (WSECHOD_SERVER__LISTEN and
# WSECHOD_METRICS__LISTEN set to 127.0.0.1:0), takes the WebSocket URL from
# its "listening on ws://IP:PORT/PATH" log line, runs wstest against it and
# judges the report (see summarize.py for the pass rule). The last line is
# "autobahn: N passed, N failed"; the exit status is 0 only when every
# selected case passed.
#
# Environment (all optional):
#   XDG_CACHE_HOME            cache root (default ~/.cache); wstest is
#                             installed under $XDG_CACHE_HOME/wsechod/autobahn
#   AUTOBAHN_REPORT_DIR       copy wstest's HTML/JSON report there
#   AUTOBAHN_TIMEOUT          seconds allowed for the wstest run (default 1800)
#   AUTOBAHN_STARTUP_TIMEOUT  seconds to wait for the listening line (default 30)
#   AUTOBAHN_CASES            JSON list of case patterns (default ["*"])
#   AUTOBAHN_EXCLUDE          JSON list of excluded patterns (default [])
#   AUTOBAHN_EXPECT_CASES     number of cases the selection must resolve to
#                             (default 517 for the default selection)
#   AUTOBAHN_JOBS             wstest processes run side by side, each on a share
#                             of the cases, against the one daemon (default: the
#                             number of CPUs, at most 4). wstest is single-threaded
#                             Python and the bottleneck: sections 12-13 compress
#                             and inflate about 1.5 GB in it.

# shellcheck disable=SC2317  # functions below run from traps (cleanup)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly AGENT=wsechod
readonly STARTUP_TIMEOUT=${AUTOBAHN_STARTUP_TIMEOUT:-30}
readonly RUN_TIMEOUT=${AUTOBAHN_TIMEOUT:-1800}
readonly STOP_TIMEOUT=10 # seconds for the daemon / wstest to exit on SIGTERM
cpus=$(nproc 2>/dev/null || echo 1)
readonly JOBS=${AUTOBAHN_JOBS:-$((cpus < 4 ? cpus : 4))}
readonly CASES_JSON=${AUTOBAHN_CASES:-'["*"]'}
readonly EXCLUDE_JSON=${AUTOBAHN_EXCLUDE:-'[]'}
if [[ -z ${AUTOBAHN_CASES:-} && -z ${AUTOBAHN_EXCLUDE:-} ]]; then
  readonly EXPECT_CASES=${AUTOBAHN_EXPECT_CASES:-517}
else
  readonly EXPECT_CASES=${AUTOBAHN_EXPECT_CASES:-}
fi

# Everything goes to stdout, so that messages and report stay in order.
log() { printf 'autobahn: %s\n' "$*"; }

if (($# != 2)); then
  echo "usage: $0 BINARY CONFIG" >&2
  exit 2
fi
binary=$1
config=$2
[[ -x $binary ]] || { log "not an executable: $binary"; exit 2; }
[[ -f $config ]] || { log "no such config file: $config"; exit 2; }

# State read by the EXIT trap.
work=""
daemon_pid=""
wstest_pids=()
daemon_log=""
selected_count="" # known once the selection is resolved
counts=""         # "PASSED FAILED" once the report is judged

# ------------------------------------------------------------ helpers ----

# wait_gone PID SECONDS: poll until PID is gone; 1 if still alive after.
wait_gone() {
  local pid=$1 polls=$(($2 * 10))
  while kill -0 "$pid" 2>/dev/null; do
    ((polls-- > 0)) || return 1
    sleep 0.1
  done
}

# Stop every wstest: SIGTERM to timeout(1), which forwards it to wstest.
# timeout runs in its own process group (its PID), so escalate to that group.
stop_wstest() {
  local pid
  for pid in "${wstest_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
      log "wstest did not stop on SIGTERM; sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  wstest_pids=()
}

# Stop the daemon: SIGTERM, bounded wait, SIGKILL as a last resort.
stop_daemon() {
  [[ -n $daemon_pid ]] || return 0
  local rc=0
  if kill -TERM "$daemon_pid" 2>/dev/null; then
    if ! wait_gone "$daemon_pid" "$STOP_TIMEOUT"; then
      log "daemon did not exit within ${STOP_TIMEOUT}s of SIGTERM; sending SIGKILL"
      kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
  fi
  wait "$daemon_pid" 2>/dev/null || rc=$?
  ((rc == 0)) || log "daemon exited with status $rc after SIGTERM"
  daemon_pid=""
}

cleanup() {
  local rc=$?
  set +e
  trap - INT TERM
  stop_wstest
  stop_daemon
  if ((rc != 0)) && [[ -n $daemon_log && -s $daemon_log ]]; then
    echo "----- last 50 lines of the daemon log -----"
    tail -n 50 "$daemon_log"
    echo "-------------------------------------------"
  fi
  [[ -n $work ]] && rm -rf "$work"
  # The closing line, always last. Before the report is judged, every
  # selected case counts as failed.
  if [[ -n $counts ]]; then
    read -r passed failed <<<"$counts"
    echo "autobahn: $passed passed, $failed failed"
  elif [[ -n $selected_count ]]; then
    echo "autobahn: 0 passed, $selected_count failed"
  fi
  exit "$rc"
}

on_signal() {
  log "caught SIG$1, stopping"
  trap - INT TERM
  if [[ $1 == INT ]]; then exit 130; else exit 143; fi
}

# ------------------------------------------------------------- install ----
# Idempotent: instant when cached, about 20-50 s cold.
prefix=$("$HERE/install.sh")
wstest="$prefix/bin/wstest"

trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

work=$(mktemp -d "${TMPDIR:-/tmp}/wsechod-autobahn.XXXXXX")
outdir="$work/report"
spec="$work/spec.json"
daemon_log="$work/daemon.log"

# write_spec URL [OUTDIR CASES_JSON EXCLUDE_JSON]: the fuzzingclient spec (JSON
# built by python3 for quoting), on stdout.
write_spec() {
  python3 - "$1" "${2:-$outdir}" "$AGENT" "${3:-$CASES_JSON}" "${4:-$EXCLUDE_JSON}" <<'EOF'
import json, sys
url, outdir, agent, cases, exclude = sys.argv[1:]
print(json.dumps({
    "outdir": outdir,
    "servers": [{"agent": agent, "url": url}],
    "cases": json.loads(cases),
    "exclude-cases": json.loads(exclude),
    "exclude-agent-cases": {},
}, indent=2))
EOF
}

# ------------------------------------------------- resolve the selection ----
# wstest hangs on an empty selection and reports only the cases it ran, so
# resolve the selection first with the suite's own code.
write_spec "ws://127.0.0.1:1/placeholder" >"$spec"
"$prefix/bin/python2" "$HERE/resolve_cases.py" "$spec" >"$work/cases.txt"
selected_count=$(wc -l <"$work/cases.txt")
if ((selected_count == 0)); then
  log "the selection cases=$CASES_JSON exclude=$EXCLUDE_JSON matches no case"
  exit 1
fi
if [[ -n $EXPECT_CASES && $selected_count -ne $EXPECT_CASES ]]; then
  log "the selection resolved to $selected_count cases, expected $EXPECT_CASES"
  exit 1
fi
log "$selected_count cases selected (cases=$CASES_JSON exclude=$EXCLUDE_JSON)"

# ----------------------------------------------------------- the daemon ----
log "starting $binary -c $config"
WSECHOD_SERVER__LISTEN=127.0.0.1:0 WSECHOD_METRICS__LISTEN=127.0.0.1:0 \
  "$binary" -c "$config" >"$daemon_log" 2>&1 &
daemon_pid=$!

# listening_url: the URL from the first complete "listening on ws://..."
# line of the daemon log (ANSI colours stripped), or nothing yet.
listening_url() {
  local complete
  complete=$(wc -l <"$daemon_log") # a line still being written is skipped
  awk -v n="$complete" '
    NR > n { exit }
    { gsub(/\033\[[0-9;]*[A-Za-z]/, "") }
    match($0, /listening on ws:\/\/[^ \t"'\'']+/) {
      print substr($0, RSTART + 13, RLENGTH - 13); exit
    }' "$daemon_log"
}

url=""
polls=$((STARTUP_TIMEOUT * 10)) # 0.1 s apart
while :; do
  url=$(listening_url)
  [[ -z $url ]] || break
  if ! kill -0 "$daemon_pid" 2>/dev/null; then
    rc=0
    wait "$daemon_pid" || rc=$?
    daemon_pid=""
    log "the daemon exited early (status $rc); its log:"
    cat "$daemon_log"
    daemon_log="" # already printed in full
    exit 1
  fi
  if ((polls-- <= 0)); then
    log "no 'listening on ws://' line from the daemon within ${STARTUP_TIMEOUT}s"
    exit 1
  fi
  sleep 0.1
done
# Trailing punctuation is not part of the URL.
while [[ $url == *[,.\;\)] ]]; do url=${url%?}; done
log "daemon (pid $daemon_pid) listening on $url"

# --------------------------------------------------------------- wstest ----
# The cases are dealt round-robin to JOBS partitions (neighbouring cases cost
# alike, so this balances them), each run by its own wstest into its own
# report directory; the reports are merged afterwards.
jobs=$((JOBS < selected_count ? JOBS : selected_count))
((jobs >= 1)) || jobs=1
log "running wstest in $jobs process(es) (timeout ${RUN_TIMEOUT}s)"
started=$SECONDS
for ((j = 0; j < jobs; j++)); do
  part_cases=$(awk -v n="$jobs" -v j="$j" 'NR % n == j' "$work/cases.txt" |
    python3 -c 'import json, sys; print(json.dumps([l.strip() for l in sys.stdin if l.strip()]))')
  write_spec "$url" "$work/report-$j" "$part_cases" "[]" >"$work/spec-$j.json"
  # In the background so that the INT/TERM traps run at once; timeout(1) sits
  # in its own process group, so on a signal cleanup() kills it explicitly.
  (cd "$work" && exec timeout --kill-after="$STOP_TIMEOUT" "$RUN_TIMEOUT" \
    "$wstest" -m fuzzingclient -s "$work/spec-$j.json") >"$work/wstest-$j.log" 2>&1 &
  wstest_pids+=("$!")
done
run_ok=1
for ((j = 0; j < jobs; j++)); do
  wstest_rc=0
  wait "${wstest_pids[$j]}" || wstest_rc=$?
  ok=1
  if ((wstest_rc == 124 || wstest_rc == 137)); then
    log "wstest $j timed out after ${RUN_TIMEOUT}s"
    ok=0
  elif ((wstest_rc != 0)); then
    log "wstest $j exited with status $wstest_rc"
    ok=0
  fi
  # wstest exits 0 even when it could not connect; look at what it said.
  if grep -q '^Connection to .* failed' "$work/wstest-$j.log"; then
    grep '^Connection to .* failed' "$work/wstest-$j.log" | head -n 5 || true
    ok=0
  fi
  if ((ok == 0)); then
    run_ok=0
    echo "----- last 30 lines of the output of wstest $j -----"
    tail -n 30 "$work/wstest-$j.log" | cut -c1-300
    echo "----------------------------------------------"
  fi
done
wstest_pids=()
log "wstest finished in $((SECONDS - started))s"
if ! kill -0 "$daemon_pid" 2>/dev/null; then
  log "the daemon died during the run"
  run_ok=0
fi

# One report: every partition's index.json merged, their case files copied.
python3 - "$outdir" "$work" "$jobs" "$AGENT" <<'EOF'
import json, os, shutil, sys
outdir, work, jobs, agent = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
os.makedirs(outdir, exist_ok=True)
merged = {}
for j in range(jobs):
    part = os.path.join(work, "report-%d" % j)
    try:
        with open(os.path.join(part, "index.json")) as f:
            merged.update(json.load(f).get(agent, {}))
    except (OSError, ValueError):
        continue
    for name in os.listdir(part):
        if name != "index.json":
            shutil.copy(os.path.join(part, name), os.path.join(outdir, name))
if merged:
    with open(os.path.join(outdir, "index.json"), "w") as f:
        json.dump({agent: merged}, f)
EOF

if [[ -n ${AUTOBAHN_REPORT_DIR:-} && -d $outdir ]]; then
  mkdir -p "$AUTOBAHN_REPORT_DIR"
  cp -R "$outdir/." "$AUTOBAHN_REPORT_DIR/"
  log "report copied to $AUTOBAHN_REPORT_DIR (index.html)"
fi

# ---------------------------------------------------------------- judge ----
summary_rc=0
python3 "$HERE/summarize.py" --outdir "$outdir" --agent "$AGENT" \
  --cases "$work/cases.txt" --counts "$work/counts" || summary_rc=$?
[[ -s $work/counts ]] && counts=$(<"$work/counts")

# cleanup() stops the daemon and prints the closing line.
if ((summary_rc != 0 || run_ok == 0)); then
  exit 1
fi
exit 0
