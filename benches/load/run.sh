#!/usr/bin/env bash
# Load benchmark: Outpost vs nginx proxy_cache vs Varnish, one worker each, same origin.
# See benches/load/README.md. Sends traffic to 127.0.0.1 only.
#
# Knobs (environment):
#   DURATION=10s         wrk duration of each measured run
#   CONNECTIONS=64       wrk connections (one wrk thread)
#   WARMUP=2s            wrk warm-up run before each measured run (0 = none)
#   ONLY="outpost nginx varnish"   which proxies to run (in that order)
#   SKIP_BUILD=1         do not run `cargo build --release`
#   OUTPOST_BIN=path     use this binary (implies no build)
#   OUTPOST_ARGS="..."   full argument list for outpost ({config} = the generated TOML);
#                        default: detected from `outpost --help` (`run`/`serve` subcommand or none)
#   MEM_OBJECTS=100000   objects filled for the memory-per-object row
#   DISK_OBJECTS=2000    100 KiB objects of the "hits from disk" row (0 = skip the row)
#   RESTART_OBJECTS=1000000  objects in the disk cache of the restart measurement (0 = skip it)
#   RESTART_NGINX=1      also time an nginx restart on a proxy_cache dir of RESTART_OBJECTS files
#   RESTART_TIMEOUT=900  seconds to wait for Outpost's directory recovery / nginx's cache loader
#   DISK_FILL_BIN=path   examples/disk_fill binary (default: beside OUTPOST_BIN, or
#                        target/release/examples/disk_fill)
#   KEEP_TMP=1           keep the proxy cache directories (wrk outputs and logs are always kept)
#   PROXY_CPU=0 LOAD_CPU=1   CPUs for the proxy and for wrk + origin
# shellcheck disable=SC2059  # the report's printf formats are kept in variables on purpose
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-2s}
ONLY=${ONLY:-"outpost nginx varnish"}
SKIP_BUILD=${SKIP_BUILD:-0}
MEM_OBJECTS=${MEM_OBJECTS:-100000}
DISK_OBJECTS=${DISK_OBJECTS:-2000}
RESTART_OBJECTS=${RESTART_OBJECTS:-1000000}
RESTART_NGINX=${RESTART_NGINX:-1}
RESTART_TIMEOUT=${RESTART_TIMEOUT:-900}
KEEP_TMP=${KEEP_TMP:-0}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEYS=10000

PORT_ORIGIN=18000
PORT_NGINX=18081
PORT_VARNISH=18082
PORT_OUTPOST=18083
PORT_OUTPOST_ADMIN=18093
PORT_OUTPOST_METRICS=18094

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
warn() { printf '[%(%H:%M:%S)T] WARNING: %s\n' -1 "$*" >&2; WARNINGS+=("$*"); }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
WARNINGS=()

for v in CONNECTIONS MEM_OBJECTS DISK_OBJECTS RESTART_OBJECTS RESTART_NGINX RESTART_TIMEOUT PROXY_CPU LOAD_CPU; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, not '${!v}'"
done
for p in $ONLY; do
  case $p in outpost|nginx|varnish) ;; *) die "ONLY: unknown proxy '$p' (outpost nginx varnish)";; esac
done
want() { [[ " $ONLY " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
install_missing() {
  local pkgs=()
  command -v nginx >/dev/null || pkgs+=(nginx-light)
  command -v varnishd >/dev/null || pkgs+=(varnish)
  command -v wrk >/dev/null || pkgs+=(wrk)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v taskset >/dev/null || pkgs+=(util-linux)
  command -v pgrep >/dev/null || pkgs+=(procps)
  if want outpost && [[ -z ${OUTPOST_BIN:-} && $SKIP_BUILD != 1 ]]; then
    command -v cmake >/dev/null || pkgs+=(cmake)
  fi
  ((${#pkgs[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing ${pkgs[*]}: run as root or install them"
  log "installing ${pkgs[*]}"
  # Keep the packages' own services (nginx on :80, varnish on :6081) from starting.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" || { ((made_policy)) && rm -f "$policy"; die "apt-get install failed"; }
  ((made_policy)) && rm -f "$policy"
  return 0
}
install_missing

NGINX=$(command -v nginx)
VARNISHD=$(command -v varnishd)
CLK_TCK=$(getconf CLK_TCK)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $PORT_ORIGIN $PORT_NGINX $PORT_VARNISH $PORT_OUTPOST $PORT_OUTPOST_ADMIN $PORT_OUTPOST_METRICS; do
  port_in_use "$port" && die "port $port on 127.0.0.1 is in use (another benchmark still running?)"
done

# ---------------------------------------------------------------------------------------------
# Build Outpost
# ---------------------------------------------------------------------------------------------
if want outpost; then
  if [[ -z ${OUTPOST_BIN:-} ]]; then
    if [[ $SKIP_BUILD != 1 ]]; then
      log "building outpost (cargo build --release)"
      (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
      if ((RESTART_OBJECTS)) && [[ -z ${DISK_FILL_BIN:-} ]]; then
        log "building examples/disk_fill (cargo build --release --example disk_fill)"
        (cd "$REPO" && cargo build --release --example disk_fill) || die "cargo build --release --example disk_fill failed"
      fi
    fi
    OUTPOST_BIN=$REPO/target/release/outpost
  fi
  [[ -x $OUTPOST_BIN ]] || die "outpost binary not found: $OUTPOST_BIN (unset SKIP_BUILD or set OUTPOST_BIN)"
  if ((RESTART_OBJECTS)) && [[ -z ${DISK_FILL_BIN:-} ]]; then
    for f in "$(dirname "$OUTPOST_BIN")/disk_fill" "$(dirname "$OUTPOST_BIN")/examples/disk_fill" \
      "$REPO/target/release/examples/disk_fill"; do
      [[ -x $f ]] && { DISK_FILL_BIN=$f; break; }
    done
  fi
fi

# ---------------------------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
T=$(mktemp -d /tmp/outpost-load.XXXXXX)
chmod 755 "$T"   # nginx workers (nobody) and the varnish child (vcache) read/write below it
STARTED=()       # pids of every process this script started (roots of process trees)

descendants() { # pid -> the pid and all its descendants
  local p=$1 c
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null || true); do descendants "$c"; done
}

kill_tree() { # pid [timeout_s]
  local root=$1 wait_s=${2:-5} pids i
  pids=$(descendants "$root")
  # shellcheck disable=SC2086  # one pid per word
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    local alive=0 p
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  wait "$root" 2>/dev/null || true
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${STARTED[@]}"; do kill_tree "$p" 3; done
  if [[ $KEEP_TMP != 1 && -n ${T:-} && -d $T ]]; then
    [[ -d $T/restart-outpost/cache || -d $T/restart-nginx/cache ]] &&
      log "removing the cache directories (millions of files after the restart step: minutes)"
    rm -rf "$T/nginx/cache" "$T/outpost/cache" "$T/varnish/work" "$T/origin/www" \
      "$T/outpost-disk/cache" "$T/varnish-disk/work" "$T/varnish-disk/storage.bin" \
      "$T/restart-outpost/cache" "$T/restart-nginx/cache"
  fi
  [[ -n ${T:-} ]] && echo "raw wrk outputs and logs: $T" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Origin: nginx on CPU $LOAD_CPU
# ---------------------------------------------------------------------------------------------
CC_HIT='public, max-age=3600'
nginx_temp_paths() { # dir
  cat <<EOF
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
EOF
}

setup_origin() {
  local d=$T/origin
  mkdir -p "$d/www" "$d/tmp"
  head -c 1024 /dev/urandom >"$d/www/1k"
  head -c 102400 /dev/urandom >"$d/www/100k"
  head -c 1024 /dev/urandom >"$d/www/kbody"
  head -c 1024 /dev/urandom >"$d/www/mbody"
  head -c 1024 /dev/urandom >"$d/www/pass"
  head -c 102400 /dev/urandom >"$d/www/dbody"
  head -c 512 /dev/urandom >"$d/www/rbody"
  # a compressible 100 KiB page: HTML-like lines with varying numbers
  awk 'BEGIN { for (i = 0; ; i++) { line = sprintf("<li class=\"item\"><a href=\"/p/%d\">product %d</a> %d</li>\n", i, i, (i * 7919) % 1000);
                 n += length(line); if (n > 102400) break; printf "%s", line } }' >"$d/www/page.html"
  truncate -s 102400 "$d/www/page.html"
  chmod -R a+rX "$d/www"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
  log_format bench '\$request_uri \$status';
  access_log $d/access.log bench;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  open_file_cache max=16 inactive=1h;
  open_file_cache_valid 1h;
$(nginx_temp_paths "$d")
  server {
    listen 127.0.0.1:$PORT_ORIGIN backlog=4096;
    root $d/www;
    location = /1k   { add_header Cache-Control "$CC_HIT"; }
    location = /100k { add_header Cache-Control "$CC_HIT"; }
    location = /pass { add_header Cache-Control "no-store"; }
    location = /page.html { types { } default_type text/html; add_header Cache-Control "$CC_HIT"; }
    location ~ "^/k/[0-9]{1,4}\$" { add_header Cache-Control "$CC_HIT"; try_files /kbody =404; }
    location ~ "^/m/[0-9]+\$"     { add_header Cache-Control "$CC_HIT"; try_files /mbody =404; }
    location ~ "^/d/[0-9]+\$"     { add_header Cache-Control "$CC_HIT"; try_files /dbody =404; }
    location ~ "^/r/[0-9]+\$"     { add_header Cache-Control "public, max-age=86400"; try_files /rbody =404; }
    location / { return 404; }
  }
}
EOF
  taskset -c "$LOAD_CPU" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off;' \
    >"$d/stdout.log" 2>&1 &
  ORIGIN_PID=$!
  STARTED+=("$ORIGIN_PID")
  wait_port "$PORT_ORIGIN" "$ORIGIN_PID" 10 || { tail -n 20 "$d/error.log" "$d/stdout.log" >&2; die "origin nginx did not start"; }
  local sz
  sz=$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$PORT_ORIGIN/k/1")
  [[ $sz == 1024 ]] || die "origin self-test failed (/k/1 returned $sz bytes)"
  ORIGIN_LOG=$d/access.log
}

origin_count() { if [[ -f $ORIGIN_LOG ]]; then wc -l <"$ORIGIN_LOG"; else echo 0; fi; }

wait_port() { # port pid timeout_s
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    kill -0 "$2" 2>/dev/null || return 1
    port_in_use "$1" && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# wrk lua scripts
# ---------------------------------------------------------------------------------------------
cat >"$T/random_keys.lua" <<'EOF'
-- request a random /prefix/<n>, n in [0, N)
local reqs, n = {}, 0
function init(args)
  n = tonumber(args[1]) or 10000
  local prefix = args[2] or "/k/"
  for i = 0, n - 1 do reqs[i] = wrk.format("GET", prefix .. i) end
  math.randomseed(os.time())
end
function request() return reqs[math.random(0, n - 1)] end
EOF
cat >"$T/walk.lua" <<'EOF'
-- request /prefix/0 .. /prefix/<N-1> in order (then wrap), exit after N + margin responses
local n, prefix, target, i, got = 0, "/m/", 0, 0, 0
function init(args)
  n = tonumber(args[1]); prefix = args[2]; target = n + tonumber(args[3] or "0")
end
function request()
  local p = prefix .. (i % n)
  i = i + 1
  return wrk.format("GET", p)
end
function response(status, headers, body)
  got = got + 1
  if got >= target then
    io.write(string.format("walk: %d responses, last status %d\n", got, status))
    io.flush()
    os.exit(0)
  end
end
EOF

# walk N keys under prefix through the proxy on port; wrk is killed by its own script when done
walk() { # port prefix count timeout_s
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${4}s" -s "$T/walk.lua" \
    "http://127.0.0.1:$1" -- "$3" "$2" "$((2 * CONNECTIONS + $3 / 50))" >"$T/walk.out" 2>&1 || true
  grep -q '^walk:' "$T/walk.out" || warn "walk of $3 keys under $2 on :$1 did not finish in ${4}s: $(tr '\n' ' ' <"$T/walk.out")"
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
cpu_ticks() { # pids... -> utime+stime summed (clock ticks)
  local total=0 p line f
  for p in "$@"; do
    line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    line=${line##*) }
    read -r -a f <<<"$line"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
cpu_split() { # pids... -> "utime stime" summed (clock ticks)
  local user=0 sys=0 p line f
  for p in "$@"; do
    line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    line=${line##*) }
    read -r -a f <<<"$line"
    user=$((user + f[11])) sys=$((sys + f[12]))
  done
  echo "$user $sys"
}
cpu_busy() { # cpu number -> "busy total" ticks of that CPU from /proc/stat
  awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Outpost's Prometheus metrics
METRICS_URL=http://127.0.0.1:$PORT_OUTPOST_METRICS/metrics
scrape() { curl -s --max-time 5 "$METRICS_URL" >"$1" 2>/dev/null || : >"$1"; }
metric() { # file 'name{labels}' -> value (0 when absent)
  awk -v m="$2" '$1 == m {v = $2} END {printf "%.0f\n", v + 0}' "$1" 2>/dev/null || echo 0
}
metric_delta() { # before-file after-file 'name{labels}'
  echo $(($(metric "$2" "$3") - $(metric "$1" "$3")))
}
DISK_HITS='outpost_cache_tier_hits_total{tier="disk"}'
MEM_HITS='outpost_cache_tier_hits_total{tier="memory"}'

# Wait until Outpost's disk tier holds `count` objects (writes land behind the responses).
wait_disk_objects() { # count timeout_s
  local i v=0 mf=$T/metrics.poll
  for ((i = 0; i < $2 * 5; i++)); do
    scrape "$mf"
    v=$(metric "$mf" outpost_cache_disk_objects)
    ((v >= $1)) && return 0
    sleep 0.2
  done
  warn "outpost: disk tier holds $v objects after ${2}s, expected $1 (writes dropped: $(metric "$mf" outpost_cache_disk_writes_dropped_total), write errors: $(metric "$mf" outpost_cache_disk_write_errors_total))"
  return 1
}

to_ms() { # wrk latency "1.23ms" / "512.00us" / "1.02s" / "1.00m" -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.2f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
    else print "?" }'
}

declare -A RPS P99 REQS CPU EFF ORIG FLAG MEM DISK OTHER TIER_D TIER_M USR SYS
FAILED=()
DROPPED=
SCENARIOS=(hit-1k hit-100k hit-10k-keys pass hit-page-br)
((DISK_OBJECTS)) && SCENARIOS+=(disk-hits)
declare -A SC_DESC=(
  [hit-1k]="hits /1k"
  [hit-100k]="hits /100k"
  [hit-10k-keys]="hits 10k keys"
  [pass]="pass no-store"
  [hit-page-br]="hits html br|gz"
  [disk-hits]="hits from disk"
)

# Headers of a GET (body discarded), and a cache-hit test per proxy.
get_headers() { curl -s -D - -o /dev/null --max-time 10 "$1"; }
is_hit() { # proxy headers
  case $1 in
    outpost) grep -i '^cache-status:' <<<"$2" | grep -qiE '(^|[;, ])hit([;, ]|$)' ;;
    nginx) grep -qiE '^x-cache: *HIT' <<<"$2" ;;
    varnish) grep -qiE '^x-varnish: *[0-9]+ +[0-9]+' <<<"$2" ;;
  esac
}

# Warm a URL (GET twice) and check the second response is a cache hit with the right size.
warm_check() { # proxy url expected_size
  local h sz i
  for i in 1 2 3; do
    h=$(get_headers "$2") || true
    sleep 0.05
  done
  sz=$(curl -s -o /dev/null -w '%{size_download}' --max-time 10 "$2" || echo 0)
  [[ $sz == "$3" ]] || { warn "$1: $2 returned $sz bytes, expected $3"; return 1; }
  if ! is_hit "$1" "$h"; then
    warn "$1: $2 is not served from cache after warming; response headers: $(tr -d '\r' <<<"$h" | tr '\n' '|')"
    return 1
  fi
  return 0
}

run_wrk() { # proxy scenario url [lua args...]
  local proxy=$1 sc=$2 url=$3; shift 3
  local out=$T/wrk-$proxy-$sc.txt lua=()
  if (($#)); then lua=(-s "$T/random_keys.lua" "$url" -- "$@"); else lua=("$url"); fi
  [[ -n ${WRK_HEADER:-} ]] && lua=(-H "$WRK_HEADER" "${lua[@]}")
  if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$WARMUP" "${lua[@]}" >"$T/wrk-$proxy-$sc.warmup.txt" 2>&1 || true
  fi
  local pids c0 c1 o0 o1 b0 b1 mb=$T/metrics-$proxy-$sc.before ma=$T/metrics-$proxy-$sc.after
  [[ $proxy == outpost ]] && scrape "$mb"
  mapfile -t pids < <(descendants "$PROXY_PID")
  o0=$(origin_count)
  b0=$(cpu_busy "$PROXY_CPU")
  local s0 s1
  s0=$(cpu_split "${pids[@]}")
  c0=$(cpu_ticks "${pids[@]}")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "${lua[@]}" >"$out" 2>&1 ||
    warn "$proxy $sc: wrk exited non-zero (see $out)"
  c1=$(cpu_ticks "${pids[@]}")
  s1=$(cpu_split "${pids[@]}")
  b1=$(cpu_busy "$PROXY_CPU")
  o1=$(origin_count)
  [[ $proxy == outpost ]] && scrape "$ma"
  # Share of the proxy CPU used by anything but the proxy (other processes, softirq): noise.
  OTHER[$proxy,$sc]=$(awk -v b0="$b0" -v b1="$b1" -v p=$((c1 - c0)) 'BEGIN {
    split(b0, x, " "); split(b1, y, " "); t = y[2] - x[2]
    o = t > 0 ? 100 * (y[1] - x[1] - p) / t : -1; if (t <= 0) print "?"; else printf "%.0f%%", (o < 0 ? 0 : o) }')
  local rps p99 reqs
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  reqs=$(awk '/requests in/ {print $1}' "$out")
  [[ -n $rps && -n $reqs ]] || { warn "$proxy $sc: could not parse wrk output ($out)"; rps=0 reqs=0 p99="?"; }
  RPS[$proxy,$sc]=$(printf '%.0f' "$rps")
  P99[$proxy,$sc]=$(to_ms "$p99")
  REQS[$proxy,$sc]=$reqs
  CPU[$proxy,$sc]=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}')
  EFF[$proxy,$sc]=$(awk -v r="$reqs" -v t=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN {if (t > 0) printf "%.0f", r / (t / hz); else print 0}')
  ORIG[$proxy,$sc]=$((o1 - o0))
  # CPU µs per request, user and kernel (ticks of 1/CLK_TCK s: ±1 tick over the run)
  local us
  us=$(awk -v a="$s0" -v b="$s1" -v r="$reqs" -v hz="$CLK_TCK" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    if (r > 0) printf "%.1f %.1f\n", (y[1] - x[1]) * 1e6 / hz / r, (y[2] - x[2]) * 1e6 / hz / r; else print "- -" }')
  USR[$proxy,$sc]=${us% *} SYS[$proxy,$sc]=${us#* }
  if [[ ${OTHER[$proxy,$sc]%\%} =~ ^[0-9]+$ ]] && ((${OTHER[$proxy,$sc]%\%} > 20)); then
    warn "$proxy $sc: CPU $PROXY_CPU was ${OTHER[$proxy,$sc]} busy with other work during the run: numbers are noisy"
  fi
  if grep -q 'Non-2xx or 3xx' "$out"; then warn "$proxy $sc: $(grep 'Non-2xx or 3xx' "$out" | xargs)"; FLAG[$proxy,$sc]='!'; fi
  if grep -q 'Socket errors' "$out"; then warn "$proxy $sc: $(grep 'Socket errors' "$out" | xargs)"; FLAG[$proxy,$sc]='!'; fi
  if [[ $sc != pass ]] && (( o1 - o0 > 10 + reqs / 1000 )); then
    warn "$proxy $sc: origin received $((o1 - o0)) requests during the hit run ($reqs requests): not served from cache"
    FLAG[$proxy,$sc]='!'
  fi
  log "$proxy $sc: ${RPS[$proxy,$sc]} req/s, p99 ${P99[$proxy,$sc]} ms, cpu ${CPU[$proxy,$sc]} s, ${EFF[$proxy,$sc]} req/cpu-s, ${USR[$proxy,$sc]} us user + ${SYS[$proxy,$sc]} us kernel per request, origin reqs $((o1 - o0)), other load on CPU $PROXY_CPU ${OTHER[$proxy,$sc]}"
  if [[ $proxy == outpost ]]; then
    TIER_D[$sc]=$(metric_delta "$mb" "$ma" "$DISK_HITS")
    TIER_M[$sc]=$(metric_delta "$mb" "$ma" "$MEM_HITS")
    if [[ ! -s $mb || ! -s $ma ]]; then
      warn "outpost $sc: could not scrape $METRICS_URL"; TIER_D[$sc]="?" TIER_M[$sc]="?"
    fi
    log "outpost $sc: tier hits during the run: memory ${TIER_M[$sc]}, disk ${TIER_D[$sc]}, promotions $(metric_delta "$mb" "$ma" outpost_cache_promotions_total)"
  fi
}

bench_proxy() { # proxy port
  local proxy=$1 port=$2 base=http://127.0.0.1:$2 o0 o1 n
  # (a) /1k
  warm_check "$proxy" "$base/1k" 1024 || FLAG[$proxy,hit-1k]='*'
  run_wrk "$proxy" hit-1k "$base/1k"
  # (b) /100k
  warm_check "$proxy" "$base/100k" 102400 || FLAG[$proxy,hit-100k]='*'
  run_wrk "$proxy" hit-100k "$base/100k"
  # (c) 10,000 keys: walk all of them once, then check a sample
  o0=$(origin_count)
  walk "$port" /k/ "$KEYS" 60
  o1=$(origin_count)
  n=$(tail -n "+$((o0 + 1))" "$ORIGIN_LOG" | head -n "$((o1 - o0))" | awk '$1 ~ /^\/k\//' | sort -u | wc -l)
  ((n == KEYS)) || warn "$proxy: warming fetched $n distinct /k/ keys from the origin, expected $KEYS"
  for k in 0 4321 $((KEYS - 1)); do warm_check "$proxy" "$base/k/$k" 1024 || FLAG[$proxy,hit-10k-keys]='*'; done
  # Outpost writes the fill to its disk tier behind the responses: let that finish, or the
  # writer thread's work lands in the measured run's CPU time
  if [[ $proxy == outpost ]]; then
    wait_disk_objects "$KEYS" 60 || true
    scrape "$T/metrics.drops"
    DROPPED="after the $KEYS-key warm-up: $(metric "$T/metrics.drops" outpost_cache_disk_writes_dropped_total)"
  fi
  run_wrk "$proxy" hit-10k-keys "$base" "$KEYS" /k/
  # (d) pass-through
  o0=$(origin_count)
  curl -s -o /dev/null "$base/pass"; curl -s -o /dev/null "$base/pass"
  o1=$(origin_count)
  ((o1 - o0 == 2)) || warn "$proxy: /pass: origin saw $((o1 - o0)) of 2 requests (no-store response cached?)"
  run_wrk "$proxy" pass "$base/pass"
  # (e) a compressible 100 KiB page for clients accepting br and gzip: Outpost stores the br
  # variant once and serves it; nginx (no brotli in Debian's nginx-light) gzips every response
  if [[ $proxy != varnish ]]; then
    local ae="Accept-Encoding: br, gzip" h enc
    for _ in 1 2 3; do h=$(curl -s -D - -o /dev/null --max-time 10 -H "$ae" "$base/page.html") || true; sleep 0.05; done
    enc=$(tr -d '\r' <<<"$h" | awk -F': *' 'tolower($1) == "content-encoding" {print $2}')
    [[ -n $enc ]] || warn "$proxy: /page.html was not compressed for '$ae'"
    is_hit "$proxy" "$h" || FLAG[$proxy,hit-page-br]='*'
    log "$proxy: /page.html served as ${enc:-identity} ($(curl -s -o /dev/null -w '%{size_download}' -H "$ae" "$base/page.html") bytes)"
    WRK_HEADER=$ae run_wrk "$proxy" hit-page-br "$base/page.html"
  fi
  # Memory per object: fill MEM_OBJECTS distinct /m/<n> objects
  sleep 1
  local r0 r1 objs
  r0=$(rss_kb "$MEM_PID")
  o0=$(origin_count)
  local t0=$SECONDS
  walk "$port" /m/ "$MEM_OBJECTS" 120
  o1=$(origin_count)
  sleep 2
  if [[ $proxy == outpost ]]; then
    # the write-behind queue holds objects until the disk has them: transient memory, not
    # what an object costs once stored (up to 30 s more for it to drain)
    local i mf=$T/metrics.queue
    for ((i = 0; i < 150; i++)); do
      scrape "$mf"
      (($(metric "$mf" outpost_cache_disk_write_queue_bytes) == 0)) && break
      sleep 0.2
    done
  fi
  r1=$(rss_kb "$MEM_PID")
  if [[ $proxy == outpost ]]; then
    scrape "$T/metrics.drops"
    DROPPED+=", after the $MEM_OBJECTS-object fill: $(metric "$T/metrics.drops" outpost_cache_disk_writes_dropped_total) (write errors: $(metric "$T/metrics.drops" outpost_cache_disk_write_errors_total))"
  fi
  objs=$(tail -n "+$((o0 + 1))" "$ORIGIN_LOG" | head -n "$((o1 - o0))" | awk '$1 ~ /^\/m\//' | sort -u | wc -l)
  log "$proxy: filled $objs objects in $((SECONDS - t0)) s, RSS $r0 kB -> $r1 kB (pid $MEM_PID)"
  ((objs >= MEM_OBJECTS * 99 / 100)) || warn "$proxy: only $objs of $MEM_OBJECTS /m/ objects reached the origin during the fill"
  warm_check "$proxy" "$base/m/0" 1024 || warn "$proxy: /m/0 not a hit after the fill (evicted?)"
  warm_check "$proxy" "$base/m/$((MEM_OBJECTS - 1))" 1024 || true
  if ((objs > 0)); then
    MEM[$proxy]=$(awk -v a="$r0" -v b="$r1" -v n="$objs" 'BEGIN {printf "%.0f", (b - a) * 1024 / n}')
  else
    MEM[$proxy]='?'
  fi
}

# Hits from the disk tier: DISK_OBJECTS objects of 100 KiB (more than Outpost's memory tier of the
# disk-hits instance holds), each fetched once, then random keys.
bench_disk() { # proxy port
  local proxy=$1 port=$2 base=http://127.0.0.1:$2 o0 o1 n k t0=$SECONDS
  o0=$(origin_count)
  walk "$port" /d/ "$DISK_OBJECTS" 180
  o1=$(origin_count)
  n=$(tail -n "+$((o0 + 1))" "$ORIGIN_LOG" | head -n "$((o1 - o0))" | awk '$1 ~ /^\/d\//' | sort -u | wc -l)
  ((n == DISK_OBJECTS)) || warn "$proxy: warming fetched $n distinct /d/ keys from the origin, expected $DISK_OBJECTS"
  log "$proxy: warmed $n objects of 100 KiB in $((SECONDS - t0)) s"
  if [[ $proxy == outpost ]]; then
    t0=$SECONDS
    wait_disk_objects "$DISK_OBJECTS" 120 || FLAG[$proxy,disk-hits]='*'
    log "outpost: disk writes landed $((SECONDS - t0)) s after the warm-up walk"
  fi
  for k in 0 $((DISK_OBJECTS / 2)) $((DISK_OBJECTS - 1)); do
    warm_check "$proxy" "$base/d/$k" 102400 || FLAG[$proxy,disk-hits]='*'
  done
  run_wrk "$proxy" disk-hits "$base" "$DISK_OBJECTS" /d/
}

# ---------------------------------------------------------------------------------------------
# Proxies
# ---------------------------------------------------------------------------------------------
# NGINX_DIR, NGINX_CACHE_ARGS (proxy_cache_path parameters) and NGINX_LOG_LEVEL override the
# defaults (used by the restart measurement).
start_nginx() {
  local d=${NGINX_DIR:-$T/nginx}
  mkdir -p "$d/cache" "$d/tmp"
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log ${NGINX_LOG_LEVEL:-warn};
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  # as a production proxy_cache runs: cache files' descriptors kept open between hits
  open_file_cache max=200000 inactive=600s;
  open_file_cache_valid 600s;
$(nginx_temp_paths "$d")
  proxy_cache_path $d/cache ${NGINX_CACHE_ARGS:-levels=1:2 keys_zone=bench:64m max_size=4g inactive=1h use_temp_path=off};
  upstream origin {
    server 127.0.0.1:$PORT_ORIGIN;
    keepalive 64;
    keepalive_requests 100000000;
  }
  server {
    listen 127.0.0.1:$PORT_NGINX backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_key \$scheme\$host\$request_uri;
      add_header X-Cache \$upstream_cache_status;
      # the origin is asked for identity; nginx compresses on every response, hits included
      proxy_set_header Accept-Encoding "";
      gzip on;
      gzip_types text/html;
      gzip_comp_level 6;
      gzip_vary on;
    }
  }
}
EOF
  spawn_nginx "$d"
  wait_port "$PORT_NGINX" "$PROXY_PID" 10 || { tail -n 20 "$d/error.log" "$d/stdout.log" >&2; return 1; }
  nginx_worker || { echo "no nginx worker process" >&2; return 1; }
}

spawn_nginx() { # dir (holding nginx.conf) -> PROXY_PID, SPAWN_T0 (start time, EPOCHREALTIME)
  SPAWN_T0=${EPOCHREALTIME/,/.}
  taskset -c "$PROXY_CPU" "$NGINX" -p "$1" -c "$1/nginx.conf" -e "$1/error.log" -g 'daemon off;' \
    >>"$1/stdout.log" 2>&1 &
  PROXY_PID=$!
  STARTED+=("$PROXY_PID")
}

nginx_worker() { # -> MEM_PID = the worker of nginx $PROXY_PID
  local i
  MEM_PID=
  for ((i = 0; i < 50; i++)); do
    MEM_PID=$(pgrep -P "$PROXY_PID" -f 'nginx: worker process' | head -1 || true)
    [[ -n $MEM_PID ]] && return 0
    sleep 0.1
  done
  return 1
}

start_varnish_disk() { VARNISH_DIR=$T/varnish-disk VARNISH_STORAGE="file,$T/varnish-disk/storage.bin,2G" start_varnish; }
start_varnish() {
  local d=${VARNISH_DIR:-$T/varnish}
  mkdir -p "$d/work"
  cat >"$d/default.vcl" <<EOF
vcl 4.1;
backend default {
  .host = "127.0.0.1";
  .port = "$PORT_ORIGIN";
}
EOF
  chmod 644 "$d/default.vcl"
  taskset -c "$PROXY_CPU" "$VARNISHD" -F -n "$d/work" -a "127.0.0.1:$PORT_VARNISH" -f "$d/default.vcl" \
    -s "${VARNISH_STORAGE:-malloc,1G}" -p thread_pools=1 -T none >"$d/varnishd.log" 2>&1 &
  PROXY_PID=$!
  STARTED+=("$PROXY_PID")
  wait_port "$PORT_VARNISH" "$PROXY_PID" 30 || { tail -n 30 "$d/varnishd.log" >&2; return 1; }
  local i p
  MEM_PID=
  for ((i = 0; i < 50; i++)); do
    for p in $(pgrep -P "$PROXY_PID" || true); do
      [[ $(cat "/proc/$p/comm" 2>/dev/null) == cache-main ]] && MEM_PID=$p
    done
    [[ -n $MEM_PID ]] && break
    sleep 0.1
  done
  [[ -n $MEM_PID ]] || { echo "no varnish child (cache-main) process" >&2; return 1; }
}

outpost_cmd() { # config -> argv on stdout, one per line
  local cfg=$1 help
  if [[ -n ${OUTPOST_ARGS:-} ]]; then
    local a
    for a in $OUTPOST_ARGS; do echo "${a//\{config\}/$cfg}"; done
    return
  fi
  help=$("$OUTPOST_BIN" --help 2>&1 || true)
  if grep -qE '^\s+run(\s|$)' <<<"$help"; then printf '%s\n' run --config "$cfg"
  elif grep -qE '^\s+serve(\s|$)' <<<"$help"; then printf '%s\n' serve --config "$cfg"
  else printf '%s\n' --config "$cfg"
  fi
}

outpost_config() { # dir "cache lines" -> TOML on stdout
  cat <<EOF
[node]
name = "outpost"
threads = 1
shutdown_grace = "1s"

# off, as nginx's access_log in this benchmark
[access_log]
enabled = false

[listen]
http = ["127.0.0.1:$PORT_OUTPOST"]

[admin]
listen = "127.0.0.1:$PORT_OUTPOST_ADMIN"
token = "bench-token"

[metrics]
listen = "127.0.0.1:$PORT_OUTPOST_METRICS"

[cache]
dir = "$1/cache"
$2

[[origins]]
name = "origin"
url = "http://127.0.0.1:$PORT_ORIGIN"

[[rules]]
name = "default"
action = "cache"
EOF
}

outpost_check() { # dir (holding outpost.toml)
  if "$OUTPOST_BIN" check --help >/dev/null 2>&1; then
    "$OUTPOST_BIN" check --config "$1/outpost.toml" >"$1/check.log" 2>&1 ||
      { cat "$1/check.log" >&2; echo "outpost check --config rejected the generated config $1/outpost.toml" >&2; return 1; }
  fi
  return 0
}

spawn_outpost() { # dir (holding outpost.toml) log-file -> PROXY_PID, SPAWN_T0 (start time)
  local argv
  mapfile -t argv < <(outpost_cmd "$1/outpost.toml")
  log "outpost: $OUTPOST_BIN ${argv[*]}"
  SPAWN_T0=${EPOCHREALTIME/,/.}
  taskset -c "$PROXY_CPU" "$OUTPOST_BIN" "${argv[@]}" >"$2" 2>&1 &
  PROXY_PID=$!
  STARTED+=("$PROXY_PID")
}

launch_outpost() { # dir (holding outpost.toml) [log name]
  local d=$1 logf=$1/${2:-outpost.log}
  outpost_check "$d" || return 1
  spawn_outpost "$d" "$logf"
  if ! wait_port "$PORT_OUTPOST" "$PROXY_PID" 30; then
    if kill -0 "$PROXY_PID" 2>/dev/null; then echo "outpost is running but not listening on :$PORT_OUTPOST after 30 s" >&2
    else wait "$PROXY_PID" && echo "outpost exited with status 0" >&2 || echo "outpost exited with status $?" >&2; fi
    tail -n 30 "$logf" >&2
    return 1
  fi
  MEM_PID=$PROXY_PID
}

start_outpost() {
  local d=$T/outpost
  mkdir -p "$d/cache"
  outpost_config "$d" 'memory_size = "2GiB"
max_object_size = "1MiB"' >"$d/outpost.toml"
  launch_outpost "$d"
}

# The disk-hits instance: a memory tier far smaller than the DISK_OBJECTS x 100 KiB working set.
start_outpost_disk() {
  local d=$T/outpost-disk
  mkdir -p "$d/cache"
  outpost_config "$d" 'tiers = "memory+disk"
memory_size = "8MiB"
max_object_size = "1MiB"
disk_size = "2GiB"' >"$d/outpost.toml"
  launch_outpost "$d"
}

# Start a proxy with start_<name>; on failure warn and return 1. Sets PROXY_PID and MEM_PID.
start_or_fail() { # label start-function [args...]
  PROXY_PID=
  if ! "${@:2}" 2> >(tee "$T/$1.start.err" >&2); then
    sleep 0.2
    warn "$1 failed to start: $(grep -v '^\[[0-9:]*\] ' "$T/$1.start.err" | tail -n 8 | tr '\n' ' ')"
    [[ -n ${PROXY_PID:-} ]] && kill_tree "$PROXY_PID"
    PROXY_PID=
    return 1
  fi
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    warn "$1 died"; PROXY_PID=; return 1
  fi
  return 0
}

# How busy is the machine before we start? (Other work on the CPUs makes every number noisy.)
b0=$(cpu_busy "$PROXY_CPU"); l0=$(cpu_busy "$LOAD_CPU"); sleep 1; b1=$(cpu_busy "$PROXY_CPU"); l1=$(cpu_busy "$LOAD_CPU")
for pair in "$PROXY_CPU:$b0:$b1" "$LOAD_CPU:$l0:$l1"; do
  IFS=: read -r c x y <<<"$pair"
  busy=$(awk -v x="$x" -v y="$y" 'BEGIN {split(x, a, " "); split(y, b, " "); t = b[2] - a[2]; printf "%.0f", (t > 0 ? 100 * (b[1] - a[1]) / t : 0)}')
  ((busy < 10)) || warn "CPU $c was ${busy}% busy before the benchmark started (other processes): expect noisy numbers"
done

for proxy in $ONLY; do
  [[ -n ${ORIGIN_PID:-} ]] || setup_origin
  case $proxy in
    nginx) port=$PORT_NGINX ;;
    varnish) port=$PORT_VARNISH ;;
    outpost) port=$PORT_OUTPOST ;;
  esac
  log "=== $proxy (CPU $PROXY_CPU), wrk + origin on CPU $LOAD_CPU, $CONNECTIONS connections, $DURATION per run"
  if start_or_fail "$proxy" "start_$proxy"; then
    bench_proxy "$proxy" "$port"
    if ! kill -0 "$PROXY_PID" 2>/dev/null; then warn "$proxy exited during the benchmark"; FAILED+=("$proxy"); fi
    if [[ $proxy == nginx ]]; then
      local_du=$(du -sk "$T/nginx/cache" | awk '{print $1}')
      DISK[nginx]=$(awk -v k="$local_du" -v n="$((KEYS + MEM_OBJECTS + 2))" 'BEGIN {printf "%.0f", k * 1024 / n}')
      # nginx's bodies are on disk already: the disk-hits row runs on the same instance
      if ((DISK_OBJECTS)) && kill -0 "$PROXY_PID" 2>/dev/null; then bench_disk nginx "$port"; fi
    fi
    kill_tree "$PROXY_PID" 10
    PROXY_PID=
  else
    FAILED+=("$proxy")
  fi
  # Outpost and Varnish run the disk-hits row on an instance of their own (small memory tier /
  # file storage).
  if ((DISK_OBJECTS)) && [[ $proxy != nginx ]]; then
    log "=== $proxy, hits from disk: $DISK_OBJECTS objects of 100 KiB"
    if start_or_fail "$proxy-disk" "start_${proxy}_disk"; then
      bench_disk "$proxy" "$port"
      if ! kill -0 "$PROXY_PID" 2>/dev/null; then warn "$proxy (disk-hits instance) exited during the benchmark"; FAILED+=("$proxy-disk"); fi
      kill_tree "$PROXY_PID" 10
      PROXY_PID=
    else
      FAILED+=("$proxy-disk")
      RPS[$proxy,disk-hits]=FAIL
    fi
  fi
done

# ---------------------------------------------------------------------------------------------
# Restart to first hit on a large disk cache
# ---------------------------------------------------------------------------------------------
declare -A R
PAGE_CACHE=
drop_page_cache() {
  sync
  if (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    PAGE_CACHE="cold page cache (dropped before each restart)"
    return 0
  fi
  PAGE_CACHE="warm page cache (could not drop it: not root or in a container)"
  return 1
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; } # from to (EPOCHREALTIME)
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# Poll until port accepts connections; T_LISTEN = when it did.
wait_listen_timed() { # port pid timeout_s
  local deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    kill -0 "$2" 2>/dev/null || return 1
    if port_in_use "$1"; then T_LISTEN=${EPOCHREALTIME/,/.}; return 0; fi
    sleep 0.002
  done
  return 1
}

# One GET (the first request after the restart): FH = its response headers, T_HIT = when it ended.
first_request() { # url
  FH=$(curl -s -D - -o /dev/null --max-time 60 -w 'body-bytes: %{size_download}\n' "$1" | tr -d '\r' || true)
  T_HIT=${EPOCHREALTIME/,/.}
}
header() { grep -i "^$1:" <<<"$2" | head -1 | cut -d: -f2- | sed 's/^ *//' || true; }

# Outpost: disk_fill writes RESTART_OBJECTS objects stored under the cache keys of
# http://127.0.0.1/r/<n> (512 B, fresh for a day) straight into the disk tier's segments and
# exits as a crash would (no final checkpoint: the node replays the log written since the last
# periodic one); the node restarted on it must answer /r/<n> as hits without asking the origin.
# It is then stopped gracefully (a checkpoint) and restarted once more.
restart_outpost() {
  local d=$T/restart-outpost n=$RESTART_OBJECTS t
  mkdir -p "$d/cache"
  outpost_config "$d" 'tiers = "memory+disk"
memory_size = "256MiB"
max_object_size = "1MiB"
disk_size = "64GiB"' >"$d/outpost.toml"
  log "=== restart: outpost on a disk cache of $n objects"
  log "restart/outpost: $DISK_FILL_BIN $d/cache $n 512 127.0.0.1 /r/ 68719476736 crash"
  t=$SECONDS
  if ! "$DISK_FILL_BIN" "$d/cache" "$n" 512 127.0.0.1 /r/ 68719476736 crash >"$d/disk_fill.log" 2>&1; then
    warn "restart/outpost: disk_fill failed: $(tail -n 3 "$d/disk_fill.log" | tr '\n' ' ')"
    return 1
  fi
  R[outpost,fill]="disk_fill wrote $n objects in $((SECONDS - t)) s: $(grep -a '^wrote' "$d/disk_fill.log" | tail -n 1)"
  log "restart/outpost: ${R[outpost,fill]}"
  outpost_check "$d" || { warn "restart/outpost: config rejected"; return 1; }
  drop_page_cache || true
  restart_outpost_once outpost-crash "$d" "$d/restart-crash.log" || return 1
  kill_tree "$PROXY_PID" 120
  PROXY_PID=
  grep -qa 'shutdown complete' "$d/restart-crash.log" ||
    warn "restart/outpost: the graceful stop did not complete: $(tail -n 3 "$d/restart-crash.log" | strip_ansi | tr '\n' ' ')"
  drop_page_cache || true
  restart_outpost_once outpost "$d" "$d/restart.log" || return 1
  kill_tree "$PROXY_PID" 120
  PROXY_PID=
}

# One restart of the node on $2, logging to $3; results under R[$1,...].
restart_outpost_once() {
  local key=$1 d=$2 logf=$3 n=$RESTART_OBJECTS base=http://127.0.0.1:$PORT_OUTPOST o0 o1 t line h k
  k=$((RESTART_OBJECTS / 2))
  o0=$(origin_count)
  spawn_outpost "$d" "$logf"
  if ! wait_listen_timed "$PORT_OUTPOST" "$PROXY_PID" 120; then
    warn "restart/$key: not listening within 120 s: $(tail -n 5 "$logf" | strip_ansi | tr '\n' ' ')"
    kill_tree "$PROXY_PID" 10; PROXY_PID=
    return 1
  fi
  R[$key,listen]=$(secs "$SPAWN_T0" "$T_LISTEN")
  first_request "$base/r/$k"
  R[$key,hit]=$(secs "$SPAWN_T0" "$T_HIT")
  R[$key,resp]="Cache-Status: $(header cache-status "$FH"); Age: $(header age "$FH")"
  if ! is_hit outpost "$FH" || [[ $(header body-bytes "$FH") != 512 ]]; then
    warn "restart/$key: the first request after the restart (/r/$k) was not a 512-byte hit: $(tr '\n' '|' <<<"$FH")"
    R[$key,hit]+=" (no hit)"
  fi
  log "restart/$key: listening after ${R[$key,listen]} s, first response after ${R[$key,hit]} s (${R[$key,resp]})"
  line=
  t=$SECONDS
  while ((SECONDS - t < RESTART_TIMEOUT)) && kill -0 "$PROXY_PID" 2>/dev/null; do
    line=$(grep -a 'disk tier directory recovered' "$logf" | tail -n 1 | strip_ansi || true)
    [[ -n $line ]] && break
    sleep 0.05
  done
  if [[ -n $line ]]; then
    R[$key,scan]="$(secs "$SPAWN_T0" "${EPOCHREALTIME/,/.}") s (elapsed_ms=$(grep -oE 'elapsed_ms[=:" ]+[0-9]+' <<<"$line" | grep -oE '[0-9]+$'), replayed=$(grep -oE 'replayed[=:" ]+[0-9]+' <<<"$line" | grep -oE '[0-9]+$'))"
    R[$key,objects]=$(grep -oE '(^|[^a-z_])objects[=:" ]+[0-9]+' <<<"$line" | grep -oE '[0-9]+$' || echo "?")
    log "restart/$key: $line"
  else
    R[$key,scan]="not done after ${RESTART_TIMEOUT} s"
    warn "restart/$key: no 'disk tier directory recovered' line within ${RESTART_TIMEOUT} s"
  fi
  sleep 1
  R[$key,rss]="$(($(rss_kb "$PROXY_PID") / 1024)) MiB"
  # after the recovery the filled objects must still be hits
  h=$(get_headers "$base/r/$((k + 1))" || true)
  is_hit outpost "$h" || warn "restart/$key: /r/$((k + 1)) is not a hit after the recovery: $(tr -d '\r' <<<"$h" | tr '\n' '|')"
  o1=$(origin_count)
  R[$key,orig]=$((o1 - o0))
  ((o1 == o0)) || warn "restart/$key: the origin received $((o1 - o0)) requests after the restart (expected 0)"
  if grep -qaiE ' (WARN|ERROR) ' <(strip_ansi <"$logf"); then
    warn "restart/$key: the node logged warnings/errors: $(strip_ansi <"$logf" | grep -aiE ' (WARN|ERROR) ' | head -n 3 | tr '\n' ' ')"
  fi
}

# nginx: fill its proxy_cache with RESTART_OBJECTS objects /r/<n> through HTTP, restart it and
# time the first hit on one of them. Its cache loader (default parameters) starts 60 s after
# nginx and indexes the directory in the background; until it is done, nginx looks a missing
# key up on disk ("cold" cache), so hits are served at once.
restart_nginx() {
  local d=$T/restart-nginx n=$RESTART_OBJECTS base=http://127.0.0.1:$PORT_NGINX o0 o1 t line h k
  log "=== restart: nginx on a proxy_cache of $n objects"
  NGINX_DIR=$d NGINX_LOG_LEVEL=notice \
    NGINX_CACHE_ARGS="levels=1:2 keys_zone=bench:$((n / 8000 + 16))m max_size=64g inactive=30d use_temp_path=off" \
    start_or_fail nginx-restart start_nginx || return 1
  t=$SECONDS
  o0=$(origin_count)
  walk "$PORT_NGINX" /r/ "$n" $((120 + n / 500))
  o1=$(origin_count)
  kill_tree "$PROXY_PID" 10
  PROXY_PID=
  R[nginx,objects]=$(find "$d/cache" -type f | wc -l)
  R[nginx,fill]="filled through HTTP in $((SECONDS - t)) s: the origin served $((o1 - o0)) requests, the cache dir holds ${R[nginx,objects]} files"
  log "restart/nginx: ${R[nginx,fill]}"
  ((R[nginx,objects] >= n)) || warn "restart/nginx: the cache dir holds ${R[nginx,objects]} files, expected $n"
  mv "$d/error.log" "$d/error-fill.log" 2>/dev/null || true
  drop_page_cache || true
  o0=$(origin_count)
  spawn_nginx "$d"
  if ! wait_listen_timed "$PORT_NGINX" "$PROXY_PID" 60; then
    warn "restart/nginx: not listening within 60 s: $(tail -n 5 "$d/error.log" | tr '\n' ' ')"
    kill_tree "$PROXY_PID" 10; PROXY_PID=
    return 1
  fi
  R[nginx,listen]=$(secs "$SPAWN_T0" "$T_LISTEN")
  k=$((n / 2))
  first_request "$base/r/$k"
  R[nginx,hit]=$(secs "$SPAWN_T0" "$T_HIT")
  R[nginx,resp]="X-Cache: $(header x-cache "$FH")"
  if ! is_hit nginx "$FH" || [[ $(header body-bytes "$FH") != 512 ]]; then
    warn "restart/nginx: the first request after the restart (/r/$k) was not a 512-byte hit: $(tr '\n' '|' <<<"$FH")"
    R[nginx,hit]+=" (no hit)"
  fi
  log "restart/nginx: listening after ${R[nginx,listen]} s, first response after ${R[nginx,hit]} s (${R[nginx,resp]})"
  line=
  t=$SECONDS
  while ((SECONDS - t < RESTART_TIMEOUT)) && kill -0 "$PROXY_PID" 2>/dev/null; do
    line=$(grep -a 'http file cache: ' "$d/error.log" | tail -n 1 || true)
    [[ -n $line ]] && break
    sleep 0.2
  done
  if [[ -n $line ]]; then
    R[nginx,scan]="$(secs "$SPAWN_T0" "${EPOCHREALTIME/,/.}") s (cache loader)"
    log "restart/nginx: $line"
  else
    R[nginx,scan]="loader not done after ${RESTART_TIMEOUT} s"
    warn "restart/nginx: the cache loader did not finish within ${RESTART_TIMEOUT} s"
  fi
  nginx_worker || true
  R[nginx,rss]="$(($(rss_kb "${MEM_PID:-0}") / 1024)) MiB (worker) + zone"
  h=$(get_headers "$base/r/$((k + 1))" || true)
  is_hit nginx "$h" || warn "restart/nginx: /r/$((k + 1)) is not a hit after the cache loader: $(tr -d '\r' <<<"$h" | tr '\n' '|')"
  o1=$(origin_count)
  R[nginx,orig]=$((o1 - o0))
  ((o1 == o0)) || warn "restart/nginx: the origin received $((o1 - o0)) requests after the restart (expected 0)"
  kill_tree "$PROXY_PID" 10
  PROXY_PID=
}

if ((RESTART_OBJECTS)); then
  [[ -n ${ORIGIN_PID:-} ]] || setup_origin
  if want outpost; then
    if [[ -z ${DISK_FILL_BIN:-} || ! -x $DISK_FILL_BIN ]]; then
      warn "restart: disk_fill binary not found (${DISK_FILL_BIN:-set DISK_FILL_BIN}): Outpost restart skipped"
    else
      restart_outpost || R[outpost,failed]=1
    fi
  fi
  if want nginx && ((RESTART_NGINX)); then restart_nginx || R[nginx,failed]=1; fi
fi

for proxy in "${FAILED[@]}"; do
  [[ $proxy == *-disk ]] && continue
  for sc in "${SCENARIOS[@]}"; do [[ -n ${RPS[$proxy,$sc]:-} ]] || RPS[$proxy,$sc]=FAIL; done
  [[ -n ${MEM[$proxy]:-} ]] || MEM[$proxy]=FAIL
done

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
val() { local v=${1:-}; [[ -n $v ]] && echo "$v" || echo "-"; }
ratio() { # outpost value, peer values... ; higher is better
  local o=$1; shift
  awk -v o="$o" -v peers="$*" 'BEGIN {
    n = split(peers, p, " "); best = 0
    for (i = 1; i <= n; i++) if (p[i] ~ /^[0-9.]+$/ && p[i] + 0 > best) best = p[i] + 0
    if (o !~ /^[0-9.]+$/ || best == 0) print "-"; else printf "%.2f", o / best }'
}
ratio_low() { # lower is better (memory): outpost / smallest peer
  local o=$1; shift
  awk -v o="$o" -v peers="$*" 'BEGIN {
    n = split(peers, p, " "); best = -1
    for (i = 1; i <= n; i++) if (p[i] ~ /^-?[0-9.]+$/ && p[i] + 0 > 0 && (best < 0 || p[i] + 0 < best)) best = p[i] + 0
    if (o !~ /^-?[0-9.]+$/ || best <= 0) print "-"; else printf "%.2f", o / best }'
}

fmt='%-16s | %13s | %11s | %13s | %11s | %9s | %11s | %15s | %17s\n'
{
  echo
  echo "Outpost load benchmark: 1 proxy worker on CPU $PROXY_CPU; wrk -t1 -c$CONNECTIONS -d$DURATION and origin on CPU $LOAD_CPU"
  echo "(req/s and p99 latency from wrk; ratio = outpost / best of nginx, varnish; cpu = req per proxy CPU-second)"
  echo
  printf "$fmt" scenario "outpost req/s" "nginx req/s" "varnish req/s" "outpost p99" "nginx p99" "varnish p99" "ratio req/s" "ratio req/cpu-s"
  printf '%s\n' "$(printf "$fmt" | sed 's/[^|]/-/g')"
  for sc in "${SCENARIOS[@]}"; do
    printf "$fmt" "${SC_DESC[$sc]}" \
      "$(val "${RPS[outpost,$sc]:-}")${FLAG[outpost,$sc]:-}" "$(val "${RPS[nginx,$sc]:-}")${FLAG[nginx,$sc]:-}" "$(val "${RPS[varnish,$sc]:-}")${FLAG[varnish,$sc]:-}" \
      "$(val "${P99[outpost,$sc]:+${P99[outpost,$sc]}ms}")" "$(val "${P99[nginx,$sc]:+${P99[nginx,$sc]}ms}")" "$(val "${P99[varnish,$sc]:+${P99[varnish,$sc]}ms}")" \
      "$(ratio "${RPS[outpost,$sc]:-}" "${RPS[nginx,$sc]:-}" "${RPS[varnish,$sc]:-}")" \
      "$(ratio "${EFF[outpost,$sc]:-}" "${EFF[nginx,$sc]:-}" "${EFF[varnish,$sc]:-}")"
  done
  printf "$fmt" "bytes/object" "$(val "${MEM[outpost]:-}")" "$(val "${MEM[nginx]:-}")" "$(val "${MEM[varnish]:-}")" "" "" "" \
    "$(ratio_low "${MEM[outpost]:-}" "${MEM[varnish]:-}")" ""
  echo
  echo "bytes/object: RSS growth of the proxy worker (outpost process, nginx worker, varnish cache-main)"
  [[ -n ${DROPPED:-} ]] && echo "Outpost disk writes dropped (the disk tier could not keep up): $DROPPED"
  echo "  while filling $MEM_OBJECTS distinct 1 KiB objects, divided by the objects fetched; ratio = outpost / varnish (lower is better;"
  echo "  varnish is the peer that also keeps bodies in memory)."
  [[ -n ${DISK[nginx]:-} ]] && echo "  nginx keeps bodies on disk (page cache, not RSS): its cache dir held ${DISK[nginx]} bytes/object; its RSS is the keys_zone."
  if ((DISK_OBJECTS)); then
    echo
    echo "hits from disk: random GET /d/<n> over $DISK_OBJECTS objects of 100 KiB ($((DISK_OBJECTS * 100 / 1024)) MiB), each fetched once before."
    echo "  outpost: own instance, tiers = \"memory+disk\", memory_size = \"8MiB\" (max_object_size 1MiB), disk_size = \"2GiB\";"
    echo "  nginx: the same instance as above (proxy_cache files on disk, read through the page cache);"
    echo "  varnish: own instance with -s file,<dir>/storage.bin,2G (an mmap'd file: also the page cache)."
    if [[ ${TIER_D[disk-hits]:-} =~ ^[0-9]+$ && ${TIER_M[disk-hits]:-} =~ ^[0-9]+$ ]]; then
      echo "  outpost tier hits during the measured run (outpost_cache_tier_hits_total): disk ${TIER_D[disk-hits]}, memory ${TIER_M[disk-hits]}:" \
        "$(awk -v d="${TIER_D[disk-hits]}" -v m="${TIER_M[disk-hits]}" 'BEGIN {printf "%.1f%%", (d + m > 0 ? 100 * d / (d + m) : 0)}') of hits from the disk tier" \
        "(requests ${REQS[outpost,disk-hits]:-?})"
    fi
  fi
  echo
  fmt2='%-16s | %17s | %17s | %17s | %12s | %12s | %12s | %16s\n'
  printf "$fmt2" scenario "outpost req/cpu-s" "nginx req/cpu-s" "varnish req/cpu-s" "outpost orig" "nginx orig" "varnish orig" "other load o/n/v"
  printf '%s\n' "$(printf "$fmt2" | sed 's/[^|]/-/g')"
  for sc in "${SCENARIOS[@]}"; do
    printf "$fmt2" "${SC_DESC[$sc]}" \
      "$(val "${EFF[outpost,$sc]:-}")${CPU[outpost,$sc]:+ (${CPU[outpost,$sc]}s)}" \
      "$(val "${EFF[nginx,$sc]:-}")${CPU[nginx,$sc]:+ (${CPU[nginx,$sc]}s)}" \
      "$(val "${EFF[varnish,$sc]:-}")${CPU[varnish,$sc]:+ (${CPU[varnish,$sc]}s)}" \
      "$(val "${ORIG[outpost,$sc]:-}")" "$(val "${ORIG[nginx,$sc]:-}")" "$(val "${ORIG[varnish,$sc]:-}")" \
      "$(val "${OTHER[outpost,$sc]:-}")/$(val "${OTHER[nginx,$sc]:-}")/$(val "${OTHER[varnish,$sc]:-}")"
  done
  echo "(req/cpu-s = requests / CPU seconds (utime+stime) of the proxy's process tree during the run, in parentheses;"
  echo " orig = requests the origin received during the measured run: ~0 for hit scenarios;"
  echo " other load = share of CPU $PROXY_CPU busy with anything but the proxy during the run (softirq, other processes): noise)"
  echo "flags: * = cache hit not confirmed before the run, ! = errors or origin traffic during the run (see warnings)"
  echo
  fmt4='%-16s | %21s | %21s | %21s | %11s | %-24s\n'
  printf "$fmt4" scenario "outpost us user+kern" "nginx us user+kern" "varnish us user+kern" "o/n cpu" "outpost p99 vs nginx"
  printf '%s\n' "$(printf "$fmt4" | sed 's/[^|]/-/g')"
  per_request() { # proxy scenario -> "user + kernel" µs per request
    if [[ -n ${USR[$1,$2]:-} ]]; then echo "${USR[$1,$2]} + ${SYS[$1,$2]}"; else echo "-"; fi
  }
  for sc in "${SCENARIOS[@]}"; do
    printf "$fmt4" "${SC_DESC[$sc]}" "$(per_request outpost "$sc")" "$(per_request nginx "$sc")" "$(per_request varnish "$sc")" \
      "$(ratio "${EFF[outpost,$sc]:-}" "${EFF[nginx,$sc]:-}" "")" \
      "$(awk -v o="${P99[outpost,$sc]:-}" -v n="${P99[nginx,$sc]:-}" 'BEGIN {
         if (o !~ /^[0-9.]+$/ || n !~ /^[0-9.]+$/) print "-"; else printf "%s (%s vs %s ms)", (o <= n ? "at or below" : "above"), o, n }')"
  done
  echo "(us user+kern = CPU microseconds per request of the proxy's process tree, user + kernel, from /proc/<pid>/stat"
  echo " over the measured run (1/$CLK_TCK s ticks); o/n cpu = outpost / nginx req per CPU-second. Machines differ in how fast"
  echo " user-space code runs relative to the kernel: compare these per-request costs, which travel between machines, with the ratios.)"
  if ((RESTART_OBJECTS)) && { [[ -n ${R[outpost,listen]:-}${R[outpost,failed]:-} ]] || [[ -n ${R[nginx,listen]:-}${R[nginx,failed]:-} ]]; }; then
    echo
    echo "restart to first hit on a large disk cache: $RESTART_OBJECTS objects of 512 B, ${PAGE_CACHE:-page cache state unknown}; times from process start"
    fmt3='%-13s | %15s | %9s | %9s | %-48s | %30s | %27s | %11s\n'
    printf "$fmt3" proxy "objects on disk" listening "first hit" "first response" "directory recovered / cache loader done" "RSS after recovery" "origin reqs"
    printf '%s\n' "$(printf "$fmt3" | sed 's/[^|]/-/g')"
    for p in outpost-crash outpost nginx; do
      [[ -n ${R[$p,listen]:-}${R[$p,failed]:-} ]] || continue
      if [[ -n ${R[$p,failed]:-} && -z ${R[$p,listen]:-} ]]; then printf "$fmt3" "$p" FAIL "" "" "" "" "" ""; continue; fi
      printf "$fmt3" "$p" "$(val "${R[$p,objects]:-}")" "${R[$p,listen]} s" "${R[$p,hit]} s" "$(val "${R[$p,resp]:-}")" \
        "$(val "${R[$p,scan]:-}")" "$(val "${R[$p,rss]:-}")" "$(val "${R[$p,orig]:-}")"
    done
    [[ -n ${R[outpost,fill]:-} ]] && echo "outpost: ${R[outpost,fill]}"
    [[ -n ${R[outpost,listen]:-} ]] && echo "  first hit = GET /r/$((RESTART_OBJECTS / 2)), an object disk_fill wrote under that URL's cache key; recovery time from the node's" &&
      echo "  'disk tier directory recovered' log line (elapsed_ms: checkpoint loaded and log replayed) and, first, when the script saw it;" &&
      echo "  outpost-crash: disk_fill exited without its final checkpoint (as a SIGKILL would), outpost: after that node's graceful stop"
    [[ -n ${R[nginx,fill]:-} ]] && echo "nginx: ${R[nginx,fill]}" &&
      echo "  first hit = GET /r/$((RESTART_OBJECTS / 2)); cache loader with default parameters (starts 60 s after nginx, 100 files per 50 ms);" &&
      echo "  until it is done nginx looks keys it does not know up on disk; its keys live in a shared-memory zone" &&
      echo "  (keys_zone=$((RESTART_OBJECTS / 8000 + 16))m, about 8,000 keys per MiB) that the worker's RSS does not show"
  fi
  if ((${#WARNINGS[@]})); then
    echo
    echo "warnings:"
    printf '  - %s\n' "${WARNINGS[@]}"
  fi
  echo
  echo "raw wrk outputs: $T/wrk-<proxy>-<scenario>.txt (logs and configs beside them)"
} | tee "$T/report.txt"

((${#FAILED[@]} == 0)) || { echo "FAILED: ${FAILED[*]}" >&2; exit 2; }
