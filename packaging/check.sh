#!/usr/bin/env bash
# Cheap sanity checks of llamactl's packaging: no compilation, no package build.
#
#   bash packaging/check.sh        (from the repository root, or from anywhere)
#
# Needs promtool (Debian: apt-get install --no-install-recommends prometheus)
# and dpkg-dev, make and perl, which a Debian 12 build machine has. rpmspec is
# used when installed (Debian: apt-get install --no-install-recommends rpm) and
# skipped otherwise. Every check runs even after a failure; the script exits
# non-zero if any failed. PROMTOOL=/path/to/promtool overrides the promtool used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROMTOOL=${PROMTOOL:-promtool}
passed=0
failed=0
skipped=0

# check DESCRIPTION COMMAND...: run COMMAND quietly, report, print its output on failure.
# COMMAND runs as an `if` condition, where set -e is off: the check functions
# below therefore return on each failing step explicitly.
check() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then
        printf 'ok    %s\n' "$what"
        passed=$((passed + 1))
    else
        printf 'FAIL  %s\n' "$what"
        printf '%s\n' "$out" | sed 's/^/      | /'
        failed=$((failed + 1))
    fi
}

skip() {
    printf 'skip  %s\n' "$1"
    skipped=$((skipped + 1))
}

# The version every packaging file must carry: Cargo.toml's [package] version.
cargo_version() {
    awk -F'"' '/^\[/ { in_pkg = ($0 == "[package]") }
               in_pkg && /^version *=/ { print $2; exit }' Cargo.toml
}

# --- Prometheus examples --------------------------------------------------
if command -v "$PROMTOOL" >/dev/null 2>&1; then
    # check config also loads alerts.yml through rule_files.
    check "promtool check config packaging/prometheus/prometheus.yml (+ its rule_files)" \
        "$PROMTOOL" check config packaging/prometheus/prometheus.yml
    check "promtool check rules packaging/prometheus/alerts.yml" \
        "$PROMTOOL" check rules packaging/prometheus/alerts.yml
    check "promtool test rules packaging/prometheus/alerts_test.yml" \
        "$PROMTOOL" test rules packaging/prometheus/alerts_test.yml
else
    printf 'FAIL  promtool not found (apt-get install --no-install-recommends prometheus, or set PROMTOOL)\n'
    failed=$((failed + 1))
fi

# --- Debian -----------------------------------------------------------------
version=$(cargo_version)

deb_changelog() {
    local v
    dpkg-parsechangelog -l debian/changelog >/dev/null || return 1
    v=$(dpkg-parsechangelog -l debian/changelog -S Version) || return 1
    [ "$v" = "$version" ] || { echo "debian/changelog has $v, Cargo.toml has $version"; return 1; }
}
check "dpkg-parsechangelog -l debian/changelog parses; version = Cargo.toml's ($version)" deb_changelog

deb_control() {
    # dpkg's own parser, as used by dpkg-source/dpkg-gencontrol.
    perl -MDpkg::Control::Info -e '
        my $c = Dpkg::Control::Info->new("debian/control");
        my $src = $c->get_source->{Source} // "";
        my @pkgs = map { $_->{Package} } $c->get_packages;
        die "Source is \"$src\", expected llamactl\n" unless $src eq "llamactl";
        die "binary packages are (@pkgs), expected (llamactl)\n" unless "@pkgs" eq "llamactl";
        die "Build-Depends lacks debhelper-compat (= 13)\n"
            unless $c->get_source->{"Build-Depends"} =~ /debhelper-compat \(= 13\)/;
    '
}
check "debian/control parses (Dpkg::Control::Info): Source/Package llamactl, debhelper-compat 13" deb_control

deb_format() {
    local f
    f=$(dpkg-source --print-format .) || return 1
    [ "$f" = "3.0 (native)" ] || { echo "source format is '$f'"; return 1; }
}
check "dpkg-source --print-format: 3.0 (native)" deb_format

deb_rules() {
    [ -x debian/rules ] || { echo "debian/rules is not executable"; return 1; }
    [ "$(head -n1 debian/rules)" = "#!/usr/bin/make -f" ] || { echo "bad shebang"; return 1; }
    # Dry run: parses the makefile and expands the overrides, runs nothing.
    make --no-print-directory -n -f debian/rules \
        override_dh_auto_build override_dh_auto_test override_dh_auto_install override_dh_auto_clean \
        >/dev/null || return 1
    local t
    t=$(DEB_BUILD_OPTIONS=nocheck LLAMACTL_DEB_RUN_TESTS=1 \
        make --no-print-directory -n -f debian/rules override_dh_auto_test) || return 1
    case $t in
        *"cargo test"*) echo "override_dh_auto_test ignores DEB_BUILD_OPTIONS=nocheck"; return 1 ;;
    esac
}
check "debian/rules is executable and 'make -n' expands its overrides; nocheck honoured" deb_rules

deb_postrm() {
    [ -x debian/postrm ] || { echo "debian/postrm is not executable"; return 1; }
    sh -n debian/postrm || return 1
    grep -q '^#DEBHELPER#$' debian/postrm || { echo "no #DEBHELPER# token"; return 1; }
}
check "debian/postrm: executable, sh -n, has #DEBHELPER#" deb_postrm

# --- RPM --------------------------------------------------------------------
rpm_version() {
    local v
    v=$(awk '/^Version:/ { print $2; exit }' rpm/llamactl.spec)
    [ "$v" = "$version" ] || { echo "rpm/llamactl.spec has $v, Cargo.toml has $version"; return 1; }
}
check "rpm/llamactl.spec Version = Cargo.toml's ($version)" rpm_version

if command -v rpmspec >/dev/null 2>&1; then
    # _unitdir comes from systemd-rpm-macros, absent off RPM distributions.
    check "rpmspec -P rpm/llamactl.spec parses" \
        rpmspec -P --define '_unitdir /usr/lib/systemd/system' rpm/llamactl.spec
else
    skip "rpmspec -P rpm/llamactl.spec (rpmspec not installed)"
fi

# --- Inputs the packages take from the tree ---------------------------------
inputs() {
    local f missing=0
    for f in units/llamactl.service etc/llamactl/config.toml man/llamactld.8 man/llamactl.1 \
        README.md $(cat debian/llamactl.examples); do
        [ -f "$f" ] || { echo "missing: $f"; missing=1; }
    done
    return $missing
}
check "every file the packages install from the tree exists (unit, config, man pages, README, examples)" inputs

printf '\npackaging: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
[ "$failed" -eq 0 ]
