#!/bin/bash
# Instructions per request of nginx as a plain keep-alive reverse proxy,
# counted by callgrind: the reference for scripts/callgrind_proxy.sh (same
# upstream, same load), so the two counts compare.
#
# Usage: scripts/callgrind_nginx.sh [SECONDS]
#   SECONDS  counted window (default 10), after a 3 s warm-up
#
# Setup: the static nginx upstream of callgrind_proxy.sh (a 956-byte JSON
# profile); nginx proxying it as load_proxy's `nginx` scenario does
# (upstream keep-alive, HTTP/1.1, `combined` access log buffered 64k /
# 1s), one worker, run with `master_process off` so that valgrind follows
# the process that serves; `wrk -t1 -c4` with an Authorization header of
# the same shape. Prints the proxy's instructions over the window divided
# by the requests wrk counted. Needs nginx, valgrind and wrk. Loopback
# only; stops what it starts.
set -euo pipefail
SECS=${1:-10}
for tool in nginx valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
DIR=$(mktemp -d /tmp/nginx-callgrind.XXXXXX)
# nginx's workers run as another user when started as root.
chmod 755 "$DIR"
UP_PORT=18482
PX_PORT=18483
mkdir -p "$DIR/www/api/customers" "$DIR/up" "$DIR/px"
python3 -c "
import json
print(json.dumps({'id':'1','name':'Ada Lovelace','email':'ada@example.com','phone':'+44 20 7946 0958','notes':'x'*850}))" \
  > "$DIR/www/api/customers/1"
temp_paths() {
  echo "client_body_temp_path $1/cb; proxy_temp_path $1/p; fastcgi_temp_path $1/f; uwsgi_temp_path $1/u; scgi_temp_path $1/s;"
}
cat > "$DIR/up.conf" <<EOC
worker_processes 1;
daemon off;
pid $DIR/up/nginx.pid;
error_log $DIR/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  $(temp_paths "$DIR/up")
  keepalive_timeout 60s; keepalive_requests 1000000;
  default_type application/json;
  server { listen 127.0.0.1:$UP_PORT; root $DIR/www; }
}
EOC
cat > "$DIR/px.conf" <<EOC
worker_processes 1;
daemon off;
master_process off;
pid $DIR/px/nginx.pid;
error_log $DIR/px/error.log warn;
events { worker_connections 4096; }
http {
  access_log $DIR/px/access.log combined buffer=64k flush=1s;
  $(temp_paths "$DIR/px")
  keepalive_timeout 60s; keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PX_PORT;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOC
NG=
VG=
cleanup() {
  [ -n "$VG" ] && kill "$VG" 2>/dev/null && wait "$VG" 2>/dev/null
  [ -n "$NG" ] && kill "$NG" 2>/dev/null && wait "$NG" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
nginx -c "$DIR/up.conf" -p "$DIR/up" -e "$DIR/up/error.log" &
NG=$!
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" \
  nginx -c "$DIR/px.conf" -p "$DIR/px" -e "$DIR/px/error.log" > "$DIR/valgrind.log" 2>&1 &
VG=$!
URL="http://127.0.0.1:$PX_PORT/api/customers/1"
for _ in $(seq 1 200); do
  kill -0 "$VG" 2>/dev/null || { echo "nginx exited:" >&2; tail -3 "$DIR/px/error.log" >&2; exit 1; }
  curl -s -o /dev/null "$URL" && break
  sleep 0.3
done
# A token-shaped header, as the gateway's load carries (nginx ignores it).
AUTH="Authorization: Bearer $(head -c 180 /dev/urandom | base64 -w0 | tr '+/' '-_')"
wrk -t1 -c4 -d3s -H "$AUTH" "$URL" > /dev/null
callgrind_control -z "$VG" > /dev/null
wrk -t1 -c4 -d"${SECS}s" -H "$AUTH" "$URL" > "$DIR/wrk.txt"
callgrind_control -d "$VG" > /dev/null
for _ in $(seq 1 100); do
  [ -s "$DIR/cg.out.1" ] && grep -q '^summary' "$DIR/cg.out.1" && break
  sleep 0.2
done
REQUESTS=$(grep -oP '^\s+\K\d+(?= requests in)' "$DIR/wrk.txt")
NON2XX=$(grep -oP 'Non-2xx or 3xx responses: \K\d+' "$DIR/wrk.txt" || echo 0)
IR=$(grep -h '^summary' "$DIR/cg.out.1" | awk '{print $2}')
if [ "$NON2XX" != 0 ]; then
  echo "error: $NON2XX of $REQUESTS answers were not 2xx" >&2
  exit 1
fi
echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
echo "requests: $REQUESTS (non-2xx: 0)  instructions: $IR  per request: $((IR / REQUESTS))"
