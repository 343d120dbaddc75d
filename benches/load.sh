#!/usr/bin/env bash
# Loopback load harness. Sends the same request mix (benches/load_mix.lua: typical browser
# and API traffic, 5% attacks) with wrk to:
#   upstream   the upstream directly (nginx answering a fixed 200)
#   off        vigil with mode: off (proxying only)
#   block      vigil with mode: block and the shipped rule packs; escalation off, because the
#              mix repeats its attack from one client, which escalation (rightly) answers by
#              blocking everything that client sends next: the column then measured local 403s
#              and came out at twice mode off
#   full       as block, plus the shipped model set (templates, sessions, both forests, the
#              transformer): every detector runs on every request. Learned verdicts are
#              capped at detect and escalation is off, so that every request still reaches
#              the upstream (one wrk client at thousands of requests/s is a flood to the
#              forest, and blocked requests would cost less, flattering the column)
#   modsec     nginx + ModSecurity 3 + OWASP CRS 3.3.4 (PL1, blocking), when the Debian
#              packages libnginx-mod-http-modsecurity and modsecurity-crs are installed
# and prints requests/s and p50/p99 latency side by side. Bounded: DURATION seconds per round per
# target (default 10), loopback only.
#   needs: wrk, nginx (apt-get install wrk nginx-light); builds vigil in release mode.
#   usage: benches/load.sh            DURATION=20 CONNS=64 ROUNDS=5 benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is needed as the upstream: apt-get install nginx-light" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
VIGIL=target/release/vigil

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

nginx_conf() { # name port body
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
daemon off;
worker_processes 1;
error_log $work/$1/error.log;
pid $work/$1/nginx.pid;
$4
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/$1/body;
  proxy_temp_path $work/$1/proxy;
  fastcgi_temp_path $work/$1/fcgi;
  uwsgi_temp_path $work/$1/uwsgi;
  scgi_temp_path $work/$1/scgi;
  server {
    listen 127.0.0.1:$2;
    $3
  }
}
CONF
  "$NGINX" -p "$work/$1" -c "$work/$1/nginx.conf" & pids+=($!)
  wait_port "$2"
}

UP=$(port)
nginx_conf upstream "$UP" 'location / { return 200 "ok\n"; }' ""

vigil() { # name mode [extra yaml] -> sets PORT (no command substitution: a subshell would run the EXIT trap)
  local p; p=$(port)
  local extra=${3:-'models: {dir: "off"}'}
  cat > "$work/$1.yaml" <<CONF
listen: [{address: 127.0.0.1:$p}]
upstream: {servers: [127.0.0.1:$UP]}
server: {threads: 1, pid_file: $work/$1.pid, upgrade_sock: $work/$1.sock}
logging: {access_log: $work/$1.access.log, decision_log: "off"}
rules: {paths: [$PWD/rules]}
policy: {mode: $2}
$extra
CONF
  VIGIL_LOG=warn "$VIGIL" serve --config "$work/$1.yaml" 2>"$work/$1.err" & pids+=($!)
  wait_port "$p"
  PORT=$p
}
vigil off off; OFF=$PORT
vigil block block 'models: {dir: "off"}
escalation: {enabled: false}'; BLOCK=$PORT
vigil full block "$(printf 'models: {dir: %s/models}\nensemble: {max_action: detect}\nescalation: {enabled: false}' "$PWD")"; FULL=$PORT

MODSEC=""
MODULE=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so
MODSEC_BASE=/etc/nginx/modsecurity.conf
if [ -f "$MODULE" ] && [ -f "$MODSEC_BASE" ] && [ -d /usr/share/modsecurity-crs/rules ]; then
  MODSEC=$(port)
  mkdir -p "$work/modsec"
  sed -e 's/^SecRuleEngine .*/SecRuleEngine On/' -e 's#^SecAuditLog .*#SecAuditLog /dev/null#' -e 's/^SecAuditEngine .*/SecAuditEngine Off/' \
      -e "s#^SecUnicodeMapFile .*#SecUnicodeMapFile /etc/nginx/unicode.mapping 20127#" \
      "$MODSEC_BASE" > "$work/modsec/main.conf"
  {
    echo "Include /etc/modsecurity/crs/crs-setup.conf"
    echo "Include /usr/share/modsecurity-crs/rules/*.conf"
  } >> "$work/modsec/main.conf"
  nginx_conf modsec "$MODSEC" "modsecurity on; modsecurity_rules_file $work/modsec/main.conf; location / { proxy_pass http://127.0.0.1:$UP; }" "load_module $MODULE;"
fi

run() { # label port
  local out; out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s benches/load_mix.lua "http://127.0.0.1:$2" 2>&1)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  # Share of requests vigil answered itself (blocked): the mix has 1 attack in 20, so a much
  # larger share means the column no longer measures proxying.
  local blocked="-"
  if [ -f "$work/$1.access.log" ]; then
    blocked=$(awk '{n++} $9==403 {b++} END {if (n) printf "%.1f%%", 100*b/n; else print "-"}' "$work/$1.access.log")
  fi
  printf "%-10s %12s %10s %10s %9s\n" "$1" "$rps" "$p50" "$p99" "$blocked"
  echo "$1 $rps" >> "$work/rps"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); wrk -t$THREADS -c$CONNS -d${DURATION}s, $ROUNDS rounds, mix: benches/load_mix.lua"
printf "%-10s %12s %10s %10s %9s\n" target "requests/s" p50 p99 "403s"
# Rounds interleave the targets, so that the host's drift (a shared machine's speed moves by
# tens of percent within minutes) falls on every column alike; the ratios use the medians.
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  run upstream "$UP"
  run off "$OFF"
  run block "$BLOCK"
  run full "$FULL"
  if [ -n "$MODSEC" ]; then run modsec "$MODSEC"; fi
done
awk '{v[$1] = v[$1] " " $2}
     function median(s,   a, n, i, j, t) {
       n = split(s, a, " ")
       for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
       return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
     }
     END {
       printf "median requests/s:"
       for (k in v) printf " %s %.0f;", k, median(v[k])
       printf "\n"
       off = median(v["off"])
       if (off > 0) printf "block / off throughput: %.1f%%; full / off: %.1f%%\n", 100 * median(v["block"]) / off, 100 * median(v["full"]) / off
     }' "$work/rps"
