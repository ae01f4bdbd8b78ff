#!/usr/bin/env bash
# Runs rq-dashboard 0.9 and rq-exporter 3.x next to a running alert-worker, each from a venv of its own, as
# docs/operations.md ("RQ's own tools") says, and checks that each shows the worker.
#   REDIS_URL=redis://127.0.0.1:6379/0 deploy/check-rq-tools.sh   (with `alert-worker run` on that Redis)
# Needs PyPI (pip) and free loopback ports 9181 and 9726. Prints one line per tool and exits 1 if one fails.
set -euo pipefail
: "${REDIS_URL:?set REDIS_URL to the Redis the worker uses}"
dir=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT

python3 -m venv "$dir/dash" && "$dir/dash/bin/pip" install -q rq-dashboard==0.9.0 six
python3 -m venv "$dir/exp" && "$dir/exp/bin/pip" install -q 'rq-exporter>=3,<4'

"$dir/dash/bin/rq-dashboard" -u "$REDIS_URL" -b 127.0.0.1 -p 9181 >"$dir/dash.log" 2>&1 & pids+=($!)
"$dir/exp/bin/rq-exporter" --redis-url "$REDIS_URL" --host 127.0.0.1 -p 9726 >"$dir/exp.log" 2>&1 & pids+=($!)

fetch() {  # fetch URL: poll for up to 30 s
  for _ in $(seq 60); do curl -fsS "$1" 2>/dev/null && return 0; sleep 0.5; done
  return 1
}
status=0
if workers=$(fetch http://127.0.0.1:9181/0/data/workers.json) && grep -q '"name"' <<<"$workers"; then
  echo "rq-dashboard 0.9.0: ok, workers: $(grep -o '"name": *"[^"]*"' <<<"$workers" | tr '\n' ' ')"
else
  echo "rq-dashboard 0.9.0: FAILED"; tail -5 "$dir/dash.log"; status=1
fi
if metrics=$(fetch http://127.0.0.1:9726/metrics) && grep -q '^rq_workers{' <<<"$metrics"; then
  echo "rq-exporter: ok, $(grep -c '^rq_workers{' <<<"$metrics") rq_workers series"
else
  echo "rq-exporter: FAILED"; tail -5 "$dir/exp.log"; status=1
fi
exit $status
