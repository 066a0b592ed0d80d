# Shared by scripts/callgrind_proxy.sh and scripts/callgrind_nginx.sh (sourced,
# not run): the same static upstream and the same counted load, so the two
# instruction counts compare.

# nginx's temporary-file paths under $1.
temp_paths() {
  echo "client_body_temp_path $1/cb; proxy_temp_path $1/p; fastcgi_temp_path $1/f; uwsgi_temp_path $1/u; scgi_temp_path $1/s;"
}

# The static upstream in $DIR on port $1: a 956-byte JSON profile at
# /api/customers/1 served by one nginx worker; started, its pid in NG.
start_upstream() {
  local port=$1
  mkdir -p "$DIR/www/api/customers" "$DIR/up"
  python3 -c "
import json
print(json.dumps({'id':'1','name':'Ada Lovelace','email':'ada@example.com','phone':'+44 20 7946 0958','notes':'x'*850}))" \
    > "$DIR/www/api/customers/1"
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
  server { listen 127.0.0.1:$port; root $DIR/www; }
}
EOC
  nginx -c "$DIR/up.conf" -p "$DIR/up" -e "$DIR/up/error.log" &
  NG=$!
}

# Loads $1 (URL) with header $2 from wrk -t1 -c4: a 3 s warm-up, then
# callgrind's counters (process $VG) zeroed, $SECS counted, dumped. Sets
# REQUESTS and IR; exits with an error if an answer was not 2xx.
count_window() {
  local url=$1 header=$2
  wrk -t1 -c4 -d3s -H "$header" "$url" > /dev/null
  callgrind_control -z "$VG" > /dev/null
  wrk -t1 -c4 -d"${SECS}s" -H "$header" "$url" > "$DIR/wrk.txt"
  callgrind_control -d "$VG" > /dev/null
  for _ in $(seq 1 100); do
    [ -s "$DIR/cg.out.1" ] && grep -q '^summary' "$DIR/cg.out.1" && break
    sleep 0.2
  done
  REQUESTS=$(grep -oP '^\s+\K\d+(?= requests in)' "$DIR/wrk.txt")
  local non2xx
  non2xx=$(grep -oP 'Non-2xx or 3xx responses: \K\d+' "$DIR/wrk.txt" || echo 0)
  IR=$(grep -h '^summary' "$DIR/cg.out.1" | awk '{print $2}')
  if [ "$non2xx" != 0 ]; then
    echo "error: $non2xx of $REQUESTS answers were not 2xx" >&2
    return 1
  fi
}
