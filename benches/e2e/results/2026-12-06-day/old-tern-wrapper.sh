#!/bin/bash
# Wrapper for the pre-#15 binary: drops config keys it does not know.
args=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--config" ]; then
    sed '/^metrics_listen/d' "$2" > "$2.old.toml"; args+=(--config "$2.old.toml"); shift 2
  else args+=("$1"); shift; fi
done
exec /tmp/bin-old/tern.real "${args[@]}"
