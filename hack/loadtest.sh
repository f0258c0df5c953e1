#!/usr/bin/env bash
# hack/loadtest.sh [loadtest flags...]: the tutorial's experiment, reproduced (make loadtest).
#
# Starts throwaway PostgreSQL and Redis under .run/loadtest (or uses DATABASE_URL / REDIS_URL),
# builds and starts cacheside on a free port, and runs the Go load generator (app/loadtest),
# which reseeds the table for each size and prints the table of results. Everything it started
# is stopped on exit. Flags are passed to the load generator, e.g. -rows 10,1000 -c 1,32 -d 5s.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/lib/local.sh
source "$root/hack/lib/local.sh"
cd "$root"

run_dir=$root/.run/loadtest
bin_dir=$root/.run/bin
started_pg=0
started_redis=0
service_pid=

# shellcheck disable=SC2317 # only reached through the trap
cleanup() {
	local rc=$?
	trap '' INT TERM
	trap - EXIT
	if [[ -n $service_pid ]]; then
		kill -TERM "$service_pid" 2>/dev/null || true
		wait "$service_pid" 2>/dev/null || true
	fi
	if ((started_redis)); then local::redis_stop "$run_dir/redis" || rc=1; fi
	if ((started_pg)); then local::pg_destroy "$run_dir/pg" || rc=1; fi
	if ((started_pg || started_redis)); then rm -rf -- "$run_dir"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

local::log "building cacheside and the load generator"
go build -o "$bin_dir/cacheside" ./app
go build -o "$bin_dir/loadtest" ./app/loadtest

if [[ -z ${DATABASE_URL:-} || -z ${REDIS_URL:-} ]]; then
	local::ensure_packages
	rm -rf -- "$run_dir"
	mkdir -p "$run_dir"
fi
if [[ -z ${DATABASE_URL:-} ]]; then
	started_pg=1
	pg_port=$(local::free_port)
	LOCAL_PG_FSYNC=off local::pg_start "$run_dir/pg" "$pg_port"
	DATABASE_URL=$(local::pg_url "$pg_port")
fi
if [[ -z ${REDIS_URL:-} ]]; then
	started_redis=1
	redis_port=$(local::free_port)
	local::redis_start "$run_dir/redis" "$redis_port"
	REDIS_URL=$(local::redis_url "$redis_port")
fi
export DATABASE_URL REDIS_URL
# Request logging would measure the terminal, not the service.
export LOG_LEVEL=warn

"$bin_dir/cacheside" migrate
http_port=$(local::free_port)
HTTP_ADDR=127.0.0.1:$http_port "$bin_dir/cacheside" serve &
service_pid=$!
local::wait_tcp "$http_port"

"$bin_dir/loadtest" -url "http://127.0.0.1:$http_port" -seed "$bin_dir/cacheside" "$@"
