#!/usr/bin/env bash
# Autobahn|Testsuite conformance run (fuzzingclient, sections 1-11) against
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
#   AUTOBAHN_TIMEOUT          seconds allowed for the wstest run (default 600)
#   AUTOBAHN_STARTUP_TIMEOUT  seconds to wait for the listening line (default 30)
#   AUTOBAHN_CASES            JSON list of case patterns (default ["*"])
#   AUTOBAHN_EXCLUDE          JSON list of excluded patterns
#                             (default ["12.*", "13.*"]: permessage-deflate)
#   AUTOBAHN_EXPECT_CASES     number of cases the selection must resolve to
#                             (default 301 for the default selection)

# shellcheck disable=SC2317  # functions below run from traps (cleanup)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly AGENT=wsechod
readonly STARTUP_TIMEOUT=${AUTOBAHN_STARTUP_TIMEOUT:-30}
readonly RUN_TIMEOUT=${AUTOBAHN_TIMEOUT:-600}
readonly STOP_TIMEOUT=10 # seconds for the daemon / wstest to exit on SIGTERM
readonly CASES_JSON=${AUTOBAHN_CASES:-'["*"]'}
readonly EXCLUDE_JSON=${AUTOBAHN_EXCLUDE:-'["12.*", "13.*"]'}
if [[ -z ${AUTOBAHN_CASES:-} && -z ${AUTOBAHN_EXCLUDE:-} ]]; then
  readonly EXPECT_CASES=${AUTOBAHN_EXPECT_CASES:-301}
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
wstest_pid=""
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

# Stop wstest: SIGTERM to timeout(1), which forwards it to wstest. timeout
# runs in its own process group (its PID), so escalate to that whole group.
stop_wstest() {
  [[ -n $wstest_pid ]] || return 0
  kill -TERM "$wstest_pid" 2>/dev/null || true
  if ! wait_gone "$wstest_pid" "$STOP_TIMEOUT"; then
    log "wstest did not stop on SIGTERM; sending SIGKILL"
    kill -KILL -- "-$wstest_pid" 2>/dev/null || kill -KILL "$wstest_pid" 2>/dev/null || true
  fi
  wait "$wstest_pid" 2>/dev/null || true
  wstest_pid=""
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
wstest_log="$work/wstest.log"

# write_spec URL: the fuzzingclient spec (JSON built by python3 for quoting).
write_spec() {
  python3 - "$1" "$outdir" "$AGENT" "$CASES_JSON" "$EXCLUDE_JSON" >"$spec" <<'EOF'
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
write_spec "ws://127.0.0.1:1/placeholder"
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
write_spec "$url"
log "running wstest (timeout ${RUN_TIMEOUT}s)"
started=$SECONDS
# In the background so that the INT/TERM traps run at once; timeout(1) sits
# in its own process group, so on a signal cleanup() kills it explicitly.
(cd "$work" && exec timeout --kill-after="$STOP_TIMEOUT" "$RUN_TIMEOUT" \
  "$wstest" -m fuzzingclient -s "$spec") >"$wstest_log" 2>&1 &
wstest_pid=$!
wstest_rc=0
wait "$wstest_pid" || wstest_rc=$?
wstest_pid=""
log "wstest finished in $((SECONDS - started))s (exit status $wstest_rc)"

run_ok=1
if ((wstest_rc == 124 || wstest_rc == 137)); then
  log "wstest timed out after ${RUN_TIMEOUT}s"
  run_ok=0
elif ((wstest_rc != 0)); then
  run_ok=0
fi
# wstest exits 0 even when it could not connect; look at what it said.
if grep -q '^Connection to .* failed' "$wstest_log"; then
  grep '^Connection to .* failed' "$wstest_log" | head -n 5 || true
  run_ok=0
fi
if ((run_ok == 0)); then
  echo "----- last 30 lines of the wstest output -----"
  tail -n 30 "$wstest_log" | cut -c1-300
  echo "----------------------------------------------"
fi
if ! kill -0 "$daemon_pid" 2>/dev/null; then
  log "the daemon died during the run"
  run_ok=0
fi

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
