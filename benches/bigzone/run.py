#!/usr/bin/env python3
"""A big zone side by side (issue 35): start to first answer, reload to new data, and
resident memory, for gto, Knot and gdnsd serving the same zone of N A records
(default 200,000) on loopback. Each server runs alone, one after the other, on its own
port; every step is bounded in time. Not a test: figures for the README and the issue.

    benches/bigzone/run.py [--records N] [--gto target/release/gto] [--servers gto,knot,gdnsd]
                           [--signed] [--wildcard]

Start: from exec to the first answer for a name of the zone (UDP, polled every ms; with
--signed, a query with DO, and only an answer with its RRSIG counts).
Reload: the zone file gets a new record and a higher serial, the server is told to
reload (gto: SIGHUP; Knot: knotc zone-reload; gdnsd: gdnsdctl reload-zones), then the
time until the new record is answered; each reload starts once the server has been idle
(no CPU time) for half a second. RSS: VmRSS after the first load, and after three
reloads, each once it has settled (unchanged for a second). Restart: the server is
stopped (SIGTERM, waited for) and started again on the same files and state, exec to
first answer.

--signed: the zone is signed with one ECDSA P-256 key (gto: `gto dnssec keygen`, with a
state file, where gto keeps the zone's signatures across restarts; Knot: automatic
signing with a single-type ECDSA P-256 policy, its journal keeping the signed zone);
gdnsd does not sign and is left out.

--wildcard: the zone also has `* IN TXT "any"` at its apex (signed, every name of the
zone is then in the wildcard's NSEC chain).
"""

import argparse
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ORIGIN = "gto.example.com"


# Set by --wildcard: the zone has a wildcard at its apex.
WILDCARD = False


def zone_text(records, serial, extra=()):
    if WILDCARD:
        extra = ['* IN TXT "any"', *extra]
    lines = [
        f"$ORIGIN {ORIGIN}.",
        "$TTL 300",
        f"@ IN SOA ns1.{ORIGIN}. hostmaster.example.com. {serial} 3600 600 86400 300",
        f"@ IN NS ns1.{ORIGIN}.",
        "ns1 IN A 127.0.0.1",
    ]
    lines += [f"h{i} IN A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(records)]
    lines += list(extra)
    return "\n".join(lines) + "\n"


# Set by --signed: queries carry EDNS with DO, and only an answer with its RRSIG counts.
SIGNED = False


def query(name):
    body = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    if not SIGNED:
        return struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + body + b"\x00\x01\x00\x01"
    # OPT: root owner, type 41, 4096-octet payload, DO set, no options.
    opt = b"\x00" + struct.pack(">HHIH", 41, 4096, 0x8000, 0)
    return struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 1) + body + b"\x00\x01\x00\x01" + opt


def answered(port, name, sock):
    try:
        sock.sendto(query(name), ("127.0.0.1", port))
        reply = sock.recv(4096)
    except OSError:
        return False
    # Signed: the A record and its RRSIG.
    want = 2 if SIGNED else 1
    return len(reply) > 12 and reply[3] & 0x0F == 0 and struct.unpack(">H", reply[6:8])[0] >= want


def wait_answer(port, name, limit):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.01)
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if answered(port, name, sock):
            return time.monotonic() - started
        time.sleep(0.001)
    return None


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def unchanged(sample, every, quiet, limit):
    """Polls `sample()` every `every` seconds until its value has not changed for `quiet`
    seconds (at most `limit` seconds in all); returns the last value."""
    last, since, started = sample(), time.monotonic(), time.monotonic()
    while time.monotonic() - started < limit:
        time.sleep(every)
        now = sample()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def settled_rss(pid, limit=5.0):
    """VmRSS once it has not changed for a second (a server may finish work after it
    first answers: gto builds its fast path's index of a big zone then), at most `limit`
    seconds."""
    return unchanged(lambda: rss_mib(pid), 0.1, 1.0, limit)


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def idle(pid, limit=10.0):
    """Waits (at most `limit` seconds) until the process has used no CPU for half a
    second: work left from the step before (gto indexes a new zone for its fast path
    after it answers) is not counted in the next."""
    unchanged(lambda: cpu_ticks(pid), 0.05, 0.5, limit)


def setup(server, d, port, gto, signed):
    """Config files for `server` in `d`: (command, zone file path, reload function)."""
    if server == "gto":
        zone = os.path.join(d, "gto.example.com.zone")
        dnssec, state = "", ""
        if signed:
            subprocess.run(
                [gto, "dnssec", "keygen", "--zone", f"{ORIGIN}.", "--dir", os.path.join(d, "keys")],
                check=True,
                capture_output=True,
            )
            dnssec, state = 'dnssec = { keys = "keys" }\n', 'state_file = "gto.state"\n'
        with open(os.path.join(d, "gto.toml"), "w") as f:
            f.write(
                f'[server]\nlisten = ["127.0.0.1:{port}"]\n{state}[admin]\nenabled = false\n'
                f'[[zone]]\norigin = "{ORIGIN}."\nfile = "gto.example.com.zone"\n{dnssec}'
            )
        return [gto, "run", "--config", os.path.join(d, "gto.toml")], zone, lambda p: p.send_signal(signal.SIGHUP)
    if server == "knot":
        os.makedirs(os.path.join(d, "run"))
        os.makedirs(os.path.join(d, "db"))
        zone = os.path.join(d, "gto.example.com.zone")
        conf = os.path.join(d, "knot.conf")
        # Signed: Knot keeps the signed zone in its journal and, on a restart or reload,
        # signs only what differs from the zone file (its incremental signing).
        policy = (
            "policy:\n  - id: p\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n"
            if signed
            else ""
        )
        content = (
            "    zonefile-load: difference-no-serial\n    journal-content: all\n"
            "    dnssec-signing: on\n    dnssec-policy: p\n"
            if signed
            else "    zonefile-load: whole\n    journal-content: none\n"
        )
        with open(conf, "w") as f:
            f.write(
                f'server:\n    listen: 127.0.0.1@{port}\n    rundir: "{d}/run"\n    udp-workers: 2\n'
                f'    tcp-workers: 1\n    background-workers: 2\nlog:\n  - target: stderr\n    any: notice\n'
                f'database:\n    storage: "{d}/db"\n{policy}template:\n  - id: default\n    storage: "{d}"\n'
                f"    zonefile-sync: -1\n{content}"
                f'zone:\n  - domain: {ORIGIN}\n    file: "{zone}"\n'
            )
        reload = lambda p: subprocess.run(["knotc", "-c", conf, "zone-reload", ORIGIN], capture_output=True)
        return ["knotd", "-c", conf], zone, reload
    if server == "gdnsd":
        os.makedirs(os.path.join(d, "zones"))
        zone = os.path.join(d, "zones", ORIGIN)
        with open(os.path.join(d, "config"), "w") as f:
            f.write(
                f"options => {{\n  listen => [ 127.0.0.1:{port} ]\n  udp_threads => 2\n  tcp_threads => 1\n"
                f'  run_dir => "{d}/run"\n  state_dir => "{d}/state"\n}}\n'
            )
        reload = lambda p: subprocess.run(["gdnsdctl", "-c", d, "reload-zones"], capture_output=True)
        return ["gdnsd", "-c", d, "start"], zone, reload
    raise SystemExit(f"unknown server {server}")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(server, records, port, gto, signed):
    d = tempfile.mkdtemp(prefix=f"bigzone-{server}-")
    try:
        command, zone, reload = setup(server, d, port, gto, signed)
        with open(zone, "w") as f:
            f.write(zone_text(records, 1))
        started = time.monotonic()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = wait_answer(port, f"h{records // 2}.{ORIGIN}", 120)
            if first is None:
                return {"server": server, "error": "no answer within 120 s"}
            start = time.monotonic() - started
            rss_first = settled_rss(proc.pid)
            reloads = []
            for k in range(3):
                idle(proc.pid)
                with open(zone, "w") as f:
                    f.write(zone_text(records, 2 + k, [f"new{k} IN A 10.255.255.{k}"]))
                t0 = time.monotonic()
                reload(proc)
                took = wait_answer(port, f"new{k}.{ORIGIN}", 120)
                reloads.append(None if took is None else time.monotonic() - t0)
            rss_after = settled_rss(proc.pid)
            stop(proc)
            started = time.monotonic()
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            again = wait_answer(port, "new2.{ORIGIN}".format(ORIGIN=ORIGIN), 120)
            restart = None if again is None else time.monotonic() - started
            return {
                "server": server,
                "start": start,
                "reloads": reloads,
                "restart": restart,
                "rss_first": rss_first,
                "rss_after": rss_after,
            }
        finally:
            stop(proc)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--gto", default="target/release/gto")
    parser.add_argument("--servers", default="gto,knot,gdnsd")
    parser.add_argument("--port", type=int, default=25400)
    parser.add_argument("--signed", action="store_true")
    parser.add_argument("--wildcard", action="store_true")
    args = parser.parse_args()
    global SIGNED, WILDCARD
    SIGNED = args.signed
    WILDCARD = args.wildcard
    signed = ", signed (ECDSA P-256)" if args.signed else ""
    signed += ", a wildcard at the apex" if args.wildcard else ""
    print(f"{args.records} A records{signed}; start = exec to first answer; reload = signal to new data")
    print(f"{'server':8} {'start s':>8} {'reloads s':>20} {'restart s':>10} {'RSS MiB':>8} {'after 3':>8}")
    servers = args.servers.split(",")
    if args.signed and "gdnsd" in servers:
        servers.remove("gdnsd")  # gdnsd does not sign
    for i, server in enumerate(servers):
        if server != "gto" and shutil.which({"knot": "knotd", "gdnsd": "gdnsd"}.get(server, server)) is None:
            print(f"{server:8} not installed (../shared/bench/peers.sh setup installs it)")
            continue
        r = measure(server, args.records, args.port + i, args.gto, args.signed)
        if "error" in r:
            print(f"{server:8} {r['error']}")
            continue
        reloads = " ".join("-" if t is None else f"{t:.2f}" for t in r["reloads"])
        restart = "-" if r["restart"] is None else f"{r['restart']:.2f}"
        print(
            f"{server:8} {r['start']:8.2f} {reloads:>20} {restart:>10} {r['rss_first']!s:>8} {r['rss_after']!s:>8}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
