#!/usr/bin/env python3
"""Helpers of bench/footprint (Python standard library only). See bench/README.md.

Subcommands:

  mem PID LABEL FILE        append the memory, threads and fds of PID to FILE (JSON lines) and
                            print a one-line summary
  mem-table FILE IDLE_GOAL_MB N N_GOAL_MB
                            the memory table, with the goals next to the figures
  where PID [LABEL]         where a process's resident memory is, by kind of mapping (smaps)
  scrape URL K              K sequential GETs of URL (prints the bytes of the last body)
  ready URL PREFIX N        wait (up to 300 s) until PREFIX1..PREFIXN are all `ready`
  start-overhead ...        (run inside the sandbox) POST /start vs systemd-run, interleaved
  ttft ...                  (run on the host) cold on-demand start to first token, through
                            llamactld, vs llama-server started by hand

The management key is read from the file named by $BENCH_KEY_FILE.
"""

import argparse
import http.client
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse

MB = 1024 * 1024


def key():
    with open(os.environ["BENCH_KEY_FILE"]) as f:
        return f.read().strip()


def request(url, method, path, body=None, auth=True, timeout=120):
    """One request on a new connection (as curl or the llamactl CLI would make it).
    Returns (status, parsed JSON or text)."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Bearer " + key()
    data = json.dumps(body).encode() if body is not None else None
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    raw = r.read()
    c.close()
    try:
        return r.status, json.loads(raw) if raw else None
    except ValueError:
        return r.status, raw.decode("utf-8", "replace")


def stats(xs):
    xs = sorted(xs)
    p90 = statistics.quantiles(xs, n=10, method="inclusive")[8] if len(xs) > 1 else xs[0]
    return {"median": statistics.median(xs), "p90": p90, "min": xs[0], "max": xs[-1], "n": len(xs)}


# --------------------------------------------------------------------------- memory
def read_kv(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.split()
            if v and v[0].isdigit():
                out[k.strip()] = int(v[0])
    return out


def mem_of(pid):
    st = read_kv(f"/proc/{pid}/status")
    try:
        roll = read_kv(f"/proc/{pid}/smaps_rollup")
    except OSError:
        roll = {}
    return {
        "rss_kb": st["VmRSS"],
        "rss_anon_kb": st.get("RssAnon"),
        "rss_file_kb": st.get("RssFile"),
        "hwm_kb": st.get("VmHWM"),
        "pss_kb": roll.get("Pss"),
        "private_kb": roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0) if roll else None,
        "thp_kb": roll.get("AnonHugePages"),
        "threads": st["Threads"],
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def cmd_mem(pid, label, path):
    m = mem_of(pid)
    m["label"] = label
    with open(path, "a") as f:
        f.write(json.dumps(m) + "\n")
    print(f"{label}: RSS {m['rss_kb']/1024:.1f} MB, PSS {(m['pss_kb'] or 0)/1024:.1f} MB, "
          f"{m['threads']} threads, {m['fds']} fds")


def cmd_mem_table(path, idle_goal, n, n_goal):
    rows = [json.loads(l) for l in open(path)]
    idle_goal, n_goal = float(idle_goal), float(n_goal)
    hdr = (f"{'state':<34} {'RSS MB':>7} {'anon MB':>7} {'THP MB':>7} {'file MB':>7} {'PSS MB':>7} "
           f"{'priv MB':>7} {'peak MB':>7} {'threads':>7} {'fds':>5}  goal")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        goal = ""
        if r["label"].startswith("idle"):
            goal = f"RSS <= {idle_goal:g} MB: {'met' if r['rss_kb']/1024 <= idle_goal else 'NOT met'}"
        elif r["label"].startswith(f"{n} instances"):
            goal = f"RSS <= {n_goal:g} MB: {'met' if r['rss_kb']/1024 <= n_goal else 'NOT met'}"
        f = lambda kb: f"{kb/1024:7.1f}" if kb is not None else f"{'-':>7}"
        print(f"{r['label']:<34} {f(r['rss_kb'])} {f(r['rss_anon_kb'])} {f(r.get('thp_kb'))} {f(r['rss_file_kb'])} "
              f"{f(r['pss_kb'])} {f(r['private_kb'])} {f(r['hwm_kb'])} {r['threads']:>7} {r['fds']:>5}  {goal}")
    print("RSS = VmRSS (anon + file-backed + shmem); THP = the part of anon in transparent huge pages")
    print("(AnonHugePages, 2 MB each); PSS = proportional set size (shared pages divided among the")
    print("processes mapping them); priv = private clean + dirty (both from smaps_rollup); peak = VmHWM")
    print("(the highest RSS since the daemon started). MB = 2^20 bytes.")


def cmd_where(pid, label=""):
    """Resident memory by kind of mapping, from /proc/PID/smaps."""
    exe = os.readlink(f"/proc/{pid}/exe")
    kinds = {}
    anon_sizes = []
    huge = 0
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                name = parts[5] if len(parts) > 5 else ""
                if name == exe or name.endswith("/llamactld"):
                    cur = "llamactld binary (text, data)"
                elif name == "[heap]":
                    cur = "[heap] (brk: main malloc arena)"
                elif name == "[stack]":
                    cur = "[stack] (main thread)"
                elif name.startswith("/") and ".so" in name:
                    cur = "shared libraries"
                elif name == "":
                    cur = "anonymous (malloc arenas, thread stacks, mmaps)"
                    anon_sizes.append([hi - lo, 0])
                else:
                    cur = f"other ({name})"
                kinds.setdefault(cur, 0)
            elif parts and parts[0] == "Rss:" and cur:
                kinds[cur] += int(parts[1])
                if cur.startswith("anonymous"):
                    anon_sizes[-1][1] = int(parts[1])
            elif parts and parts[0] == "AnonHugePages:" and cur:
                huge += int(parts[1])
    total = sum(kinds.values())
    print(f"resident memory by mapping, {label or 'pid ' + pid} ({total/1024:.1f} MB, /proc/PID/smaps):")
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
        if v:
            print(f"  {v/1024:7.1f} MB  {k}")
    print(f"  of which transparent huge pages (AnonHugePages): {huge/1024:.1f} MB")
    big = sorted((r for r in anon_sizes if r[1]), key=lambda r: -r[1])[:6]
    if big:
        print("  largest anonymous mappings (size -> resident): "
              + ", ".join(f"{s/MB:.1f} MB -> {r/1024:.1f} MB" for s, r in big))


def cmd_scrape(url, k):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    n = 0
    for _ in range(int(k)):
        c.request("GET", u.path)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"GET {url}: HTTP {r.status}")
        n = len(body)
    print(n)


def cmd_ready(url, prefix, n):
    n = int(n)
    deadline = time.monotonic() + 300
    while True:
        st, body = request(url, "GET", "/api/v1/instances")
        if st != 200:
            sys.exit(f"GET /api/v1/instances: HTTP {st}")
        items = body if isinstance(body, list) else body.get("instances", body.get("data", []))
        states = {i["name"]: i["state"] for i in items}
        want = [f"{prefix}{i}" for i in range(1, n + 1)]
        bad = [w for w in want if states.get(w) in ("failed", "stopped")]
        if bad:
            sys.exit(f"instances failed or stopped: {' '.join(bad[:10])}")
        ready = sum(1 for w in want if states.get(w) == "ready")
        if ready == n:
            return
        if time.monotonic() > deadline:
            sys.exit(f"only {ready} of {n} ready after 300 s")
        time.sleep(0.5)


# --------------------------------------------------------------------------- systemd (inside)
def show(unit, props, cmd=()):
    out = subprocess.run([*cmd, "systemctl", "show", unit, *(f"--property={p}" for p in props)],
                         check=True, capture_output=True, text=True).stdout
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


def exec_argv(execstart):
    """argv from `systemctl show -p ExecStart --value` ({ path=… ; argv[]=… ; … })."""
    m = re.search(r"argv\[\]=(.*?) ;", execstart)
    if not m:
        sys.exit(f"cannot parse ExecStart: {execstart}")
    return shlex.split(m.group(1))


# What `systemd-run` is given: the properties llamactld sets on an instance of the command
# backend (src/systemd/transient.rs), written as unit-file assignments. Description, slice,
# environment and the command come from the daemon's own unit at the warm-up round.
BARE_PROPS = [
    "Type=exec",
    "MemoryAccounting=yes", "CPUAccounting=yes", "TasksAccounting=yes", "IOAccounting=yes",
    "Restart=no",
    "CollectMode=inactive",
    "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only", "PrivateTmp=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible",
    "RestrictNamespaces=yes", "RestrictSUIDSGID=yes", "RestrictRealtime=yes", "LockPersonality=yes",
    "SystemCallArchitectures=native", "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM", "CapabilityBoundingSet=",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "UMask=0077", "PrivateDevices=yes",
    "MemoryDenyWriteExecute=no", "DynamicUser=yes",
]
# Properties expected to differ between the two units (names, times, PIDs, counters, ports).
EXPECTED_DIFF = re.compile(
    r"^(Id|Names|Description|InvocationID|MainPID|ExecMainPID|ControlGroup|ControlGroupId|"
    r"SyslogIdentifier|LogExtraFields|Environment|ExecStart|ExecStartEx|StateChangeTimestamp.*|"
    r".*Timestamp(Monotonic)?|Memory(Current|Available)|CPUUsageNSec|Tasks(Current)?|"
    r"IO(Read|Write)(Bytes|Operations)|IP(Ingress|Egress)(Bytes|Packets)|Effective.*|"
    r"RuntimeDirectory.*|StateDirectory.*|CacheDirectory.*|LogsDirectory.*|Perpetual|Job|"
    r"ExecMainStartTimestamp.*|ExecMainCode|ExecMainStatus|FragmentPath|SourcePath|DropInPaths|"
    r"NRestarts|ManagedOOM.*|InactiveExit.*|Result|Transient|User|Group|UID|GID)$")


def cmd_start_overhead(argv):
    ap = argparse.ArgumentParser(prog="start-overhead")
    ap.add_argument("--url", required=True)
    ap.add_argument("--name", required=True, help="the daemon's (stopped) instance")
    ap.add_argument("--bare-unit", required=True)
    ap.add_argument("--bare-port", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--settle", type=float, default=0.3)
    a = ap.parse_args(argv)
    dunit = f"llamactl-{a.name}.service"
    props = ["ActiveState", "SubState", "ActiveEnterTimestampMonotonic", "InactiveExitTimestampMonotonic"]
    mono_us = lambda: time.monotonic_ns() // 1000  # CLOCK_MONOTONIC, as systemd's *Monotonic

    def api_start():
        t0 = mono_us()
        st, body = request(a.url, "POST", f"/api/v1/instances/{a.name}/start")
        t1 = mono_us()
        if st != 200:
            sys.exit(f"POST start: HTTP {st}: {body}")
        return t0, t1

    def api_stop():
        st, body = request(a.url, "POST", f"/api/v1/instances/{a.name}/stop")
        if st != 200:
            sys.exit(f"POST stop: HTTP {st}: {body}")

    # Warm-up round (not counted): learn the daemon's unit, build the same one for systemd-run.
    api_start()
    d = show(dunit, ["Description", "Slice", "Environment", "ExecStart", "SyslogIdentifier",
                     "LogExtraFields", "StartLimitBurst", "StartLimitIntervalUSec", "TimeoutStopUSec",
                     "RestartUSec"])
    dargv = exec_argv(d["ExecStart"])
    port_i = dargv.index("--port") + 1
    bargv = list(dargv)
    bargv[port_i] = a.bare_port
    env = [e if not e.startswith("PORT=") else f"PORT={a.bare_port}" for e in d["Environment"].split()]
    env = [e.replace(f"={a.name}", f"={a.bare_unit}") if e.startswith("LLAMACTL_INSTANCE=") else e for e in env]
    bare_cmd = ["systemd-run", "--quiet", f"--unit={a.bare_unit}", f"--slice={d['Slice']}",
                f"--description={d['Description']}"]
    for p in BARE_PROPS + [f"Environment={e}" for e in env] + [
            f"SyslogIdentifier={a.bare_unit}", f"LogExtraFields=LLAMACTL_INSTANCE={a.bare_unit}",
            f"StartLimitBurst={d['StartLimitBurst']}",
            f"StartLimitIntervalSec={d['StartLimitIntervalUSec']}",
            f"TimeoutStopSec={d['TimeoutStopUSec']}", f"RestartSec={d['RestartUSec']}"]:
        bare_cmd += ["-p", p]
    bare_cmd += ["--", *bargv]
    bunit = f"{a.bare_unit}.service"

    def bare_start():
        t0 = mono_us()
        r = subprocess.run(bare_cmd, capture_output=True, text=True)
        t1 = mono_us()
        if r.returncode != 0:
            sys.exit(f"systemd-run failed ({r.returncode}): {r.stderr}\n{shlex.join(bare_cmd)}")
        return t0, t1

    def bare_stop():
        subprocess.run(["systemctl", "stop", bunit], check=True)

    bare_start()
    # What differs between the two units (all properties, minus names, times, PIDs, counters).
    full_d = show(dunit, [])
    full_b = show(bunit, [])
    norm = lambda v: sorted((v or "").split())  # lists (After=, …) in any order
    diff = sorted(k for k in set(full_d) | set(full_b)
                  if norm(full_d.get(k)) != norm(full_b.get(k)) and not EXPECTED_DIFF.match(k))
    bare_stop()
    api_stop()
    print("systemd-run command line (the baseline; same properties as the daemon's unit):")
    print("  " + shlex.join(bare_cmd))
    if diff:
        print("unit properties that differ (systemctl show, names/times/PIDs/counters aside):")
        for k in diff:
            print(f"  {k}: llamactld={full_d.get(k, '(unset)')!r} systemd-run={full_b.get(k, '(unset)')!r}")
    else:
        print("unit properties: none differs (systemctl show; names, times, PIDs, counters, port aside)")
    print()

    ping = ["busctl", "--system", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
            "org.freedesktop.DBus.Peer", "Ping"]
    keys = ("answer", "pre", "systemd", "post", "active")
    res = {"llamactld": {k: [] for k in keys}, "systemd-run": {k: [] for k in keys}, "busctl-ping": {"answer": []}}
    for i in range(a.rounds):
        order = ("llamactld", "systemd-run") if i % 2 == 0 else ("systemd-run", "llamactld")
        for side in order:
            time.sleep(a.settle)
            if side == "llamactld":
                t0, t1 = api_start()
                s = show(dunit, props)
                api_stop()
            else:
                t0, t1 = bare_start()
                s = show(bunit, props)
                bare_stop()
            if s["ActiveState"] != "active":
                sys.exit(f"{side}: unit not active right after the start answered: {s}")
            act = int(s["ActiveEnterTimestampMonotonic"])
            left = int(s["InactiveExitTimestampMonotonic"])
            r = res[side]
            r["answer"].append((t1 - t0) / 1e3)
            r["pre"].append((left - t0) / 1e3)
            r["systemd"].append((act - left) / 1e3)
            r["post"].append((t1 - act) / 1e3)
            r["active"].append((act - t0) / 1e3)
        t0 = mono_us()
        subprocess.run(ping, check=True, capture_output=True)
        res["busctl-ping"]["answer"].append((mono_us() - t0) / 1e3)
        print(f"round {i+1}/{a.rounds}: llamactld {res['llamactld']['answer'][-1]:.2f} ms, "
              f"systemd-run {res['systemd-run']['answer'][-1]:.2f} ms", file=sys.stderr)

    S = {side: {k: stats(v) for k, v in r.items()} for side, r in res.items()}
    print(f"{a.rounds} rounds, interleaved (order alternating), {a.settle} s pause before each start;")
    print("each start is followed by a stop (not timed). ms from the caller's send:")
    print(f"{'side':<34} {'answer':>7} {'p90':>7} {'min':>7}  |  median of: {'send->activating':>16} "
          f"{'activating->active':>18} {'active->answer':>14}")
    labels = {"llamactld": "POST /api/v1/instances/NAME/start", "systemd-run": "systemd-run (waits for the job)",
              "busctl-ping": "busctl call … Peer.Ping (info)"}
    for side in ("systemd-run", "llamactld", "busctl-ping"):
        x = S[side]
        line = f"{labels[side]:<34} {x['answer']['median']:>7.2f} {x['answer']['p90']:>7.2f} {x['answer']['min']:>7.2f}"
        if "pre" in x:
            line += (f"  |  {'':>11} {x['pre']['median']:>16.2f} {x['systemd']['median']:>18.2f}"
                     f" {x['post']['median']:>14.2f}")
        print(line)
    D, B = S["llamactld"], S["systemd-run"]
    dm, bm = D["answer"]["median"], B["answer"]["median"]
    print()
    print(f"added by llamactld (median answer): {dm - bm:+.2f} ms, ratio llamactld / systemd-run {dm / bm:.2f}x; "
          f"p90 {D['answer']['p90'] - B['answer']['p90']:+.2f} ms; min {D['answer']['min'] - B['answer']['min']:+.2f} ms")
    print(f"  by segment (medians): send->activating {D['pre']['median'] - B['pre']['median']:+.2f}, "
          f"activating->active {D['systemd']['median'] - B['systemd']['median']:+.2f}, "
          f"active->answer {D['post']['median'] - B['post']['median']:+.2f}; send->active "
          f"{D['active']['median'] - B['active']['median']:+.2f} ms")
    print(f"goal <= 5 ms added (median answer): {'met' if dm - bm <= 5 else 'NOT met'}")
    print("answer: send -> the caller has the answer (HTTP 200 read / systemd-run exited 0). The unit's own")
    print("timestamps split it: activating = InactiveExitTimestampMonotonic (systemd began the start job:")
    print("before it, the caller's side: HTTP, auth, the daemon's checks and state write, or process start")
    print("and bus connection for systemd-run; then StartTransientUnit); active = ActiveEnterTimestamp-")
    print("Monotonic (Type=exec: the binary was executed, the start job is done); active->answer: the")
    print("caller learns of it (JobRemoved; the daemon then re-reads the unit and answers).")
    print("busctl ping: a fresh CLI process doing one bus call: roughly the process start and bus")
    print("connection in systemd-run's send->activating, which the daemon (one kept connection) does not pay.")


# --------------------------------------------------------------------------- time to first token
BODY = {"model": "smol", "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8, "temperature": 0, "seed": 42, "stream": True}


def first_token(port, model, t0):
    """Streams a chat completion; returns (head_s, first_token_s, end_s) relative to t0."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.request("POST", "/v1/chat/completions", body=json.dumps(dict(BODY, model=model)).encode(),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    head = time.perf_counter() - t0
    if r.status != 200:
        sys.exit(f"port {port}: HTTP {r.status}: {r.read()[:300]!r}")
    tok = None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        if tok is None:
            ch = json.loads(data).get("choices") or [{}]
            if (ch[0].get("delta") or {}).get("content"):
                tok = time.perf_counter() - t0
    end = time.perf_counter() - t0
    c.close()
    if tok is None:
        sys.exit(f"port {port}: no token in the stream")
    return head, tok, end


def cmd_ttft(argv):
    ap = argparse.ArgumentParser(prog="ttft")
    ap.add_argument("--url", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--hand-port", required=True, type=int)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--poll-ms", type=float, default=10)
    ap.add_argument("--log", required=True)
    ap.add_argument("--pidfile", required=True, help="holds the by-hand llama-server's PID while it runs")
    ap.add_argument("--inside", required=True, help="command prefix that runs a command in the sandbox")
    a = ap.parse_args(argv)
    inside = shlex.split(a.inside)
    unit = f"llamactl-{a.name}.service"
    dport = urllib.parse.urlsplit(a.url).port
    argv_hand = None

    def stopped():
        st, body = request(a.url, "POST", f"/api/v1/instances/{a.name}/stop")
        if st != 200:
            sys.exit(f"stop {a.name}: HTTP {st}: {body}")
        st, body = request(a.url, "GET", f"/api/v1/instances/{a.name}")
        if body.get("state") != "stopped":
            sys.exit(f"{a.name} is {body.get('state')} after its stop")

    def daemon_round():
        nonlocal argv_hand
        stopped()
        time.sleep(0.5)
        t0 = time.perf_counter()
        m0 = time.monotonic_ns() // 1000
        head, tok, end = first_token(dport, a.name, t0)
        s = show(unit, ["ActiveEnterTimestampMonotonic", "ExecStart"], inside)
        if argv_hand is None:
            argv_hand = exec_argv(s["ExecStart"])
            argv_hand[argv_hand.index("--port") + 1] = str(a.hand_port)
        active = (int(s["ActiveEnterTimestampMonotonic"]) - m0) / 1e6
        return {"active": active, "head": head, "tok": tok, "end": end}

    def hand_round():
        time.sleep(0.5)
        with open(a.log, "ab") as log:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv_hand, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        spawned = time.perf_counter() - t0
        with open(a.pidfile, "w") as f:
            f.write(str(p.pid))
        try:
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", a.hand_port, timeout=5)
                    c.request("GET", "/health")
                    r = c.getresponse()
                    r.read()
                    c.close()
                    if r.status == 200:
                        break
                except OSError:
                    pass
                if p.poll() is not None:
                    sys.exit(f"llama-server by hand exited with {p.returncode}; see {a.log}")
                if time.perf_counter() - t0 > 120:
                    sys.exit("llama-server by hand not healthy after 120 s")
                time.sleep(a.poll_ms / 1e3)
            health = time.perf_counter() - t0
            head, tok, end = first_token(a.hand_port, a.name, t0)
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            os.unlink(a.pidfile)
        return {"active": spawned, "health": health, "head": head, "tok": tok, "end": end}

    log = lambda s: print(s, file=sys.stderr)
    log("ttft: warm-up (not counted): one on-demand start through llamactld, one start by hand")
    daemon_round()
    hand_round()
    print("llama-server by hand: " + shlex.join(argv_hand) + f"  (stdout/stderr to a file)")
    res = {"llamactld": [], "hand": []}
    for i in range(a.rounds):
        order = ("llamactld", "hand") if i % 2 == 0 else ("hand", "llamactld")
        for side in order:
            res[side].append(daemon_round() if side == "llamactld" else hand_round())
        log(f"ttft round {i+1}/{a.rounds}: through llamactld {res['llamactld'][-1]['tok']*1e3:.0f} ms, "
            f"by hand {res['hand'][-1]['tok']*1e3:.0f} ms")
    stopped()
    med = lambda side, k: statistics.median(r[k] for r in res[side]) * 1e3
    p90 = lambda side, k: stats([r[k] for r in res[side]])["p90"] * 1e3
    print(f"{a.rounds} rounds, interleaved (order alternating); ms from sending (llamactld) or from")
    print("spawning llama-server (by hand):")
    print(f"{'side':<44} {'process/unit up':>15} {'healthy':>8} {'resp head':>9} {'1st token':>9} {'p90':>7} {'min':>7} {'stream end':>10}")
    d, h = "llamactld", "hand"
    print(f"{'on-demand start through llamactld (proxy)':<44} {med(d,'active'):>15.1f} {'-':>8} {med(d,'head'):>9.1f} "
          f"{med(d,'tok'):>9.1f} {p90(d,'tok'):>7.1f} {min(r['tok'] for r in res[d])*1e3:>7.1f} {med(d,'end'):>10.1f}")
    print(f"{'llama-server by hand, poll /health ' + format(a.poll_ms, 'g') + ' ms':<44} {med(h,'active'):>15.1f} {med(h,'health'):>8.1f} {med(h,'head'):>9.1f} "
          f"{med(h,'tok'):>9.1f} {p90(h,'tok'):>7.1f} {min(r['tok'] for r in res[h])*1e3:>7.1f} {med(h,'end'):>10.1f}")
    print()
    dt, ht = med(d, "tok"), med(h, "tok")
    print(f"cold start to first token, llamactld / by hand (medians): {dt / ht:.2f}x ({dt - ht:+.1f} ms)")
    print("process/unit up: llamactld = the unit's ActiveEnterTimestamp (Type=exec: llama-server was")
    print("executed); by hand = Popen returned. healthy: the first 200 from /health while polling.")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:] or ["help"]
    if cmd in ("start-overhead", "ttft"):
        sys.exit(globals()["cmd_" + cmd.replace("-", "_")](args) or 0)
    if cmd == "help" or "cmd_" + cmd.replace("-", "_") not in globals():
        print(__doc__)
        sys.exit(0 if cmd == "help" else 2)
    sys.exit(globals()["cmd_" + cmd.replace("-", "_")](*args) or 0)
