#!/usr/bin/env bash
# Check every deployment file: Prometheus rules and their unit tests, the example Prometheus
# configuration, the systemd unit, and every PromQL query of the Grafana dashboard.
#
#   deploy/check.sh
#
# Needs Debian's prometheus (promtool, prometheus), systemd (systemd-analyze), jq and curl:
#   apt-get install -y prometheus systemd jq curl
#
# systemd-analyze verify fails on a unit whose ExecStart binary does not exist
# ("Command /usr/bin/apptheus is not executable"). The unit is therefore verified as a copy
# in a temporary directory (same file name) whose ExecStart points at an existing binary:
# $APPTHEUS_BIN if set, else target/release/apptheus if it was built, else /bin/true.
# Everything else in the unit is verified unchanged.
set -euo pipefail
deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$deploy")

missing=()
for tool in promtool prometheus systemd-analyze jq curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "check.sh: missing ${missing[*]} (apt-get install -y prometheus systemd jq curl)" >&2
    exit 2
fi

step() { printf '\n== %s\n' "$*"; }

step promtool check rules
promtool check rules "$deploy/prometheus/alerts.yml" "$deploy/prometheus/rules.yml"
step promtool test rules
promtool test rules "$deploy/prometheus/alerts_test.yml" "$deploy/prometheus/rules_test.yml"
step promtool check config
promtool check config "$deploy/prometheus/prometheus.yml" "$deploy/prometheus/central.yml"
promtool check config --agent "$deploy/prometheus/agent.yml"

step systemd-analyze verify
bin=${APPTHEUS_BIN:-}
if [[ -z $bin ]]; then
    if [[ -x $root/target/release/apptheus ]]; then bin=$root/target/release/apptheus; else bin=/bin/true; fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#^ExecStart=/usr/bin/apptheus #ExecStart=$bin #" "$deploy/systemd/apptheus.service" >"$tmp/apptheus.service"
grep -q "^ExecStart=$bin " "$tmp/apptheus.service" || { echo "check.sh: ExecStart line not found" >&2; exit 1; }
echo "(ExecStart binary replaced by $bin in a temporary copy)"
systemd-analyze verify "$tmp/apptheus.service"
echo "apptheus.service: OK"
# The environment file must define APPTHEUS_ARGS as one double-quoted KEY="VALUE" line.
grep -Eq '^APPTHEUS_ARGS="[^"]*"$' "$deploy/systemd/apptheus.env" || { echo "check.sh: apptheus.env has no APPTHEUS_ARGS=\"...\" line" >&2; exit 1; }
echo "apptheus.env: OK"

step Grafana dashboard queries
"$deploy/grafana/queries.sh"
