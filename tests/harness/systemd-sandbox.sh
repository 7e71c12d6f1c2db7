#!/usr/bin/env bash
# =============================================================================
# systemd-sandbox.sh — boot a REAL, private systemd system manager (+ D-Bus system bus
# + journald) for llamactl's integration tests, on a host whose PID 1 is NOT systemd.
#
# The project's own copy of the measured reference harness (tests/systemd/mod.rs drives it;
# tools/dev-run uses it to run the daemon on a machine without systemd as PID 1). Keep it
# self-contained: the project must test itself without anything outside the repository.
#
# Typical use:
#     H=/path/to/systemd-sandbox.sh
#     cargo test --no-run                      # build on the host first
#     "$H" up                                  # ~0.4-0.7 s on this VM
#     trap '"$H" down' EXIT                    # ~0.15 s, leaves nothing behind
#     "$H" exec cargo test --test systemd_it   # runs inside, bus at default path
#
# How it works (no VM, no extra packages: util-linux [unshare, nsenter,
# setpriv, pivot_root, script], perl-base, systemd, dbus — all Essential or
# already present on Debian 12):
#   * A dedicated cgroup "$NAME" is created below the caller's own cgroup in
#     every mounted cgroup hierarchy (v1 controllers, name=systemd, cgroup2).
#     On a pure cgroup v2 host the caller's cgroup must be delegated to it
#     (`systemd-run --scope -p Delegate=yes`, or a container's own root): its
#     processes move to a leaf "$NAME.caller" and it enables its controllers
#     for "$NAME", which becomes the root of the sandbox's cgroup namespace.
#   * `unshare` creates new mount, PID, UTS, IPC, cgroup (and by default
#     network) namespaces.  Inside, PID 1 builds a root filesystem that is an
#     OVERLAY of the host "/" (read-only lower) with a throw-away tmpfs upper,
#     so nothing systemd writes (/etc, /var, /run ...) reaches the host.
#   * Fresh /proc (with /proc/sys read-only), read-only /sys, private /dev
#     (tmpfs + null/zero/full/random/urandom/tty, own devpts), tmpfs /run and
#     /tmp, and cgroup hierarchies re-mounted inside the cgroup namespace so the
#     manager only sees (and can only write) its own subtree.
#   * The host's unit set is trimmed: a tiny default target
#     ($NAME.target = basic.target + dbus + journald); units that could touch
#     the host (udev, sysctl, modules, binfmt, timesyncd, getty ...) are
#     masked, and so is EVERY unit the host has "enabled" (symlinked into a
#     *.wants/*.requires dir: postgres, nginx, apt timers ...) except
#     journald/dbus/tmpfiles, plus all generators but debug/run.
#   * pivot_root into the overlay, then exec /lib/systemd/systemd as PID 1
#     with container=$NAME (systemd's "container mode").
#
# Subcommands:
#   up            boot it and wait until the system bus + manager are ready
#   exec CMD...   run CMD inside (mount/pid/uts/ipc/net/cgroup namespaces of the
#                 container) — it sees /run/dbus/system_bus_socket,
#                 /run/systemd/private and /run/log/journal at standard paths,
#                 so systemctl / systemd-run / busctl / journalctl / zbus /
#                 sd-bus "just work".  Exit status of CMD is returned.
#   env           print shell assignments for HOST-side access without entering
#                 namespaces (DBUS_SYSTEM_BUS_ADDRESS via /proc/PID/root, a
#                 journal directory for `journalctl -D`, the manager PID ...).
#   status        print PIDs / state
#   down          power the manager off, wait, force-kill if needed, remove the
#                 cgroups and state.  Idempotent.
#
# Tunables (environment):
#   SANDBOX_NAME   (llamactl-sandbox)  name of target / cgroup / hostname
#   SANDBOX_STATE  (/tmp/llamactl-sandbox)  host dir for PIDs + console log
#   SANDBOX_BIND   ($PWD if not "/") colon-separated host dirs bind-mounted
#                  read-write at the same path (live view, e.g. the repo and
#                  its target/ dir; the rest of "/" is a snapshot-ish overlay)
#   SANDBOX_NET    (private)  "private": own netns with only loopback;
#                  "host": share the host network namespace
#   SANDBOX_ACCOUNTING (yes)  set DefaultCPU/Memory/IO/TasksAccounting=yes
#                  (on this hybrid-cgroup host CPU accounting is OFF by default)
#   SANDBOX_CPU_CGROUP (acct) "acct": expose the v1 cpuacct hierarchy as
#                  cpu+cpuacct so CPUUsageNSec works (CPU limits NOT enforced);
#                  "cpu": real cpu controller (limits work, CPUUsageNSec unset)
#   SANDBOX_TIMEOUT (30)      seconds to wait for boot / for shutdown
#   SANDBOX_EXEC_SCOPE (1)    `exec` runs CMD in a transient scope unit
#                  (systemd-run --scope); 0 = plain nsenter (process stays in
#                  the caller's cgroup, seen as "/.." inside)
#   SANDBOX_DOWN   (poweroff) "kill": `down` SIGKILLs the container init
#                  instead of an orderly poweroff (skips ExecStop=, ~same speed)
#   SANDBOX_DEBUG  (unset)    if set, systemd logs at debug level to console.log
#
# Must run as root.  Everything it creates on the host: $SANDBOX_STATE and one
# cgroup directory per hierarchy; `down` removes both.
# =============================================================================
set -euo pipefail

NAME=${SANDBOX_NAME:-llamactl-sandbox}
STATE=${SANDBOX_STATE:-/tmp/llamactl-sandbox}
NET=${SANDBOX_NET:-private}
ACCOUNTING=${SANDBOX_ACCOUNTING:-yes}
TIMEOUT=${SANDBOX_TIMEOUT:-30}
SELF=$(readlink -f "${BASH_SOURCE[0]}")

log() { printf '[harness %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------
# cgroup helpers.  Output lines: "<mountpoint> <fstype> <mount-opts-for-inside>
# <caller's cgroup path in that hierarchy>"
# ---------------------------------------------------------------------------
cgroup_hierarchies() {
    # /proc/self/mountinfo: fields before " - " are variable-length; split there.
    local own
    own=$(cat /proc/self/cgroup)
    awk -v own="$own" '
        BEGIN { n = split(own, L, "\n");
                for (i = 1; i <= n; i++) { split(L[i], f, ":");
                    p = L[i]; sub(/^[^:]*:[^:]*:/, "", p); path[f[2]] = p } }
        { for (i = 7; i <= NF; i++) if ($i == "-") break;
          fstype = $(i+1); sopts = $(i+3); mp = $5;
          if (mp == "/sys/fs/cgroup" && fstype == "cgroup2") { print mp, "cgroup2", "-", path[""]; next }
          if (mp !~ /^\/sys\/fs\/cgroup\//) next;
          if (fstype == "cgroup2") { print mp, "cgroup2", "-", path[""]; next }
          if (fstype != "cgroup") next;
          m = split(sopts, o, ","); ctl = "";
          for (j = 1; j <= m; j++) {
              if (o[j] ~ /^(rw|ro|noprefix|clone_children|xattr|cpuset_v2_mode|favordynmods)$/ ||
                  o[j] ~ /^release_agent=/) continue;
              ctl = ctl (ctl == "" ? "" : ",") o[j] }
          print mp, "cgroup", ctl, path[ctl] }' /proc/self/mountinfo
}

pure_v2() { [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; }

# Pure v2 (a modern host, or a container on one): cgroups hold processes only in leaves, and a
# child gets only the controllers its parent enables for it. So the caller's cgroup (a
# delegated one: `systemd-run --scope -p Delegate=yes`, or a container's root) must hand its
# processes to a leaf of their own ($NAME.caller) before it can enable its controllers for the
# sandbox's cgroup. The leaf stays while the caller's processes live; `down` removes it when
# it is empty.
v2_prepare_parent() {
    local own parent pid c
    own=$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)
    parent=/sys/fs/cgroup${own%/}
    [[ -d $parent ]] || die "cannot find my cgroup $parent"
    if [[ $parent == /sys/fs/cgroup ]] && [[ -d /run/systemd/system ]]; then
        die "refusing to rearrange the root cgroup of a systemd host; run me in a delegated scope: systemd-run --scope -p Delegate=yes $0 up"
    fi
    # (cgroupfs files report size 0: test what they hold, not -s.)
    if [[ -n $(<"$parent/cgroup.procs") ]]; then
        mkdir -p "$parent/$NAME.caller"
        for ((c = 0; c < 20; c++)); do
            while read -r pid; do
                echo "$pid" >"$parent/$NAME.caller/cgroup.procs" 2>/dev/null || true
            done <"$parent/cgroup.procs"
            [[ -n $(<"$parent/cgroup.procs") ]] || break
        done
        [[ -n $(<"$parent/cgroup.procs") ]] && die "cannot move the processes of $parent into a leaf (is it delegated?)"
    fi
    for c in $(cat "$parent/cgroup.controllers"); do
        echo "+$c" >"$parent/cgroup.subtree_control" 2>/dev/null || log "WARNING: cannot enable $c for $parent's children"
    done
    echo "$parent/$NAME.caller" >"$STATE/caller-leaf"
    # The sandbox's cgroup goes below the delegated cgroup, not below our own (now the leaf,
    # which has processes and can enable no controllers for a child).
    V2_PARENT=${own%/}
    # The launcher (script, unshare) must not stay in the sandbox's cgroup either: systemd
    # there cannot enable controllers for its children while its root holds a process. `up`
    # moves them to the leaf once PID 1 exists; PID 1 waits for that before exec'ing systemd.
    : >"$STATE/await-launcher"
}

# The cgroup dirs on the HOST that belong to this harness (one per hierarchy)
harness_cgroup_dirs() {
    if [[ -f $STATE/cgroups ]]; then cat "$STATE/cgroups"; fi
}

# ---------------------------------------------------------------------------
# Runs as PID 1 of the new PID namespace, inside the new mount namespace,
# BEFORE systemd.  Builds the root fs and execs systemd.  Never returns.
# ---------------------------------------------------------------------------
inner_init() {
    set -euo pipefail
    local T=$STATE/mnt R t_init
    t_init=$(now_ms)
    # All mounts below happen only in this private mount namespace
    # (unshare sets propagation to private).
    mount -t tmpfs -o mode=0755,size=50% "$NAME-rw" "$T"
    mkdir -p "$T/upper" "$T/work" "$T/root"
    R=$T/root
    # Overlay of the host root: host "/" is the read-only lower layer.
    mount -t overlay "$NAME-root" \
        -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$R"

    # --- /proc (this PID namespace); /proc/sys etc. read-only -----------------
    mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
    for p in sys sysrq-trigger; do
        [[ -e $R/proc/$p ]] || continue
        mount --bind "$R/proc/$p" "$R/proc/$p"
        mount -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/$p"
    done

    # --- /sys read-only; cgroups re-mounted inside our cgroup namespace -------
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
    if pure_v2; then
        # One unified hierarchy: mounted in this cgroup namespace, its root is our delegated
        # cgroup (as systemd-nspawn and Podman do).
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
    else
    mount -t tmpfs -o mode=0755,nosuid,nodev,noexec,size=1M cgroup-tmpfs "$R/sys/fs/cgroup"
    local mp fstype ctl _p hier
    hier=$(cgroup_hierarchies)     # read fully BEFORE mounting anything
    # systemd (v1/hybrid) assumes cpu and cpuacct are CO-MOUNTED and never
    # creates per-unit cgroups in a separate cpuacct hierarchy, so
    # CPUUsageNSec stays "[not set]".  This host mounts them separately and a
    # controller can't be re-mounted elsewhere, so by default (cpu_mode=acct)
    # we expose ONLY the cpuacct hierarchy, under both names: accounting works,
    # but CPUQuota=/CPUWeight= are then not enforced (writes to cpu.* fail
    # silently).  SANDBOX_CPU_CGROUP=cpu keeps the real cpu controller instead.
    local cpu_mode=${SANDBOX_CPU_CGROUP:-acct}
    if ! grep -q '^/sys/fs/cgroup/cpu cgroup cpu ' <<<"$hier" ||
       ! grep -q '^/sys/fs/cgroup/cpuacct cgroup cpuacct ' <<<"$hier"; then
        cpu_mode=native     # already co-mounted (or absent): nothing to fix
    fi
    while read -r mp fstype ctl _p; do
        if [[ $cpu_mode == acct && $ctl == cpu ]]; then
            ln -sfn cpuacct "$R$mp"; ln -sfn cpuacct "$R/sys/fs/cgroup/cpu,cpuacct"
            continue
        fi
        mkdir -p "$R$mp"
        if [[ $fstype == cgroup2 ]]; then
            mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R$mp"
        else
            mount -t cgroup -o "nosuid,nodev,noexec,$ctl" cgroup "$R$mp"
        fi
    done <<<"$hier"
    # keep host-like compat symlinks if present (e.g. cpu,cpuacct)
    for l in /sys/fs/cgroup/*; do
        if [[ -L $l && ! -e $R$l ]]; then ln -sfn "$(readlink "$l")" "$R$l"; fi
    done
    mount -o remount,ro,nosuid,nodev,noexec,size=1M "$R/sys/fs/cgroup"
    fi

    # --- private /dev ---------------------------------------------------------
    mount -t tmpfs -o mode=0755,nosuid,size=4M "$NAME-dev" "$R/dev"
    for n in null zero full random urandom tty; do
        touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"
    done
    # /dev/console: systemd (PID 1) always re-opens /dev/console and only
    # logs there if it is a TTY.  `up` runs us under script(1), so our stdin
    # is a pty whose output lands in $STATE/console.log: bind that pty.
    local tty; tty=$(readlink /proc/self/fd/0 || true)
    touch "$R/dev/console"
    if [[ $tty == /dev/pts/* ]]; then
        mount --bind "$tty" "$R/dev/console"
    else
        mount --bind /dev/null "$R/dev/console"
    fi
    mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$R/dev/pts"
    ln -s pts/ptmx "$R/dev/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
    mount -t mqueue -o nosuid,nodev,noexec mqueue "$R/dev/mqueue"   # our own IPC ns
    ln -s /proc/self/fd "$R/dev/fd"
    ln -s /proc/self/fd/0 "$R/dev/stdin"
    ln -s /proc/self/fd/1 "$R/dev/stdout"
    ln -s /proc/self/fd/2 "$R/dev/stderr"
    ln -s /proc/kcore "$R/dev/core" 2>/dev/null || true

    # --- /run and /tmp are fresh tmpfs -------------------------------------
    mount -t tmpfs -o mode=0755,nosuid,nodev,size=20% "$NAME-run" "$R/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev,size=50% "$NAME-tmp" "$R/tmp"

    # --- live bind mounts of selected host dirs (repo, build output ...) -----
    local IFS=: b
    for b in ${SANDBOX_BIND_EFFECTIVE:-}; do
        [[ -n $b && -d $b ]] || continue
        mkdir -p "$R$b"
        # non-recursive on purpose: a recursive bind of a parent of $STATE
        # would drag the container's own mounts in again.
        mount --bind "$b" "$R$b"
    done
    unset IFS

    # --- trim the host's unit set (files land in the tmpfs upper layer) -------
    local E=$R/etc/systemd
    mkdir -p "$E/system" "$E/system-generators" "$E/system.conf.d" \
             "$E/journald.conf.d" "$R/etc/tmpfiles.d"
    cat >"$E/system/$NAME.target" <<EOF
# Default target of the test harness: only sysinit/basic + journald + D-Bus.
[Unit]
Description=Integration-test harness target
Requires=basic.target
Wants=dbus.socket dbus.service systemd-journald.service
After=basic.target dbus.service
AllowIsolate=yes
EOF
    ln -sfn "$NAME.target" "$E/system/default.target"
    # Units to mask (symlink -> /dev/null in the overlay's /etc, which has
    # precedence over /lib).  First an explicit denylist of units that would
    # touch the host or are useless in a container ...
    local masks=(
        systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
        systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service
        systemd-sysctl.service systemd-modules-load.service kmod-static-nodes.service
        systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount
        systemd-timesyncd.service systemd-time-wait-sync.service systemd-pstore.service
        systemd-random-seed.service systemd-firstboot.service systemd-repart.service
        systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-pcrphase-initrd.service
        systemd-machine-id-commit.service systemd-sysusers.service systemd-update-utmp.service
        systemd-update-utmp-runlevel.service systemd-remount-fs.service systemd-journald-audit.socket
        systemd-journal-flush.service systemd-ask-password-console.path systemd-ask-password-wall.path
        dev-hugepages.mount dev-mqueue.mount sys-kernel-debug.mount sys-kernel-tracing.mount
        sys-kernel-config.mount sys-fs-fuse-connections.mount tmp.mount
        cryptsetup.target integritysetup.target veritysetup.target remote-fs.target
        getty.target getty@.service serial-getty@.service console-getty.service container-getty@.service
        systemd-logind.service systemd-tmpfiles-clean.timer
    )
    # ... then an ALLOWLIST: the host's package set changes (postgres, nginx,
    # nvme-cli, uuidd ... got installed on this very VM while testing this),
    # and anything "enabled" there (= symlinked into some *.wants/ *.requires/
    # *.upholds/ dir, e.g. default.target.wants/nvmf-autoconnect.service or
    # timers.target.wants/apt-daily.timer) would start in the container.  So
    # mask every such unit except targets, slices and what the harness needs.
    local allow='^(dbus\.(service|socket)|systemd-journald(\.service|\.socket|-dev-log\.socket)|systemd-tmpfiles-setup(-dev)?\.service|.+\.target|.+\.slice)$'
    local d w e n
    for d in "$R/etc/systemd/system" "$R/usr/local/lib/systemd/system" \
             "$R/usr/lib/systemd/system" "$R/lib/systemd/system"; do
        for w in "$d"/*.wants "$d"/*.requires "$d"/*.upholds; do
            [[ -d $w ]] || continue
            for e in "$w"/*; do
                [[ -e $e || -L $e ]] || continue
                n=${e##*/}
                [[ $n =~ $allow ]] || masks+=("$n")
            done
        done
    done
    # Generators: keep only systemd-debug-generator and systemd-run-generator
    # (the others would e.g. add getty/sysv/fstab/postgresql units).
    local gmasks=() g
    for g in "$R"/lib/systemd/system-generators/* "$R"/usr/lib/systemd/system-generators/* \
             "$R"/usr/local/lib/systemd/system-generators/* "$R"/etc/systemd/system-generators/*; do
        [[ -e $g ]] || continue
        case ${g##*/} in systemd-debug-generator|systemd-run-generator) continue ;; esac
        gmasks+=("${g##*/}")
    done
    # One perl process instead of ~150 `ln` forks (perl-base is Essential).
    perl -e 'my $dir = shift; for (@ARGV) { unlink "$dir/$_"; symlink("/dev/null", "$dir/$_") or die "$_: $!" }' \
        "$E/system" "${masks[@]}"
    perl -e 'my $dir = shift; for (@ARGV) { unlink "$dir/$_"; symlink("/dev/null", "$dir/$_") or die "$_: $!" }' \
        "$E/system-generators" "${gmasks[@]}"
    cat >"$E/journald.conf.d/$NAME.conf" <<'EOF'
[Journal]
# volatile journal in /run/log/journal, no rate limiting (tests log bursts)
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
EOF
    {
        echo "[Manager]"
        echo "ShowStatus=no"
        echo "DefaultTimeoutStopSec=10s"
        if [[ $ACCOUNTING == yes ]]; then
            echo "DefaultCPUAccounting=yes"
            echo "DefaultMemoryAccounting=yes"
            echo "DefaultIOAccounting=yes"
            echo "DefaultTasksAccounting=yes"
        fi
    } >"$E/system.conf.d/$NAME.conf"
    # Never let tmpfiles wipe /tmp (it could be a bind of something real).
    echo "d /tmp 1777 root root -" >"$R/etc/tmpfiles.d/tmp.conf"

    # hostname (own UTS namespace; systemd re-applies /etc/hostname at boot)
    echo "$NAME" >"$R/etc/hostname"
    hostname "$NAME"
    echo "init_setup_ms=$(( $(now_ms) - t_init ))" >"$STATE/init_timing"

    # --- switch root and exec systemd ------------------------------------------
    # Pure v2: not before `up` has moved the launcher out of our cgroup (see v2_prepare_parent).
    if [[ -f $STATE/await-launcher ]]; then
        local w
        for ((w = 0; w < 1000; w++)); do
            [[ -f $STATE/launcher-out ]] && break
            sleep 0.01
        done
    fi
    cd "$R"
    mkdir -p .harness-oldroot
    pivot_root . .harness-oldroot
    cd /
    umount -l /.harness-oldroot
    rmdir /.harness-oldroot
    # Shared propagation inside the sandbox, as on a booted host (systemd makes / rshared itself
    # only when the kernel starts it, not in a container). Units' credentials (LoadCredential=)
    # are mounted in a child namespace and propagate back through it; with private mounts the
    # credential directory stays empty. Our namespace's mounts are copies made private by
    # unshare, so nothing propagates to the host.
    mount --make-rshared /
    local dbg=()
    [[ -n ${SANDBOX_DEBUG:-} ]] && dbg=(--log-level=debug --log-target=console --log-time=yes)
    # Drop capabilities that could only affect the host kernel (module load,
    # clock, raw I/O) from the bounding set; systemd copes (as in nspawn).
    exec setpriv --bounding-set=-sys_module,-sys_time,-sys_rawio,-wake_alarm \
        env -i container="$NAME" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /lib/systemd/systemd --system "${dbg[@]}"
}

# ---------------------------------------------------------------------------
pid1() {   # host PID of the container's systemd, or fail
    [[ -f $STATE/pid1 ]] || return 1
    local p; p=$(<"$STATE/pid1")
    alive "$p" || return 1
    # Never a process of our own PID namespace (PID 1 of the host above all): the signals
    # `down` sends it would power off the machine.
    [[ $p != 1 && $(readlink "/proc/$p/ns/pid") != "$(readlink /proc/self/ns/pid)" ]] || return 1
    echo "$p"
}

ns_args() {
    local p=$1
    echo "--target=$p --mount --uts --ipc --pid --cgroup --net"
}

in_ns() {  # run a command inside the container, no questions asked
    local p; p=$(pid1) || die "harness is not up"
    # shellcheck disable=SC2046
    nsenter $(ns_args "$p") -- "$@"
}

cmd_up() {
    [[ $EUID -eq 0 ]] || die "must be root"
    case $(stat -fc %T /sys/fs/cgroup) in
        tmpfs|cgroup2fs) ;;
        *) die "/sys/fs/cgroup is neither a hybrid/legacy tmpfs nor a cgroup2 mount" ;;
    esac
    if pid1 >/dev/null 2>&1; then die "already up (pid1=$(pid1)); run down first"; fi
    local t0; t0=$(now_ms)
    # leftovers of a crashed/killed earlier run (processes, cgroups)?
    if [[ -d $STATE ]]; then down_quiet >/dev/null 2>&1 || true; fi
    rm -rf "$STATE"; mkdir -p "$STATE/mnt"
    : >"$STATE/console.log"

    # Effective live binds
    local binds=${SANDBOX_BIND-}
    if [[ -z ${SANDBOX_BIND+x} ]]; then [[ $PWD != / ]] && binds=$PWD; fi
    export SANDBOX_BIND_EFFECTIVE=$binds

    # 1) one cgroup per hierarchy, below the caller's own cgroup
    local mp fstype ctl path dirs=()
    if pure_v2; then v2_prepare_parent; fi
    while read -r mp fstype ctl path; do
        [[ $fstype == cgroup2 && -n ${V2_PARENT+x} ]] && path=$V2_PARENT
        local d="$mp${path%/}/$NAME"
        [[ -d $d ]] && rmdir "$d" 2>/dev/null || true   # stale from a crash
        [[ -d $d ]] && die "stale cgroup $d is not empty; kill its processes"
        mkdir "$d"
        if [[ $ctl == cpuset ]]; then      # v1 cpuset needs cpus/mems first
            cat "$mp${path%/}/cpuset.cpus" >"$d/cpuset.cpus"
            cat "$mp${path%/}/cpuset.mems" >"$d/cpuset.mems"
        fi
        dirs+=("$d")
    done < <(cgroup_hierarchies)
    printf '%s\n' "${dirs[@]}" >"$STATE/cgroups"

    # 2) launcher: move itself into those cgroups, then unshare & run inner_init
    local nsflags=(--mount --pid --uts --ipc --cgroup --fork --propagation=private)
    [[ $NET == private ]] && nsflags+=(--net)
    (
        # Don't leak the caller's extra fds (CI runners wait for pipe EOF).
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            if (( fd > 2 )); then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        for d in "${dirs[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
        export SANDBOX_NAME=$NAME SANDBOX_STATE=$STATE SANDBOX_ACCOUNTING=$ACCOUNTING
        export SANDBOX_CPU_CGROUP=${SANDBOX_CPU_CGROUP:-acct}
        # script(1) gives the container a pty as /dev/console and copies
        # everything written there to console.log (systemd PID 1 only logs to
        # a real TTY).  Process tree: script -> unshare -> PID 1 (systemd).
        exec script -q -f -e -c "exec unshare ${nsflags[*]} -- '$SELF' __init" "$STATE/console.log"
    ) </dev/null >/dev/null 2>&1 &
    local spid=$!
    echo "$spid" >"$STATE/launcher.pid"

    # 3) find PID 1 of the new PID namespace (grandchild of script)
    local p="" i upid=""
    for ((i = 0; i < 500; i++)); do
        [[ -z $upid ]] && upid=$(awk '{print $1}' "/proc/$spid/task/$spid/children" 2>/dev/null || true)
        [[ -n $upid ]] && p=$(awk '{print $1}' "/proc/$upid/task/$upid/children" 2>/dev/null || true)
        [[ -n $p ]] && break
        alive "$spid" || break
        sleep 0.01
    done
    echo "$upid" >"$STATE/unshare.pid"
    [[ -n $p ]] || { cat "$STATE/console.log" >&2; down_quiet; die "container init did not start"; }
    echo "$p" >"$STATE/pid1"
    if [[ -f $STATE/await-launcher ]]; then
        local leaf
        leaf=$(cat "$STATE/caller-leaf")
        echo "$spid" >"$leaf/cgroup.procs" && echo "$upid" >"$leaf/cgroup.procs" \
            || log "WARNING: cannot move the launcher out of the sandbox's cgroup"
        : >"$STATE/launcher-out"
    fi

    # 4) wait for systemd to be PID 1 and the system bus to carry the manager
    local deadline=$(( $(now_ms) + TIMEOUT * 1000 )) t_bus="" state=""
    while (( $(now_ms) < deadline )); do
        alive "$p" || { cat "$STATE/console.log" >&2; down_quiet; die "container died during boot"; }
        if [[ -z $t_bus ]] && [[ $(readlink "/proc/$p/exe" 2>/dev/null) == */systemd ]] &&
           in_ns busctl --system --timeout=1 get-property org.freedesktop.systemd1 \
                 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager Version >/dev/null 2>&1; then
            t_bus=$(now_ms)
        fi
        if [[ -n $t_bus ]]; then
            state=$(in_ns systemctl is-system-running 2>/dev/null || true)
            [[ $state == running || $state == degraded ]] && break
        fi
        sleep 0.02
    done
    [[ -n $t_bus ]] || { down_quiet; die "timeout: system bus not ready after ${TIMEOUT}s"; }
    local t1; t1=$(now_ms)
    echo "bus_ready_ms=$((t_bus - t0)) boot_complete_ms=$((t1 - t0)) state=$state $(cat "$STATE/init_timing" 2>/dev/null)" >"$STATE/timing"
    log "up: pid1=$p bus-ready $((t_bus - t0)) ms, boot complete $((t1 - t0)) ms (state=$state)"
    if [[ $state == degraded ]]; then
        in_ns systemctl --no-pager --failed >&2 || true
    fi
}

cmd_exec() {
    [[ $# -gt 0 ]] || die "usage: exec CMD..."
    local p; p=$(pid1) || die "harness is not up"
    local wd=/
    [[ -d /proc/$p/root$PWD ]] && wd=$PWD
    # Join the container's root cgroup in every hierarchy first (this PID is
    # the one that becomes nsenter/CMD), so CMD is never seen as "/..".
    local d
    while read -r d; do
        [[ -n $d ]] && echo $$ >"$d/cgroup.procs" 2>/dev/null || true
    done < <(harness_cgroup_dirs)
    local pre=()
    # By default wrap CMD in a transient scope so it lives in a cgroup of the
    # container's own tree (sane /proc/self/cgroup, _SYSTEMD_UNIT in the
    # journal, accounted and killed like any unit).  Otherwise the process
    # stays in the caller's host cgroup, which the container sees as "/..".
    if [[ ${SANDBOX_EXEC_SCOPE:-1} == 1 ]]; then
        pre=(systemd-run --scope --quiet --collect --)
    fi
    # --root/--wd without argument = the container's root and cwd ("/"); the
    # caller's directory is then entered by path INSIDE the container (a host
    # directory fd would be unreachable from the container's root).
    # shellcheck disable=SC2046
    exec nsenter $(ns_args "$p") --root --wd -- env -C "$wd" "${pre[@]}" "$@"
}

cmd_env() {
    local p; p=$(pid1) || die "harness is not up"
    cat <<EOF
SANDBOX_PID1=$p
SANDBOX_ROOT=/proc/$p/root
DBUS_SYSTEM_BUS_ADDRESS=unix:path=/proc/$p/root/run/dbus/system_bus_socket
SANDBOX_SYSTEMD_PRIVATE=unix:path=/proc/$p/root/run/systemd/private
SANDBOX_JOURNAL_DIR=/proc/$p/root/run/log/journal
export DBUS_SYSTEM_BUS_ADDRESS
EOF
}

cmd_status() {
    local p
    if p=$(pid1); then
        echo "up: pid1=$p unshare=$(cat "$STATE/unshare.pid") launcher=$(cat "$STATE/launcher.pid") $(cat "$STATE/timing" 2>/dev/null)"
        in_ns systemctl is-system-running || true
    else
        echo "down"
        return 1
    fi
}

alive() {  # a zombie counts as gone (our launcher is reaped by the host init)
    local st
    st=$(awk '/^State:/{print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

wait_gone() {  # wait_gone PID TIMEOUT_MS
    local deadline=$(( $(now_ms) + $2 ))
    while alive "$1" && (( $(now_ms) < deadline )); do sleep 0.01; done
    ! alive "$1"
}

down_quiet() {
    local t0 p upid="" lpid="" how="none"
    t0=$(now_ms)
    [[ -f $STATE/unshare.pid ]] && upid=$(<"$STATE/unshare.pid")
    [[ -f $STATE/launcher.pid ]] && lpid=$(<"$STATE/launcher.pid")
    if p=$(pid1); then
        if [[ ${SANDBOX_DOWN:-poweroff} == kill ]]; then
            # fast path: no orderly unit stop (ExecStop= etc. are skipped)
            kill -KILL "$p" 2>/dev/null || true
            how=SIGKILL
        else
            # SIGRTMIN+4 = "systemctl poweroff" for systemd PID 1. In a PID
            # namespace the final reboot()/exit only ends this namespace.
            kill -s RTMIN+4 "$p" 2>/dev/null || true
            how=poweroff
        fi
        if ! wait_gone "$p" $((TIMEOUT * 1000)); then
            # SIGKILL to a PID-namespace init makes the kernel kill every
            # process in that namespace; mounts die with the mount namespace.
            kill -KILL "$p" 2>/dev/null || true
            how=SIGKILL
            wait_gone "$p" 5000 || true
        fi
    fi
    # unshare exits right after its child; script(1) lingers ~1.1 s after its
    # child is gone (even on SIGTERM), so give it 100 ms, then SIGKILL it: by
    # then it has copied everything from the pty into console.log.
    if [[ -n $upid ]] && alive "$upid"; then
        wait_gone "$upid" 2000 || { kill -KILL "$upid" 2>/dev/null || true; wait_gone "$upid" 2000 || true; }
    fi
    if [[ -n $lpid ]] && alive "$lpid"; then
        wait_gone "$lpid" 100 || { kill -KILL "$lpid" 2>/dev/null || true; wait_gone "$lpid" 2000 || true; }
    fi
    # Remove the cgroup subtrees bottom-up (systemd normally cleans its own).
    local d left=0
    while read -r d; do
        [[ -n $d && -d $d ]] || continue
        local i
        for ((i = 0; i < 100; i++)); do
            find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d $d ]] || break
            sleep 0.02
        done
        [[ -d $d ]] && { log "WARNING: could not remove cgroup $d"; left=1; }
    done < <(harness_cgroup_dirs)
    # Pure v2: the caller's leaf, once its processes are gone (best effort: the caller may
    # still be running in it).
    if [[ -f $STATE/caller-leaf ]]; then rmdir "$(cat "$STATE/caller-leaf")" 2>/dev/null || true; fi
    local t1; t1=$(now_ms)
    [[ -d $STATE ]] && echo "down_ms=$((t1 - t0)) via=$how" >>"$STATE/timing.down" 2>/dev/null || true
    log "down: $((t1 - t0)) ms (via $how)"
    if (( left == 0 )); then
        # keep the console log for post-mortem, drop the rest
        [[ -f $STATE/console.log ]] && cp "$STATE/console.log" "$STATE.console.log" 2>/dev/null || true
        rm -rf "$STATE"
    fi
    return $left
}

cmd_down() { down_quiet; }

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    exec) shift; cmd_exec "$@" ;;
    env) shift; cmd_env ;;
    status) shift; cmd_status ;;
    down) shift; cmd_down ;;
    __init) shift; inner_init ;;
    *) echo "usage: $0 up | exec CMD... | env | status | down" >&2; exit 2 ;;
esac
