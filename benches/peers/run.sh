#!/usr/bin/env bash
# Runs the peer harness (../../../shared/bench/peers.sh) with gto as the server under test,
# side by side with gdnsd, PowerDNS, Knot and hickory-dns. Extra arguments and the
# harness's environment knobs pass through, e.g.
#   benches/peers/run.sh check                  # start each server once and check answers
#   benches/peers/run.sh                         # the full comparison (~7 min)
#   PEERS=gdnsd WORKLOADS="vpn ecs" benches/peers/run.sh
#   SIGNED=1 DNSPERF_EXTRA=-D PEERS=gdnsd benches/peers/run.sh   # signed answers (DO)
# Needs `peers.sh setup` once (root: dnsperf, gdnsd, knot, pdns, hickory-dns).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
harness=${PEERS_SH:-$repo/../shared/bench/peers.sh}
cargo build --release --manifest-path "$repo/Cargo.toml" >&2
# SIGNED=1: the zone is signed (a fresh ECDSA P-256 CSK per start); with
# DNSPERF_EXTRA=-D every query has DO and gets signed answers.
if [ "${SIGNED:-0}" = 1 ]; then
    export SUT_NAME=${SUT_NAME:-gto-signed}
    sign="'$repo/target/release/gto' dnssec keygen --zone gto.example.com. --dir keys >/dev/null \
 && sed -i 's|^file = .*|&\\ndnssec = { keys = \"keys\" }|' gto.toml && "
else
    export SUT_NAME=${SUT_NAME:-gto}
    sign=""
fi
export SUT_CMD="rm -rf keys && sed -e \"s|@PORT@|\$BENCH_PORT|\" \
 -e \"s|@ZONE@|\$BENCH_DATA/gto.example.com.common.zone|\" '$here/gto.toml' > gto.toml \
 && $sign exec '$repo/target/release/gto' run --config gto.toml"
exec "$harness" "$@"
