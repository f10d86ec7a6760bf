#!/usr/bin/env bash
# Steady-state etcd writes for round trips (issue 28): 3 gto instances in regions eu, us
# and ap (probing from 127.0.0.2, .3, .4) share one etcd; 100 pools x 100 endpoints, each
# a TCP check every 2 s on 127.1.P.M:PORT (one listener on 0.0.0.0 takes them all), a
# latency service per pool. After a warm-up, etcd's put and txn counters are read over a
# window: with stable round trips the published values never move, so RTT writes are ~0.
# BAND=0 runs the same with relative_band = 0 and absolute_band = "0s" (every move of
# the median is published) for contrast.
#   benches/rttwrites/run.sh            # ~2.5 min; WARMUP=60 WINDOW=60 by default
# Needs etcd (etcd-server), etcdctl (etcd-client), curl, bc, python3. Loopback only; every
# process it starts is stopped at exit, by PID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
gto=${GTO:-$repo/target/release/gto}
[ -x "$gto" ] || cargo build --release --manifest-path "$repo/Cargo.toml" >&2
WARMUP=${WARMUP:-60}
WINDOW=${WINDOW:-60}
POOLS=${POOLS:-100}
MEMBERS=${MEMBERS:-100}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client=$(free_port); peer=$(free_port); target=$(free_port)
etcd --name rtt --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "rtt=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
pids+=($!)
# The appliances: one listener for every 127.1.P.M, accepting and closing.
python3 - "$target" >"$work/targets.log" 2>&1 <<'PY' &
import socket, sys, selectors
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(65535); s.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_READ)
while True:
    sel.select(1.0)
    while True:
        try:
            c, _ = s.accept(); c.close()
        except BlockingIOError:
            break
        except OSError:
            break
PY
pids+=($!)
for i in $(seq 50); do curl -sf "http://127.0.0.1:$client/health" >/dev/null && break; sleep 0.2; done
{
    printf '$ORIGIN gto.example.com.\n$TTL 300\n@ SOA ns1 hostmaster 1 7200 3600 1209600 300\n@ NS ns1\nns1 A 127.0.0.1\n'
} >"$work/zone"
config() { # region source port
    local band=""
    [ "${BAND:-}" = 0 ] && band=$'relative_band = 0.0\nabsolute_band = "0s"'
    cat <<CONF
[server]
listen = ["127.0.0.1:$3"]
workers = 1
[admin]
enabled = false
[health]
source = "$2"
[cluster]
etcd = ["http://127.0.0.1:$client"]
name = "rttwrites"
instance = "$1-1"
region = "$1"
[latency]
vantages = ["eu", "us", "ap"]
$band
[[zone]]
origin = "gto.example.com."
file = "$work/zone"
[[geo.network]]
cidr = "10.1.0.0/16"
location = { region = "eu" }
[[geo.network]]
cidr = "10.2.0.0/16"
location = { region = "us" }
[[geo.network]]
cidr = "10.3.0.0/16"
location = { region = "ap" }
CONF
    for p in $(seq 0 $((POOLS - 1))); do
        printf '[[service]]\nname = "s%d.gto.example.com."\npool = "p%d"\npolicy = "latency"\n' "$p" "$p"
        printf '[[pool]]\nname = "p%d"\ncheck = { kind = "tcp", port = %d, interval = "2s", timeout = "1s" }\n' "$p" "$target"
        for m in $(seq 1 "$MEMBERS"); do
            printf '[[pool.member]]\nname = "m%d"\naddresses = ["127.1.%d.%d"]\n' "$m" "$p" "$m"
        done
    done
}
n=0
for spec in "eu 127.0.0.2" "us 127.0.0.3" "ap 127.0.0.4"; do
    set -- $spec
    port=$(free_port)
    config "$1" "$2" "$port" >"$work/$1.toml"
    "$gto" run --config "$work/$1.toml" >"$work/$1.log" 2>&1 &
    pids+=($!)
    n=$((n + 1))
done
counters() {
    curl -s "http://127.0.0.1:$client/metrics" \
        | awk '/^etcd_mvcc_put_total /{p=$2} /^etcd_mvcc_txn_total /{t=$2} END{printf "%d %d\n", p, t}'
}
echo "warm-up ${WARMUP}s (3 instances x $POOLS pools x $MEMBERS endpoints, TCP every 2 s)..." >&2
sleep "$WARMUP"
read -r p0 t0 < <(counters)
rev0=$(etcdctl --endpoints "http://127.0.0.1:$client" get / -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
cpu0=$(for pid in "${pids[@]:2}"; do awk '{print $14+$15}' "/proc/$pid/stat"; done | paste -sd+ | bc)
sleep "$WINDOW"
read -r p1 t1 < <(counters)
cpu1=$(for pid in "${pids[@]:2}"; do awk '{print $14+$15}' "/proc/$pid/stat"; done | paste -sd+ | bc)
tck=$(getconf CLK_TCK)
# Vote documents (where round trips live) written in the window: keys changed since rev0
# (a key written twice counts once), and the revisions of the whole store meanwhile.
read -r changed rev1 < <(etcdctl --endpoints "http://127.0.0.1:$client" get --prefix / -w json | python3 -c '
import json, sys
d = json.load(sys.stdin); rev0 = int(sys.argv[1])
kvs = d.get("kvs", [])
import base64
votes = [kv for kv in kvs if b"/votes/" in base64.b64decode(kv["key"]) and int(kv["mod_revision"]) > rev0]
print(len(votes), d["header"]["revision"])' "$rev0")
python3 - <<PY
puts = $p1 - $p0; txns = $t1 - $t0; window = $WINDOW
cpu = ($cpu1 - $cpu0) / $tck / window / 3 * 100
print(f"band: {'off (0, 0s)' if '${BAND:-}' == '0' else 'default (20 %, 5 ms)'}")
print(f"etcd puts over {window} s: {puts} ({puts / window:.2f}/s), txns {txns} ({txns / window:.2f}/s)")
print(f"vote documents (round trips, verdicts) changed in the window: {$changed} of 300; store revisions {$rev1 - $rev0}")
print(f"gto CPU per instance: {cpu:.1f} % of a core")
PY
# The round trips each instance holds (a sample), to show they are measured and shared.
etcdctl --endpoints "http://127.0.0.1:$client" get --prefix "" --keys-only 2>/dev/null | grep -c votes | sed 's/^/vote documents in etcd: /'
etcdctl --endpoints "http://127.0.0.1:$client" get --prefix "" 2>/dev/null | grep -A1 "votes/p0/" | grep -o '"rtt":{[^}]*}' | head -1 | cut -c1-160
