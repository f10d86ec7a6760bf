#!/usr/bin/env python3
"""Restart gaps under a steady load (issue 35): how long a server stops answering when it
is restarted as systemd does (SIGTERM, wait for the exit, start again), for gto beside
Knot and gdnsd (when installed), with a small zone or a big one (--records N); with
--replace, gto's upgrade path instead (`gto replace`: the new process takes over the
sockets), which must lose nothing.

A prober sends --rate queries/s (default 20,000) over UDP on loopback, each for its own
name (q<n>.gto.example.com: an NXDOMAIN from the zone, so every query is answered by every
server the same way), and records when each was sent and whether it was answered. Each
restart's gap is the longest run of send times around it with no query answered; lost is
how many queries in it went unanswered; late is the longest any query sent around a
restart waited for its answer (one held in a socket while the server started counts as
answered, and shows here). Each server runs alone, one after the other, on
its own port; every step is bounded in time. Not a test: figures for the README and the
issue.

    benches/restart/run.py [--gto target/release/gto] [--servers gto,knot,gdnsd]
                           [--tries 25] [--records 0] [--rate 20000] [--replace]
"""

import argparse
import array
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bigzone"))
import run as bigzone  # noqa: E402  (the zone text and server set-ups of benches/bigzone)

ORIGIN = bigzone.ORIGIN


class Prober:
    """Sends queries at a fixed rate from one thread and reads answers in another."""

    def __init__(self, port, rate, seconds):
        self.port = port
        self.rate = rate
        self.total = int(rate * seconds)
        self.sent = array.array("d", bytes(8 * self.total))
        self.answered = bytearray(self.total)
        # When each answer came (its delay shows queries answered late, e.g. held in a
        # socket bound before the server was ready).
        self.received = array.array("d", bytes(8 * self.total))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.settimeout(0.2)
        self.stop = False
        self.count = 0

    def query(self, n):
        name = f"q{n}.{ORIGIN}"
        body = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
        return struct.pack(">HHHHHH", n & 0xFFFF, 0x0000, 1, 0, 0, 0) + body + b"\x00\x01\x00\x01"

    def send_loop(self):
        start = time.monotonic()
        address = ("127.0.0.1", self.port)
        n = 0
        while n < self.total and not self.stop:
            due = start + n / self.rate
            now = time.monotonic()
            if now < due:
                time.sleep(min(due - now, 0.001))
                continue
            self.sent[n] = now
            try:
                self.sock.sendto(self.query(n), address)
            except OSError:
                pass  # nothing listening: counted as unanswered
            n += 1
        self.count = n

    def receive_loop(self):
        while not self.stop:
            try:
                reply = self.sock.recv(512)
            except socket.timeout:
                continue
            except OSError:
                continue
            # The name's first label is q<n>: the 13th byte holds its length.
            if len(reply) < 14:
                continue
            length = reply[12]
            label = reply[13 : 13 + length]
            if label[:1] == b"q" and label[1:].isdigit():
                n = int(label[1:])
                if n < self.total:
                    self.answered[n] = 1
                    self.received[n] = time.monotonic()

    def start(self):
        self.threads = [threading.Thread(target=self.send_loop), threading.Thread(target=self.receive_loop)]
        for t in self.threads:
            t.start()

    def finish(self):
        self.threads[0].join()
        time.sleep(0.5)  # stragglers
        self.stop = True
        self.threads[1].join()

    def gap(self, after, before):
        """The longest run of unanswered sends between the times `after` and `before`, and
        the queries lost in the window."""
        return self.window(after, before)[:2]

    def late(self, after, before):
        """The longest an answered query sent between `after` and `before` waited."""
        return self.window(after, before)[2]

    def window(self, after, before):
        """(longest gap, lost, longest answer delay) for sends between the two times."""
        longest, lost, last_answered, late = 0.0, 0, None, 0.0
        run_start = None
        for n in range(self.count):
            t = self.sent[n]
            if t < after or t > before:
                continue
            if self.answered[n]:
                late = max(late, self.received[n] - t)
                if run_start is not None and last_answered is not None:
                    longest = max(longest, t - last_answered)
                run_start = None
                last_answered = t
            else:
                lost += 1
                if run_start is None:
                    run_start = t
        return longest, lost, late


def wait_answer(port, limit):
    return bigzone.wait_answer(port, f"ns1.{ORIGIN}", limit)


def measure(server, records, port, gto, tries, rate):
    d = tempfile.mkdtemp(prefix=f"restart-{server}-")
    procs = []
    try:
        command, zone, _reload = bigzone.setup(server, d, port, gto, False)
        with open(zone, "w") as f:
            f.write(bigzone.zone_text(records, 1))
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        if wait_answer(port, 120) is None:
            return {"server": server, "error": "no answer within 120 s"}
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_answer(port, 120)
        startup = time.monotonic() - started
        # Long enough for every restart: start time plus a second each, and a margin.
        seconds = 1.0 + tries * (startup + 1.0) + 2.0
        prober = Prober(port, rate, seconds)
        prober.start()
        events = []
        time.sleep(1.0)
        for _ in range(tries):
            t0 = time.monotonic()
            stop(proc, 30)
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait_answer(port, 120)
            t1 = time.monotonic()
            events.append((t0, t1))
            time.sleep(0.7)
        prober.finish()
        gaps = []
        for t0, t1 in events:
            gap, lost, late = prober.window(t0 - 0.2, t1 + 0.5)
            gaps.append((gap, lost, late))
        return {"server": server, "gaps": gaps, "sent": prober.count, "answered": sum(prober.answered)}
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p, 20)
        shutil.rmtree(d, ignore_errors=True)


def stop(proc, limit):
    """SIGTERM, then SIGKILL after `limit` seconds; waits for the exit."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def admin_pid(admin, limit=30.0):
    """The serving gto's process id, from its admin API (retried while it starts)."""
    import json

    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"http://{admin}/v1/status", timeout=5) as reply:
                return json.load(reply)["instance"]["pid"]
        except OSError:
            if time.monotonic() - started > limit:
                raise
            time.sleep(0.05)


def measure_replace(records, port, gto, tries, rate):
    """`gto replace` under the prober: each replacement's gap and lost queries."""
    d = tempfile.mkdtemp(prefix="replace-gto-")
    admin = f"127.0.0.1:{port + 100}"
    pid = None
    try:
        zone = os.path.join(d, "gto.example.com.zone")
        with open(zone, "w") as f:
            f.write(bigzone.zone_text(records, 1))
        config = os.path.join(d, "gto.toml")
        with open(config, "w") as f:
            f.write(
                f'[server]\nlisten = ["127.0.0.1:{port}"]\n[admin]\nlisten = "{admin}"\n'
                f'[[zone]]\norigin = "{ORIGIN}."\nfile = "gto.example.com.zone"\n'
            )
        first = subprocess.Popen(
            [gto, "run", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if wait_answer(port, 120) is None:
            return {"server": "gto", "error": "no answer within 120 s"}
        pid = admin_pid(admin)
        prober = Prober(port, rate, 1.0 + tries * 3.0 + 2.0)
        prober.start()
        time.sleep(1.0)
        events, failures = [], 0
        for _ in range(tries):
            t0 = time.monotonic()
            done = subprocess.run(
                [gto, "replace", "--config", config, "--pid", str(pid)],
                capture_output=True,
                timeout=120,
            )
            if done.returncode != 0:
                failures += 1
                print(done.stderr.decode(errors="replace").strip(), file=sys.stderr)
            pid = admin_pid(admin)
            events.append((t0, time.monotonic()))
            time.sleep(0.5)
        prober.finish()
        first.wait(5)
        gaps = [prober.gap(t0 - 0.2, t1 + 0.5) for t0, t1 in events]
        return {"server": "gto", "gaps": gaps, "sent": prober.count, "failures": failures}
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        shutil.rmtree(d, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=0)
    parser.add_argument("--gto", default="target/release/gto")
    parser.add_argument("--servers", default="gto,knot,gdnsd")
    parser.add_argument("--tries", type=int, default=25)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--port", type=int, default=25600)
    parser.add_argument("--replace", action="store_true")
    args = parser.parse_args()
    if args.replace:
        r = measure_replace(args.records, args.port, args.gto, args.tries, args.rate)
        if "error" in r:
            raise SystemExit(r["error"])
        gaps = [g[0] * 1000 for g in r["gaps"]]
        lost = sum(g[1] for g in r["gaps"])
        print(
            f"{args.records} extra A records; {args.tries} replacements (gto replace) under "
            f"{args.rate} queries/s: {lost} of {r['sent']} queries lost, longest gap "
            f"{max(gaps):.1f} ms, {r['failures']} replacements failed"
        )
        return
    print(
        f"{args.records} extra A records; {args.tries} restarts (SIGTERM, exit, start) under "
        f"{args.rate} queries/s; gap = longest time with no query answered, in ms"
    )
    print(f"{'server':8} {'median':>7} {'p90':>7} {'max':>7} {'over 15':>8} {'lost':>7} {'sent':>9} {'late':>7}")
    for i, server in enumerate(args.servers.split(",")):
        if server != "gto" and shutil.which({"knot": "knotd", "gdnsd": "gdnsd"}.get(server, server)) is None:
            print(f"{server:8} not installed (../shared/bench/peers.sh setup installs it)")
            continue
        r = measure(server, args.records, args.port + i, args.gto, args.tries, args.rate)
        if "error" in r:
            print(f"{server:8} {r['error']}")
            continue
        gaps = sorted(g[0] * 1000 for g in r["gaps"])
        lost = sum(g[1] for g in r["gaps"])
        late = max(g[2] for g in r["gaps"]) * 1000
        over = sum(1 for g in gaps if g > 15)
        median = gaps[len(gaps) // 2]
        p90 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.9))]
        print(f"{server:8} {median:7.1f} {p90:7.1f} {gaps[-1]:7.1f} {over:8} {lost:7} {r['sent']:9} {late:7.1f}")
        print(f"{'':8} every gap: {' '.join(f'{g[0] * 1000:.1f}' for g in r['gaps'])}")
        print(f"{'':8} every late: {' '.join(f'{g[2] * 1000:.1f}' for g in r['gaps'])}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
