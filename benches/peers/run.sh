#!/usr/bin/env bash
# Runs the peer harness (../../../shared/bench/peers.sh) with gto as the server under test,
# side by side with gdnsd, PowerDNS, Knot and hickory-dns. Extra arguments and the
# harness's environment knobs pass through, e.g.
#   benches/peers/run.sh check                  # start each server once and check answers
#   benches/peers/run.sh                         # the full comparison (~7 min)
#   PEERS=gdnsd WORKLOADS="vpn ecs" benches/peers/run.sh
# Needs `peers.sh setup` once (root: dnsperf, gdnsd, knot, pdns, hickory-dns).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
harness=${PEERS_SH:-$repo/../shared/bench/peers.sh}
cargo build --release --manifest-path "$repo/Cargo.toml" >&2
export SUT_NAME=${SUT_NAME:-gto}
export SUT_CMD="sed -e \"s|@PORT@|\$BENCH_PORT|\" \
 -e \"s|@ZONE@|\$BENCH_DATA/gto.example.com.common.zone|\" '$here/gto.toml' > gto.toml \
 && exec '$repo/target/release/gto' run --config gto.toml"
exec "$harness" "$@"
