#!/usr/bin/env python3
"""Scrape client and statistics for bench/scrape-cost (Python standard library only).

Subcommands (all output is JSON on stdout unless noted):

  check URL KIND N         verify a target's /metrics covers instances b1..bN
                           (KIND = ours | nodeexp); exit 1 with a message if not
  ready URL N              print how many of b1..bN are `ready` (GET /api/v1/instances) and
                           which of them are failed/stopped (plain text)
  measure --warmup W --scrapes M --blocks B --target NAME=URL,PID ... [--side PID ...]
                           warm every target up with W scrapes, then M timed scrapes per target,
                           alternating targets in B blocks; print per-target stats as JSON
  record FILE N JSON       append measure's JSON for N to FILE, print a summary line
  burst URL SECONDS        scrape back to back for SECONDS, print how many scrapes
  dbus-summary FILE LABEL  D-Bus messages in an `strace -yy -s 512 -e trace=sendmsg,recvmsg` log
  table FILE               print the result table and verdict lines from measure's JSON lines
  strace-summary FILE K N [WINDOW]\n                           opens / D-Bus traffic per scrape from an `strace -f -ttt -yy` log\n                           (WINDOW: measure's --window file; only that time span counts)

Timing: one http.client connection per target, kept alive; each sample is send -> full body
read (time.perf_counter_ns). CPU: the target's utime+stime from /proc/PID/stat (clock ticks,
10 ms) and, precisely, the sum over its threads of /proc/PID/task/TID/schedstat run time (ns).
The tick-based figure is the coarse cross-check; the schedstat one is what the table shows.
"""

import http.client
import json
import os
import re
import statistics
import sys
import time
import urllib.parse
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- CPU accounting
def ticks(pid):
    """utime + stime of a process (all threads, also exited ones), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    return int(rest[11]) + int(rest[12])


def thread_ns(pid):
    """tid -> on-CPU nanoseconds (schedstat), for the threads alive now."""
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return out


def ns_delta(before, after):
    # Threads born in the window count from 0; threads that died in it are lost (undercount;
    # the tick figure, which includes dead threads, is the cross-check).
    return sum(v - before.get(t, 0) for t, v in after.items())


class Cpu:
    def __init__(self, pid):
        self.pid = pid
        self.ticks = 0
        self.ns = 0
        self._t = self._n = None

    def start(self):
        self._t, self._n = ticks(self.pid), thread_ns(self.pid)

    def stop(self):
        self.ticks += ticks(self.pid) - self._t
        self.ns += ns_delta(self._n, thread_ns(self.pid))


# --------------------------------------------------------------------------- scraping
class Target:
    def __init__(self, name, url, pid):
        self.name, self.url, self.pid = name, url, int(pid)
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port, u.path or "/"
        self.conn = None
        self.samples = []
        self.cpu = Cpu(self.pid)
        self.bytes = 0
        self.reconnects = 0

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        self.conn.connect()
        # Small requests on a kept-alive connection: no Nagle delay on our side.
        import socket

        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reconnects += 1

    def scrape(self):
        """One GET; returns (seconds, body). Connection kept alive across calls."""
        if self.conn is None:
            self._connect()
        t0 = time.perf_counter_ns()
        self.conn.request("GET", self.path, headers={"Accept": "text/plain"})
        r = self.conn.getresponse()
        body = r.read()
        t1 = time.perf_counter_ns()
        if r.status != 200:
            raise SystemExit(f"{self.name}: GET {self.url} -> {r.status}: {body[:300]!r}")
        if r.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return (t1 - t0) / 1e9, body


def pct(xs, q):
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    return statistics.quantiles(s, n=100, method="inclusive")[q - 1]


def burst(url, seconds):
    """Scrape back to back for SECONDS; print the number of scrapes."""
    t = Target("burst", url, os.getpid())
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        t.scrape()
        n += 1
    print(n)


def dbus_summary(path, label):
    """D-Bus messages in an `strace -f -yy -s 512 -e trace=sendmsg,recvmsg,connect` log."""
    msgs = []
    for line in open(path, errors="replace"):
        d = DBUS_RE.search(line)
        if d:
            msgs.append(f"{d.group(1)}: {dbus_words(d.group(2))}"[:150])
    calls = sum(1 for m in msgs if m.startswith("sendmsg: call"))
    print(f"{label}: {len(msgs)} D-Bus messages, {calls} method calls by the daemon")
    seen = {}
    for m in msgs:
        seen[m] = seen.get(m, 0) + 1
    for m, c in list(seen.items())[:6]:
        print(f"  {c:>3} x {m}")


def host_cpu():
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def measure(args):
    warmup, scrapes, blocks, window = 20, 300, 6, None
    targets, side = [], []
    it = iter(args)
    for a in it:
        if a == "--warmup":
            warmup = int(next(it))
        elif a == "--scrapes":
            scrapes = int(next(it))
        elif a == "--blocks":
            blocks = int(next(it))
        elif a == "--target":
            name, rest = next(it).split("=", 1)
            url, pid = rest.rsplit(",", 1)
            targets.append(Target(name, url, pid))
        elif a == "--window":
            window = next(it)  # write "start end" (Unix seconds) of the timed scrapes to this file
        elif a == "--side":
            side.append(next(it))  # NAME=PID: processes the scrapes may make work (systemd, dbus)
        else:
            raise SystemExit(f"measure: unknown argument {a}")
    for t in targets:
        for _ in range(warmup):
            t.scrape()
    # Side-process CPU attributed to each target: measured during that target's blocks only.
    side_cpu = {t.name: {s.split("=")[0]: Cpu(int(s.split("=")[1])) for s in side} for t in targets}
    t_start = time.time()
    host0 = host_cpu()
    per_block = [scrapes // blocks + (1 if i < scrapes % blocks else 0) for i in range(blocks)]
    for n in per_block:
        for t in targets:  # alternate: ours block, node_exporter block, ours block, ...
            for c in side_cpu[t.name].values():
                c.start()
            t.cpu.start()
            for _ in range(n):
                dt, body = t.scrape()
                t.samples.append(dt)
                t.bytes = len(body)
            t.cpu.stop()
            for c in side_cpu[t.name].values():
                c.stop()
    host1 = host_cpu()
    host_busy = (host1[0] - host0[0]) / max(1, host1[1] - host0[1]) * 100
    if window:
        with open(window, "w") as f:
            f.write(f"{t_start} {time.time()}\n")
    out = {"host_busy_percent": host_busy, "loadavg": open("/proc/loadavg").read().split()[0]}
    for t in targets:
        ms = [x * 1e3 for x in t.samples]
        out[t.name] = {
            "scrapes": len(ms),
            "median_ms": statistics.median(ms),
            "p99_ms": pct(ms, 99),
            "mean_ms": statistics.fmean(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "cpu_ms": t.cpu.ns / 1e6 / len(ms),
            "cpu_ticks_ms": t.cpu.ticks * 1000.0 / CLK_TCK / len(ms),
            "bytes": t.bytes,
            "connections": t.reconnects,
            "side_cpu_ms": {k: c.ns / 1e6 / len(ms) for k, c in side_cpu[t.name].items()},
        }
    print(json.dumps(out))


# --------------------------------------------------------------------------- checks
def fetch(url):
    """GET with the run's management key ($LLAMACTL_API_KEY), where the bench set one."""
    key = os.environ.get("LLAMACTL_API_KEY")
    headers = {"Authorization": "Bearer " + key} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
        return r.read().decode()


def check(url, kind, n):
    text = fetch(url)
    if kind == "ours":
        have = set(re.findall(r'^llamactl_instance_memory_bytes\{instance_name="(b\d+)"\}', text, re.M))
        series = "llamactl_instance_memory_bytes"
    else:
        ok = re.search(r'^node_scrape_collector_success\{collector="systemd"\} 1$', text, re.M)
        if not ok:
            raise SystemExit('node_exporter: node_scrape_collector_success{collector="systemd"} is not 1')
        have = set(re.findall(r'^node_systemd_unit_state\{name="llamactl-(b\d+)\.service"', text, re.M))
        series = "node_systemd_unit_state"
    want = {f"b{i}" for i in range(1, n + 1)}
    missing = sorted(want - have, key=lambda s: int(s[1:]))
    if missing:
        raise SystemExit(f"{kind}: {series} missing for {len(missing)} of {n} instances: {missing[:10]}")
    lines = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
    print(json.dumps({"kind": kind, "instances": n, "series": lines, "bytes": len(text)}))


def ready(url, n):
    data = json.loads(fetch(url))
    items = data if isinstance(data, list) else data.get("instances", data.get("data", []))
    want = {f"b{i}" for i in range(1, n + 1)}
    states = {i["name"]: i.get("state") for i in items if i.get("name") in want}
    bad = {k: v for k, v in states.items() if v in ("failed", "stopped")}
    # Plain: "<ready count> <failed names, comma-separated>".
    print(sum(1 for v in states.values() if v == "ready"), ",".join(sorted(bad)[:10]))


# --------------------------------------------------------------------------- output
def record(path, n, measured):
    """Append one measure result (JSON) for N to the results file; print a one-line summary."""
    d = json.loads(measured)
    d["n"] = n
    with open(path, "a") as f:
        f.write(json.dumps(d) + "\n")
    o, e = d["ours"], d["nodeexp"]
    print(f"ours median {o['median_ms']:.3f} ms, cpu {o['cpu_ms']:.3f} ms; "
          f"node_exporter median {e['median_ms']:.3f} ms, cpu {e['cpu_ms']:.3f} ms")


def fmt(x, w=8, d=3):
    return f"{x:>{w}.{d}f}"


def table(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    head = (f"{'N':>4}  {'ours_median_ms':>14} {'ours_p99_ms':>11} {'ours_cpu_ms':>11}  "
            f"{'nodeexp_median_ms':>17} {'nodeexp_p99_ms':>14} {'nodeexp_cpu_ms':>14}  "
            f"{'ratio_median':>12} {'ratio_cpu':>9}")
    print(head)
    for r in rows:
        o, e = r["ours"], r["nodeexp"]
        print(f"{r['n']:>4}  {fmt(o['median_ms'], 14)} {fmt(o['p99_ms'], 11)} {fmt(o['cpu_ms'], 11)}  "
              f"{fmt(e['median_ms'], 17)} {fmt(e['p99_ms'], 14)} {fmt(e['cpu_ms'], 14)}  "
              f"{fmt(e['median_ms'] / o['median_ms'], 11, 1)}x {fmt(e['cpu_ms'] / o['cpu_ms'], 8, 1)}x")
    print()
    print("details (per scrape; cpu_ticks = utime+stime cross-check at 10 ms resolution;")
    print("         side = CPU of the sandbox's systemd (PID 1) + dbus-daemon during that target's scrapes)")
    print(f"{'N':>4}  {'target':<8} {'mean_ms':>8} {'min_ms':>7} {'max_ms':>8} {'cpu_ticks_ms':>12} "
          f"{'side_systemd_ms':>15} {'side_dbus_ms':>12} {'bytes':>8} {'scrapes':>7}")
    for r in rows:
        for k in ("ours", "nodeexp"):
            t = r[k]
            s = t.get("side_cpu_ms", {})
            print(f"{r['n']:>4}  {k:<8} {fmt(t['mean_ms'])} {fmt(t['min_ms'], 7)} {fmt(t['max_ms'])} "
                  f"{fmt(t['cpu_ticks_ms'], 12)} {fmt(s.get('systemd', float('nan')), 15)} "
                  f"{fmt(s.get('dbus', float('nan')), 12)} {t['bytes']:>8} {t['scrapes']:>7}")
    print()
    print(f"host CPU busy during each round, all {os.cpu_count()} CPUs (client + both targets + systemd/dbus "
          f"alone: about {100 // os.cpu_count()}%; more means something else ran):")
    print("  " + ", ".join(f"N={r['n']}: {r.get('host_busy_percent', float('nan')):.0f}% (loadavg {r.get('loadavg', '?')})" for r in rows))
    print()
    at = [r for r in rows if r["n"] == 100]
    if not at:
        print("target median <= 1 ms: NOT MEASURED (no N=100 round; --quick runs N=10 only)")
        print("ratio >= 10x: NOT MEASURED")
        return
    o, e = at[0]["ours"], at[0]["nodeexp"]
    rm, rc = e["median_ms"] / o["median_ms"], e["cpu_ms"] / o["cpu_ms"]
    print(f"target median <= 1 ms: {'PASS' if o['median_ms'] <= 1.0 else 'FAIL'} "
          f"(N=100: ours median {o['median_ms']:.3f} ms)")
    print(f"ratio >= 10x: {'PASS' if min(rm, rc) >= 10 else 'FAIL'} "
          f"(N=100: node_exporter/ours median {rm:.1f}x, CPU per scrape {rc:.1f}x)")
    tot = lambda t: t["cpu_ms"] + sum(t.get("side_cpu_ms", {}).values())
    print(f"note: counting the CPU each makes the sandbox's systemd and dbus-daemon spend, N=100 CPU per "
          f"scrape is ours {tot(o):.3f} ms vs node_exporter {tot(e):.3f} ms ({tot(e) / tot(o):.1f}x)")


# --------------------------------------------------------------------------- strace
OPEN_RE = re.compile(r'openat\([^,]+, "([^"]+)"')
TIME_RE = re.compile(r"^\d+\s+(\d+\.\d+)\s")
DBUS_RE = re.compile(r'(sendmsg|recvmsg)\(\d+<UNIX-STREAM:\[[^\]]*\]>, \{.*?iov_base="(l\\[0-4][^"]*)"')


def dbus_words(payload):
    """The readable strings of a (C-escaped) D-Bus message: path, interface, member, args."""
    kind = {"1": "call", "2": "return", "3": "error", "4": "signal"}.get(payload[2:3], "?")
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_.:/-]{2,}", re.sub(r"\\[0-7]{1,3}|\\.", " ", payload[3:]))
    return kind + " " + " ".join(words)


def strace_summary(path, k, n, window=None):
    """Count per-path opens in an `strace -f -ttt -yy -s 512 -e trace=openat,connect,sendmsg,recvmsg`
    log of K scrapes with N instances; D-Bus messages inside / outside the scrape window."""
    lo, hi = (0.0, float("inf"))
    if window:
        lo, hi = map(float, open(window).read().split())
    opens, failed, dbus_in, dbus_out, other_sock = {}, {}, [], [], []
    for line in open(path, errors="replace"):
        tm = TIME_RE.match(line)
        t = float(tm.group(1)) if tm else lo
        inside = lo <= t <= hi
        m = OPEN_RE.search(line)
        if m:
            if not inside:
                continue
            opens[m.group(1)] = opens.get(m.group(1), 0) + 1
            if " = -1 " in line:
                f = re.sub(r"llamactl-b\d+", "llamactl-b*", m.group(1))
                failed[f] = failed.get(f, 0) + 1
            continue
        d = DBUS_RE.search(line)
        if d:
            (dbus_in if inside else dbus_out).append(f"{d.group(1)}: {dbus_words(d.group(2))}"[:160])
        elif re.search(r"\b(sendmsg|recvmsg|connect)\(", line) and "EAGAIN" not in line:
            other_sock.append(re.sub(r"\{.*", "...", line.strip())[:160])
    inst = {p: c for p, c in opens.items() if re.search(r"llamactl-b\d+\.service", p)}
    per_file = {}
    for p, c in inst.items():
        f = p.rsplit("/", 1)[1]
        per_file.setdefault(f, []).append(c)
    w = print
    w(f"opens per scrape: {sum(opens.values()) / k:.1f} in all, {sum(inst.values()) / k:.1f} of instance "
      f"cgroup files = {sum(inst.values()) / k / n:.2f} per instance")
    w(f"distinct instance cgroup paths: {len(inst)}; most opens of one path per scrape: "
      f"{max(inst.values(), default=0) / k:.2f} (claim: <= 1)")
    for f, v in sorted(per_file.items()):
        per = sorted({c / k for c in v})
        w(f"  {f:<34} {len(v):>4} paths, opened {'/'.join(f'{x:g}' for x in per)} x per scrape each")
    rest = {p: c / k for p, c in sorted(opens.items()) if p not in inst}
    w("other files per scrape: " + ", ".join(f"{p} {c:g}" for p, c in rest.items()))
    w("failed opens per scrape (ENOENT etc.): " + (", ".join(f"{p} {c / k:g}" for p, c in sorted(failed.items())) or "none"))
    span = f" ({hi - lo:.2f} s)" if window else ""
    w(f"D-Bus messages sent/received by the daemon while scraping{span}: {len(dbus_in)}")
    for l in dbus_in[:6]:
        w(f"  {l}")
    w(f"D-Bus messages in the trace outside the scrape window (attach/detach margins): {len(dbus_out)}")
    for l in dbus_out[:4]:
        w(f"  {l}")
    w(f"other sendmsg/recvmsg/connect (e.g. sd_notify WATCHDOG=1): {len(other_sock)}")
    for l in other_sock[:5]:
        w(f"  {l}")


def main():
    a = sys.argv[1:]
    if not a:
        raise SystemExit(__doc__)
    cmd = a[0]
    if cmd == "check":
        check(a[1], a[2], int(a[3]))
    elif cmd == "ready":
        ready(a[1], int(a[2]))
    elif cmd == "measure":
        measure(a[1:])
    elif cmd == "burst":
        burst(a[1], float(a[2]))
    elif cmd == "dbus-summary":
        dbus_summary(a[1], a[2])
    elif cmd == "record":
        record(a[1], int(a[2]), a[3])
    elif cmd == "table":
        table(a[1])
    elif cmd == "strace-summary":
        strace_summary(a[1], int(a[2]), int(a[3]), a[4] if len(a) > 4 else None)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
