#!/usr/bin/env bash
# ab.sh OUTDIR ROUNDS DOMAINS name:bindir[:k=v,...] ...
set -u
out=$1; rounds=$2; domains=$3; shift 3
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for v in "$@"; do
    name=${v%%:*}; rest=${v#*:}; bindir=${rest%%:*}; sets=""
    [ "$rest" != "$bindir" ] && sets=${rest#*:}
    extra=()
    if [ -n "$sets" ]; then IFS=, read -ra kv <<< "$sets"; for x in "${kv[@]}"; do extra+=(--set "$x"); done; fi
    (cd /work/main && benches/e2e/run --domains "$domains" --no-ceiling --no-latency --postfix no --bin-dir "$bindir" "${extra[@]}" ${EXTRA_ARGS:-} --json "$out/$name-r$r.json" > "$out/$name-r$r.txt" 2>&1)
    echo "$(date +%T) $name r$r rc=$?"
  done
done
