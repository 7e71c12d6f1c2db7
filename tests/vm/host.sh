#!/usr/bin/env bash
# tests/vm/host.sh owns the host side of the VM test (run it through tools/vm-test): it builds the
# .deb twice from a clean copy of HEAD (its version, and a higher one for the upgrade), runs
# lintian on it, builds the fake backend, makes the guest's disks with mkfs.ext4 -d (no loop
# mounts), boots Debian 12 under qemu (KVM when it works, else TCG) with systemd as PID 1, reads
# the guest's results back with debugfs, and decides: exit 0 only when every expected check,
# host and guest, passed exactly once. It removes everything it made except the caches (the
# rootfs tree of tests/vm/rootfs.sh and cargo's target/vm-test/cargo/).
#
# Environment:
#   LLAMACTL_VM_CACHE    rootfs cache (default /var/cache/llamactl-test/vm)
#   LLAMACTL_VM_TIMEOUT  hard limit on the guest, seconds (default 1500: the guest needs ~6 min under TCG on a quiet 2-CPU host, 13 on a loaded one)
#   LLAMACTL_VM_KEEP     a directory to copy the guest's logs, the console and the build logs to
set -euo pipefail

repo=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
vmdir=$repo/tests/vm
CACHE=${LLAMACTL_VM_CACHE:-/var/cache/llamactl-test/vm}
LIMIT=${LLAMACTL_VM_TIMEOUT:-1500}
KEEP=${LLAMACTL_VM_KEEP:-}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# Every check the run must report, in order: the host's, then the guest's (guest/checks.sh).
HOST_CHECKS=(deb-build deb-symbols deb-build-upgrade fake-backend-build itest-build lintian vm-boot)
GUEST_CHECKS=(
    guest-systemd-cgroup2 install service-enabled-active api-health-200 journal-has-daemon-lines
    system-health-layout-v2 shared-files-installed config-command-backend instance-started
    instance-failed cgroup-v2-files metrics-scraped metrics-memory-current metrics-memory-peak-anon-file metrics-cpu-stat metrics-io-stat
    metrics-pressure metrics-oom-kills upgrade-installed upgrade-daemon-restarted
    upgrade-instance-not-restarted upgrade-instance-adopted remove remove-instances-stopped
    remove-specs-kept purge purge-no-units purge-no-files purge-no-group
    pure-v2-harness-controllers pure-v2-service-tests pure-v2-resources-tests
    pure-v2-instances-tests pure-v2-security-tests pure-v2-operations-tests
)

t0=$SECONDS
say() { printf '[vm-test %4ds] %s\n' "$((SECONDS - t0))" "$*" >&2; }
die() { say "error: $*"; exit 2; }

[[ $EUID -eq 0 ]] || die "needs root (mmdebstrap, a root-owned guest tree); try: sudo tools/vm-test"

# --- host prerequisites ---
need=()
# prometheus: its promtool goes into the guest for the integration tests; jq reads cargo's JSON.
for p in qemu-system-x86 mmdebstrap e2fsprogs debhelper dpkg-dev build-essential lintian git coreutils prometheus jq binutils; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    say "installing ${need[*]} (apt, --no-install-recommends)"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# cargo under sudo: root's PATH may not have the invoking user's toolchain (as tools/test).
if ! command -v cargo >/dev/null; then
    for d in "${CARGO_HOME:-}/bin" /root/.cargo/bin "$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)/.cargo/bin"; do
        [[ -x $d/cargo ]] && { PATH=$d:$PATH; break; }
    done
fi
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"

# --- scratch space, and what is removed at the end whatever happens ---
# The packages build in target/vm-test/build, a fixed path: dpkg-buildflags puts the source
# directory into CFLAGS (-ffile-prefix-map), and a build script that sees CFLAGS change
# (libmimalloc-sys) would rebuild the crate on every run from a new temporary directory.
vt=$repo/target/vm-test
mkdir -p "$vt"
exec 9>"$vt/.lock"
flock -n 9 || die "another tools/vm-test is running in this repository"
build=$vt/build
rm -rf "$build"
tmp=$(mktemp -d /var/tmp/llamactl-vm.XXXXXX)
qemu_pid='' rootfs_pid='' lintian_pid=''
cleanup() {
    local pid
    # rootfs.sh runs in a session of its own: its process group takes mmdebstrap with it.
    if [[ -n $rootfs_pid ]] && kill -0 "$rootfs_pid" 2>/dev/null; then
        kill -- "-$rootfs_pid" 2>/dev/null || true
        wait "$rootfs_pid" 2>/dev/null || true
    fi
    for pid in $qemu_pid $lintian_pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$tmp" "$build"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

results=$tmp/results.txt
: >"$results"
hcheck_ok() { printf 'ok %s\n' "$1" >>"$results"; }
hcheck_fail() { printf 'FAIL %s: %s\n' "$1" "$2" >>"$results"; }
hnote() { printf '# %s\n' "$*" >>"$results"; }
keep() { [[ -n $KEEP ]] && { mkdir -p "$KEEP"; cp -r "$@" "$KEEP"/ 2>/dev/null || true; }; return 0; }

# --- the guest's rootfs (cached), built while the packages build ---
say "rootfs: $CACHE (built by tests/vm/rootfs.sh when its recipe changed)"
setsid "$vmdir/rootfs.sh" "$CACHE" >"$tmp/rootfs.path" 2>"$tmp/rootfs.log" &
rootfs_pid=$!

# --- packages from a clean copy of HEAD ---
rev=$(git -C "$repo" rev-parse --short HEAD)
if [[ -n $(git -C "$repo" status --porcelain --untracked-files=no) ]]; then
    say "note: the working tree has uncommitted changes; the packages are built from HEAD ($rev) only"
fi
hnote "built from $rev"
src=$build/llamactl
mkdir -p "$src" "$vt/cargo"
git -C "$repo" archive HEAD | tar -x -C "$src"
# cargo's cache lives with the repository's target/ (warm between runs; cargo clean removes it).
# cargo decides by mtime. git archive stamps files with the commit time, which says nothing
# about what the cache last built (a rebase or an older commit). So: the sources of the tree
# the cache last built get that build's stamp back (older than its outputs: nothing to do), and
# any other tree gets a new stamp (newer: this crate is rebuilt from it). .built-tree holds
# "TREE STAMP" of the last successful build.
tree_id=$(git -C "$repo" rev-parse 'HEAD^{tree}')
read -r last_tree last_stamp 2>/dev/null <"$vt/.built-tree" || true
if [[ ${last_tree:-} == "$tree_id" && ${last_stamp:-} =~ ^[0-9]+$ ]]; then
    stamp=$last_stamp
else
    rm -f "$vt/.built-tree"
    stamp=$(($(date +%s) - 1))
fi
find "$src" -exec touch -h -d "@$stamp" {} +
ln -s "$vt/cargo" "$src/target"

deb_old='' deb_new='' fake=''
say "dpkg-buildpackage -b -us -uc (HEAD $rev)"
if (cd "$src" && dpkg-buildpackage -b -us -uc) >"$tmp/build-old.log" 2>&1; then
    version=$(cd "$src" && dpkg-parsechangelog -S Version)
    deb_old=$(compgen -G "$build/llamactl_${version}_*.deb" | head -n 1) || true
fi
if [[ -n $deb_old ]]; then
    hcheck_ok deb-build
    echo "$tree_id $stamp" >"$vt/.built-tree"
    hnote "deb: $(basename "$deb_old") ($(stat -c %s "$deb_old") bytes)"
else
    hcheck_fail deb-build "dpkg-buildpackage failed: $(tail -n 2 "$tmp/build-old.log" | tr '\n' ' ')"
fi
# The packaged daemon keeps its symbol table: its CPU and heap profiles name functions from it
# (debian/rules, override_dh_strip). The client is stripped as usual.
if [[ -n $deb_old ]]; then
    mkdir -p "$tmp/deb-x"
    dpkg-deb -x "$deb_old" "$tmp/deb-x"
    own=$(nm "$tmp/deb-x/usr/bin/llamactld" 2>/dev/null | grep -c 'llamactl.*proxy' || true)
    client=$(nm "$tmp/deb-x/usr/bin/llamactl" 2>/dev/null | wc -l)
    if ((own > 0 && client == 0)); then
        hcheck_ok deb-symbols
        hnote "llamactld: $own symbols of llamactl's proxy module; llamactl stripped"
    else
        hcheck_fail deb-symbols "llamactld has $own proxy symbols (want > 0); llamactl has $client (want 0)"
    fi
else
    hcheck_fail deb-symbols "no .deb"
fi

if [[ -n $deb_old ]]; then
    # The same code at a higher version: what dpkg needs to see an upgrade.
    new_version=$version+vmtest1
    {
        printf 'llamactl (%s) unstable; urgency=medium\n\n' "$new_version"
        printf '  * tools/vm-test: the same code at a higher version, for the upgrade check.\n\n'
        # The same date: SOURCE_DATE_EPOCH comes from it, and a build script (libmimalloc-sys)
        # reruns when it changes, which would rebuild the whole crate a second time.
        printf ' -- %s  %s\n\n' "$(cd "$src" && dpkg-parsechangelog -S Maintainer)" "$(cd "$src" && dpkg-parsechangelog -S Date)"
        cat "$src/debian/changelog"
    } >"$tmp/changelog" && mv "$tmp/changelog" "$src/debian/changelog"
    say "dpkg-buildpackage -b -us -uc ($new_version)"
    if (cd "$src" && dpkg-buildpackage -b -us -uc) >"$tmp/build-new.log" 2>&1; then
        deb_new=$(compgen -G "$build/llamactl_${new_version}_*.deb" | head -n 1) || true
    fi
fi
if [[ -n $deb_new ]]; then
    hcheck_ok deb-build-upgrade
else
    hcheck_fail deb-build-upgrade "no second .deb: $(tail -n 2 "$tmp/build-new.log" 2>/dev/null | tr '\n' ' ')"
fi

say "cargo build --release --example fake_backend"
# In the packages' build environment (debhelper's build flags, the changelog's
# SOURCE_DATE_EPOCH): anything else reruns a build script and rebuilds the crate twice a run.
if (cd "$src" && eval "$(dpkg-buildflags --export=sh)" && SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -S Timestamp) \
    && export SOURCE_DATE_EPOCH && cargo build --release --locked --example fake_backend) >"$tmp/build-fake.log" 2>&1; then
    fake=$src/target/release/examples/fake_backend
    hcheck_ok fake-backend-build
else
    hcheck_fail fake-backend-build "$(tail -n 2 "$tmp/build-fake.log" | tr '\n' ' ')"
fi

# The integration tests' systemd modules (guest/checks.sh says which), run in the guest on pure cgroup v2
# from a delegated scope (tests/harness boots its private systemd there). A debug build like
# the README's test command, with the paths cargo compiled into it (CARGO_MANIFEST_DIR, the
# binaries') recreated in the guest by bind mounts: itest/mounts lists "DIR-ON-DATA-DISK
# ABSOLUTE-PATH" pairs.
itest=''
say "cargo test --no-run (the integration tests, for the guest)"
if (cd "$src" && cargo test --locked --no-run --test integration --message-format=json-render-diagnostics \
    && cargo build --locked --example fake_backend --message-format=json-render-diagnostics) \
    >"$tmp/build-itest.json" 2>"$tmp/build-itest.log"; then
    art() { jq -r --arg n "$1" --arg k "$2" 'select(.reason == "compiler-artifact" and .target.name == $n
        and (.target.kind | index($k)) and .executable != null) | .executable' "$tmp/build-itest.json" | tail -n 1; }
    it_exe=$(art integration test) it_d=$(art llamactld bin) it_c=$(art llamactl bin) it_f=$(art fake_backend example)
    bindir=$(dirname "$it_d")
    # The paths the test binary really holds (it must find its daemon where cargo put it).
    if [[ -x $it_exe && -x $it_c && -x $it_f && $it_f == "$bindir/examples/fake_backend" ]] \
        && grep -aq "$it_d" "$it_exe" && grep -aq "$src" "$it_exe"; then
        itest=$tmp/data/itest
        mkdir -p "$itest/src" "$itest/bin/examples"
        git -C "$repo" archive HEAD | tar -x -C "$itest/src"
        strip --strip-debug -o "$itest/integration" "$it_exe"
        strip --strip-debug -o "$itest/bin/llamactld" "$it_d"
        strip --strip-debug -o "$itest/bin/llamactl" "$it_c"
        strip --strip-debug -o "$itest/bin/examples/fake_backend" "$it_f"
        install -m 0755 "$(command -v promtool)" "$itest/promtool"
        printf 'src %s\nbin %s\n' "$src" "$bindir" >"$itest/mounts"
        hcheck_ok itest-build
    else
        hcheck_fail itest-build "artefacts not where the test binary expects them: ${it_exe:-?} ${it_d:-?} ${it_f:-?}"
    fi
else
    hcheck_fail itest-build "$(tail -n 2 "$tmp/build-itest.log" | tr '\n' ' ')"
fi

# lintian on the product's .deb: errors and warnings fail (its own I: hints do not). It runs
# while the guest boots.
if [[ -n $deb_old ]]; then
    lintian --fail-on error,warning --tag-display-limit 0 "$deb_old" >"$tmp/lintian.log" 2>&1 &
    lintian_pid=$!
else
    hcheck_fail lintian "no .deb to check"
fi

say "waiting for the rootfs"
if wait "$rootfs_pid"; then
    tree=$(cat "$tmp/rootfs.path")
else
    tail -n 20 "$tmp/rootfs.log" >&2
    die "building the rootfs failed (log above)"
fi
rootfs_pid=''
kernel=$(compgen -G "$tree/boot/vmlinuz-*" | sort -V | tail -n 1)
initrd=$(compgen -G "$tree/boot/initrd.img-*" | sort -V | tail -n 1)
hnote "guest kernel: $(basename "$kernel")"

# --- the guest's disks ---
booted=0
if [[ -n $deb_old && -n $deb_new && -n $fake ]]; then
    # (itest/ is there when its build passed; the guest reports its checks as failed if not.)
    mkdir -p "$tmp/data/debs" "$tmp/data/out"
    install -m 0755 "$vmdir/guest/checks.sh" "$tmp/data/checks.sh"
    install -m 0644 "$deb_old" "$tmp/data/debs/old.deb"
    install -m 0644 "$deb_new" "$tmp/data/debs/new.deb"
    install -m 0755 "$fake" "$tmp/data/fake_backend"
    say "disks: mkfs.ext4 -d (root from the cached tree, data with the packages)"
    mkfs.ext4 -q -F -L vmtest-root -d "$tree" "$tmp/root.img" 3G >"$tmp/mkfs.log" 2>&1 \
        || { cat "$tmp/mkfs.log" >&2; die "mkfs.ext4 -d of the rootfs failed"; }
    # No journal on the data disk: what the guest wrote is where debugfs reads it, even if the
    # guest had to be killed.
    mkfs.ext4 -q -F -L vmtest-data -O ^has_journal -d "$tmp/data" "$tmp/data.img" 640M >"$tmp/mkfs.log" 2>&1 \
        || { cat "$tmp/mkfs.log" >&2; die "mkfs.ext4 -d of the data disk failed"; }

    # --- KVM if it really runs a guest, else TCG ---
    accel=(-accel tcg)
    how=tcg
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then
        # Boot the kernel alone to its "no root" panic (panic=-1 reboots, -no-reboot exits):
        # seconds on a working KVM. A KVM without working nested virtualisation hangs instead.
        say "probing KVM (10 s at most)"
        if timeout -k 5 10 qemu-system-x86_64 -accel kvm -cpu host -m 256 -display none -monitor none \
            -no-reboot -nic none -serial "file:$tmp/kvm-probe.log" -kernel "$kernel" \
            -append "console=ttyS0 panic=-1" >/dev/null 2>&1 && grep -q 'Kernel panic' "$tmp/kvm-probe.log"; then
            accel=(-accel kvm -cpu host)
            how=kvm
        else
            how="tcg (KVM probe did not reach the kernel within 10 s)"
        fi
    else
        how="tcg (no usable /dev/kvm)"
    fi
    hnote "accelerator: $how"
    say "booting the guest: ${accel[*]}, 2 vCPUs, 1536 MiB, limit ${LIMIT}s"
    boot_start=$SECONDS
    timeout -k 10 "$LIMIT" qemu-system-x86_64 "${accel[@]}" -smp 2 -m 1536 -display none -monitor none \
        -no-reboot -nic none -serial "file:$tmp/console.log" \
        -kernel "$kernel" -initrd "$initrd" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=auto" \
        -drive "file=$tmp/root.img,if=virtio,format=raw" \
        -drive "file=$tmp/data.img,if=virtio,format=raw" >"$tmp/qemu.log" 2>&1 &
    qemu_pid=$!
    qemu_rc=0
    wait "$qemu_pid" || qemu_rc=$?
    qemu_pid=''
    boot_secs=$((SECONDS - boot_start))
    hnote "guest ran ${boot_secs}s (qemu exit $qemu_rc)"
    debugfs -R "rdump /out $tmp" "$tmp/data.img" >/dev/null 2>&1 || true
    if ((qemu_rc == 0)) && [[ -f $tmp/out/results.txt ]] && grep -qx '# done' "$tmp/out/results.txt"; then
        hcheck_ok vm-boot
        booted=1
    elif ((qemu_rc == 124 || qemu_rc == 137)); then
        hcheck_fail vm-boot "the guest did not power off within ${LIMIT}s (killed)"
    else
        hcheck_fail vm-boot "qemu exit $qemu_rc, $( [[ -f $tmp/out/results.txt ]] && echo 'results incomplete' || echo 'no results') ($(tail -n 1 "$tmp/qemu.log" 2>/dev/null))"
    fi
    [[ -f $tmp/out/results.txt ]] && cat "$tmp/out/results.txt" >>"$results"
    ((booted)) || { say "console (last 30 lines):"; tail -n 30 "$tmp/console.log" | tr -d '\r' >&2 || true; }
else
    hcheck_fail vm-boot "not booted: a build failed"
fi

if [[ -n $lintian_pid ]]; then
    lintian_rc=0
    wait "$lintian_pid" || lintian_rc=$?
    lintian_pid=''
    if ((lintian_rc == 0)); then
        hcheck_ok lintian
    else
        hcheck_fail lintian "exit $lintian_rc: $(grep -E '^[EW]: ' "$tmp/lintian.log" | tr '\n' ';' | cut -c1-400)"
    fi
    grep -E '^[EWI]: ' "$tmp/lintian.log" | sed 's/^/# lintian: /' >>"$results" || true
fi

keep "$tmp/out" "$tmp/console.log" "$tmp"/build-*.log "$tmp/lintian.log" "$tmp/rootfs.log" "$results"

# --- the verdict: every expected check exactly once, and ok ---
echo
grep -v '^# lintian: I: ' "$results"
echo
passed=0 failed=0 missing=()
for name in "${HOST_CHECKS[@]}" "${GUEST_CHECKS[@]}"; do
    n_ok=$(grep -c -x "ok $name" "$results" || true)
    n_fail=$(grep -c "^FAIL $name: " "$results" || true)
    if ((n_ok == 1 && n_fail == 0)); then
        passed=$((passed + 1))
    elif ((n_ok + n_fail == 0)); then
        missing+=("$name")
    else
        failed=$((failed + 1))
    fi
done
expected=$((${#HOST_CHECKS[@]} + ${#GUEST_CHECKS[@]}))
reported=$(grep -c -E '^(ok|FAIL) ' "$results" || true)
((${#missing[@]} == 0)) || say "not reported: ${missing[*]}"
((reported == passed + failed)) || say "reported $reported checks, expected $expected (unknown names)"
if ((passed == expected && reported == expected)); then
    say "PASS: all $expected checks passed (total $((SECONDS - t0)) s)"
else
    say "FAIL: $passed of $expected checks passed, $failed failed, ${#missing[@]} not reported (total $((SECONDS - t0)) s)"
    exit 1
fi
