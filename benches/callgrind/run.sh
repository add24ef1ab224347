#!/usr/bin/env bash
# Redis instructions per job for each of tern-queue's hot scripts, counted by callgrind, which (unlike
# timings on a shared machine) do not vary from run to run. Needs valgrind, redis-server and python3.
#   bash benches/callgrind/run.sh [port]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
port=${1:-18777}
out=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no >"$out/valgrind.log" 2>&1 &
vg=$!
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
python3 "$here/cycle.py" "$port" 4 "$vg"
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait "$vg" || true
for f in "$out"/cg.out.*; do
  phase=$(grep -a '^desc: Trigger' "$f" | head -1 | awk '{print $NF}')
  ir() { callgrind_annotate --inclusive=yes "$f" 2>/dev/null | grep -E "$1" | head -1 | awk '{print $1}' | tr -d ,; }
  script=$(ir 'evalShaCommand')
  plain=$(( $(ir ' [?]{3}:setCommand' || echo 0) + $(ir 'mgetCommand' || echo 0) ))
  echo "$phase: script $(( ${script:-0} / 2000 )) + plain commands $(( plain / 2000 )) instructions per job"
done
rm -rf "$out"
