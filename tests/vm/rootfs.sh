#!/usr/bin/env bash
# tests/vm/rootfs.sh owns the VM guest's root file system: the recipe (this file: suite, mirror,
# packages, and the changes made to the tree) and its cache. It builds a Debian 12 (bookworm)
# tree with mmdebstrap from the Debian archive, once per recipe, and prints its path.
#
#   tests/vm/rootfs.sh CACHE_DIR     -> CACHE_DIR/rootfs-<hash>   (stdout: that path)
#
# <hash> is the sha256 of this file, so editing the recipe (e.g. the package list) builds a new
# tree; older rootfs-* trees in CACHE_DIR are deleted once a new one is complete. A tree is used
# only when its ".complete" marker exists (an interrupted build leaves nothing that looks done).
# The tree carries Debian's own kernel and initramfs (/boot/vmlinuz-*, /boot/initrd.img-*; the
# initramfs has the virtio and ext4 modules). The guest's one customisation is vmtest-run.service:
# after boot it mounts the data disk (/dev/vdb), runs its checks.sh, and powers the guest off.
# Needs root (mmdebstrap in root mode). Progress goes to stderr.
set -euo pipefail

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
# linux-image-amd64, initramfs-tools: the guest's kernel and initrd. jq, procps: the checks.
# python3: the integration tests' memory hogs.
# libc6 and libgcc-s1 (llamactl's shared-library dependencies) are in minbase already; systemd
# and dbus are llamactl's other dependencies: `dpkg -i` in the guest needs no network.
PACKAGES=systemd,systemd-sysv,dbus,udev,linux-image-amd64,initramfs-tools,curl,ca-certificates,jq,procps,python3

cache=${1:?usage: $0 CACHE_DIR}
self=$(readlink -f "${BASH_SOURCE[0]}")
key=$(sha256sum "$self" | cut -c1-16)
tree=$cache/rootfs-$key
log() { printf 'rootfs: %s\n' "$*" >&2; }

if [[ -e $tree/.complete ]]; then
    printf '%s\n' "$tree"
    exit 0
fi

mkdir -p "$cache"
partial=$tree.partial
rm -rf "$partial"
log "building $SUITE with mmdebstrap into $tree (about 2 minutes; cached afterwards)"
start=$SECONDS
mmdebstrap --variant=minbase --include="$PACKAGES" --quiet "$SUITE" "$partial" "$MIRROR" >&2

# --- the guest's customisation (part of the recipe) ---
echo vmtest >"$partial/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmtest\n' >"$partial/etc/hosts"
# A fixed machine id: not a "first boot" (no systemd-firstboot prompts on the console).
echo 4c6c616d6163746c766d746573743031 >"$partial/etc/machine-id"
# root without a password, for a manual look on the serial console when debugging.
sed -i 's/^root:[^:]*:/root::/' "$partial/etc/shadow"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$partial/etc/fstab"
# Nothing periodic may start during a test run.
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-firstboot.service; do
    ln -sf /dev/null "$partial/etc/systemd/system/$t"
done

install -D -m 0755 /dev/stdin "$partial/usr/local/sbin/vmtest-run" <<'RUN'
#!/bin/sh
# /usr/local/sbin/vmtest-run (made by llamactl's tests/vm/rootfs.sh): mounts the data disk, runs
# its checks.sh (which writes results.txt on that disk), unmounts it. vmtest-run.service then
# powers the guest off.
set -u
mkdir -p /mnt/vmtest
mount -o rw /dev/vdb /mnt/vmtest || exit 1
rc=0
/bin/bash /mnt/vmtest/checks.sh /mnt/vmtest || rc=$?
sync
umount /mnt/vmtest || rc=1
exit "$rc"
RUN

# The name must not start with "llamactl": the checks look for leftover llamactl* units.
cat >"$partial/etc/systemd/system/vmtest-run.service" <<'UNIT'
# vmtest-run.service (made by llamactl's tests/vm/rootfs.sh): the VM test's checks, then power off.
[Unit]
Description=llamactl VM test: run the checks from the data disk, then power off
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
# simple, not oneshot: the boot completes (system state "running", as on a real host) while
# the checks run.
Type=simple
ExecStart=/usr/local/sbin/vmtest-run
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$partial/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/vmtest-run.service \
    "$partial/etc/systemd/system/multi-user.target.wants/vmtest-run.service"

# The kernel and initrd must be there and readable by the host's qemu.
compgen -G "$partial/boot/vmlinuz-*" >/dev/null || { log "no kernel in the tree"; exit 1; }
compgen -G "$partial/boot/initrd.img-*" >/dev/null || { log "no initrd in the tree"; exit 1; }

touch "$partial/.complete"
mv "$partial" "$tree"
# Older recipes' trees (about 700 MB each) are not kept.
for old in "$cache"/rootfs-*; do
    [[ $old == "$tree" ]] || rm -rf "$old"
done
log "built $tree in $((SECONDS - start)) s"
printf '%s\n' "$tree"
