#!/usr/bin/env bash
# Cheap sanity checks of llamactl's packaging: no compilation, no package build.
#
#   bash packaging/check.sh        (from the repository root, or from anywhere)
#
# Needs promtool (Debian: apt-get install --no-install-recommends prometheus),
# amtool and prometheus-alertmanager (prometheus-alertmanager), python3 with
# python3-yaml, and dpkg-dev, make and perl, which a Debian 12 build machine has. rpmspec is
# used when installed (Debian: apt-get install --no-install-recommends rpm) and
# skipped otherwise. Every check runs even after a failure; the script exits
# non-zero if any failed. PROMTOOL=, AMTOOL= and ALERTMANAGER=/path override the tools used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROMTOOL=${PROMTOOL:-promtool}
AMTOOL=${AMTOOL:-amtool}
export AMTOOL ALERTMANAGER=${ALERTMANAGER:-prometheus-alertmanager}
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
# Severity, summary, description, runbook_url and docs/runbooks/<alert>.md for every alert, a
# test in which it fires and then resolves, and only metric names llamactld exposes.
check "every alert has severity, summary, description, a runbook (docs/runbooks/) and a fire-and-resolve test; only exposed metrics" \
    python3 packaging/prometheus/check_alerts.py

# --- Alertmanager example ---------------------------------------------------
AM=packaging/alertmanager/alertmanager.yml
# am_route RECEIVER LABEL=VALUE...: an alert with these labels is routed to RECEIVER only.
am_route() {
    local want=$1
    shift
    "$AMTOOL" config routes test --config.file="$AM" --verify.receivers="$want" "$@"
}
if command -v "$AMTOOL" >/dev/null 2>&1 && command -v "$ALERTMANAGER" >/dev/null 2>&1; then
    check "amtool check-config $AM" "$AMTOOL" check-config "$AM"
    check "$AM routes severity=critical to slack-critical" am_route slack-critical alertname=InstanceDown severity=critical
    check "$AM routes severity=warning to slack" am_route slack alertname=HighMemoryUsage severity=warning
    check "$AM routes an alert without severity to slack" am_route slack alertname=Other
    check "$AM inhibits instance alerts of a daemon while its LlamactlDown fires (a real Alertmanager)" \
        bash packaging/alertmanager/test-inhibition.sh
else
    printf 'FAIL  amtool or %s not found (apt-get install --no-install-recommends prometheus-alertmanager, or set AMTOOL/ALERTMANAGER)\n' "$ALERTMANAGER"
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

# The daemon (debhelper's snippet) must be stopped before the instances, or it could act on
# their stopping: #DEBHELPER# comes first.
deb_prerm() {
    local d i
    [ -x debian/prerm ] || { echo "debian/prerm is not executable"; return 1; }
    sh -n debian/prerm || return 1
    d=$(grep -n '^#DEBHELPER#$' debian/prerm | cut -d: -f1)
    i=$(grep -n "deb-systemd-invoke stop 'llamactl-\*.service'" debian/prerm | head -n1 | cut -d: -f1)
    [ -n "$d" ] || { echo "no #DEBHELPER# token"; return 1; }
    [ -n "$i" ] || { echo "prerm does not stop the instance units"; return 1; }
    [ "$d" -lt "$i" ] || { echo "#DEBHELPER# (the daemon's stop) must come before the instances' stop"; return 1; }
}
check "debian/prerm: executable, sh -n, stops the instance units after #DEBHELPER#" deb_prerm

deb_postinst() {
    [ -x debian/postinst ] || { echo "debian/postinst is not executable"; return 1; }
    sh -n debian/postinst || return 1
    grep -q '^#DEBHELPER#$' debian/postinst || { echo "no #DEBHELPER# token"; return 1; }
    # The group first: the debhelper snippet starts the unit, which joins the group.
    local g d
    g=$(grep -n 'llamactl.conf' debian/postinst | head -n1 | cut -d: -f1)
    d=$(grep -n '^#DEBHELPER#$' debian/postinst | cut -d: -f1)
    [ -n "$g" ] && [ "$g" -lt "$d" ] || { echo "the socket group is not created before #DEBHELPER#"; return 1; }
}
check "debian/postinst: executable, sh -n, creates the socket group before #DEBHELPER#" deb_postinst

unit_group() {
    grep -q '^SupplementaryGroups=llamactl$' units/llamactl.service || { echo "the unit does not join llamactl"; return 1; }
    grep -q '^g llamactl ' packaging/sysusers/llamactl.conf || { echo "sysusers.d does not create llamactl"; return 1; }
    grep -q 'sysusers.d/llamactl.conf' debian/rules || { echo "debian/rules does not install the sysusers file"; return 1; }
    grep -q 'groupadd -r llamactl' rpm/llamactl.spec || { echo "the RPM does not create the group"; return 1; }
}
check "the unit's SupplementaryGroups= group is created by sysusers.d and both packages" unit_group

audit_files() {
    local f
    for f in llamactl.catalog logrotate.d/llamactl; do
        grep -q "$f" debian/rules || { echo "debian/rules does not install $f"; return 1; }
        grep -q "$f" rpm/llamactl.spec || { echo "the RPM does not install $f"; return 1; }
    done
    grep -q -- '--update-catalog' debian/postinst || { echo "postinst does not update the catalog"; return 1; }
    # Every entry of the catalog parses as "-- <32 hex>" with a Subject.
    awk '/^-- / { n++; if (length($2) != 32 || $2 ~ /[^0-9a-f]/) bad=1 } /^Subject: / { s++ } END { exit !(n == s && n > 0 && !bad) }' \
        packaging/journal/llamactl.catalog || { echo "malformed catalog"; return 1; }
    if command -v logrotate >/dev/null 2>&1; then
        logrotate -d packaging/logrotate/llamactl >/dev/null 2>&1 || { echo "logrotate -d rejects the snippet"; return 1; }
    fi
}
check "the audit catalog and logrotate snippet are installed by both packages and well-formed" audit_files

# The alerts' runbooks (uncompressed: the alerts name them <alertname>.md) and the Alertmanager
# example, in both packages.
alert_files() {
    local d='docs/runbooks/\*\.md' a='packaging/alertmanager/alertmanager\.yml'
    grep -q "^$a usr/share/llamactl/alertmanager/\$" debian/llamactl.install || { echo "the .deb does not install alertmanager.yml"; return 1; }
    grep -q "^$d usr/share/doc/llamactl/runbooks/\$" debian/llamactl.install || { echo "the .deb does not install the runbooks"; return 1; }
    grep -q 'dh_compress .*-Xdoc/llamactl/runbooks/' debian/rules || { echo "dh_compress would compress the runbooks"; return 1; }
    grep -q "$a %{buildroot}%{_datadir}/%{name}/alertmanager/alertmanager.yml\$" rpm/llamactl.spec || { echo "the RPM does not install alertmanager.yml"; return 1; }
    grep -q "$d %{buildroot}%{_docdir}/%{name}/runbooks/\$" rpm/llamactl.spec || { echo "the RPM does not install the runbooks"; return 1; }
}
check "the runbooks and the Alertmanager example are installed by both packages" alert_files

# The dashboard where both packages put it: /usr/share/llamactl/grafana/ (tests/dashboard.rs
# proves its queries against a real Prometheus; tests/vm/ and rpm-check.sh look in the packages).
dashboard_installed() {
    grep -qx 'packaging/grafana/llamactl-dashboard.json usr/share/llamactl/grafana/' debian/llamactl.install \
        || { echo "debian/llamactl.install does not install the dashboard into usr/share/llamactl/grafana/"; return 1; }
    grep -q '^install .*packaging/grafana/llamactl-dashboard.json %{buildroot}%{_datadir}/%{name}/grafana/llamactl-dashboard.json$' rpm/llamactl.spec \
        || { echo "rpm/llamactl.spec does not install the dashboard into %{_datadir}/%{name}/grafana/"; return 1; }
    grep -qx '%{_datadir}/%{name}' rpm/llamactl.spec || { echo "rpm/llamactl.spec %files does not own %{_datadir}/%{name}"; return 1; }
}
check "the Grafana dashboard is installed by both packages (/usr/share/llamactl/grafana/)" dashboard_installed

# The index templates of the elasticsearch log destination: JSON, the guide's pattern and five
# fields, installed by both packages. (That llamactld's documents carry only their fields is a
# unit test: src/logging/elasticsearch.rs.)
es_templates() {
    local f
    for f in llamactl-template.json llamactl-index-template.json; do
        python3 - "packaging/elasticsearch/$f" <<'PY' || return 1
import json, sys
t = json.load(open(sys.argv[1]))
m = t.get("template", t)["mappings"]["properties"]
assert t["index_patterns"] == ["llamactl-*"], t["index_patterns"]
for k, ty in [("timestamp", "date"), ("level", "keyword"), ("message", "text"), ("instance", "keyword"), ("component", "keyword")]:
    assert m[k]["type"] == ty, (k, m.get(k))
PY
        grep -q "packaging/elasticsearch/$f" debian/llamactl.install || { echo "the .deb does not install $f"; return 1; }
        grep -q "packaging/elasticsearch/$f" rpm/llamactl.spec || { echo "the RPM does not install $f"; return 1; }
    done
}
check "the Elasticsearch index templates parse, carry the guide's fields and are installed by both packages" es_templates

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
    for f in units/llamactl.service etc/llamactl/config.toml man/llamactld.8 man/llamactl.1 man/llamactl.toml.5 \
        packaging/sysusers/llamactl.conf packaging/journal/llamactl.catalog packaging/logrotate/llamactl \
        $(cat debian/llamactl.docs) $(cat debian/llamactl.examples) $(awk '!/^#/ { print $1 }' debian/llamactl.install); do
        [ -f "$f" ] || { echo "missing: $f"; missing=1; }
    done
    return $missing
}
check "every file the packages install from the tree exists (unit, config, man pages, README, examples)" inputs

# --- Grafana dashboard --------------------------------------------------------
# These checks need python3 (and promtool for the PromQL one).
DASHBOARD=packaging/grafana/llamactl-dashboard.json

# grafana_py MODE: the dashboard checks that need to read the JSON. MODE is
#   structure  inputs, requires, variables, unique ids, datasources, 2-space layout
#   rules      print a rules file with one recording rule per PromQL expression
#   names      every llamactl_*/process_* name is one llamactld exposes
#   filters    every llamactl_*/process_* selector has job=~"$job", every
#              per-instance one (llamactl_instance_*, llamacpp:*) instance_name=~"$instance_name"
grafana_py() {
    python3 - "$1" "$DASHBOARD" <<'PY'
import json, re, sys

mode, path = sys.argv[1], sys.argv[2]
try:
    text = open(path, encoding="utf-8").read()
    d = json.loads(text)
except (OSError, ValueError) as e:
    sys.exit("%s: %s" % (path, e))
errors = []

def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))  # rows, collapsed or not

panels = list(all_panels(d.get("panels", [])))

def exprs():
    """(where, expr) of every Prometheus query: panel targets and annotations."""
    for p in panels:
        for t in p.get("targets", []):
            if "expr" in t:
                yield "panel %s %r target %s" % (p.get("id"), p.get("title"), t.get("refId")), t["expr"]
    for a in d.get("annotations", {}).get("list", []):
        if "expr" in a:
            yield "annotation %r" % a.get("name"), a["expr"]

def var_queries():
    for v in d.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            yield "variable %s" % v.get("name"), q.get("query", "") if isinstance(q, dict) else q

# Grafana variables -> concrete values promtool can parse.
DURATIONS = {"__rate_interval", "__interval", "__range", "__auto_interval"}
NUMBERS = {"__range_s": "3600", "__range_ms": "3600000", "__interval_ms": "60000"}
def concrete(expr):
    def sub(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in DURATIONS or name.startswith("__auto_interval"):
            return "5m"
        return NUMBERS.get(name, "check")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", sub, expr)

STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
NAME = re.compile(r"(?<![\w:])[a-zA-Z_:][\w:]*")

if mode == "structure":
    if text != json.dumps(d, indent=2) + "\n":
        errors.append("not laid out as json.dumps(indent=2) + newline (python3 -m json.tool --indent 2)")
    if d.get("schemaVersion") != 39:
        errors.append("schemaVersion is %r, expected 39" % d.get("schemaVersion"))
    inputs = {i.get("name"): i for i in d.get("__inputs", [])}
    i = inputs.get("DS_PROMETHEUS", {})
    if (i.get("type"), i.get("pluginId")) != ("datasource", "prometheus"):
        errors.append("__inputs lacks DS_PROMETHEUS (type datasource, pluginId prometheus)")
    req = {(r.get("type"), r.get("id")) for r in d.get("__requires", [])}
    for need in [("grafana", "grafana"), ("datasource", "prometheus")] + \
            [("panel", p["type"]) for p in panels if p.get("type") != "row"]:
        if need not in req:
            errors.append("__requires lacks %s %s" % need)
    var = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    v = var.get("datasource", {})
    if (v.get("type"), v.get("query")) != ("datasource", "prometheus"):
        errors.append("variable datasource: want type datasource, query prometheus")
    def query_of(v):
        q = v.get("query")
        return re.sub(r"\s+", "", q.get("query", "") if isinstance(q, dict) else q or "")
    v = var.get("job", {})
    if v.get("type") != "query" or query_of(v) != "label_values(llamactl_build_info,job)":
        errors.append("variable job: want query label_values(llamactl_build_info, job)")
    v = var.get("instance_name", {})
    if v.get("type") != "query" or not re.fullmatch(r"label_values\(llamactl_instance_up(\{[^}]*\})?,instance_name\)", query_of(v)) \
            or not v.get("multi") or not v.get("includeAll"):
        errors.append("variable instance_name: want label_values(llamactl_instance_up, instance_name), multi, includeAll")
    OK_UIDS = {"${datasource}", "${DS_PROMETHEUS}"}
    def ds_ok(ds):
        return isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") in OK_UIDS
    for name in ("job", "instance_name"):
        if name in var and not ds_ok(var[name].get("datasource")):
            errors.append("variable %s: datasource is not ${datasource}" % name)
    ids = [p.get("id") for p in panels]
    dups = sorted({i for i in ids if ids.count(i) > 1 or not isinstance(i, int)}, key=str)
    if dups:
        errors.append("panel ids not unique integers: %s" % dups)
    for p in panels:
        if p.get("type") == "row":
            continue  # rows hold no queries
        where = "panel %s %r" % (p.get("id"), p.get("title"))
        if not ds_ok(p.get("datasource")):
            errors.append("%s: datasource %r is not ${datasource}/${DS_PROMETHEUS}" % (where, p.get("datasource")))
        if not p.get("targets"):
            errors.append("%s: no queries" % where)
        for t in p.get("targets", []):
            if not ds_ok(t.get("datasource")):
                errors.append("%s target %s: datasource is not ${datasource}" % (where, t.get("refId")))
        if not p.get("description"):
            errors.append("%s: no description" % where)
    for a in d.get("annotations", {}).get("list", []):
        if "expr" in a and not ds_ok(a.get("datasource")):
            errors.append("annotation %r: datasource is not ${datasource}" % a.get("name"))

elif mode == "rules":
    print("# generated by packaging/check.sh from %s" % path)
    print("groups:\n  - name: dashboard\n    rules:")
    n = 0
    for n, (where, expr) in enumerate(exprs(), 1):
        print("      # %s" % where)
        print("      - record: dashboard:check_%d" % n)
        print("        expr: %s" % json.dumps(concrete(expr)))  # a JSON string is a YAML string
    if n < 1:
        errors.append("no expressions found")

elif mode == "names":
    # What llamactld can expose (README.md "Metrics"; src/metrics/{mod,build,resources,process}.rs
    # register these without the llamactl_ prefix, and the encoder appends the unit, then _total
    # for counters and _info for info metrics). Keep in step with those files.
    EXPOSED = {
        "llamactl_build_info",
        "llamactl_api_requests_total",
        "llamactl_api_request_duration_seconds_bucket",
        "llamactl_api_request_duration_seconds_sum",
        "llamactl_api_request_duration_seconds_count",
        "llamactl_instances_total",
        "llamactl_instances_running",
        "llamactl_instance_up",
        "llamactl_instance_state",
        "llamactl_instance_start_time_seconds",
        "llamactl_instance_restarts_total",
        "llamactl_instance_memory_bytes",
        "llamactl_instance_memory_percent",
        "llamactl_instance_memory_limit_bytes",
        "llamactl_instance_cpu_seconds_total",
        "llamactl_instance_cpu_percent",
        "llamactl_instance_io_read_bytes_total",
        "llamactl_instance_io_write_bytes_total",
        "llamactl_instance_tasks",
        "llamactl_instance_oom_kills_total",
        "llamactl_instance_pressure_cpu_seconds_total",
        "llamactl_instance_pressure_memory_seconds_total",
        "llamactl_instance_pressure_io_seconds_total",
        "llamactl_instance_gpu_memory_bytes",
        "llamactl_system_memory_total_bytes",
        "llamactl_system_memory_available_bytes",
        "llamactl_system_cpu_percent",
        "llamactl_system_cpus",
        "llamactl_system_cpu_busy_seconds_total",
        "llamactl_system_load",
        "llamactl_system_disk_read_bytes_total",
        "llamactl_system_disk_written_bytes_total",
        "llamactl_system_network_receive_bytes_total",
        "llamactl_system_network_transmit_bytes_total",
        "llamactl_gpu_utilization_percent",
        "llamactl_gpu_memory_used_bytes",
        "llamactl_gpu_memory_total_bytes",
        "llamactl_gpu_temperature_celsius",
        "llamactl_gpu_power_watts",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_threads",
    }
    # And every series of the golden end-to-end /metrics files (the proxy's, the LLM latency
    # histograms' _bucket/_sum/_count, ...), which the unit tests keep equal to what the
    # daemon renders.
    import glob, os
    for golden in glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), "..", "..", "tests", "fixtures", "metrics", "*.prom")):
        with open(golden) as f:
            for line in f:
                if line[:1] not in ("#", "\n", ""):
                    EXPOSED.add(re.split(r"[{ ]", line, 1)[0])
    WITH_PROXY = set()
    used = set()
    for where, expr in list(exprs()) + list(var_queries()):
        for name in NAME.findall(STRINGS.sub('""', expr)):
            if name.startswith(("llamactl_", "process_")):
                used.add(name)
                if name not in EXPOSED | WITH_PROXY:
                    errors.append("%s: %s is not a metric llamactld exposes" % (where, name))
    if not used:
        errors.append("no llamactl_/process_ names found")

elif mode == "filters":
    SELECTOR = re.compile(r"(?<![\w:])((?:llamactl_|process_|llamacpp:)[\w:]*)\s*(\{[^}]*\})?")
    for where, expr in exprs():
        # Label values are part of the matchers, so this reads the text as it is (a value
        # containing "}" would cut a selector short: none does).
        for m in SELECTOR.finditer(expr):
            name, matchers = m.group(1), m.group(2) or ""
            if name.startswith(("llamactl_", "process_")) and 'job=~"$job"' not in matchers:
                errors.append('%s: %s lacks job=~"$job"' % (where, name))
            if name.startswith(("llamactl_instance_", "llamacpp:")) and 'instance_name=~"$instance_name"' not in matchers:
                errors.append('%s: %s lacks instance_name=~"$instance_name"' % (where, name))

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
}

grafana_structure() {
    python3 -m json.tool "$DASHBOARD" >/dev/null || return 1
    grafana_py structure
}

grafana_promql() {
    local rules rc=0
    rules=$(mktemp --suffix=.yml) || return 1
    grafana_py rules >"$rules" || rc=1
    if [ "$rc" -eq 0 ]; then
        "$PROMTOOL" check rules "$rules" || { rc=1; echo "rules file:"; cat -n "$rules"; }
    fi
    rm -f "$rules"
    return $rc
}

if command -v python3 >/dev/null 2>&1; then
    check "$DASHBOARD: JSON parses, 2-space layout; __inputs DS_PROMETHEUS, __requires, variables datasource/job/instance_name; unique panel ids; every panel on \${datasource}" \
        grafana_structure
    if command -v "$PROMTOOL" >/dev/null 2>&1; then
        check "$DASHBOARD: every PromQL expression parses (promtool check rules, one recording rule each)" \
            grafana_promql
    else
        skip "$DASHBOARD: PromQL expressions (promtool not found)"
    fi
    check "$DASHBOARD: every llamactl_*/process_* metric is one llamactld exposes (or comes with the proxy)" \
        grafana_py names
    check "$DASHBOARD: every llamactl_*/process_* selector filters job=~\"\$job\"; per-instance ones instance_name=~\"\$instance_name\"" \
        grafana_py filters
else
    printf 'FAIL  python3 not found: the %s checks need it\n' "$DASHBOARD"
    failed=$((failed + 1))
fi

printf '\npackaging: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
[ "$failed" -eq 0 ]
