#!/usr/bin/env bash
# hack/loadtest.sh [loadtest flags...]: the benchmark report (make loadtest).
#
# Starts throwaway PostgreSQL and Redis under .run/loadtest (or uses DATABASE_URL / REDIS_URL),
# builds cacheside and the load generator (app/loadtest), migrates, and runs the load generator,
# which starts one cacheside per cache tier and the ceiling itself, reseeds the table for each
# size, prints the table and writes app/loadtest/report/report.{md,png}. Everything started is
# stopped on exit, Ctrl-C included. Flags are passed to the load generator, e.g.
#   bash hack/loadtest.sh -rows 10,1000 -c 1,32 -d 2s
# (`.run/bin/loadtest -help` lists them).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/lib/local.sh
source "$root/hack/lib/local.sh"
cd "$root"

run_dir=$root/.run/loadtest
bin_dir=$root/.run/bin
started_pg=0
started_redis=0
loadtest_pid=

# shellcheck disable=SC2317 # only reached through the trap
cleanup() {
	local rc=$?
	trap '' INT TERM
	trap - EXIT
	if [[ -n $loadtest_pid ]]; then
		# It stops the services and the ceiling it started before it exits.
		kill -TERM "$loadtest_pid" 2>/dev/null || true
		wait "$loadtest_pid" 2>/dev/null || true
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
LOG_LEVEL=warn "$bin_dir/cacheside" migrate

# The report records how to reproduce it: this script's command line, not the binary's.
command="bash hack/loadtest.sh"
if (($#)); then command+=$(printf ' %q' "$@"); fi

# In the background so that a TERM sent to this script reaches the load generator through
# cleanup (bash runs traps only between foreground commands); Ctrl-C reaches it directly.
"$bin_dir/loadtest" -bin "$bin_dir/cacheside" -command "$command" "$@" &
loadtest_pid=$!
rc=0
wait "$loadtest_pid" || rc=$?
loadtest_pid=
exit "$rc"
