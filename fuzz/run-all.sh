#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds (default 10: the CI smoke run), two at a time.
# RUSTC_BOOTSTRAP=1 lets the pinned stable toolchain take cargo-fuzz's -Z flags.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-10}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O >/dev/null
targets=(iptables_save nft_json docker_json kernel_text ring_records monitor_lines journal_lines ruleset_text)
run() {
  local t=$1
  mkdir -p "corpus/$t"
  cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$SECS" -print_final_stats=1 \
    > "corpus/$t.log" 2>&1 || { echo "fuzz target $t FAILED:"; tail -30 "corpus/$t.log"; return 1; }
  echo "fuzz $t: $(grep -E 'stat::number_of_executed_units' "corpus/$t.log" | awk '{print $2}') runs in ${SECS}s, no crash"
}
status=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" & a=$!
  run "${targets[i+1]}" & b=$!
  wait $a || status=1
  wait $b || status=1
done
exit $status
