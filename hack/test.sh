#!/usr/bin/env bash
# hack/test.sh [go test args...]: run the root module's Go tests against
# throwaway PostgreSQL and Redis servers.
#
#   TEST_DATABASE_URL  used as is if set; otherwise a fresh cluster under
#                      .run/test/pg on a free port (superuser URL: tests
#                      CREATE DATABASE per test).
#   TEST_REDIS_URL     used as is if set; otherwise a fresh Redis under
#                      .run/test/redis on a free port.
#   PG_BINDIR, REDIS_SERVER (and PG_RUN_AS when root) are always exported:
#                      some tests start and kill private servers themselves.
#   JAEGER_BIN         used as is if set; otherwise built by hack/jaeger.sh
#                      (app/e2e starts its own Jaeger on free ports).
#
# Only the servers this script started are stopped (on exit, Ctrl-C or
# SIGTERM), and .run/test is removed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/lib/local.sh
source "$root/hack/lib/local.sh"
cd "$root"

run_dir=$root/.run/test
started_pg=0
started_redis=0

# shellcheck disable=SC2317 # only reached through the trap
cleanup() {
	local rc=$?
	# Finish cleaning up even if Ctrl-C is pressed again.
	trap '' INT TERM
	trap - EXIT
	# Stop only what we started.  A failed stop turns success into failure
	# (a leaked server should not go unnoticed) but keeps go test's status.
	if ((started_redis)); then local::redis_stop "$run_dir/redis" || ((rc)) || rc=1; fi
	if ((started_pg)); then local::pg_destroy "$run_dir/pg" || ((rc)) || rc=1; fi
	if ((started_pg || started_redis)); then rm -rf -- "$run_dir"; fi
	exit "$rc"
}
trap cleanup EXIT
# Without these bash would die on INT/TERM without running the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

local::ensure_packages
export PG_BINDIR REDIS_SERVER
local::ensure_race_toolchain

# The trace tests (app/e2e) run a real Jaeger v2, built from its Go module: a few minutes the
# first time, then only a link step, and nothing at all while the binary is current.
if [[ -z ${JAEGER_BIN:-} ]]; then
	local::log "building Jaeger (hack/jaeger.sh build)"
	JAEGER_BIN=$(bash "$root/hack/jaeger.sh" build)
fi
export JAEGER_BIN

if [[ -z ${TEST_DATABASE_URL:-} || -z ${TEST_REDIS_URL:-} ]]; then
	mkdir -p "$root/.run"
	# One test run per checkout at a time: we are about to wipe .run/test,
	# which would pull the servers from under a concurrent run.  fd 9 is
	# closed for the servers (9>&-) so a leaked daemon cannot hold the lock.
	exec 9>"$root/.run/test.lock"
	if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
		local::log "another hack/test.sh is using $run_dir; wait for it, or set TEST_DATABASE_URL and TEST_REDIS_URL"
		exit 1
	fi
	# Holding the lock, anything left in .run/test is from a run that was
	# killed hard (SIGKILL, reboot): stop and remove it.
	if [[ -e $run_dir ]]; then
		local::log "removing leftovers of an earlier run in $run_dir"
		local::redis_stop "$run_dir/redis" 9>&-
		local::pg_destroy "$run_dir/pg" 9>&-
		rm -rf -- "$run_dir"
	fi
	mkdir -p "$run_dir"
fi

if [[ -z ${TEST_DATABASE_URL:-} ]]; then
	started_pg=1 # set first: a half-started cluster must be cleaned up too
	pg_port=$(local::free_port)
	# Throwaway data: fsync off makes CREATE DATABASE per test much cheaper.
	LOCAL_PG_FSYNC=off local::pg_start "$run_dir/pg" "$pg_port" 9>&-
	TEST_DATABASE_URL=$(local::pg_url "$pg_port")
fi
export TEST_DATABASE_URL

if [[ -z ${TEST_REDIS_URL:-} ]]; then
	started_redis=1
	# Picked after PostgreSQL is listening, so it cannot pick the same port.
	redis_port=$(local::free_port)
	local::redis_start "$run_dir/redis" "$redis_port" 9>&-
	TEST_REDIS_URL=$(local::redis_url "$redis_port")
fi
export TEST_REDIS_URL

# Root module only: ./... already skips nested modules (charts/tests,
# hack/jaeger, ... have their own go.mod and get wired in separately);
# GOWORK=off keeps it that way should a go.work appear.
export GOWORK=${GOWORK:-off}
local::log "TEST_DATABASE_URL=$TEST_DATABASE_URL TEST_REDIS_URL=$TEST_REDIS_URL"
local::log "PG_BINDIR=$PG_BINDIR REDIS_SERVER=$REDIS_SERVER${PG_RUN_AS:+ PG_RUN_AS=$PG_RUN_AS}"
# `go test ./...` fails when the module has no packages yet; that is not a
# test failure.  (-e: broken packages are still listed, and then fail below.)
if [[ -z $(go list -e ./... 2>/dev/null) ]]; then
	local::log "no Go packages in $root yet: nothing to test"
	exit 0
fi
# GO_TEST_FLAGS: make bench drops -race, which would distort the numbers.
read -r -a flags <<<"${GO_TEST_FLAGS:--race -count=1}"
local::log "go test ${flags[*]} ./... $*"
rc=0
local::supervise go test "${flags[@]}" ./... "$@" 9>&- || rc=$?
exit "$rc"
