#!/bin/bash
# Put first in PATH as `redis-server` for one benches/e2e/run: every command goes to the slow log, which
# slowlog-dump.py reads and resets every 0.5 s into /tmp/slowwrap/log-PORT.tsv.
port=""
prev=""
for a in "$@"; do [ "$prev" = "--port" ] && port=$a; prev=$a; done
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p /tmp/slowwrap
(sleep 1; while true; do python3 "$here/slowlog-dump.py" "$port" >> "/tmp/slowwrap/log-$port.tsv" 2>/dev/null || break; sleep 0.5; done) &
exec /usr/bin/redis-server "$@" --slowlog-log-slower-than 0 --slowlog-max-len 2000000
