#!/bin/bash
# Instructions per authorized request, counted by callgrind: deterministic
# where wall-clock rates on a shared machine drift by ±15 %.
#
# Usage: scripts/callgrind_proxy.sh [BINARY] [SECONDS]
#   BINARY   the gateway to measure (default target/release/rolegate;
#            build it first, e.g. `cargo build --release`)
#   SECONDS  counted window (default 10), after a 3 s warm-up
#
# Setup: a static nginx upstream serving a 956-byte JSON profile; the
# gateway with one worker, an HS256 issuer and one route that requires a
# capability (the verified-token cache hit, the session check, identity
# headers, the access log); `wrk -t1 -c4` with one token. Prints the
# program's instructions over the window divided by the requests wrk
# counted. Needs nginx, valgrind and wrk. Loopback only; stops what it
# starts. Under valgrind, aws-lc's SHA-256 runs its AVX code, not the SHA
# extensions the CPU may have: the two digests per request (token cache
# key, session key) count for more here than on the real CPU.
set -euo pipefail
BIN=$(realpath "${1:-target/release/rolegate}")
SECS=${2:-10}
for tool in nginx valgrind callgrind_control wrk; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
DIR=$(mktemp -d /tmp/rolegate-callgrind.XXXXXX)
# nginx's worker runs as another user when started as root.
chmod 755 "$DIR"
UP_PORT=18480
GW_PORT=18481
mkdir -p "$DIR/www/api/customers" "$DIR/up"
python3 -c "
import json
print(json.dumps({'id':'1','name':'Ada Lovelace','email':'ada@example.com','phone':'+44 20 7946 0958','notes':'x'*850}))" \
  > "$DIR/www/api/customers/1"
head -c 32 /dev/urandom | base64 > "$DIR/hmac.secret"
cat > "$DIR/up.conf" <<EOF
worker_processes 1;
daemon off;
pid $DIR/up/nginx.pid;
error_log $DIR/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR/up/cb; proxy_temp_path $DIR/up/p;
  fastcgi_temp_path $DIR/up/f; uwsgi_temp_path $DIR/up/u; scgi_temp_path $DIR/up/s;
  keepalive_timeout 60s; keepalive_requests 1000000;
  default_type application/json;
  server { listen 127.0.0.1:$UP_PORT; root $DIR/www; }
}
EOF
cat > "$DIR/rg.yaml" <<EOF
listen: { addr: "127.0.0.1:$GW_PORT" }
identity:
  issuers:
    - { iss: load-hs, audiences: [a], algorithms: [HS256], dev: true, keys: { hmac_secret_file: "$DIR/hmac.secret" } }
upstreams:
  app: { url: "http://127.0.0.1:$UP_PORT" }
sessions: { store: embedded, state_dir: "$DIR/state" }
reload: { watch: false }
roles:
  agent: { grants: [customer.profile.view] }
routes:
  - { name: profile, match: { methods: [GET], path: "/api/customers/{id}" }, require: customer.profile.view }
EOF
TOKEN=$("$BIN" token -c "$DIR/rg.yaml" --sub u1 --roles agent --ttl 1h 2>/dev/null | tail -1)
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
TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" \
  "$BIN" serve -c "$DIR/rg.yaml" > "$DIR/gateway.log" 2>&1 &
VG=$!
for _ in $(seq 1 200); do
  kill -0 "$VG" 2>/dev/null || { echo "the gateway exited:" >&2; tail -3 "$DIR/gateway.log" >&2; exit 1; }
  curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/" && break
  sleep 0.3
done
URL="http://127.0.0.1:$GW_PORT/api/customers/1"
wrk -t1 -c4 -d3s -H "Authorization: Bearer $TOKEN" "$URL" > /dev/null
callgrind_control -z "$VG" > /dev/null
wrk -t1 -c4 -d"${SECS}s" -H "Authorization: Bearer $TOKEN" "$URL" > "$DIR/wrk.txt"
callgrind_control -d "$VG" > /dev/null
for _ in $(seq 1 100); do
  [ -s "$DIR/cg.out.1" ] && grep -q '^summary' "$DIR/cg.out.1" && break
  sleep 0.2
done
REQUESTS=$(grep -oP '^\s+\K\d+(?= requests in)' "$DIR/wrk.txt")
NON2XX=$(grep -oP 'Non-2xx or 3xx responses: \K\d+' "$DIR/wrk.txt" || echo 0)
IR=$(grep -h '^summary' "$DIR/cg.out.1" | awk '{print $2}')
if [ "$NON2XX" != 0 ]; then
  echo "error: $NON2XX of $REQUESTS answers were not 2xx (see the gateway's log)" >&2
  tail -3 "$DIR/gateway.log" >&2
  exit 1
fi
echo "binary: $BIN"
echo "requests: $REQUESTS (non-2xx: $NON2XX)  instructions: $IR  per request: $((IR / REQUESTS))"
if [ "${KEEP_PROFILE:-0}" = 1 ]; then
  cp "$DIR/cg.out.1" ./callgrind.proxy.out
  echo "profile: ./callgrind.proxy.out (callgrind_annotate --inclusive=yes)"
fi
