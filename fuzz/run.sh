#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 60) on the stable toolchain, starting from the
# committed seed corpus. Needs `cargo install cargo-fuzz`. Crashes land in
# fuzz/artifacts/<target>/; turn each into a regression test before fixing it.
#   fuzz/run.sh                 # every target, 60 s each
#   SECONDS_EACH=600 fuzz/run.sh fast_path handler
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_EACH:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fast_path handler config zone)
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048
done
