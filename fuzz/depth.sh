#!/usr/bin/env bash
# Fuzzing to depth: every target until it has run N inputs (default 10 million; the guard,
# whose runs are slow, 1 million), one target after another on
# one core, starting from the corpus kept in fuzz/corpus/TARGET and adding to it. Built
# without a sanitizer (`-s none`): no crate these targets reach has `unsafe` code (the
# workspace forbids it), and the runs are several times faster; debug assertions (`-a`,
# overflow checks included) are on. A crash stops the script with libFuzzer's report
# and the input in fuzz/artifacts/TARGET/.
#
#   fuzz/depth.sh                 # every target
#   fuzz/depth.sh sse_framer zip  # some
#   RUNS=100000 fuzz/depth.sh     # a quick pass
#
# Needs `cargo install cargo-fuzz` and a nightly toolchain. Writes a summary line per
# target (executions, time, coverage, corpus size) to fuzz/depth.log.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
SLOW_RUNS=${SLOW_RUNS:-1000000}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O -a -s none 2>&1 | tail -1
for t in "${targets[@]}"; do
  runs=$RUNS
  case $t in guard) runs=$SLOW_RUNS ;; esac
  mkdir -p "corpus/$t"
  start=$(date +%s)
  cargo +nightly fuzz run -O -a -s none "$t" "corpus/$t" -- \
    -runs="$runs" -max_len=65536 -print_final_stats=1 >"/tmp/fuzz-$t.log" 2>&1 || {
    tail -40 "/tmp/fuzz-$t.log"
    echo "fuzz/depth.sh: $t FAILED (see fuzz/artifacts/$t)" >&2
    exit 1
  }
  secs=$(($(date +%s) - start))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "/tmp/fuzz-$t.log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "/tmp/fuzz-$t.log" | tail -1 | grep -o '[0-9]*')
  # Keep the corpus small: only inputs that add coverage.
  cargo +nightly fuzz cmin -O -a -s none "$t" "corpus/$t" >/dev/null 2>&1 || true
  files=$(find "corpus/$t" -type f | wc -l)
  line="$(date -u +%F) $t: $execs executions in ${secs}s, coverage $cov edges, corpus $files files, no crash"
  echo "$line"
  echo "$line" >>depth.log
done
