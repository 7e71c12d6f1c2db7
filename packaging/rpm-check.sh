#!/usr/bin/env bash
# Builds the RPM with rpmbuild on this (Debian) machine and checks what it holds and does:
# the file list, the scriptlets (the daemon's unit handled like systemd's macros do; on erase
# every instance unit stopped, never a running instance left behind), and rpmlint when Debian
# packages it. No RPM distribution boots here, so the scriptlets are read, not run (the same
# semantics run for real in the .deb's VM test, tests/vm/).
#
#   sudo packaging/rpm-check.sh        (needs rpm: apt-get install --no-install-recommends rpm)
#
# The build compiles in release mode (cargo, --locked); its target directory is kept in
# ${LLAMACTL_RPM_TARGET:-/var/cache/llamactl-test/rpm-target} so a second run is incremental.
# Exit 0 only when every check passed; leaves nothing behind but that cache.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
repo=$PWD

command -v rpmbuild >/dev/null || { echo "rpm-check: rpmbuild missing (apt-get install rpm)" >&2; exit 1; }
if ! command -v cpio >/dev/null; then
    apt-get install -y -qq --no-install-recommends cpio >/dev/null 2>&1 || { echo "rpm-check: cpio missing" >&2; exit 1; }
fi
version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
top=$(mktemp -d /tmp/llamactl-rpm.XXXXXX)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}

# The source tarball as the spec's comment says: the committed tree, plus the working tree's
# changes when there are any (so the check sees what is about to be committed).
stash=$(git stash create 2>/dev/null || true)
git archive --format=tar.gz --prefix="llamactl-$version/" -o "$top/SOURCES/llamactl-$version.tar.gz" "${stash:-HEAD}"

export CARGO_TARGET_DIR=${LLAMACTL_RPM_TARGET:-/var/cache/llamactl-test/rpm-target}
mkdir -p "$CARGO_TARGET_DIR"
echo "rpm-check: rpmbuild -bb (cargo build --release; a first run takes minutes)" >&2
# --nodeps: BuildRequires name RPM packages, which a Debian rpm database does not hold.
rpmbuild -bb --nodeps --quiet \
    --define "_topdir $top" \
    --define "_build_id_links none" \
    --load packaging/rpm/macros.debian \
    rpm/llamactl.spec >"$top/build.log" 2>&1 || { tail -40 "$top/build.log" >&2; echo "rpm-check: rpmbuild failed" >&2; exit 1; }
rpm=$(find "$top/RPMS" -name "llamactl-$version-*.rpm" | head -1)
[[ -n $rpm ]] || { echo "rpm-check: no RPM was built" >&2; exit 1; }
echo "rpm-check: built $(basename "$rpm") ($(du -h "$rpm" | cut -f1))" >&2

passed=0 failed=0
check() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then
        printf 'ok    %s\n' "$what"; passed=$((passed + 1))
    else
        printf 'FAIL  %s\n%s\n' "$what" "$out" | sed '2,$s/^/      /'; failed=$((failed + 1))
    fi
}

files=$(rpm -qlp "$rpm" 2>/dev/null)
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
# One scriptlet's body: from its "NAME scriptlet" header to the next header.
scriptlet() { awk -v n="$1" '/scriptlet \(using/ { on = ($1 == n) ; next } on' <<<"$scripts"; }

has_files() {
    local f missing=()
    for f in /usr/bin/llamactld /usr/bin/llamactl /usr/lib/systemd/system/llamactl.service \
        /usr/lib/sysusers.d/llamactl.conf /usr/lib/systemd/catalog/llamactl.catalog \
        /etc/llamactl/config.toml /etc/logrotate.d/llamactl \
        /usr/share/man/man8/llamactld.8 /usr/share/man/man1/llamactl.1 /usr/share/man/man5/llamactl.toml.5 \
        /usr/share/bash-completion/completions/llamactl /usr/share/llamactl/alertmanager/alertmanager.yml \
        /usr/share/doc/llamactl/runbooks/README.md /usr/share/doc/llamactl/runbooks/InstanceDown.md \
        /usr/share/llamactl/grafana/llamactl-dashboard.json \
        /usr/share/llamactl/elasticsearch/llamactl-template.json \
        /usr/share/llamactl/elasticsearch/llamactl-index-template.json; do
        # Man pages are compressed by the distribution's brp scripts (not on Debian's rpm).
        grep -qxE "$f(\.gz)?" <<<"$files" || missing+=("$f")
    done
    ((${#missing[@]} == 0)) || { echo "missing: ${missing[*]}"; return 1; }
}
check "rpm -qlp: binaries, unit, sysusers, catalog, config, man pages, completions, dashboard, index templates" has_files
# The packaged dashboard is the source's (the one tests/dashboard.rs evaluates), byte for byte.
dashboard_same() {
    local d rc=0
    d=$(mktemp -d)
    (cd "$d" && rpm2cpio "$rpm" | cpio -id --quiet ./usr/share/llamactl/grafana/llamactl-dashboard.json) &&
        tar -xzOf "$top/SOURCES/llamactl-$version.tar.gz" "llamactl-$version/packaging/grafana/llamactl-dashboard.json" |
        cmp - "$d/usr/share/llamactl/grafana/llamactl-dashboard.json" || rc=1
    rm -rf "$d"
    return $rc
}
check "the packaged Grafana dashboard is packaging/grafana/llamactl-dashboard.json" dashboard_same
no_state() {
    ! grep -E '^/var/(lib|log)/llamactl' <<<"$files" || { echo "state/log directories are packaged (StateDirectory= makes them)"; return 1; }
}
check "rpm -qlp: /var/lib/llamactl and /var/log/llamactl are not packaged" no_state
binary_runs() {
    local d
    d=$(mktemp -d)
    (cd "$d" && rpm2cpio "$rpm" | cpio -id --quiet ./usr/bin/llamactld) &&
        "$d/usr/bin/llamactld" --version | grep -q "$version"
    local rc=$?
    rm -rf "$d"
    return $rc
}
check "the packaged llamactld runs (--version $version)" binary_runs
pre_group() { scriptlet preinstall | grep -q 'groupadd -r llamactl' || { echo "%pre does not create the llamactl group"; return 1; }; }
check "%pre creates the admin socket's group" pre_group
preun_stops() {
    local s
    s=$(scriptlet preuninstall)
    grep -q 'disable --now llamactl.service\|stop llamactl.service' <<<"$s" || { echo "%preun does not stop the daemon"; return 1; }
    grep -q "llamactl-\*.service" <<<"$s" || { echo "%preun does not stop the instance units (llamactl-*.service)"; return 1; }
    grep -q '\$1 -eq 0\|"\$1" -eq 0\|\$1 = 0' <<<"$s" || { echo "%preun acts on upgrades too (no \$1 = 0 test)"; return 1; }
}
check "%preun on erase stops the daemon and every instance unit, not on upgrade" preun_stops
postun_restarts() { scriptlet postuninstall | grep -q 'try-restart llamactl.service' || { echo "%postun does not restart the daemon on upgrade"; return 1; }; }
check "%postun restarts the daemon on upgrade" postun_restarts
post_preset() { scriptlet postinstall | grep -q 'preset llamactl.service' || { echo "%post does not apply the preset"; return 1; }; }
check "%post applies the distribution's preset" post_preset
if command -v rpmlint >/dev/null; then
    check "rpmlint (no errors)" sh -c "rpmlint '$rpm' | grep -v ' W: ' | grep -q ' E: ' && exit 1 || exit 0"
else
    echo "note  rpmlint: not packaged in Debian 12; not run"
fi

echo "rpm-check: $passed passed, $failed failed"
((failed == 0))
