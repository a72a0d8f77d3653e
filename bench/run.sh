#!/usr/bin/env bash
# Benchmark of wsechod against a raw TCP echo (tcp-echo) and a plain tokio-tungstenite echo
# (tt-echo). See bench/README.md.
#
# Every server is started fresh for every run, pinned to one CPU; the load generator is pinned
# to another. The figure compared is the server's CPU time per message (per handshake) and its
# memory per idle connection, as a ratio to the raw TCP echo.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/run.sh [options]

  --quick             one run per server and scenario, 2 s windows after 0.5 s warm-up
  --runs N            runs per server and scenario (default 3; 1 with --quick)
  --duration S        measured window in seconds (default 5; 2 with --quick)
  --warmup S          warm-up before it in seconds (default 1; 0.5 with --quick)
  --hold S            how long idle connections are held (default 5; 1 with --quick)
  --idle-conns N      connections of the idle scenario (default 10000)
  --max-idle-kib N    fail if wsechod's median RSS per idle connection exceeds N KiB
  --drain-conns N     connections wsechod drains on SIGTERM in the drain measurement
                      (default 10000; 0 skips it)
  --max-drain-ms N    fail if the median drain takes longer than N ms
  --scenarios "a b"   scenarios to run, of a b c d e f g h i j (default all)
  --servers "x y"     servers to run, of tcp-echo wsechod tt-echo (default all) and
                      wsechod-nometrics (wsechod with [metrics] enabled = false) and
                      wsechod-baseline (another wsechod binary, BENCH_BASELINE_WSECHOD)
  --out FILE          where the RESULT lines go (default bench/results/<time>.txt);
                      the table goes to the same name with .md
  --wait-quiet S      before each run, wait up to S seconds for the machine to be idle
                      (other processes under 10% of the CPUs for a second); default 0
  --no-build          use the binaries already built
  -h, --help          this text

Scenarios: a) 100 connections ping-pong, 32 B text; b) 100 connections, 16 in flight, 32 B
text; c) 10 connections ping-pong, 64 KiB binary; d) handshake rate, 32 workers; e) idle
connections, server RSS per connection; f) 100 connections ping-pong, 1 KiB JSON-like text,
permessage-deflate; g) b over HTTP/2, 100 streams on one TCP connection; h) e over HTTP/2,
100 streams per TCP connection; i) e with permessage-deflate negotiated; j) i after each
connection echoed one compressed 1 KiB message. tt-echo speaks neither permessage-deflate nor
HTTP/2, tcp-echo no HTTP/2: f-j run only on the servers that can (tcp-echo gets f's
compressed frames as bytes).

Environment: BENCH_WSECHOD_ENV="WSECHOD_X__Y=V ..." passes settings to wsechod for experiments
(the default is the shipped configuration untouched). BENCH_BASELINE_WSECHOD names the binary
of server wsechod-baseline (e.g. an earlier commit's build: before and after in one run). BENCH_SERVER_CPU (default 0) and
BENCH_CLIENT_CPU (default 1) choose the CPUs
(taskset lists; the load generator runs one thread per CPU of its list); CARGO_BUILD_JOBS
limits the build's parallelism as usual.
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
BIN=$BENCH_DIR/target/release

RUNS=
DURATION=
WARMUP=
HOLD=
QUICK=0
IDLE_CONNS=10000
MAX_IDLE_KIB=
SCENARIOS="a b c d e f g h i j"
SERVERS="tcp-echo wsechod tt-echo"
OUT=
BUILD=1
WAIT_QUIET=0
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}

die() {
    echo "run.sh: $*" >&2
    exit 1
}

need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1 ;;
        --runs) need_value "$@"; RUNS=$2; shift ;;
        --duration) need_value "$@"; DURATION=$2; shift ;;
        --warmup) need_value "$@"; WARMUP=$2; shift ;;
        --hold) need_value "$@"; HOLD=$2; shift ;;
        --idle-conns) need_value "$@"; IDLE_CONNS=$2; shift ;;
        --max-idle-kib) need_value "$@"; MAX_IDLE_KIB=$2; shift ;;
        --scenarios) need_value "$@"; SCENARIOS=$2; shift ;;
        --drain-conns) need_value "$@"; DRAIN_CONNS=$2; shift ;;
        --max-drain-ms) need_value "$@"; MAX_DRAIN_MS=$2; shift ;;
        --servers) need_value "$@"; SERVERS=$2; shift ;;
        --out) need_value "$@"; OUT=$2; shift ;;
        --wait-quiet) need_value "$@"; WAIT_QUIET=$2; shift ;;
        --no-build) BUILD=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
    shift
done

if [[ $QUICK == 1 ]]; then
    : "${RUNS:=1}" "${DURATION:=2}" "${WARMUP:=0.5}" "${HOLD:=1}"
else
    : "${RUNS:=3}" "${DURATION:=5}" "${WARMUP:=1}" "${HOLD:=5}"
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ $WAIT_QUIET =~ ^[0-9]+$ ]] || die "--wait-quiet must be a whole number of seconds"
[[ $IDLE_CONNS =~ ^[1-9][0-9]*$ ]] || die "--idle-conns must be a positive integer"
DRAIN_CONNS=${DRAIN_CONNS:-10000}
MAX_DRAIN_MS=${MAX_DRAIN_MS:-}
[[ $DRAIN_CONNS =~ ^[0-9]+$ ]] || die "--drain-conns must be a whole number"
[[ -z $MAX_DRAIN_MS || $MAX_DRAIN_MS =~ ^[0-9]+$ ]] || die "--max-drain-ms must be a whole number"
[[ -z $MAX_IDLE_KIB || $MAX_IDLE_KIB =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--max-idle-kib must be a number"
for s in $SCENARIOS; do [[ $s =~ ^[a-j]$ ]] || die "unknown scenario $s"; done
for s in $SERVERS; do
    case $s in tcp-echo | wsechod | wsechod-nometrics | wsechod-baseline | tt-echo) ;; *) die "unknown server $s" ;; esac
done
BASELINE=${BENCH_BASELINE_WSECHOD:-}
if [[ " $SERVERS " == *" wsechod-baseline "* ]]; then
    [[ -n $BASELINE && -x $BASELINE ]] || die "wsechod-baseline needs BENCH_BASELINE_WSECHOD=/path/to/wsechod"
fi
command -v taskset >/dev/null || die "taskset (util-linux) is needed"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"
taskset -c "$SERVER_CPU" true 2>/dev/null || die "cannot pin to CPU $SERVER_CPU (BENCH_SERVER_CPU)"
taskset -c "$CLIENT_CPU" true 2>/dev/null || die "cannot pin to CPU $CLIENT_CPU (BENCH_CLIENT_CPU)"
[[ $SERVER_CPU != "$CLIENT_CPU" ]] || die "the server and the load generator need different CPUs"
# One load generator thread per CPU it may use (BENCH_CLIENT_CPU may be a list, e.g. 1-3).
CLIENT_THREADS=$(taskset -c "$CLIENT_CPU" nproc)

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
if [[ -z $OUT ]]; then
    mkdir -p "$BENCH_DIR/results"
    OUT=$BENCH_DIR/results/$STAMP.txt
fi
TABLE=${OUT%.txt}.md
LOGS=${OUT%.txt}-logs
mkdir -p "$(dirname "$OUT")" "$LOGS"

# Servers (and the load generator) this script started; stopped on any exit.
declare -A STARTED=()
BENCH_PID=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    local pid
    if [[ -n $BENCH_PID ]]; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
    fi
    for pid in "${!STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${!STARTED[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ---------------------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
    echo "== building wsechod and the bench project (release)"
    (cd "$ROOT" && cargo build --release --locked && cargo build --release --locked --example wsclient)
    (cd "$BENCH_DIR" && cargo build --release --locked)
fi
for b in "$ROOT/target/release/wsechod" "$ROOT/target/release/examples/wsclient" \
    "$BIN/wsechod-bench" "$BIN/tcp-echo" "$BIN/tt-echo"; do
    [[ -x $b ]] || die "$b is missing (run without --no-build)"
done

# --- file descriptors ----------------------------------------------------------------------
# Each side of an idle connection holds one descriptor, in its own process.
WANT_FDS=$((IDLE_CONNS + 1024))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $WANT_FDS ]]; then
    if [[ $(ulimit -Hn) != unlimited && $(ulimit -Hn) -lt $WANT_FDS ]]; then
        ulimit -Hn "$WANT_FDS" 2>/dev/null || die "cannot raise the hard limit of open files to $WANT_FDS (run as root, or lower --idle-conns)"
    fi
    ulimit -n "$WANT_FDS"
fi

# --- servers -------------------------------------------------------------------------------
SERVER_PID=
SERVER_URL=

# Starts server $1 pinned to SERVER_CPU, logging to $2; sets SERVER_PID and SERVER_URL.
start_server() {
    local name=$1 log=$2 pattern
    : >"$log"
    case $name in
        wsechod | wsechod-nometrics | wsechod-baseline)
            # The shipped configuration, with only the addresses changed; nothing from the
            # caller's environment (RUST_LOG, WSECHOD_*) may change it, except what
            # BENCH_WSECHOD_ENV names on purpose (experiments: "VAR=VALUE ...").
            local -a unset=(-u RUST_LOG) extra=()
            local v
            for v in $(compgen -e); do
                [[ $v == WSECHOD_* ]] && unset+=(-u "$v")
            done
            read -r -a extra <<<"${BENCH_WSECHOD_ENV:-}"
            # wsechod-nometrics: the same with [metrics] enabled = false, to price the metrics.
            [[ $name == wsechod-nometrics ]] && extra+=(WSECHOD_METRICS__ENABLED=false)
            # wsechod-baseline: another build (an earlier commit) with the same configuration,
            # taking turns with this one: before and after in one run.
            local bin=$ROOT/target/release/wsechod
            [[ $name == wsechod-baseline ]] && bin=$BASELINE
            env "${unset[@]}" WSECHOD_SERVER__LISTEN=127.0.0.1:0 WSECHOD_METRICS__LISTEN=127.0.0.1:0 "${extra[@]}" \
                taskset -c "$SERVER_CPU" "$bin" -c "$ROOT/etc/wsechod.toml" \
                >/dev/null 2>"$log" &
            pattern='listening on ws://127\.0\.0\.1:[0-9]+/ws'
            ;;
        tt-echo)
            taskset -c "$SERVER_CPU" "$BIN/tt-echo" 127.0.0.1:0 >/dev/null 2>"$log" &
            pattern='listening on ws://127\.0\.0\.1:[0-9]+/'
            ;;
        tcp-echo)
            taskset -c "$SERVER_CPU" "$BIN/tcp-echo" 127.0.0.1:0 >/dev/null 2>"$log" &
            pattern='listening on tcp://127\.0\.0\.1:[0-9]+'
            ;;
    esac
    SERVER_PID=$!
    STARTED[$SERVER_PID]=1
    SERVER_URL=
    for _ in $(seq 100); do
        SERVER_URL=$(grep -oE "$pattern" "$log" 2>/dev/null | head -n1 | sed 's/^listening on //') || true
        [[ -n $SERVER_URL ]] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "run.sh: $name did not start; its log ($log):" >&2
    sed 's/^/    /' "$log" >&2 || true
    exit 1
}

# Stops the running server: SIGTERM, then SIGKILL after 15 s.
stop_server() {
    local pid=$SERVER_PID
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run.sh: server $pid did not stop within 15 s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "STARTED[$pid]"
    SERVER_PID=
}

# Percentage of all CPUs busy over the next second, from /proc/stat.
busy_pct() {
    local a b
    read -ra a < <(head -n1 /proc/stat)
    sleep 1
    read -ra b < <(head -n1 /proc/stat)
    local total=0 idle i
    for i in 1 2 3 4 5 6 7 8; do
        total=$((total + b[i] - a[i]))
    done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    if [[ $total -le 0 ]]; then
        echo 0
    else
        echo $((100 * (total - idle) / total))
    fi
}

# With --wait-quiet S: waits up to S seconds for other work on the machine to calm down.
wait_quiet() {
    [[ $WAIT_QUIET -gt 0 ]] || return 0
    local deadline=$((SECONDS + WAIT_QUIET)) busy
    while :; do
        busy=$(busy_pct)
        [[ $busy -lt 10 ]] && return 0
        if [[ $SECONDS -ge $deadline ]]; then
            echo "    (the machine is still ${busy}% busy after waiting ${WAIT_QUIET} s; going on)"
            return 0
        fi
    done
}

# --- scenarios -----------------------------------------------------------------------------
desc() {
    case $1 in
        a) echo "100 conns ping-pong 32 B text" ;;
        b) echo "100 conns × 16 in flight 32 B text" ;;
        c) echo "10 conns ping-pong 64 KiB binary" ;;
        d) echo "handshakes, 32 workers" ;;
        e) echo "$IDLE_CONNS idle conns" ;;
        f) echo "100 conns ping-pong 1 KiB JSON, deflate" ;;
        g) echo "b over HTTP/2 (100 streams, 1 TCP conn)" ;;
        h) echo "$IDLE_CONNS idle HTTP/2 streams, 100 per TCP conn" ;;
        i) echo "$IDLE_CONNS idle conns, deflate negotiated" ;;
        j) echo "$IDLE_CONNS idle conns, deflate, 1 KiB echoed" ;;
    esac
}

# Whether scenario $1 runs on server $2: tt-echo has neither permessage-deflate nor HTTP/2,
# tcp-echo has no HTTP/2 (it gets the compressed frames of f as bytes).
runs_on() {
    case $1-$2 in
        [f-j]-tt-echo | [ghij]-tcp-echo) return 1 ;;
    esac
    return 0
}

# The load generator's arguments for scenario $1.
bench_args() {
    local t=(-d "$DURATION" -w "$WARMUP")
    case $1 in
        a) echo echo -c 100 -k 1 -s 32 --text "${t[@]}" ;;
        b) echo echo -c 100 -k 16 -s 32 --text "${t[@]}" ;;
        c) echo echo -c 10 -k 1 -s 65536 "${t[@]}" ;;
        d) echo handshake -c 32 "${t[@]}" ;;
        e) echo idle -c "$IDLE_CONNS" --hold "$HOLD" ;;
        f) echo echo -c 100 -k 1 -s 1024 --text --json --deflate "${t[@]}" ;;
        g) echo echo -c 100 -k 16 -s 32 --text --http2 --streams-per-conn 100 "${t[@]}" ;;
        h) echo idle -c "$IDLE_CONNS" --hold "$HOLD" --http2 --streams-per-conn 100 ;;
        i) echo idle -c "$IDLE_CONNS" --hold "$HOLD" --deflate ;;
        j) echo idle -c "$IDLE_CONNS" --hold "$HOLD" --deflate --echo-first 1024 ;;
    esac
}

# An upper bound on one load generator run, in seconds.
bench_limit() {
    case $1 in
        [ehij]) echo $((60 + 120 + ${HOLD%.*} + 30)) ;;
        *) echo $((60 + ${WARMUP%.*} + ${DURATION%.*})) ;;
    esac
}

{
    echo "# wsechod benchmark $STAMP"
    echo "# git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock etc 2>/dev/null || echo ' (work tree differs)')"
    echo "# $(uname -srm), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "# runs=$RUNS duration=$DURATION warmup=$WARMUP hold=$HOLD idle_conns=$IDLE_CONNS server_cpu=$SERVER_CPU client_cpu=$CLIENT_CPU client_threads=$CLIENT_THREADS"
} >"$OUT"

FAILED=0
TOTAL=0
for sc in $SCENARIOS; do
    for server in $SERVERS; do
        if runs_on "$sc" "$server"; then TOTAL=$((TOTAL + RUNS)); fi
    done
done
N=0
echo "== $TOTAL runs; RESULT lines go to $OUT"
for run in $(seq "$RUNS"); do
    for sc in $SCENARIOS; do
        # Servers take turns within a run, so that a slow drift of the machine hits all alike.
        for server in $SERVERS; do
            runs_on "$sc" "$server" || continue
            N=$((N + 1))
            tag="$sc-$server-$run"
            wait_quiet
            start_server "$server" "$LOGS/$tag.log"
            url=$SERVER_URL
            if [[ $server == tcp-echo ]]; then
                url=${url%/}
            fi
            # shellcheck disable=SC2046 # bench_args prints words
            set -- $(bench_args "$sc")
            mode=$1
            shift
            timeout --kill-after=5 "$(bench_limit "$sc")" \
                taskset -c "$CLIENT_CPU" "$BIN/wsechod-bench" "$mode" "$url" "$@" \
                --server-pid "$SERVER_PID" --threads "$CLIENT_THREADS" \
                --label "scenario=$sc" --label "desc=$(desc "$sc")" \
                --label "server=$server" --label "run=$run" \
                >"$LOGS/$tag.out" 2>&1 &
            BENCH_PID=$!
            status=0
            wait "$BENCH_PID" || status=$?
            BENCH_PID=
            alive=1
            kill -0 "$SERVER_PID" 2>/dev/null || alive=0
            stop_server
            grep '^RESULT ' "$LOGS/$tag.out" >>"$OUT" || true
            printf '[%d/%d] %s %s run %d: ' "$N" "$TOTAL" "$sc" "$server" "$run"
            grep -v '^RESULT ' "$LOGS/$tag.out" | grep -v '^idle .* holding$' | sed '2,$s/^/    /' || true
            if [[ $status != 0 ]]; then
                echo "    load generator failed (exit $status)"
                FAILED=$((FAILED + 1))
            elif [[ $alive == 0 ]]; then
                echo "    the server died during the run; its log: $LOGS/$tag.log"
                FAILED=$((FAILED + 1))
            elif ! grep -q '"errors":0[,}]' "$LOGS/$tag.out"; then
                FAILED=$((FAILED + 1))
            fi
        done
    done
done

# --- drain: SIGTERM with DRAIN_CONNS clients connected ------------------------------------
# examples/wsclient holds the connections and answers each close frame, as a browser would;
# the figure is the time from SIGTERM to the daemon's exit, every client closed with 1000.
DRAIN_MS=()
if [[ $DRAIN_CONNS != 0 && " $SERVERS " == *" wsechod "* ]]; then
    WSCLIENT=$ROOT/target/release/examples/wsclient
    for run in $(seq "$RUNS"); do
        tag="drain-$run"
        wait_quiet
        start_server wsechod "$LOGS/$tag.log"
        taskset -c "$CLIENT_CPU" "$WSCLIENT" hold "$SERVER_URL" "$DRAIN_CONNS" >"$LOGS/$tag.out" 2>&1 &
        BENCH_PID=$!
        for _ in $(seq 1200); do
            grep -q '^held ' "$LOGS/$tag.out" && break
            kill -0 "$BENCH_PID" 2>/dev/null || break
            sleep 0.05
        done
        if ! grep -q '^held ' "$LOGS/$tag.out"; then
            echo "[drain $run] the clients could not connect: $(tail -n 2 "$LOGS/$tag.out")"
            FAILED=$((FAILED + 1))
            stop_server
            kill "$BENCH_PID" 2>/dev/null || true
            BENCH_PID=
            continue
        fi
        t0=$(date +%s%N)
        kill -TERM "$SERVER_PID"
        ok=1
        wait "$SERVER_PID" || ok=0
        t1=$(date +%s%N)
        unset "STARTED[$SERVER_PID]"
        wait "$BENCH_PID" || ok=0
        BENCH_PID=
        closes=$(grep -c '^close 1000 ' "$LOGS/$tag.out" || true)
        ms=$(((t1 - t0) / 1000000))
        echo "[drain $run] SIGTERM with $DRAIN_CONNS connections: exit after $ms ms, $closes clients closed with 1000"
        echo "RESULT {\"mode\":\"drain\",\"server\":\"wsechod\",\"run\":$run,\"conns\":$DRAIN_CONNS,\"drain_ms\":$ms,\"closes\":$closes}" >>"${OUT%.txt}-drain.txt"
        if [[ $ok == 0 || $closes != "$DRAIN_CONNS" ]]; then
            echo "    drain incomplete (logs in $LOGS/$tag.*)"
            FAILED=$((FAILED + 1))
        else
            DRAIN_MS+=("$ms")
        fi
    done
fi

echo
echo "== results ($RUNS run(s) each, ${DURATION} s windows after ${WARMUP} s warm-up)"
check=()
if [[ -n $MAX_IDLE_KIB ]]; then
    check=(--max-idle-kib "$MAX_IDLE_KIB" --check-server wsechod)
fi
status=0
"$BIN/wsechod-bench" summarize "$OUT" "${check[@]}" | tee "$TABLE" || status=$?
if ((${#DRAIN_MS[@]} > 0)); then
    median=$(printf '%s\n' "${DRAIN_MS[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    line="drain: SIGTERM to exit with $DRAIN_CONNS connections, median $median ms of ${#DRAIN_MS[@]} run(s) (${DRAIN_MS[*]} ms)"
    echo "$line" | tee -a "$TABLE"
    if [[ -n $MAX_DRAIN_MS ]] && ((median > MAX_DRAIN_MS)); then
        echo "drain check FAILED: $median ms is over $MAX_DRAIN_MS ms" | tee -a "$TABLE"
        status=2
    fi
fi
echo
echo "RESULT lines: $OUT"
echo "table:        $TABLE"
echo "elapsed:      ${SECONDS} s"
if [[ $FAILED != 0 ]]; then
    echo "run.sh: $FAILED run(s) failed or reported errors (logs in $LOGS)" >&2
    exit 1
fi
exit "$status"
