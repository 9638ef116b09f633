#!/usr/bin/env bash
# Check every PromQL expression of the Grafana dashboard against a real Prometheus.
#
#   deploy/grafana/queries.sh [DASHBOARD.json]          full check (default: apptheus.json beside it)
#   deploy/grafana/queries.sh --list [DASHBOARD.json]   only print the expressions, substituted
#
# Needs bash, jq, curl, and Debian's `prometheus` package (prometheus and promtool):
#   apt-get install -y jq curl prometheus
#
# What it does:
#  1. extracts every panel query (`targets[].expr`, found anywhere with jq's `..`) and the
#     series selector of every `label_values(SELECTOR, label)` template variable;
#  2. replaces Grafana's variables: $__rate_interval/$__interval -> 1m, $__range -> 1h, and
#     every template variable ($var or ${var}: $job, $instance, $user, $container) -> .*
#     (the dashboard uses them only in =~ matchers);
#  3. parses them offline with `promtool check rules` (each one as a recording rule);
#  4. backfills a temporary TSDB with one hour of synthetic series of every metric of the
#     contract (shared notes: contract.md), two containers of two users, starts a temporary
#     Prometheus on 127.0.0.1 on it, and runs each expression as an instant query: each must
#     answer status "success" AND return at least one series (which catches misspelt metric or
#     label names and many-to-many matching errors, not only syntax errors);
#  5. stops that Prometheus (by its pid) and removes the temporary directory.
# Exit status 0 when every expression passed; the last line reads "N passed, N failed".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
list_only=0
if [[ ${1:-} == --list ]]; then list_only=1; shift; fi
dashboard=${1:-$here/apptheus.json}

for tool in jq; do
    command -v "$tool" >/dev/null || { echo "queries.sh: $tool is missing (apt-get install -y $tool)" >&2; exit 2; }
done

# Grafana variables -> values Prometheus accepts.
substitute() {
    sed -E \
        -e 's/\$\{?__rate_interval\}?/1m/g' \
        -e 's/\$\{?__interval\}?/1m/g' \
        -e 's/\$\{?__range\}?/1h/g' \
        -e 's/\$\{([A-Za-z_][A-Za-z0-9_]*)(:[a-z]+)?\}/.*/g' \
        -e 's/\$[A-Za-z_][A-Za-z0-9_]*/.*/g'
}

# One expression per line (jq -r would break a multi-line expr; join lines with spaces).
exprs=$(jq -r '[.. | objects | select(has("expr")) | .expr | select(type == "string" and . != "")
                 | gsub("\n"; " ")] | .[]' "$dashboard" | substitute)
# Template variables: label_values(SELECTOR, label) -> SELECTOR.
var_selectors=$(jq -r '.templating.list[]? | select(.type == "query")
                       | (if (.query | type) == "object" then .query.query else .query end)
                       | select(test("^\\s*label_values\\(.+,"))
                       | capture("^\\s*label_values\\((?<sel>.+),\\s*[A-Za-z_][A-Za-z0-9_]*\\s*\\)\\s*$").sel' \
                "$dashboard" | substitute)

# ---- 0. dashboard structure: importable without __inputs, every panel and query on ${datasource}
lint_failed=0
lint=$(jq -r '
    [ (if has("__inputs") then "has __inputs (export it without \"share externally\")" else empty end),
      (if (.schemaVersion // 0) < 36 then "schemaVersion \(.schemaVersion) < 36" else empty end),
      (if ([.templating.list[]? | select(.name == "datasource" and .type == "datasource"
             and .query == "prometheus")] | length) == 1 then empty
       else "no template variable datasource of type datasource/prometheus" end),
      (.. | objects | select(has("targets")) as $p
          | (if $p.datasource.uid != "${datasource}" then "panel \($p.title|tojson): datasource is not ${datasource}" else empty end),
            ($p.targets[] | select(.datasource.uid != "${datasource}")
             | "panel \($p.title|tojson): target \(.refId) datasource is not ${datasource}")),
      (.templating.list[]? | select(.type == "query" and .datasource.uid != "${datasource}")
          | "variable \(.name): datasource is not ${datasource}")
    ] | .[]' "$dashboard")
if [[ -n $lint ]]; then
    printf 'queries.sh: %s\n' "$lint" >&2
    lint_failed=1
fi

if ((list_only)); then
    printf '%s\n' "$exprs" "$var_selectors"
    exit 0
fi

for tool in curl promtool prometheus; do
    command -v "$tool" >/dev/null || { echo "queries.sh: $tool is missing (apt-get install -y curl prometheus)" >&2; exit 2; }
done

tmp=$(mktemp -d)
prom_pid=
cleanup() {
    if [[ -n $prom_pid ]]; then
        kill "$prom_pid" 2>/dev/null || true
        wait "$prom_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

all=$(printf '%s\n%s\n' "$exprs" "$var_selectors" | sed '/^$/d')
count=$(wc -l <<<"$all")
echo "queries.sh: $count expressions from $dashboard"

# ---- 3. offline parse: every expression as a recording rule
{
    echo 'groups:'
    echo '  - name: dashboard'
    echo '    rules:'
    i=0
    while IFS= read -r e; do
        i=$((i + 1))
        echo "      - record: dashboard:expr_$i"
        printf '        expr: %s\n' "$(jq -Rn --arg e "$e" '$e')"
    done <<<"$all"
} >"$tmp/rules.yml"
offline_failed=0
promtool check rules "$tmp/rules.yml" || offline_failed=1

# ---- 4. synthetic data: one hour, every 15 s, ending one minute ago
end=$(( $(date +%s) - 60 ))
start=$(( end - 3600 ))
awk -v start="$start" -v end="$end" '
function series(name, labels, kind, a, b,    t, v) {
    for (t = start; t <= end; t += 15) {
        if (kind == "counter") v = a * (t - start)
        else if (kind == "const") v = a
        else v = a + b * ((t / 15) % 7)
        printf "%s{%s} %.6f %d\n", name, labels, v, t
    }
}
BEGIN {
    d = "job=\"apptheus\",instance=\"localhost:9091\""
    n = split("alice:starter-suid_100:100:1000 bob:starter_200:200:1001", cs, " ")
    # per-container metrics (name kind a b)
    split("apptheus_container_start_time_seconds const 0 0;" \
          "apptheus_container_cpu_usage_seconds_total counter 0.5 0;" \
          "apptheus_container_cpu_user_seconds_total counter 0.4 0;" \
          "apptheus_container_cpu_system_seconds_total counter 0.1 0;" \
          "apptheus_container_memory_usage_bytes gauge 5e8 1e7;" \
          "apptheus_container_memory_working_set_bytes gauge 4e8 1e7;" \
          "apptheus_container_memory_rss_bytes gauge 3e8 1e7;" \
          "apptheus_container_memory_cache_bytes gauge 2e8 1e7;" \
          "apptheus_container_memory_swap_bytes gauge 0 0;" \
          "apptheus_container_memory_max_usage_bytes gauge 6e8 0;" \
          "apptheus_container_spec_memory_limit_bytes const 1e9 0;" \
          "apptheus_container_pids gauge 12 1;" \
          "apptheus_container_spec_pids_limit const 1000 0;" \
          "apptheus_container_blkio_read_bytes_total counter 1e6 0;" \
          "apptheus_container_blkio_write_bytes_total counter 2e6 0;" \
          "apptheus_container_processes gauge 5 1;" \
          "apptheus_container_forks_total counter 2 0;" \
          "apptheus_container_execs_total counter 1 0;" \
          "apptheus_container_exits_total counter 1.9 0;" \
          "apptheus_container_pressure_cpu_waiting_seconds_total counter 0.3 0;" \
          "apptheus_container_pressure_cpu_stalled_seconds_total counter 0.1 0;" \
          "apptheus_container_pressure_memory_waiting_seconds_total counter 0.05 0;" \
          "apptheus_container_pressure_memory_stalled_seconds_total counter 0.02 0;" \
          "apptheus_container_pressure_io_waiting_seconds_total counter 0.04 0;" \
          "apptheus_container_pressure_io_stalled_seconds_total counter 0.01 0;" \
          "apptheus_container_cpu_cfs_periods_total counter 10 0;" \
          "apptheus_container_cpu_cfs_throttled_periods_total counter 2 0;" \
          "apptheus_container_cpu_cfs_throttled_seconds_total counter 0.1 0;" \
          "apptheus_container_oom_kills_total counter 0.001 0;" \
          "apptheus_container_exit_code const 0 0;" \
          "apptheus_container_network_receive_bytes_total counter 1e5 0;" \
          "apptheus_container_network_transmit_bytes_total counter 5e4 0;" \
          "apptheus_container_network_receive_packets_total counter 100 0;" \
          "apptheus_container_network_transmit_packets_total counter 60 0", ms, ";")
    for (m = 1; m in ms; m++) {
        split(ms[m], f, " ")
        for (c = 1; c <= n; c++) {
            split(cs[c], p, ":")
            labels = d ",container=\"" p[2] "\",user=\"" p[1] "\""
            a = (f[1] == "apptheus_container_start_time_seconds") ? start - 600 : f[3]
            series(f[1], labels, f[2], a, f[4])
        }
    }
    # per-container metrics with a label of their own
    for (c = 1; c <= n; c++) {
        split(cs[c], p, ":")
        labels = d ",container=\"" p[2] "\",user=\"" p[1] "\""
        split("high max oom", es, " ")
        for (e = 1; e <= 3; e++)
            series("apptheus_container_memory_events_total", labels ",event=\"" es[e] "\"", "counter", 0.01, 0)
        split("code signal", fs, " ")
        for (e = 1; e <= 2; e++)
            series("apptheus_container_failed_exits_total", labels ",reason=\"" fs[e] "\"", "counter", 0.005, 0)
    }
    for (c = 1; c <= n; c++) {
        split(cs[c], p, ":")
        series("apptheus_container_info", d ",container=\"" p[2] "\",user=\"" p[1] "\",exe=\"" \
               (p[2] ~ /suid/ ? "starter-suid" : "starter") "\",exe_path=\"/usr/libexec/apptainer/bin/" \
               (p[2] ~ /suid/ ? "starter-suid" : "starter") "\",pid=\"" p[3] "\",uid=\"" p[4] \
               "\",cgroup=\"/user.slice/apptheus/" p[2] "\",memory_source=\"cgroup\"", "const", 1, 0)
    }
    # daemon metrics
    series("apptheus_build_info", d ",version=\"0.1.0\",revision=\"abcdef0\"", "const", 1, 0)
    series("apptheus_containers", d, "const", n, 0)
    series("apptheus_gateway_connections_total", d ",outcome=\"accepted\"", "counter", 0.02, 0)
    series("apptheus_gateway_connections_total", d ",outcome=\"rejected\"", "counter", 0.01, 0)
    split("untrusted vanished limit error", rs, " ")
    for (r = 1; r <= 4; r++)
        series("apptheus_gateway_rejections_total", d ",reason=\"" rs[r] "\"", "counter", 0.0025, 0)
    split("0.001 0.005 0.01 0.05 0.1 0.5 1 +Inf", les, " ")
    for (l = 1; l <= 8; l++)
        series("apptheus_sample_duration_seconds_bucket", d ",le=\"" les[l] "\"", "counter", 2 * l / 8, 0)
    series("apptheus_sample_duration_seconds_sum", d, "counter", 0.02, 0)
    series("apptheus_sample_duration_seconds_count", d, "counter", 2, 0)
    series("apptheus_ebpf_events_lost_total", d, "counter", 0.001, 0)
    series("process_resident_memory_bytes", d, "gauge", 3e7, 1e5)
    series("process_cpu_seconds_total", d, "counter", 0.01, 0)
    series("up", d, "const", 1, 0)
    print "# EOF"
}' >"$tmp/data.om"
promtool tsdb create-blocks-from openmetrics --quiet "$tmp/data.om" "$tmp/tsdb" >/dev/null

# ---- start Prometheus on a free loopback port (retry a few random ports)
cat >"$tmp/prometheus.yml" <<'EOF'
global:
  scrape_interval: 15s
scrape_configs: []
EOF
url=
for attempt in 1 2 3 4 5; do
    port=$(( 20000 + RANDOM % 30000 ))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi   # in use
    prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
        --storage.tsdb.retention.time=1d --web.listen-address="127.0.0.1:$port" \
        >"$tmp/prometheus.log" 2>&1 &
    prom_pid=$!
    for _ in $(seq 1 100); do
        if curl -fs "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then url="http://127.0.0.1:$port"; break; fi
        kill -0 "$prom_pid" 2>/dev/null || break
        sleep 0.2
    done
    [[ -n $url ]] && break
    kill "$prom_pid" 2>/dev/null || true
    wait "$prom_pid" 2>/dev/null || true
    prom_pid=
done
if [[ -z $url ]]; then
    echo "queries.sh: could not start prometheus" >&2
    cat "$tmp/prometheus.log" >&2 || true
    exit 2
fi
echo "queries.sh: prometheus pid $prom_pid on $url, evaluating at $end"

# ---- run every expression
passed=0 failed=0
while IFS= read -r e; do
    answer=$(curl -sG "$url/api/v1/query" --data-urlencode "query=$e" --data-urlencode "time=$end")
    status=$(jq -r '.status' <<<"$answer" 2>/dev/null || echo invalid)
    n=$(jq -r 'if .data.resultType == "vector" or .data.resultType == "matrix" then (.data.result | length)
               else 1 end' <<<"$answer" 2>/dev/null || echo 0)
    if [[ $status == success && $n -gt 0 ]]; then
        passed=$((passed + 1))
        printf 'ok    %3s series  %s\n' "$n" "$e"
    else
        failed=$((failed + 1))
        printf 'FAIL  %s\n      %s\n' "$e" "$(jq -c '{status, errorType, error, result: (.data.result | length)}' <<<"$answer" 2>/dev/null || echo "$answer")"
    fi
done <<<"$all"

((lint_failed == 0)) || echo "queries.sh: dashboard structure check failed (see above)"
((offline_failed == 0)) || echo "queries.sh: promtool check rules failed (see above)"
echo "$passed passed, $failed failed"
((failed == 0 && offline_failed == 0 && lint_failed == 0))
