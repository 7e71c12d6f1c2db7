#!/usr/bin/env bash
# The example's inhibition against a real Alertmanager: while LlamactlDown fires for a daemon,
# the alerts about its instances are suppressed, and nothing else is.
#
#   bash packaging/alertmanager/test-inhibition.sh      (run by packaging/check.sh)
#
# Starts prometheus-alertmanager (Debian package prometheus-alertmanager; ALERTMANAGER=path
# overrides it) with alertmanager.yml on a free loopback port, clustering off and a temporary
# storage directory, posts alerts with amtool and reads their status from the API. Nothing is
# sent: the Slack webhook file does not exist here, and group_wait outlasts the test.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ALERTMANAGER=${ALERTMANAGER:-prometheus-alertmanager}
AMTOOL=${AMTOOL:-amtool}

dir=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
"$ALERTMANAGER" --config.file=alertmanager.yml --storage.path="$dir" \
    --web.listen-address="127.0.0.1:$port" --cluster.listen-address= >"$dir/log" 2>&1 &
pid=$!
ready() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url/-/ready" 2>/dev/null; }
for _ in $(seq 100); do
    ready && break
    kill -0 "$pid" 2>/dev/null || { echo "alertmanager exited:"; cat "$dir/log"; exit 1; }
    sleep 0.1
done
ready || { echo "alertmanager not ready on $url:"; cat "$dir/log"; exit 1; }

add() { "$AMTOOL" --alertmanager.url="$url" alert add "$@" >/dev/null; }
add alertname=LlamactlDown job=llamactl instance=h1:8080 severity=critical
add alertname=InstanceDown job=llamactl instance=h1:8080 instance_name=smol severity=critical
add alertname=HighMemoryUsage job=llamactl instance=h1:8080 instance_name=big severity=warning
add alertname=InstanceDown job=llamactl instance=h2:8080 instance_name=smol severity=critical
add alertname=APIHighLatency job=llamactl instance=h1:8080 severity=warning

# alertname/instance/instance_name -> state, as the API reports it.
python3 - "$url/api/v2/alerts" <<'PY'
import json, sys, urllib.request
want = {
    ("LlamactlDown", "h1:8080", None): "active",
    ("InstanceDown", "h1:8080", "smol"): "suppressed",      # instance alert, same daemon
    ("HighMemoryUsage", "h1:8080", "big"): "suppressed",    # another one
    ("InstanceDown", "h2:8080", "smol"): "active",          # another daemon
    ("APIHighLatency", "h1:8080", None): "active",          # about the daemon, not an instance
}
got = {}
for a in json.load(urllib.request.urlopen(sys.argv[1], timeout=5)):
    l = a["labels"]
    got[(l["alertname"], l["instance"], l.get("instance_name"))] = a["status"]["state"]
bad = ["%s: %s, expected %s" % ("/".join(filter(None, k)), got.get(k), v) for k, v in want.items() if got.get(k) != v]
print("\n".join(bad) or "inhibition as expected: %d alerts" % len(want))
sys.exit(1 if bad else 0)
PY
