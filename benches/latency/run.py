#!/usr/bin/env python3
"""Latency at fixed rates (issue 34): p50, p99 and max per query for gto and gdnsd (when
installed; `--servers gto,gdnsd,null` adds the harness's kernel floor, UDP only) serving
the same zone on loopback, at 1k, 20k and 100k queries/s and at
saturation over UDP, and over TCP with 20 connections. Per-query times come from
dnsperf -v; one server is loaded at a time; every run is bounded (5 s each). Not a test: figures
for the README and the issue.

    benches/latency/run.py [--gto target/release/gto] [--servers gto,gdnsd] [--seconds 5]
                           [--pin same|split] [--transports udp,tcp]
                           [--rates 1000,20000,100000,0] [--runs 1]

With --runs N every row is measured N times, the servers one after the other within a
row (all of them run from the start, each on its port; the order reversed every other
run), and each row's median p50 and p99 are printed at the end: on a VM a single run's
rows move by several µs. Then, per row, every other server against the first, paired by
run: the median of its p50 and p99 less the first's, and in how many runs the first's was
no higher. `--servers gto,gdnsd,gto` runs a second, identical gto (named gto-b): the
A/A control, whose differences from the first are this machine's noise, the yardstick
for the others'.

--pin same runs the server and dnsperf on one CPU (the last), --pin split the server on the
last and dnsperf on CPU 0. Unpinned, at low rates the p50 of either server is bimodal on a
VM (0.03 or 0.15 ms from run to run): whether the scheduler put the two on one CPU or woke
an idle one, which costs ~0.1 ms here. `same` measures the server's own path; `split` the
cost with a cross-CPU wake-up for every query; saturation is only meaningful unpinned or
split.
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

ZONE = """$ORIGIN gto.example.com.
$TTL 300
@ IN SOA ns1.gto.example.com. hostmaster.example.com. 1 3600 600 86400 300
@ IN NS ns1.gto.example.com.
ns1 IN A 127.0.0.1
www IN A 192.0.2.80
www IN AAAA 2001:db8::80
"""

QUERIES = "www.gto.example.com A\ngto.example.com SOA\nwww.gto.example.com AAAA\nnx.gto.example.com A\n"


def pinned(command, cpu):
    return ["taskset", "-c", str(cpu)] + command if cpu is not None else command


def start(server, d, port, gto, cpu=None):
    if server == "gto":
        with open(os.path.join(d, "gto.example.com.zone"), "w") as f:
            f.write(ZONE)
        with open(os.path.join(d, "gto.toml"), "w") as f:
            f.write(
                f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = 2\ntcp_threads = 1\n[admin]\nenabled = false\n'
                '[rrl]\nenabled = false\n'
                '[[zone]]\norigin = "gto.example.com."\nfile = "gto.example.com.zone"\n'
            )
        # Threads as gdnsd's below: two for UDP, one for TCP.
        command = [gto, "run", "--config", os.path.join(d, "gto.toml")]
    elif server == "null":
        # The kernel floor of ../shared/bench (one thread, one fixed answer, no DNS), with
        # no pause after small batches: the least latency a UDP server has here.
        floor = os.path.join(d, "null-floor")
        here = os.path.dirname(os.path.abspath(__file__))
        source = os.path.join(here, "..", "..", "..", "shared", "bench", "null-floor.c")
        subprocess.run(["cc", "-O2", "-o", floor, source], check=True)
        command = ["env", "NULL_COALESCE_US=0", floor, str(port)]
    else:
        os.makedirs(os.path.join(d, "zones"))
        with open(os.path.join(d, "zones", "gto.example.com"), "w") as f:
            f.write(ZONE)
        with open(os.path.join(d, "config"), "w") as f:
            f.write(
                f"options => {{\n  listen => [ 127.0.0.1:{port} ]\n  udp_threads => 2\n  tcp_threads => 1\n"
                f'  run_dir => "{d}/run"\n  state_dir => "{d}/state"\n}}\n'
            )
        command = ["gdnsd", "-c", d, "start"]
    proc = subprocess.Popen(pinned(command, cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.05)
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x03gto\x07example\x03com\x00\x00\x01\x00\x01"
    for _ in range(400):
        try:
            sock.sendto(query, ("127.0.0.1", port))
            sock.recv(512)
            return proc
        except OSError:
            time.sleep(0.025)
    proc.kill()
    raise SystemExit(f"{server} did not answer")


def cpu_ns(pid):
    """The server's CPU time so far, every thread's, in ns (the scheduler's own count)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def run(port, queries, rate, seconds, tcp, cpu=None, pid=None):
    command = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries, "-l", str(seconds), "-v"]
    command += ["-m", "tcp", "-c", "20"] if tcp else ["-c", "4"]
    if rate:
        command += ["-Q", str(rate)]
    before = cpu_ns(pid) if pid else 0
    out = subprocess.run(pinned(command, cpu), capture_output=True, text=True, timeout=seconds + 30).stdout
    spent = cpu_ns(pid) - before if pid else 0
    lines = [line.split() for line in out.splitlines() if line.startswith("> ")]
    # "> T name type": a query that timed out (lost); otherwise the last field is its time.
    lost = sum(1 for fields in lines if fields[1] == "T")
    times = sorted(float(fields[-1]) for fields in lines if fields[1] != "T")
    qps = next((line.split()[3] for line in out.splitlines() if "Queries per second" in line), "?")
    if not times:
        return None
    pick = lambda q: times[min(len(times) - 1, int(len(times) * q))] * 1000
    # The server's CPU per answer in µs: at a low rate, what one wake-up and one answer cost
    # it (caches cold after the idle time between queries included).
    return len(times), lost, qps, pick(0.5), pick(0.99), times[-1] * 1000, spent / 1000 / len(times)


def paired(first, by_run):
    """Per row, every other server against `first`, run by run (`by_run`: each row's
    results by run number; a run without answers pairs with nothing): the median
    difference of p50 and p99 (µs, the other's less the first's) and in how many runs
    `first`'s was no higher."""
    print(f"\npaired by run, against {first} (µs; >0: {first} lower)")
    print(f"{'server':6} {'transport':9} {'rate':>10} {'p50 diff':>8} {'no higher':>9} {'p99 diff':>8} {'no higher':>9}")
    for (server, transport, label), got in by_run.items():
        mine = by_run.get((first, transport, label), {})
        pairs = [(mine[r], got[r]) for r in got if r in mine]
        if server == first or not pairs:
            continue
        d50 = [(o[3] - m[3]) * 1000 for m, o in pairs]
        d99 = [(o[4] - m[4]) * 1000 for m, o in pairs]
        runs = len(pairs)
        print(
            f"{server:6} {transport:9} {label:>10} {statistics.median(d50):8.1f} {sum(d >= 0 for d in d50):>4}/{runs:<4}"
            f" {statistics.median(d99):8.1f} {sum(d >= 0 for d in d99):>4}/{runs:<4}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gto", default="target/release/gto")
    parser.add_argument("--servers", default="gto,gdnsd")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--port", type=int, default=25450)
    parser.add_argument("--pin", choices=("same", "split"), help="CPU placement (see above)")
    parser.add_argument("--transports", default="udp,tcp", help="udp, tcp or both (udp,tcp)")
    parser.add_argument("--rates", default="1000,20000,100000,0", help="UDP rates, 0: saturation (TCP: 1000 and 20000 of them)")
    parser.add_argument("--runs", type=int, default=1, help="repeat every row; then print each row's medians")
    args = parser.parse_args()
    last = (os.cpu_count() or 1) - 1
    server_cpu = last if args.pin else None
    load_cpu = {"same": last, "split": 0}.get(args.pin)
    rates = [int(r) for r in args.rates.split(",")]
    wanted = args.transports.split(",")
    rows = [(False, rate) for rate in rates if "udp" in wanted]
    rows += [(True, rate) for rate in rates if "tcp" in wanted and rate in (1000, 20000)]
    servers = []
    try:
        # Every server runs from the start, each on its port; only the one loaded works.
        names = []
        for i, server in enumerate(args.servers.split(",")):
            if server not in ("gto", "null") and shutil.which(server) is None:
                print(f"{server:6} not installed (../shared/bench/peers.sh setup installs it)")
                continue
            d = tempfile.mkdtemp(prefix=f"latency-{server}-")
            port = args.port + i
            queries = os.path.join(d, "queries.txt")
            with open(queries, "w") as f:
                f.write(QUERIES)
            proc = start(server, d, port, args.gto, server_cpu)
            # A server named twice is a control: the second is "gto-b", the third "gto-c".
            name = server if server not in names else f"{server}-{'bcdefgh'[names.count(server) - 1]}"
            names.append(server)
            servers.append((name, port, queries, d, proc))
        print(f"{'server':6} {'transport':9} {'rate':>10} {'answers':>8} {'lost':>5} {'qps':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'cpu us/q':>8}")
        results = {}
        by_run = {}
        # Row by row, the servers one after the other: each row's figures are minutes apart
        # at most, whatever the VM does meanwhile.
        for r in range(args.runs):
            for tcp, rate in rows:
                # Every other run the other way round: no server always goes first.
                for server, port, queries, _, proc in servers if r % 2 == 0 else servers[::-1]:
                    if tcp and server == "null":
                        continue  # the floor has no TCP
                    result = run(port, queries, rate, args.seconds, tcp, load_cpu, proc.pid)
                    label = "saturation" if rate == 0 else f"{rate}/s"
                    transport = "tcp x20" if tcp else "udp"
                    if result is None:
                        print(f"{server:6} {transport:9} {label:>10} no answers")
                        continue
                    n, lost, qps, p50, p99, worst, cpu = result
                    results.setdefault((server, transport, label), []).append(result)
                    by_run.setdefault((server, transport, label), {})[r] = result
                    print(f"{server:6} {transport:9} {label:>10} {n:>8} {lost:>5} {qps:>9} {p50:7.3f} {p99:7.3f} {worst:7.3f} {cpu:8.2f}", flush=True)
        if args.runs > 1:
            print(f"\nmedians of {args.runs} runs (lost: all runs; max: the largest)")
            print(f"{'server':6} {'transport':9} {'rate':>10} {'lost':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'cpu us/q':>8}")
            for (server, transport, label), got in results.items():
                p50 = statistics.median(r[3] for r in got)
                p99 = statistics.median(r[4] for r in got)
                print(f"{server:6} {transport:9} {label:>10} {sum(r[1] for r in got):>5} {p50:7.3f} {p99:7.3f} {max(r[5] for r in got):7.3f} {statistics.median(r[6] for r in got):8.2f}")
            if len(servers) > 1:
                paired(servers[0][0], by_run)
    finally:
        for _, _, _, d, proc in servers:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
