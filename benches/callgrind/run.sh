#!/usr/bin/env bash
# Redis instructions for tern-queue's hot operations, counted by callgrind, which (unlike timings on a shared
# machine) do not vary from run to run (within 0.5%). Needs valgrind, redis-server and python3.
#   bash benches/callgrind/run.sh [port]
# Per phase (see cycle.py): `function` is the FCALLs (fcallCommand, inclusive), `plain` the plain commands of
# the same queue calls (the records' SET, the claimer's MGET), `all` every command Redis ran in the phase
# (processCommand, inclusive: lookup, ACL and the rest), each divided by the phase's jobs or calls.
# KEEP_CALLGRIND=<dir> keeps callgrind's files there, for callgrind_annotate.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
port=${1:-18777}
out=$(mktemp -d)
keep() {
  if [ -n "${KEEP_CALLGRIND:-}" ]; then cp -r "$out" "$KEEP_CALLGRIND"; fi
  rm -rf "$out"
}
trap keep EXIT
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no >"$out/valgrind.log" 2>&1 &
vg=$!
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
python3 "$here/cycle.py" "$port" 4 "$vg" >"$out/phases"
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
wait "$vg" || true
# Each dump's phase; a phase dumped in several rounds is added up.
declare -A function plain all count
order=()
dumps=$(find "$out" -name 'cg.out.*' | wc -l)
if [ "$dumps" -eq 0 ]; then
  echo "callgrind wrote no phase dumps (callgrind_control could not reach it); KEEP_CALLGRIND=<dir> keeps its log" >&2
  exit 1
fi
for i in $(seq "$dumps"); do
  f="$out/cg.out.$i"
  phase=$(grep -a '^desc: Trigger' "$f" | head -1 | awk '{print $NF}')
  read -r _ _ n unit < <(grep "^phase $phase " "$out/phases" | head -1)
  ann=$(callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$f" 2>/dev/null)
  ir() { echo "$ann" | grep -E "$1" | head -1 | awk '{print $1}' | tr -d , ; }
  [ -z "${count[$phase]:-}" ] && order+=("$phase:$unit")
  function[$phase]=$(( ${function[$phase]:-0} + $(ir '[?]{3}:fcallCommand ' || true) + 0 ))
  plain[$phase]=$(( ${plain[$phase]:-0} + $(ir '[?]{3}:setCommand ' || true) + $(ir '[?]{3}:mgetCommand ' || true) + 0 ))
  all[$phase]=$(( ${all[$phase]:-0} + $(ir '[?]{3}:processCommand ' || true) + 0 ))
  count[$phase]=$(( ${count[$phase]:-0} + n ))
done
printf '%-10s %6s %-5s %10s %10s %10s\n' phase count per function plain all
for entry in "${order[@]}"; do
  phase=${entry%%:*} unit=${entry#*:} n=${count[${entry%%:*}]}
  printf '%-10s %6s %-5s %10d %10d %10d\n' "$phase" "$n" "$unit" $((function[$phase] / n)) $((plain[$phase] / n)) \
    $((all[$phase] / n))
done
