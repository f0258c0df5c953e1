#!/usr/bin/env bash
# Run the images of hack/cluster/images.sh where they can run without the cluster, as the chart and
# k8s/observability run them, and check that each does its job:
#   pause       runs as 65535, exits 0 on SIGTERM
#   cacheside   prints its version; `serve` without settings fails with its config error
#   postgres    first start initialises with the chart's env and args and answers pg_isready; the superuser's
#               password works over TCP from the app's uid (the chart's db-role init container); wal_level
#               is logical; a restart skips initialisation
#   redis       answers the chart's probe (redis-cli ping with the password)
#   cacheside   + postgres + redis: `migrate`, then `serve`, and the chart's `helm test` script run in the
#               curl image passes against it
#   jaeger      with config/jaeger.yaml: healthcheckv2 /status answers 200 and the query API answers
#   collector   with config/otel-collector.yaml: accepts OTLP/HTTP on 4318 and serves metrics on 8888
#   traces      a span posted to the collector reaches Jaeger (its otlp exporter, on loopback)
# Every container runs with a read-only root filesystem, the default seccomp profile, the user the chart's
# securityContext sets (uid 70, 999, 65532, 10001), writable paths only where the chart mounts volumes, and in
# a network namespace of its own with nothing but loopback (containers of one check share one).
#
#   hack/cluster/images-smoke.sh [CHECK...]   checks: pause cacheside postgres redis app jaeger otel-collector traces
#
# It starts a private containerd (Debian's containerd and runc; config, root, state and socket under
# .run/images-smoke, never the system's) and on every exit stops it and removes its mounts and state.
# Builds what is missing first (hack/cluster/images.sh build NAME...). Needs root.

set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGES=$ROOT/hack/cluster/images.sh
DIR=$ROOT/.run/images-smoke
SOCK=$DIR/containerd.sock
CTR=(ctr -a "$SOCK" -n images-smoke)
ALL=(pause cacheside postgres redis app jaeger otel-collector traces)
TIMEOUT=${SMOKE_TIMEOUT:-120}

log() { echo "images-smoke: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

start_containerd() {
  [[ ! -e $DIR/containerd.pid ]] || die "$DIR/containerd.pid exists: another run, or one that did not clean up"
  mkdir -p "$DIR"
  cat >"$DIR/config.toml" <<EOF
version = 2
root = "$DIR/root"
state = "$DIR/state"
# Images and tasks only: no CRI (that is the cluster's containerd).
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
EOF
  setsid containerd --config "$DIR/config.toml" </dev/null >"$DIR/containerd.log" 2>&1 &
  echo $! >"$DIR/containerd.pid"
  wait_until "containerd answers" "${CTR[@]}" version
}

stop_containerd() {
  local pid id deadline
  if [[ -S $SOCK ]]; then
    for id in $("${CTR[@]}" task ls -q 2>/dev/null); do
      "${CTR[@]}" task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    for id in $("${CTR[@]}" containers ls -q 2>/dev/null); do
      "${CTR[@]}" task delete -f "$id" >/dev/null 2>&1 || true
      "${CTR[@]}" containers rm "$id" >/dev/null 2>&1 || true
    done
  fi
  if [[ -f $DIR/containerd.pid ]]; then
    pid=$(<"$DIR/containerd.pid")
    if [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == "containerd --config $DIR/config.toml"* ]]; then
      kill -TERM "$pid"
      deadline=$((SECONDS + 20))
      while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$DIR/containerd.pid"
  fi
  # Snapshot and rootfs mounts left under our root, deepest first.
  awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
  rm -rf "$DIR"
}

# wait_until DESC CMD...: run CMD until it succeeds, at most $TIMEOUT seconds.
wait_until() {
  local desc=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$desc: not within ${TIMEOUT}s"
    sleep 0.2
  done
}

import() {
  local ref archive
  read -r _ ref archive < <("$IMAGES" refs "$1")
  "${CTR[@]}" images import "$archive" >/dev/null
  echo "$ref"
}

# run ID IMAGE [ctr run options --] ARGS...: start a detached container with the chart's hardening.
run() {
  local id=$1 image=$2 opts=()
  shift 2
  if [[ " $* " == *" -- "* ]]; then
    while [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift
  fi
  mkdir -p "$DIR/logs"
  "${CTR[@]}" run -d --read-only --seccomp --log-uri "file://$DIR/logs/$id.log" "${opts[@]}" "$image" "$id" "$@" >/dev/null
}

# exec_as UID ID ARGS...: run ARGS in container ID as UID.
EXEC_N=0
exec_as() {
  EXEC_N=$((EXEC_N + 1))
  "${CTR[@]}" task exec --exec-id "x$EXEC_N" --user "$1" "$2" "${@:3}"
}

pid_of() { "${CTR[@]}" task ls | awk -v id="$1" '$1 == id { print $2 }'; }
status_of() { "${CTR[@]}" task ls | awk -v id="$1" '$1 == id { print $3 }'; }
stopped() { [[ $(status_of "$1") == STOPPED ]]; }
running() { [[ $(status_of "$1") == RUNNING ]]; }

# stop ID [SIGNAL]: stop the task as the kubelet would, wait for it, remove it.
stop() {
  "${CTR[@]}" task kill -s "${2:-SIGTERM}" "$1" >/dev/null
  wait_until "$1 stops" stopped "$1"
  "${CTR[@]}" task delete "$1" >/dev/null
  "${CTR[@]}" containers rm "$1" >/dev/null
}

# owned_by ID UID: the container's first process runs as UID.
owned_by() {
  local uid
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$(pid_of "$1")/status")
  [[ $uid == "$2" ]] || die "$1 runs as uid $uid, not $2"
}

# mount_tmpfs DST [MODE]: a writable volume where the chart mounts an emptyDir.
mount_tmpfs() { echo "--mount=type=tmpfs,src=tmpfs,dst=$1,options=mode=${2:-1777}"; }
netns_of() { echo "--with-ns=network:/proc/$(pid_of "$1")/ns/net"; }

check_pause() {
  local image rc=0
  image=$(import pause)
  "${CTR[@]}" run --rm --read-only --seccomp "$image" pause &
  wait_until "pause runs" running pause
  owned_by pause 65535
  "${CTR[@]}" task kill -s SIGTERM pause
  wait $! || rc=$?
  ((rc == 0)) || die "pause exited $rc on SIGTERM"
  log "pause: runs as 65535, exits 0 on SIGTERM"
}

check_cacheside() {
  local image out rc=0
  image=$(import cacheside)
  out=$("${CTR[@]}" run --rm --read-only --seccomp "$image" cs-version /cacheside version)
  [[ $out == "cacheside e2e-"* ]] || die "cacheside version printed: $out"
  out=$("${CTR[@]}" run --rm --read-only --seccomp "$image" cs-serve 2>&1) || rc=$?
  if ((rc == 0)) || [[ $out != *"invalid configuration"*"DATABASE_URL"* ]]; then
    die "serve without settings: rc $rc: $out"
  fi
  log "cacheside: '$("${CTR[@]}" run --rm --read-only "$image" cs-version /cacheside version)'; serve without settings: config error"
}

PG_PASSWORD=smoke-superuser-password
PG_ENV=(--env POSTGRES_USER=cacheside --env POSTGRES_DB=cacheside --env "POSTGRES_PASSWORD=$PG_PASSWORD"
  --env PGDATA=/var/lib/postgresql/data/pgdata --env PGPORT=5432)
# The chart's args (charts/cacheside/charts/postgresql/templates/statefulset.yaml, default values).
PG_ARGS=(-c wal_level=logical -c max_replication_slots=10 -c max_wal_senders=10 -c max_slot_wal_keep_size=2GB
  -c max_connections=200)
PG_READY=(pg_isready -h 127.0.0.1 -p 5432 -U cacheside -d cacheside)

# start_postgres ID DATA: as the chart runs it: uid 70, its volumes, its env and args.
start_postgres() {
  run "$1" "$(import postgres)" --mount "type=bind,src=$2,dst=/var/lib/postgresql/data,options=rbind:rw" \
    "$(mount_tmpfs /var/run/postgresql 3777)" "$(mount_tmpfs /tmp)" "$(mount_tmpfs /dev/shm)" "${PG_ENV[@]}" -- \
    setpriv --reuid=70 --regid=70 --clear-groups /usr/local/bin/docker-entrypoint.sh "${PG_ARGS[@]}"
  wait_until "$1 answers pg_isready" exec_as 70 "$1" "${PG_READY[@]}"
  owned_by "$1" 70
}

check_postgres() {
  local data=$DIR/pgdata out
  install -d -o 70 -g 70 -m 0700 "$data"
  start_postgres pg "$data"
  grep -q 'PostgreSQL init process complete' "$DIR/logs/pg.log" || die "postgres did not initialise: $(cat "$DIR/logs/pg.log")"
  # shellcheck disable=SC2016 # $$ is SQL's dollar quoting
  out=$(exec_as 65532 pg env PGPASSWORD=$PG_PASSWORD psql -X -tA -h 127.0.0.1 -U cacheside -d cacheside \
    -c 'SELECT current_user, current_setting($$wal_level$$), version()')
  [[ $out == "cacheside|logical|PostgreSQL 17."* ]] || die "postgres answered: $out"
  grep -q '^host all all all scram-sha-256$' "$data/pgdata/pg_hba.conf" || die "pg_hba.conf lacks the password line for other hosts"
  stop pg SIGINT
  mv "$DIR/logs/pg.log" "$DIR/logs/pg-first.log"
  start_postgres pg "$data"
  grep -q 'Skipping initialization' "$DIR/logs/pg.log" || die "postgres' restart did not find its database: $(cat "$DIR/logs/pg.log")"
  stop pg SIGINT
  log "postgres: initialised as uid 70 (read-only root), pg_isready OK, ${out%%|*} over TCP from uid 65532, wal_level logical, ${out##*|}; restart OK"
}

REDIS_PASSWORD=smoke-redis-password
# The chart's command and args (charts/cacheside/charts/redis/templates/statefulset.yaml, persistence off).
start_redis() {
  local extra=("${@:2}")
  run "$1" "$(import redis)" "$(mount_tmpfs /data 0777)" "$(mount_tmpfs /tmp)" --env "REDIS_PASSWORD=$REDIS_PASSWORD" "${extra[@]}" -- \
    setpriv --reuid=999 --regid=999 --clear-groups redis-server --port 6379 --dir /data --maxmemory 96mb \
    --maxmemory-policy allkeys-lru --save "" --appendonly no --requirepass "$REDIS_PASSWORD"
  # The chart's probe, verbatim.
  # shellcheck disable=SC2016 # expanded in the container
  wait_until "$1 answers PING" exec_as 999 "$1" sh -c 'redis-cli -h 127.0.0.1 -p 6379 --no-auth-warning -a "$REDIS_PASSWORD" ping | grep -q PONG'
  owned_by "$1" 999
}

check_redis() {
  start_redis redis
  if exec_as 999 redis sh -c 'redis-cli -h 127.0.0.1 -p 6379 --no-auth-warning -a wrong ping | grep -q PONG'; then
    die "redis answered PONG to a wrong password"
  fi
  log "redis: $(exec_as 999 redis redis-server --version | cut -d' ' -f1-3) as uid 999 (read-only root), the chart's probe passes, a wrong password does not"
  stop redis
}

# The app with its dependencies in one network namespace, then the chart's `helm test` script in the curl image.
check_app() {
  local data=$DIR/appdata image script token=smoke-api-token-0123456789 net env
  install -d -o 70 -g 70 -m 0700 "$data"
  start_postgres app-pg "$data"
  net=$(netns_of app-pg)
  start_redis app-redis "$net"
  image=$(import cacheside)
  env=(--env "DATABASE_URL=postgres://cacheside:$PG_PASSWORD@127.0.0.1:5432/cacheside?sslmode=disable"
    --env "REDIS_URL=redis://:$REDIS_PASSWORD@127.0.0.1:6379/0" --env "API_TOKENS=$token" --env OTEL_SDK_DISABLED=true)
  "${CTR[@]}" run --rm --read-only --seccomp "$net" "$(mount_tmpfs /tmp)" "${env[@]}" "$image" app-migrate /cacheside migrate >&2
  run app "$image" "$net" "$(mount_tmpfs /tmp)" "${env[@]}" -- /cacheside serve
  owned_by app 65532
  # The test pod's script: the block scalar under `args:` in the chart's test template.
  script=$(awk '/^      args:/ { on = 1; next } on && /^      [a-z]/ { exit } on && NR > 1 { sub(/^          /, ""); print }' \
    "$ROOT/charts/cacheside/templates/tests/test-cache-roundtrip.yaml" | sed '1{/^ *- |$/d}')
  [[ $script == *"OK: ready"* ]] || die "cannot read the test script from the chart: $script"
  "${CTR[@]}" run --rm --read-only --seccomp "$net" "$(mount_tmpfs /tmp)" --env BASE_URL=http://127.0.0.1:8080 \
    --env "API_TOKENS=$token" "$(import curl)" app-test sh -c "$script" >"$DIR/helm-test.log" 2>&1 ||
    { cat "$DIR/helm-test.log" >&2; die "the chart's helm test script failed"; }
  log "app: migrate, serve (uid 65532) on the postgres and redis images; helm test in the curl image: $(tail -n1 "$DIR/helm-test.log")"
  stop app
  stop app-redis
  stop app-pg SIGINT
}

check_jaeger() {
  local net
  run jaeger "$(import jaeger)" --mount "type=bind,src=$ROOT/k8s/observability/config,dst=/etc/jaeger,options=rbind:ro" \
    "$(mount_tmpfs /tmp)" -- /cmd/jaeger/jaeger-linux --config=/etc/jaeger/jaeger.yaml
  owned_by jaeger 10001
  net=$(netns_of jaeger)
  wait_until "jaeger /status answers 200" "${CTR[@]}" run --rm --read-only "$net" "$(import curl)" jaeger-probe \
    curl -fsS http://127.0.0.1:13133/status
  "${CTR[@]}" run --rm --read-only "$net" "$(import curl)" jaeger-query curl -fsS http://127.0.0.1:16686/api/services >/dev/null ||
    die "jaeger's query API does not answer"
  log "jaeger: healthy as uid 10001 (read-only root), query API answers"
  stop jaeger
}

check_otel_collector() {
  local net code
  run otelcol "$(import otel-collector)" --mount "type=bind,src=$ROOT/k8s/observability/config,dst=/conf,options=rbind:ro" \
    -- /otelcol-contrib --config=/conf/otel-collector.yaml
  owned_by otelcol 10001
  net=$(netns_of otelcol)
  wait_until "collector accepts OTLP/HTTP" "${CTR[@]}" run --rm --read-only "$net" "$(import curl)" otel-probe \
    curl -fsS -X POST -H 'Content-Type: application/json' -d '{"resourceSpans":[]}' http://127.0.0.1:4318/v1/traces
  code=$("${CTR[@]}" run --rm --read-only "$net" "$(import curl)" otel-metrics curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:8888/metrics)
  [[ $code == 200 ]] || die "collector metrics answered $code"
  log "otel-collector: accepts OTLP/HTTP as uid 10001 (read-only root), metrics answer"
  stop otelcol
}

# The collector's pipeline into Jaeger: both in one network namespace (the collector's listeners moved off
# Jaeger's ports by config overrides, its exporter pointed at Jaeger on loopback), a span posted to the
# collector is found in Jaeger's query API.
check_traces() {
  local net now span
  run traces-jaeger "$(import jaeger)" --mount "type=bind,src=$ROOT/k8s/observability/config,dst=/etc/jaeger,options=rbind:ro" \
    "$(mount_tmpfs /tmp)" -- /cmd/jaeger/jaeger-linux --config=/etc/jaeger/jaeger.yaml
  net=$(netns_of traces-jaeger)
  wait_until "jaeger /status answers 200" "${CTR[@]}" run --rm --read-only "$net" "$(import curl)" traces-probe \
    curl -fsS http://127.0.0.1:13133/status
  run traces-otelcol "$(import otel-collector)" "$net" \
    --mount "type=bind,src=$ROOT/k8s/observability/config,dst=/conf,options=rbind:ro" -- /otelcol-contrib \
    --config=/conf/otel-collector.yaml \
    '--config=yaml:receivers::otlp::protocols::grpc::endpoint: 127.0.0.1:14317' \
    '--config=yaml:receivers::otlp::protocols::http::endpoint: 127.0.0.1:14318' \
    '--config=yaml:exporters::otlp/jaeger::endpoint: 127.0.0.1:4317' \
    '--config=yaml:service::telemetry::metrics::readers: [{pull: {exporter: {prometheus: {host: 127.0.0.1, port: 18888}}}}]'
  now=$(date +%s)
  span='{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"images-smoke"}}]},'
  span+='"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",'
  span+="\"name\":\"smoke\",\"kind\":1,\"startTimeUnixNano\":\"${now}000000000\",\"endTimeUnixNano\":\"${now}500000000\"}]}]}]}"
  wait_until "collector takes the span" "${CTR[@]}" run --rm --read-only "$net" "$(import curl)" traces-post \
    curl -fsS -X POST -H 'Content-Type: application/json' -d "$span" http://127.0.0.1:14318/v1/traces
  wait_until "jaeger has the span's service" sh -c "${CTR[*]@Q} run --rm --read-only $net $(import curl) traces-query \
    curl -fsS http://127.0.0.1:16686/api/services | grep -q '\"images-smoke\"'"
  log "traces: a span posted to the collector reached Jaeger through its otlp exporter"
  stop traces-otelcol
  stop traces-jaeger
}

[[ $EUID -eq 0 ]] || die "needs root (containerd)"
(($# > 0)) || set -- "${ALL[@]}"
for c; do [[ " ${ALL[*]} " == *" $c "* ]] || die "unknown check $c (known: ${ALL[*]})"; done
# The images each check runs.
needs=()
for c; do
  case $c in
    app) needs+=(cacheside postgres redis curl) ;;
    jaeger | otel-collector) needs+=("$c" curl) ;;
    traces) needs+=(jaeger otel-collector curl) ;;
    *) needs+=("$c") ;;
  esac
done
mapfile -t needs < <(printf '%s\n' "${needs[@]}" | awk '!seen[$0]++')
"$IMAGES" build "${needs[@]}"
trap stop_containerd EXIT
start_containerd
for c; do
  start=$SECONDS
  "check_${c//-/_}"
  log "$c: passed in $((SECONDS - start))s"
done
log "all passed: $*"
