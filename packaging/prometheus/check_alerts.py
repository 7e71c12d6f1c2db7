#!/usr/bin/env python3
"""What promtool does not check about alerts.yml: every alert is documented and tested.

    python3 packaging/prometheus/check_alerts.py     (from anywhere; run by packaging/check.sh)

Every alert in alerts.yml must have
  - labels.severity critical or warning, annotations summary and description;
  - annotations.runbook_url = RUNBOOK_BASE + <alertname>.md, and docs/runbooks/<alertname>.md
    with the sections "## Meaning", "## Confirm" (using systemctl, journalctl, llamactl and a
    ```promql block) and "## Fix";
  - a test in alerts_test.yml where it fires (non-empty exp_alerts, each alert of it labelled
    with the alertname's severity) at one eval_time and does not (exp_alerts: []) at a later one.
And every docs/runbooks/*.md but README.md is the runbook of an alert, every alertname in
alerts_test.yml is one of alerts.yml, and every llamactl_* name in the rules, their tests and the
runbooks' PromQL is a series of the golden /metrics files (tests/fixtures/metrics/*.prom, which
the unit tests keep equal to what llamactld renders). Needs python3-yaml. Exits 1 listing what
is wrong.
"""
import os
import re
import sys

try:
    import yaml
except ImportError:
    sys.exit("python3-yaml is missing (apt-get install --no-install-recommends python3-yaml)")

# The placeholder documented at the top of alerts.yml and in docs/runbooks/README.md.
RUNBOOK_BASE = "https://runbooks.invalid/llamactl/"
SEVERITIES = {"critical", "warning"}

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.normpath(os.path.join(here, "..", ".."))
runbooks = os.path.join(repo, "docs", "runbooks")
errors = []


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        sys.exit("%s: %s" % (path, e))


def seconds(d):
    """A Prometheus duration ("90s", "1h30m") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", str(d))
    if not parts or "".join(n + u for n, u in parts) != str(d):
        raise ValueError("bad duration %r" % d)
    return sum(int(n) * units[u] for n, u in parts)


rules = [r for g in load(os.path.join(here, "alerts.yml")).get("groups", []) for r in g.get("rules", [])]
alerts = {r["alert"]: r for r in rules if "alert" in r}
if not alerts:
    errors.append("alerts.yml has no alerts")

for name, r in alerts.items():
    labels, ann = r.get("labels") or {}, r.get("annotations") or {}
    if labels.get("severity") not in SEVERITIES:
        errors.append("%s: severity is %r, not one of %s" % (name, labels.get("severity"), sorted(SEVERITIES)))
    for a in ("summary", "description"):
        if not str(ann.get(a, "")).strip():
            errors.append("%s: no %s annotation" % (name, a))
    if ann.get("runbook_url") != RUNBOOK_BASE + name + ".md":
        errors.append("%s: runbook_url is %r, expected %r" % (name, ann.get("runbook_url"), RUNBOOK_BASE + name + ".md"))
    path = os.path.join(runbooks, name + ".md")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        errors.append("%s: no runbook docs/runbooks/%s.md" % (name, name))
        continue
    if not text.startswith("# " + name + "\n"):
        errors.append("docs/runbooks/%s.md: does not start with '# %s'" % (name, name))
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    for s in ("Meaning", "Confirm", "Fix"):
        if not sections.get(s, "").strip():
            errors.append("docs/runbooks/%s.md: no '## %s' section" % (name, s))
    confirm = sections.get("Confirm", "")
    for tool in ("systemctl ", "journalctl ", "llamactl ", "```promql"):
        if tool not in confirm:
            errors.append("docs/runbooks/%s.md: '## Confirm' does not use %s" % (name, tool.strip()))

try:
    for f in sorted(os.listdir(runbooks)):
        if f.endswith(".md") and f != "README.md" and f[:-3] not in alerts:
            errors.append("docs/runbooks/%s is the runbook of no alert in alerts.yml" % f)
except OSError as e:
    errors.append("docs/runbooks: %s" % e)

# Metric names: only what llamactld exposes.
exposed = set()
golden = os.path.join(repo, "tests", "fixtures", "metrics")
for f in sorted(os.listdir(golden)):
    if f.endswith(".prom"):
        with open(os.path.join(golden, f), encoding="utf-8") as g:
            exposed.update(re.split(r"[{ ]", line, 1)[0] for line in g if line[:1] not in ("#", "\n"))
used = [("alerts.yml", r["expr"]) for r in rules]
with open(os.path.join(here, "alerts_test.yml"), encoding="utf-8") as f:
    used.append(("alerts_test.yml", f.read()))
for name in alerts:
    try:
        with open(os.path.join(runbooks, name + ".md"), encoding="utf-8") as f:
            used += [("docs/runbooks/%s.md" % name, b) for b in re.findall(r"```promql\n(.*?)```", f.read(), re.S)]
    except OSError:
        pass  # reported above
for where, text in used:
    for m in sorted(set(re.findall(r"(?<![\w:])llamactl_[a-z0-9_]+", text)) - exposed):
        errors.append("%s: %s is not a metric llamactld exposes (tests/fixtures/metrics/*.prom)" % (where, m))

# alertname -> test names in which it fires and later resolves.
fires_and_resolves = {}
for t in load(os.path.join(here, "alerts_test.yml")).get("tests", []):
    cases = {}
    for c in t.get("alert_rule_test", []) or []:
        name = c.get("alertname")
        if name not in alerts:
            errors.append("alerts_test.yml, test %r: alertname %r is not in alerts.yml" % (t.get("name"), name))
            continue
        exp = c.get("exp_alerts") or []
        for e in exp:
            sev = (e.get("exp_labels") or {}).get("severity")
            if sev != (alerts[name].get("labels") or {}).get("severity"):
                errors.append("alerts_test.yml, test %r: %s expected with severity %r" % (t.get("name"), name, sev))
        cases.setdefault(name, []).append((seconds(c.get("eval_time", "0s")), bool(exp)))
    for name, cs in cases.items():
        firing = [at for at, fires in cs if fires]
        if firing and any(not fires and at > min(firing) for at, fires in cs):
            fires_and_resolves.setdefault(name, []).append(t.get("name"))

for name in alerts:
    if name not in fires_and_resolves:
        errors.append("%s: no test in alerts_test.yml where it fires at one eval_time and is resolved "
                      "(exp_alerts: []) at a later one" % name)

for e in errors:
    print(e)
if not errors:
    print("%d alerts: each with severity, summary, description, runbook and a fire-and-resolve test"
          % len(alerts))
sys.exit(1 if errors else 0)
