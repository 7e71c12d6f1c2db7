#!/usr/bin/env bash
# tests/vm/guest/checks.sh owns the checks that run INSIDE the VM guest (Debian 12, systemd as
# PID 1, pure cgroup v2), on the packages built by this run of tools/vm-test. vmtest-run.service
# runs it after boot with the data disk mounted at $1, which holds:
#   debs/old.deb, debs/new.deb   llamactl at its version and at a higher one (the upgrade)
#   fake_backend                 examples/fake_backend.rs, release build
#   itest/                       the integration tests (debug build), their binaries, the source
#                                tree and promtool; itest/mounts says where they must appear
# It writes $1/out/results.txt: one "ok NAME" or "FAIL NAME: why" per check (tests/vm/host.sh
# knows the expected names and count), "# ..." lines with facts worth reading (the system
# health JSON), and $1/out/*.log for diagnosis. The guest powers off when this returns.
# A check that others depend on stops the run when it fails: the rest are reported as FAIL
# "not run", never left out.
set -euo pipefail

D=${1:?usage: checks.sh DATA_DIR}
OUT=$D/out
mkdir -p "$OUT"
R=$OUT/results.txt
: >"$R"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8

NAME=vmfake             # the instance
PORT=18181              # its port
UNIT=llamactl-$NAME.service
CG=/sys/fs/cgroup/llamactl.slice/$UNIT
API=http://127.0.0.1:8080
broken=                 # the critical check that failed, if any

record() { printf '%s\n' "$*" | tee -a "$R"; sync "$R"; }
note() { record "# $*"; }

# check [-c] NAME FUNCTION: runs FUNCTION, which prints why and returns non-zero on failure
# (set -e does not apply inside it: every step returns explicitly). -c: critical.
check() {
    local critical=0 name fn
    [[ $1 == -c ]] && { critical=1; shift; }
    name=$1 fn=$2
    if [[ -n $broken ]]; then
        record "FAIL $name: not run ($broken failed)"
        return 0
    fi
    # Not in a subshell: a check may set variables for later ones (the upgrade's PIDs).
    if "$fn" >"$OUT/why" 2>&1; then
        record "ok $name"
    else
        record "FAIL $name: $(tail -n 3 "$OUT/why" | tr '\n' ' ')"
        ((critical)) && broken=$name
    fi
    return 0
}

# wait_for SECONDS COMMAND...: until COMMAND succeeds (quietly), at most SECONDS.
wait_for() {
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.5
    done
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$1" || true; }
is_200() { [[ $(http_code "$1") == 200 ]]; }
main_pid() { systemctl show -P MainPID "$1"; }

# sample FILE SERIES: the value of one exposition line (exact series, labels included).
sample() { awk -v s="$2" '$1 == s { print $2; found = 1 } END { exit !found }' "$1"; }
# keyed FILE KEY: "key value" files (memory.stat, memory.events, cpu.stat).
keyed() { awk -v k="$2" '$1 == k { print $2; found = 1 } END { exit !found }' "$1"; }
# psi FILE: the "some" line's total= (microseconds).
psi() { awk '$1 == "some" { for (i = 2; i <= NF; i++) if ($i ~ /^total=/) { sub(/total=/, "", $i); print $i; found = 1 } } END { exit !found }' "$1"; }
# io_sum FILE rbytes|wbytes: summed over devices.
io_sum() { awk -v k="$2=" '{ for (i = 2; i <= NF; i++) if (index($i, k) == 1) { s += substr($i, length(k) + 1); found = 1 } } END { if (found) printf "%d\n", s; exit !found }' "$1"; }
# within LOW HIGH VALUE SLACK: LOW - SLACK <= VALUE <= HIGH + SLACK (floating point).
within() { awk -v lo="$1" -v hi="$2" -v v="$3" -v s="$4" 'BEGIN { exit !(v >= lo - s && v <= hi + s) }'; }
# usec SECONDS: a metric in seconds as whole microseconds (the cgroup files' unit).
usec() { awk -v x="$1" 'BEGIN { printf "%.0f\n", x * 1e6 }'; }

# --- the guest itself ---
c_guest() {
    [[ $(readlink /proc/1/exe) == */systemd ]] || { echo "PID 1 is $(readlink /proc/1/exe)"; return 1; }
    [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]] || { echo "/sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)"; return 1; }
    # Pure v2: no v1 hierarchy mounted anywhere.
    local v1
    v1=$(awk '$3 == "cgroup" { print $2 }' /proc/mounts)
    [[ -z $v1 ]] || { echo "cgroup v1 hierarchies mounted: $v1"; return 1; }
    note "guest: $(uname -r), systemd $(systemctl --version | awk 'NR == 1 { print $2 }'), $(nproc) CPUs, $(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) MiB"
}

# --- install ---
c_install() {
    dpkg -i "$D/debs/old.deb" >"$OUT/dpkg-install.log" 2>&1 || { tail -n 3 "$OUT/dpkg-install.log"; return 1; }
    local v
    v=$(dpkg-query -W -f='${Status} ${Version}' llamactl)
    [[ $v == "install ok installed $(dpkg-deb -f "$D/debs/old.deb" Version)" ]] || { echo "dpkg-query: $v"; return 1; }
}

c_service() {
    [[ $(systemctl is-enabled llamactl.service) == enabled ]] || { echo "not enabled"; return 1; }
    wait_for 60 systemctl is-active --quiet llamactl.service || { echo "not active: $(systemctl is-active llamactl.service)"; return 1; }
}

c_health() {
    wait_for 60 is_200 "$API/api/health" || { echo "/api/health: $(http_code "$API/api/health")"; return 1; }
}

c_journal() {
    # The daemon's own lines (its identifier), including the one it logs when ready.
    journalctl -u llamactl.service -o cat -q SYSLOG_IDENTIFIER=llamactld >"$OUT/journal-llamactl.log" 2>&1
    grep -q 'ready' "$OUT/journal-llamactl.log" || { echo "no 'ready' line from llamactld in journalctl -u llamactl ($(wc -l <"$OUT/journal-llamactl.log") lines)"; return 1; }
}

c_layout() {
    local j
    j=$(curl -sf --max-time 10 "$API/api/system/health") || { echo "GET /api/system/health failed"; return 1; }
    note "system/health: $(jq -c . <<<"$j")"
    [[ $(jq -r .cgroup.layout <<<"$j") == v2 ]] || { echo "layout $(jq -c .cgroup <<<"$j")"; return 1; }
}

c_files() {
    local f missing=()
    for f in /usr/share/llamactl/grafana/llamactl-dashboard.json /usr/share/llamactl/prometheus/alerts.yml \
        /usr/share/llamactl/prometheus/prometheus.yml /usr/lib/systemd/catalog/llamactl.catalog \
        /usr/share/llamactl/alertmanager/alertmanager.yml /usr/share/doc/llamactl/runbooks/README.md \
        /usr/share/llamactl/elasticsearch/llamactl-template.json \
        /usr/share/llamactl/elasticsearch/llamactl-index-template.json; do
        dpkg -S "$f" >/dev/null 2>&1 && [[ -s $f ]] || missing+=("$f")
    done
    ((${#missing[@]} == 0)) || { echo "not installed by the package: ${missing[*]}"; return 1; }
    jq -e '.panels | length > 0' /usr/share/llamactl/grafana/llamactl-dashboard.json >/dev/null \
        || { echo "the dashboard has no panels"; return 1; }
    grep -q 'alert: *InstanceDown' /usr/share/llamactl/prometheus/alerts.yml \
        || { echo "alerts.yml has no InstanceDown alert"; return 1; }
    # Every alert's runbook, uncompressed, under the name its runbook_url gives.
    local rb rbs
    rbs=$(grep -o 'runbook_url: "[^"]*"' /usr/share/llamactl/prometheus/alerts.yml | sed 's|.*/||; s|"$||')
    [[ -n $rbs ]] || { echo "alerts.yml has no runbook_url"; return 1; }
    for rb in $rbs; do
        dpkg -S "/usr/share/doc/llamactl/runbooks/$rb" >/dev/null 2>&1 || missing+=("runbooks/$rb")
    done
    ((${#missing[@]} == 0)) || { echo "runbooks not installed: ${missing[*]}"; return 1; }
    # The catalog is in journald's database (postinst ran journalctl --update-catalog).
    local id
    id=$(awk '/^-- [0-9a-f]{32}/ { print $2; exit }' /usr/lib/systemd/catalog/llamactl.catalog)
    journalctl --list-catalog 2>/dev/null | grep -q "^$id" || { echo "catalog entry $id not in journalctl --list-catalog"; return 1; }
}

# --- an instance, through the admin socket as root (no key) ---
c_config() {
    local old
    old=$(main_pid llamactl.service)
    sed -i 's/^\[instances\]$/[instances]\nallowed_backends = ["llama_cpp", "vllm", "command"]/' /etc/llamactl/config.toml
    grep -q '^allowed_backends = \["llama_cpp", "vllm", "command"\]' /etc/llamactl/config.toml || { echo "config edit did not apply"; return 1; }
    llamactld --check-config -c /etc/llamactl/config.toml || return 1
    systemctl restart llamactl.service || { echo "restart failed"; return 1; }
    wait_for 60 is_200 "$API/api/health" || { echo "/api/health after restart: $(http_code "$API/api/health")"; return 1; }
    [[ $(main_pid llamactl.service) != "$old" ]] || { echo "MainPID unchanged after restart"; return 1; }
}

c_instance() {
    [[ -S /run/llamactl/llamactl.sock ]] || { echo "no admin socket"; return 1; }
    # Disk I/O the instance does itself (O_DIRECT, so it reaches io.stat): 8 MiB out, 8 MiB in.
    local script="dd if=/dev/zero of=/tmp/io bs=1M count=8 oflag=direct status=none && dd if=/tmp/io of=/dev/null bs=1M iflag=direct status=none && rm /tmp/io && exec /usr/local/bin/fake_backend --port {port}"
    env -u LLAMACTL_URL -u LLAMACTL_API_KEY llamactl create "$NAME" --backend command -p "$PORT" --start --wait --timeout 120s \
        -- /bin/sh -c "$script" >"$OUT/create.log" 2>&1 || { tail -n 3 "$OUT/create.log"; return 1; }
    systemctl is-active --quiet "$UNIT" || { echo "$UNIT is $(systemctl is-active "$UNIT")"; return 1; }
    [[ $(systemctl show -P ControlGroup "$UNIT") == /llamactl.slice/$UNIT ]] || { echo "ControlGroup $(systemctl show -P ControlGroup "$UNIT")"; return 1; }
    is_200 "http://127.0.0.1:$PORT/health" || { echo "backend /health: $(http_code "http://127.0.0.1:$PORT/health")"; return 1; }
    llamactl health "$NAME" >/dev/null || { echo "llamactl health $NAME: not ready"; return 1; }
}

# A second instance that fails: its unit stays loaded, failed (CollectMode=inactive), until
# something resets it. Remove must not leave it behind.
c_failed() {
    env -u LLAMACTL_URL -u LLAMACTL_API_KEY llamactl create vmfail --backend command -p "$((PORT + 1))" --no-auto-restart \
        -- /bin/false >"$OUT/create-failed.log" 2>&1 || { tail -n 3 "$OUT/create-failed.log"; return 1; }
    llamactl start vmfail >>"$OUT/create-failed.log" 2>&1 || true
    wait_for 60 systemctl is-failed --quiet llamactl-vmfail.service \
        || { echo "llamactl-vmfail.service is $(systemctl is-active llamactl-vmfail.service), not failed"; return 1; }
}

# The files the daemon's pure-v2 reader uses (src/stats/cgroup.rs read_v2), present for the unit.
c_cgfiles() {
    local f missing=()
    for f in memory.current memory.peak memory.max memory.stat memory.events cpu.stat io.stat pids.current \
        cpu.pressure memory.pressure io.pressure; do
        [[ -r $CG/$f ]] || missing+=("$f")
    done
    ((${#missing[@]} == 0)) || { echo "missing in $CG: ${missing[*]}"; return 1; }
    { keyed "$CG/memory.stat" anon && keyed "$CG/memory.stat" file; } >/dev/null || { echo "memory.stat without anon/file"; return 1; }
    keyed "$CG/memory.events" oom_kill >/dev/null || { echo "memory.events without oom_kill"; return 1; }
    note "cgroup $CG: memory.current=$(cat "$CG/memory.current") memory.peak=$(cat "$CG/memory.peak") anon=$(keyed "$CG/memory.stat" anon) file=$(keyed "$CG/memory.stat" file) oom_kill=$(keyed "$CG/memory.events" oom_kill) io.stat=[$(tr '\n' ' ' <"$CG/io.stat")]"
}

# One scrape bracketed by two reads of the cgroup files (b = before, a = after), after 7 s of
# reads that start longer before it than the daemon's collection interval (5 s): the scrape
# serves a background snapshot taken in that time, so a counter's metric lies between the first
# read (p = previous) and a, and a gauge's (memory) within what the reads every half second saw
# (s1..s14) — whatever the guest's load (PSI accrues fastest when the guest is busy, memory moves
# while the backend settles).
scrape() {
    local f i
    for f in cpu.pressure memory.pressure io.pressure; do
        cp "$CG/$f" "$OUT/p.$f" || return 1
    done
    for i in $(seq 14); do
        for f in memory.current memory.peak memory.stat; do
            cp "$CG/$f" "$OUT/s$i.$f" || return 1
        done
        sleep 0.5
    done
    for f in memory.current memory.peak memory.stat cpu.stat io.stat memory.events cpu.pressure memory.pressure io.pressure; do
        cp "$CG/$f" "$OUT/b.$f" || return 1
    done
    curl -sf --max-time 20 "$API/metrics" >"$OUT/metrics.txt" || return 1
    for f in memory.current memory.peak memory.stat cpu.stat io.stat memory.events cpu.pressure memory.pressure io.pressure; do
        cp "$CG/$f" "$OUT/a.$f" || return 1
    done
}

series() { printf 'llamactl_instance_%s{instance_name="%s"}' "$1" "$NAME"; }
metric() { sample "$OUT/metrics.txt" "$(series "$1")" || { echo "no $(series "$1") in /metrics"; return 1; }; }

c_scrape() {
    scrape || { echo "reading $CG or GET /metrics failed"; return 1; }
    [[ $(sample "$OUT/metrics.txt" "$(series up)") == 1 ]] || { echo "$(series up) is not 1"; return 1; }
}

# span FILE [KEY]: "MIN MAX" of FILE's value (or KEY's, in a keyed file) over the reads
# around the scrape (s1..s14, b, a).
span() {
    local f v lo='' hi=''
    for f in "$OUT"/s*."$1" "$OUT/b.$1" "$OUT/a.$1"; do
        if [[ -n ${2:-} ]]; then v=$(keyed "$f" "$2") || return 1; else v=$(cat "$f") || return 1; fi
        [[ -z $lo ]] || ((v >= lo)) || lo=$v
        [[ -z $hi ]] || ((v <= hi)) || hi=$v
        [[ -n $lo ]] || { lo=$v; hi=$v; }
    done
    echo "$lo $hi"
}

c_m_memory() {
    local m b a
    m=$(metric memory_bytes) || { echo "$m"; return 1; }
    read -r b a < <(span memory.current) && [[ -n $a ]] || return 1
    # memory.current moves a little between reads (the health probes): within what the reads
    # saw, give or take 128 KiB, and a live process's worth (the backend alone is several
    # hundred KiB).
    within "$b" "$a" "$m" 131072 || { echo "metric $m, memory.current $b..$a over the reads"; return 1; }
    within 262144 1e18 "$m" 0 || { echo "metric $m: less than a running backend uses"; return 1; }
}

# memory.peak, and anon/file from memory.stat: each within what the reads saw, give or take 128 KiB.
c_m_memory_detail() {
    local name file key m b a
    for name in memory_peak_bytes:memory.peak: memory_anon_bytes:memory.stat:anon memory_file_bytes:memory.stat:file; do
        IFS=: read -r name file key <<<"$name"
        m=$(metric "$name") || { echo "$m"; return 1; }
        read -r b a < <(span "$file" "$key") && [[ -n $a ]] || return 1
        within "$b" "$a" "$m" 131072 || { echo "$name: metric $m, $file ${key:-} $b..$a over the reads"; return 1; }
    done
}

c_m_cpu() {
    local m b a
    m=$(metric cpu_seconds_total) || { echo "$m"; return 1; }
    { b=$(keyed "$OUT/b.cpu.stat" usage_usec) && a=$(keyed "$OUT/a.cpu.stat" usage_usec); } || { echo "cpu.stat has no usage_usec"; return 1; }
    # The scrape serves the background collector's last snapshot (up to a collection interval
    # old), and the backend uses a little CPU meanwhile (health probes): the metric may be up to
    # 100 ms of CPU behind the first read (the same slack is allowed above the second).
    within "$b" "$a" "$(usec "$m")" 100000 || { echo "metric $m s, cpu.stat usage_usec $b..$a"; return 1; }
}

c_m_io() {
    local k m b a
    for k in read:rbytes write:wbytes; do
        m=$(metric "io_${k%%:*}_bytes_total") || { echo "$m"; return 1; }
        b=$(io_sum "$OUT/b.io.stat" "${k#*:}") || { echo "io.stat has no ${k#*:}"; return 1; }
        a=$(io_sum "$OUT/a.io.stat" "${k#*:}") || { echo "io.stat has no ${k#*:}"; return 1; }
        within "$b" "$a" "$m" 0 || { echo "${k%%:*}: metric $m, io.stat ${k#*:} $b..$a"; return 1; }
        # The instance's own 8 MiB each way (O_DIRECT) are in it.
        within 8388608 1e18 "$m" 0 || { echo "${k%%:*}: $m bytes, expected at least the instance's 8 MiB"; return 1; }
    done
}

c_m_pressure() {
    local r m b a
    for r in cpu memory io; do
        m=$(metric "pressure_${r}_seconds_total") || { echo "$m"; return 1; }
        { b=$(psi "$OUT/p.$r.pressure") && a=$(psi "$OUT/a.$r.pressure"); } || { echo "$r.pressure has no some total="; return 1; }
        within "$b" "$a" "$(usec "$m")" 1 || { echo "$r: metric $m s, $r.pressure some total $b (7 s before the scrape)..$a us"; return 1; }
    done
}

c_m_oom() {
    local m b a
    m=$(metric oom_kills_total) || { echo "$m"; return 1; }
    { b=$(keyed "$OUT/b.memory.events" oom_kill) && a=$(keyed "$OUT/a.memory.events" oom_kill); } || { echo "memory.events has no oom_kill"; return 1; }
    within "$b" "$a" "$m" 0 || { echo "metric $m, memory.events oom_kill $b..$a"; return 1; }
}

# --- upgrade: the daemon restarts, the instance is adopted, not restarted ---
daemon_before='' instance_before='' restarts_before=''
c_upgrade() {
    daemon_before=$(main_pid llamactl.service)
    instance_before=$(main_pid "$UNIT")
    restarts_before=$(systemctl show -P NRestarts "$UNIT")
    [[ $daemon_before != 0 && $instance_before != 0 ]] || { echo "MainPIDs before: daemon $daemon_before, instance $instance_before"; return 1; }
    dpkg -i "$D/debs/new.deb" >"$OUT/dpkg-upgrade.log" 2>&1 || { tail -n 3 "$OUT/dpkg-upgrade.log"; return 1; }
    local v
    v=$(dpkg-query -W -f='${Status} ${Version}' llamactl)
    [[ $v == "install ok installed $(dpkg-deb -f "$D/debs/new.deb" Version)" ]] || { echo "dpkg-query: $v"; return 1; }
}

c_up_daemon() {
    wait_for 60 is_200 "$API/api/health" || { echo "/api/health after the upgrade: $(http_code "$API/api/health")"; return 1; }
    local now
    now=$(main_pid llamactl.service)
    [[ $now != 0 && $now != "$daemon_before" ]] || { echo "daemon MainPID $daemon_before before, $now after"; return 1; }
}

c_up_instance() {
    local now
    now=$(main_pid "$UNIT")
    [[ $now == "$instance_before" ]] || { echo "instance MainPID $instance_before before, $now after"; return 1; }
    [[ $(systemctl show -P NRestarts "$UNIT") == "$restarts_before" ]] || { echo "NRestarts changed"; return 1; }
    systemctl is-active --quiet "$UNIT" || { echo "$UNIT is $(systemctl is-active "$UNIT")"; return 1; }
}

c_up_adopted() {
    local pid
    pid=$(main_pid llamactl.service)
    wait_for 30 llamactl health "$NAME" || { echo "llamactl health $NAME: not ready under the new daemon"; return 1; }
    journalctl -o cat -q _PID="$pid" >"$OUT/journal-upgraded.log" 2>&1
    grep -q "adopted running unit.*$NAME" "$OUT/journal-upgraded.log" || { echo "the new daemon (pid $pid) logged no adoption of $NAME"; return 1; }
    curl -sf --max-time 20 "$API/metrics" >"$OUT/metrics-upgraded.txt" || { echo "GET /metrics failed"; return 1; }
    [[ $(sample "$OUT/metrics-upgraded.txt" "$(series up)") == 1 ]] || { echo "$(series up) is not 1 after the upgrade"; return 1; }
}

# --- remove, then purge ---
c_remove() {
    dpkg -r llamactl >"$OUT/dpkg-remove.log" 2>&1 || { tail -n 3 "$OUT/dpkg-remove.log"; return 1; }
    # Quietly: a maintainer script's warning or systemctl's "Failed to ..." is a failure here.
    if grep -Ei 'warning|failed|error' "$OUT/dpkg-remove.log"; then return 1; fi
    [[ $(dpkg-query -W -f='${Status}' llamactl) == "deinstall ok config-files" ]] || { echo "dpkg-query: $(dpkg-query -W -f='${Status}' llamactl)"; return 1; }
}

c_rm_stopped() {
    local active failed
    active=$(systemctl list-units --state=active --plain --no-legend 'llamactl*' | awk '{ print $1 }' | tr '\n' ' ')
    [[ -z $active ]] || { echo "still active: $active"; return 1; }
    failed=$(systemctl list-units --state=failed --plain --no-legend 'llamactl*' | awk '{ print $1 }' | tr '\n' ' ')
    [[ -z $failed ]] || { echo "still loaded, failed: $failed"; return 1; }
    if pgrep -x fake_backend >/dev/null; then echo "fake_backend still runs (pid $(pgrep -x fake_backend))"; return 1; fi
}

c_rm_kept() {
    [[ -s /var/lib/llamactl/instances/$NAME.json ]] || { echo "no /var/lib/llamactl/instances/$NAME.json"; return 1; }
    [[ -s /etc/llamactl/config.toml ]] || { echo "no /etc/llamactl/config.toml (a conffile: kept until purge)"; return 1; }
}

c_purge() {
    dpkg --purge llamactl >"$OUT/dpkg-purge.log" 2>&1 || { tail -n 3 "$OUT/dpkg-purge.log"; return 1; }
    if grep -Ei 'warning|failed|error' "$OUT/dpkg-purge.log"; then return 1; fi
    if dpkg-query -W llamactl >/dev/null 2>&1; then echo "dpkg still knows llamactl"; return 1; fi
}

c_pg_units() {
    local loaded
    loaded=$(systemctl list-units --all --plain --no-legend 'llamactl*' | awk '{ print $1 " (" $3 ")" }' | tr '\n' ' ')
    [[ -z $loaded ]] || { echo "still loaded: $loaded"; return 1; }
}

c_pg_files() {
    local p left=()
    for p in /var/lib/llamactl /var/log/llamactl /etc/llamactl /run/llamactl /usr/share/llamactl; do
        [[ -e $p ]] && left+=("$p")
    done
    ((${#left[@]} == 0)) || { echo "left behind: ${left[*]}"; return 1; }
}

c_pg_group() {
    if getent group llamactl >/dev/null; then echo "group llamactl left"; return 1; fi
    if getent passwd llamactl >/dev/null; then echo "user llamactl left"; return 1; fi
}

# --- the integration tests' service:: and resources:: modules on pure v2 ---
# The README's test suite (debug build of this run's HEAD) with its private systemd booted from
# a delegated scope, as on any pure cgroup v2 host whose PID 1 is systemd: the harness moves the
# scope's processes to a leaf and gives the sandbox the memory, cpu, io and pids controllers.
IT=$D/itest
itest_ready=''
itest_setup() {
    [[ -x $IT/integration && -f $IT/mounts ]] || { echo "no integration tests on the data disk (itest-build failed)"; return 1; }
    local from to
    while read -r from to; do
        mkdir -p "$to" && mount --bind "$IT/$from" "$to" || { echo "bind $from -> $to failed"; return 1; }
    done <"$IT/mounts"
    install -m 0755 "$IT/promtool" /usr/local/bin/promtool
    itest_ready=1
}

# The harness alone, booted from a delegated scope as the tests do: its manager must get the
# memory, cpu, io and pids controllers (the resources tests need them). On failure, what the
# scope and the sandbox's root were given.
c_harness() {
    [[ -n $itest_ready ]] || itest_setup || return 1
    local src sb st=/tmp/vmtest-sb rc=0 scope d have='' enabled=''
    src=$(awk '$1 == "src" { print $2 }' "$IT/mounts")
    sb=$src/tests/harness/systemd-sandbox.sh
    export SANDBOX_NAME=vmtest-sb SANDBOX_STATE=$st SANDBOX_NET=host SANDBOX_BIND=
    systemd-run --scope --quiet -p Delegate=yes --unit=vmtest-harness -- bash "$sb" up >"$OUT/harness-up.log" 2>&1 || rc=$?
    scope=/sys/fs/cgroup/system.slice/vmtest-harness.scope
    note "harness scope: controllers [$(cat "$scope/cgroup.controllers" 2>&1)] subtree_control [$(cat "$scope/cgroup.subtree_control" 2>&1)]"
    # The sandbox's cgroup, seen from here: what it was given, and what its manager enabled.
    d=$(grep -m1 '^/sys/fs/cgroup/' "$st/cgroups" 2>/dev/null) || true
    if [[ -n $d ]]; then
        have=$(cat "$d/cgroup.controllers" 2>&1)
        enabled=$(cat "$d/cgroup.subtree_control" 2>&1)
        note "harness cgroup $d: controllers [$have] subtree_control [$enabled] procs [$(tr '\n' ' ' <"$d/cgroup.procs" 2>&1)]"
    fi
    bash "$sb" down >>"$OUT/harness-up.log" 2>&1 || true
    unset SANDBOX_NAME SANDBOX_STATE SANDBOX_NET SANDBOX_BIND
    ((rc == 0)) || { tail -n 5 "$OUT/harness-up.log"; return 1; }
    [[ -n $d ]] || { echo "no sandbox cgroup in $st/cgroups"; return 1; }
    [[ $d == "$scope/vmtest-sb" ]] || { echo "the sandbox's cgroup is $d, not below the delegated scope"; return 1; }
    for c in memory cpu io pids; do
        [[ " $have " == *" $c "* ]] || { echo "the sandbox's cgroup was not given $c: [$have]"; return 1; }
    done
    # systemd enables a controller for its children when a unit needs it: memory, io and pids
    # at boot (accounting defaults), cpu only once a unit asks for CPU accounting.
    for c in memory io pids; do
        [[ " $enabled " == *" $c "* ]] || { echo "the sandbox's manager did not enable $c for its units: [$enabled]"; return 1; }
    done
}

# c_itest MODULE THREADS [SKIP...]: every test of MODULE but those named in SKIP (exact names)
# passes: the count listed minus the skipped == the count passed, none ignored.
c_itest() {
    local mod=$1 threads=$2 n s rc=0 skip=()
    shift 2
    [[ -n $itest_ready ]] || itest_setup || return 1
    n=$("$IT/integration" --list "$mod::" 2>/dev/null | grep -c ': test$') || true
    ((n > 0)) || { echo "no tests listed for $mod::"; return 1; }
    for s; do
        # (Not piped into grep -q: under pipefail, grep leaving early can fail the listing.)
        [[ $("$IT/integration" --list --exact "$s" 2>/dev/null) == *": test"* ]] || { echo "skip list names no test: $s"; return 1; }
        skip+=(--skip "$s")
        n=$((n - 1))
    done
    systemd-run --scope --quiet -p Delegate=yes --unit="vmtest-itest-$mod" -- \
        env LLAMACTL_TEST_SANDBOX=1 RUST_BACKTRACE=1 "$IT/integration" "$mod::" "${skip[@]}" --test-threads="$threads" \
        >"$OUT/itest-$mod.log" 2>&1 || rc=$?
    if ((rc != 0)) || ! grep -q "^test result: ok. $n passed; 0 failed; 0 ignored" "$OUT/itest-$mod.log"; then
        grep -E '^test .* FAILED$' "$OUT/itest-$mod.log" | head -n 3
        grep -A2 'panicked at' "$OUT/itest-$mod.log" | head -n 9
        echo "exit $rc; $(grep '^test result:' "$OUT/itest-$mod.log")"
        return 1
    fi
    note "$mod:: $n tests passed on pure v2 ($(grep -o 'finished in [0-9.]*s' "$OUT/itest-$mod.log"); $((${#skip[@]} / 2)) not run here)"
}
# What the guest does not run, and why (the README's "On a real host" says the same):
# - tests that need a real llama-server (the cached build is compiled for the host's CPU, and a
#   model load plus a completion under TCG would take minutes), Prometheus, or PyPI's openai;
# - proxy:: (four of its five tests serve through a real llama-server, the fifth is the
#   proxy's bookkeeping), drills::, soak:: (minutes of load by design), and the modules whose
#   tests do not depend on the host's cgroup layout (cli, limits, plain_process, audit,
#   telemetry, profiling, packaging, log_shipping, dashboard) — the host's own run covers them.
c_itest_service() { c_itest service 2; }
# One at a time: the CPU test's busy loop must have a vCPU to itself (the guest has two, emulated;
# sharing one with the OOM test's hog once measured 18 % where one CPU is ~100 %).
c_itest_resources() { c_itest resources 1; }
c_itest_instances() { c_itest instances 2 instances::llama_server_instance_lifecycle; }
c_itest_security() {
    c_itest security 2 security::openai::the_openai_client_works_with_defaults_and_with_inference_keys \
        security::policy::hardened_units_score_low_and_llama_server_still_answers
}
c_itest_operations() { c_itest operations 2; }

install -m 0755 "$D/fake_backend" /usr/local/bin/fake_backend

check guest-systemd-cgroup2 c_guest
check -c install c_install
check -c service-enabled-active c_service
check -c api-health-200 c_health
check journal-has-daemon-lines c_journal
check system-health-layout-v2 c_layout
check shared-files-installed c_files
check -c config-command-backend c_config
check -c instance-started c_instance
check instance-failed c_failed
check cgroup-v2-files c_cgfiles
check -c metrics-scraped c_scrape
check metrics-memory-current c_m_memory
check metrics-memory-peak-anon-file c_m_memory_detail
check metrics-cpu-stat c_m_cpu
check metrics-io-stat c_m_io
check metrics-pressure c_m_pressure
check metrics-oom-kills c_m_oom
check -c upgrade-installed c_upgrade
check upgrade-daemon-restarted c_up_daemon
check upgrade-instance-not-restarted c_up_instance
check upgrade-instance-adopted c_up_adopted
check -c remove c_remove
check remove-instances-stopped c_rm_stopped
check remove-specs-kept c_rm_kept
check -c purge c_purge
check purge-no-units c_pg_units
check purge-no-files c_pg_files
check purge-no-group c_pg_group
# Independent of the package (and run on the host the purge left clean): a package check that
# stopped the run above does not stop these.
broken=
check pure-v2-harness-controllers c_harness
check pure-v2-service-tests c_itest_service
check pure-v2-resources-tests c_itest_resources
check pure-v2-instances-tests c_itest_instances
check pure-v2-security-tests c_itest_security
check pure-v2-operations-tests c_itest_operations

journalctl -b --no-pager -o short-monotonic >"$OUT/journal.log" 2>&1 || true
record "# done"
