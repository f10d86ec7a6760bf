#!/usr/bin/env python3
"""CPU per answer of gto against the kernel floor, paired (issue 34): both servers run at
once, each pinned to the last CPU, and dnsperf (on CPU 0) loads one, then the other, for a
few seconds each, round after round; each round's ratio compares two runs seconds apart,
so the drift of a noisy VM (its speed moves 20 % over minutes) cancels out, which the
harness's medians of runs 20 s apart do not. Not a test: figures for the README and the
issue. Bounded: rounds x 2 runs of --seconds each.

    benches/peers/paired.py [--gto target/release/gto] [--signed] [--workload vpn|mix|ecs]
                            [--rounds 8] [--seconds 3]

The floor is ../shared/bench/null-floor.c (built into a temporary directory), gto runs
benches/peers/gto.toml on the harness's zone, as benches/peers/run.sh has it (--signed:
a fresh key, and every query with DO). Prints each round's µs of server CPU per answer
and their ratio, then the median ratio.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.path.join(REPO, "..", "shared", "bench")
ECS = "8:00011800c63364"  # 198.51.100.0/24, as the harness sends it


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_answering(port):
    for _ in range(200):
        done = subprocess.run(
            ["dig", "+time=1", "+tries=1", "+short", "-p", str(port), "@127.0.0.1", "vpn.gto.example.com"],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0 and re.match(r"\d+\.\d+\.\d+\.\d+", done.stdout):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing answers on port {port}")


def load(port, queries, seconds, extra):
    command = ["taskset", "-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries]
    command += ["-c", "8", "-T", "1", "-q", "100", "-l", str(seconds), "-t", "2"]
    command += ["-O", "suppress=timeouts,congestion,sendfailed,sockready,unexpected"] + extra
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    completed = re.search(r"Queries completed:\s+(\d+)", out)
    return int(completed.group(1)) if completed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gto", default=os.path.join(REPO, "target/release/gto"))
    parser.add_argument("--signed", action="store_true")
    parser.add_argument("--workload", choices=("vpn", "mix", "ecs"), default="vpn")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--port", type=int, default=25480)
    args = parser.parse_args()
    args.gto = os.path.abspath(args.gto)
    last = str((os.cpu_count() or 1) - 1)
    d = tempfile.mkdtemp(prefix="paired-")
    procs = []
    try:
        floor = os.path.join(d, "null-floor")
        subprocess.run(["cc", "-O2", "-o", floor, os.path.join(SHARED, "null-floor.c")], check=True)
        zone = os.path.join(SHARED, "data", "gto.example.com.common.zone")
        with open(os.path.join(HERE, "gto.toml")) as f:
            config = f.read().replace("@PORT@", str(args.port + 1)).replace("@ZONE@", zone)
        if args.signed:
            subprocess.run(
                [args.gto, "dnssec", "keygen", "--zone", "gto.example.com.", "--dir", os.path.join(d, "keys")],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            config = re.sub(r"(?m)^(file = .*)$", r'\1\ndnssec = { keys = "keys" }', config, count=1)
        with open(os.path.join(d, "gto.toml"), "w") as f:
            f.write(config)
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d)
        servers = [
            ("null", args.port, subprocess.Popen(["taskset", "-c", last, floor, str(args.port)], **quiet)),
            ("gto", args.port + 1, subprocess.Popen(["taskset", "-c", last, args.gto, "run", "--config", "gto.toml"], **quiet)),
        ]
        procs = [p for _, _, p in servers]
        for _, port, _ in servers:
            wait_answering(port)
        workload = "mix" if args.workload == "mix" else "vpn"
        queries = os.path.join(SHARED, "data", f"queries-{workload}.txt")
        extra = (["-D"] if args.signed else []) + (["-E", ECS] if args.workload == "ecs" else [])
        for _, port, _ in servers:  # warm up, unrecorded
            load(port, queries, 1, extra)
        ratios = []
        print(f"{'round':>5} {'null us/q':>10} {'gto us/q':>10} {'ratio':>6}")
        for r in range(args.rounds):
            cost = {}
            # Alternate which goes first, so a drift within a round favours neither.
            for name, port, proc in servers if r % 2 == 0 else servers[::-1]:
                before = cpu_seconds(proc.pid)
                answers = load(port, queries, args.seconds, extra)
                cost[name] = (cpu_seconds(proc.pid) - before) / max(answers, 1) * 1e6
            ratios.append(cost["gto"] / cost["null"])
            print(f"{r + 1:>5} {cost['null']:>10.2f} {cost['gto']:>10.2f} {ratios[-1]:>6.3f}", flush=True)
        kind = "signed, DO" if args.signed else "unsigned"
        print(f"median gto/null ({args.workload}, {kind}, {args.rounds} rounds of {args.seconds} s): "
              f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
