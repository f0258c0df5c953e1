#!/usr/bin/env bash
# hack/run.sh: run everything locally (make run).
#
#   DATABASE_URL   used as is if set; otherwise a persistent dev PostgreSQL in
#                  .run/dev/pg on 127.0.0.1:$PG_DEV_PORT (default 15432).
#   REDIS_URL      used as is if set; otherwise a dev Redis in .run/dev/redis
#                  on 127.0.0.1:$REDIS_DEV_PORT (default 16379).
#   HTTP_ADDR      listen address of the service (default :8080).
#
# Builds .run/bin/cacheside, migrates, seeds (once), then serves in the
# foreground.  Ctrl-C / SIGTERM: the service gets SIGTERM and is waited for,
# then the servers this script started (only those) are stopped.  Dev data
# survives between runs; `make clean` deletes it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/lib/local.sh
source "$root/hack/lib/local.sh"
cd "$root"

PG_DEV_PORT=${PG_DEV_PORT:-15432}
REDIS_DEV_PORT=${REDIS_DEV_PORT:-16379}
dev_dir=$root/.run/dev
bin=$root/.run/bin/cacheside
started_pg=0
started_redis=0

started_jaeger=0

# A local Jaeger v2 (memory storage) on its standard ports, unless the caller
# already points the service at a collector with OTEL_EXPORTER_OTLP_ENDPOINT.
# Runs after PostgreSQL and Redis are up, before the service is started.
start_extras() {
	if [[ -n ${OTEL_EXPORTER_OTLP_ENDPOINT:-} ]]; then
		local::log "OTEL_EXPORTER_OTLP_ENDPOINT is set: not starting a local Jaeger"
		return 0
	fi
	local::log "building Jaeger if needed (the first build takes a few minutes)"
	bash "$root/hack/jaeger.sh" build >/dev/null
	started_jaeger=1
	bash "$root/hack/jaeger.sh" start "$dev_dir/jaeger" >/dev/null
	export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:${JAEGER_OTLP_HTTP_PORT:-4318}
	export OTEL_SERVICE_NAME=${OTEL_SERVICE_NAME:-cacheside}
	local::log "Jaeger query API: http://127.0.0.1:${JAEGER_QUERY_PORT:-16686}/api/v3/services (see README: Reading the traces)"
}

# Stops what start_extras started.  Runs on every exit, also after a failure
# half-way through start_extras, so it must be idempotent.
# shellcheck disable=SC2317 # only reached through cleanup
stop_extras() {
	if ((started_jaeger)); then bash "$root/hack/jaeger.sh" stop "$dev_dir/jaeger"; fi
}

# shellcheck disable=SC2317 # only reached through the trap
cleanup() {
	local rc=$?
	# Finish cleaning up even if Ctrl-C is pressed again.
	trap '' INT TERM
	trap - EXIT
	# Stop only what we started.  A failed stop turns success into failure
	# but keeps the service's status otherwise.
	stop_extras || ((rc)) || rc=1
	if ((started_redis)); then local::redis_stop "$dev_dir/redis" || ((rc)) || rc=1; fi
	if ((started_pg)); then local::pg_stop "$dev_dir/pg" || ((rc)) || rc=1; fi
	exit "$rc"
}
trap cleanup EXIT
# Without these bash would die on INT/TERM without running the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

# Build first: a compile error should not cost a database start.
local::log "go build -o $bin ./app"
go build -o "$bin" ./app

if [[ -z ${DATABASE_URL:-} || -z ${REDIS_URL:-} ]]; then
	local::ensure_packages
fi

if [[ -z ${DATABASE_URL:-} ]]; then
	local::pg_start "$dev_dir/pg" "$PG_DEV_PORT"
	# Found already running (another run.sh, say): not ours to stop.
	if local::last_started; then started_pg=1; fi
	DATABASE_URL=$(local::pg_url "$PG_DEV_PORT")
fi
export DATABASE_URL

if [[ -z ${REDIS_URL:-} ]]; then
	local::redis_start "$dev_dir/redis" "$REDIS_DEV_PORT"
	if local::last_started; then started_redis=1; fi
	REDIS_URL=$(local::redis_url "$REDIS_DEV_PORT")
fi
export REDIS_URL

start_extras

export HTTP_ADDR=${HTTP_ADDR:-:8080}
local::log "DATABASE_URL=$DATABASE_URL REDIS_URL=$REDIS_URL HTTP_ADDR=$HTTP_ADDR"

local::log "cacheside migrate"
"$bin" migrate
local::log "cacheside seed -n 1000 -if-empty"
"$bin" seed -n 1000 -if-empty

local::log "cacheside serve (Ctrl-C to stop)"
# Not exec: the EXIT trap must still stop the servers.  supervise forwards
# SIGTERM (the service's graceful-shutdown signal, as under Kubernetes) for
# Ctrl-C as well; a second Ctrl-C kills it.
rc=0
LOCAL_SUPERVISE_SIGNAL=TERM local::supervise "$bin" serve || rc=$?
exit "$rc"
