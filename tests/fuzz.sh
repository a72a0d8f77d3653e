#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time, starting from the committed seeds.
#
#   tests/fuzz.sh                                  # each target for 60 s
#   FUZZ_SECONDS=3600 FUZZ_TARGETS=handshake_and_frames tests/fuzz.sh
#
# Environment:
#   FUZZ_SECONDS      time per target (default 60)
#   FUZZ_TARGETS      space-separated targets (default: every target in fuzz/fuzz_targets)
#   FUZZ_CORPUS_DIR   where the growing corpus is kept, one folder per target (default
#                     ${XDG_CACHE_HOME:-~/.cache}/wsechod/fuzz-corpus; it survives between runs,
#                     so each run starts where the last one stopped). fuzz/seeds is only read.
#   FUZZ_SANITIZER    cargo fuzz --sanitizer (default address; none runs faster)
#   FUZZ_RSS_MB       libFuzzer -rss_limit_mb (default 2048)
#   CARGO_BUILD_JOBS  build parallelism (default 1: the machines are small and shared)
#   FUZZ_TARGET_DIR   cargo's target directory for the fuzz build (default
#                     ${XDG_CACHE_HOME:-~/.cache}/wsechod/fuzz-target). It lives outside the
#                     checkout so that the next run on this machine, from any clone (CI clones
#                     afresh every time), rebuilds only what changed instead of every crate with
#                     AddressSanitizer from scratch. Checkouts sharing it take turns: cargo
#                     rebuilds wsechod and the targets when their sources differ from the last
#                     build's (checksum freshness, below), and a build waits for a running one.
#   WSECHOD_FUZZ_STRICT  the checks of earlier, fixed findings to run: all (the default), none,
#                     or some of keepalive,echo,halfclose,path (see fuzz/README.md)
#
# Needs cargo-fuzz: installed into ${XDG_CACHE_HOME:-~/.cache}/wsechod/tools if missing. The
# stable toolchain is enough with RUSTC_BOOTSTRAP=1 (cargo fuzz passes nightly-only flags).
#
# Exit status 0 when no target found anything; otherwise 1, after printing the artifact of
# every finding (crash, timeout, leak, out-of-memory) and the command that reproduces it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cache=${XDG_CACHE_HOME:-$HOME/.cache}/wsechod
tools=$cache/tools
seconds=${FUZZ_SECONDS:-60}
rss_mb=${FUZZ_RSS_MB:-2048}
sanitizer=${FUZZ_SANITIZER:-address}
corpus_root=${FUZZ_CORPUS_DIR:-$cache/fuzz-corpus}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$cache/fuzz-target}
# With a target directory shared between checkouts, cargo's usual freshness test (sources
# older than the last build) would take another checkout's build for this one's, whenever
# that build ran after this checkout's files were last changed. Compare contents instead
# (cargo -Zchecksum-freshness, allowed by RUSTC_BOOTSTRAP=1 like the rest of cargo fuzz).
export CARGO_UNSTABLE_CHECKSUM_FRESHNESS=true
# Where cargo fuzz puts the binaries: TARGET_DIR/HOST/release/TARGET.
bin_dir=$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release
export PATH=$tools/bin:$PATH

if ! command -v cargo-fuzz > /dev/null; then
    echo "fuzz: installing cargo-fuzz into $tools"
    cargo install cargo-fuzz --locked --root "$tools"
fi

if [[ -n ${FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<< "$FUZZ_TARGETS"
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

logs=$(mktemp -d "${TMPDIR:-/tmp}/wsechod-fuzz.XXXXXX")
trap 'rm -rf "$logs"' EXIT

echo "fuzz: building ${targets[*]} (sanitizer $sanitizer, $CARGO_BUILD_JOBS build job(s), in $CARGO_TARGET_DIR)"
build_start=$SECONDS
for t in "${targets[@]}"; do
    RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer "$sanitizer" "$t"
done
echo "fuzz: built in $((SECONDS - build_start)) s"

passed=0
failed=0
total_execs=0
total_time=0
findings=()
for t in "${targets[@]}"; do
    corpus=$corpus_root/$t
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    log=$logs/$t.log
    echo "fuzz: $t for ${seconds} s (corpus $corpus, seeds fuzz/seeds/$t)"
    start=$SECONDS
    status=0
    # The first corpus folder receives the new inputs; the seeds are only read.
    RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer "$sanitizer" "$t" "$corpus" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$root/fuzz/artifacts/$t/" \
        > "$log" 2>&1 || status=$?
    took=$((SECONDS - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 || true)
    total_execs=$((total_execs + ${execs:-0}))
    total_time=$((total_time + took))
    artifacts=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log")
    if [[ $status -eq 0 && -z $artifacts ]]; then
        passed=$((passed + 1))
        echo "fuzz: $t passed: ${execs:-?} executions (${rate:-?}/s), ${cov:-no coverage line}"
    else
        failed=$((failed + 1))
        echo "fuzz: $t FAILED (exit $status) after ${execs:-?} executions:"
        if grep -q -E 'panicked at|ERROR: (libFuzzer|[A-Za-z]+Sanitizer)' "$log"; then
            grep -E -A6 'panicked at|ERROR: (libFuzzer|[A-Za-z]+Sanitizer)' "$log" | head -n 40 |
                sed 's/^/    /'
        else
            grep -v -E '^#[0-9]+' "$log" | tail -n 40 | sed 's/^/    /'
        fi
        if [[ -z $artifacts ]]; then
            findings+=("$t: no artifact written (build or setup failure?), log above")
        fi
        # The checks the targets ran with (see fuzz/README.md) are part of the reproducer.
        # cargo fuzz run/tmin rebuild first: point them at the same build, not a cold fuzz/target.
        env="CARGO_TARGET_DIR=$CARGO_TARGET_DIR CARGO_UNSTABLE_CHECKSUM_FRESHNESS=true "
        if [[ -n ${WSECHOD_FUZZ_STRICT:-} ]]; then
            env="${env}WSECHOD_FUZZ_STRICT=$WSECHOD_FUZZ_STRICT "
        fi
        for a in $artifacts; do
            findings+=("$t: $a
    reproduce: ${env}RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $t $a
    see it:    ${env}WSECHOD_FUZZ_DEBUG=1 $bin_dir/$t $a
    minimize:  ${env}RUSTC_BOOTSTRAP=1 cargo fuzz tmin --sanitizer $sanitizer $t $a")
        done
    fi
done

for f in "${findings[@]}"; do
    echo "fuzz: finding in $f"
done
rate=0
if [[ $total_time -gt 0 ]]; then
    rate=$((total_execs / total_time))
fi
echo "fuzz: $total_execs executions in total in ${total_time} s (about $rate/s)"
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
