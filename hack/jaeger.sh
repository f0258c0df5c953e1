#!/usr/bin/env bash
# Build, start and stop a local Jaeger v2 (all-in-one, in-memory storage) for
# tests and `make run`.
#
#   hack/jaeger.sh build       build .run/bin/jaeger-<version> if missing; print its path
#   hack/jaeger.sh start DIR   start in background (log DIR/jaeger.log, pid DIR/jaeger.pid),
#                              wait until healthy, print endpoints as KEY=VALUE lines
#   hack/jaeger.sh stop DIR    SIGTERM, wait, then SIGKILL; no-op if not running
#
# Jaeger is pinned in hack/jaeger/go.mod and built from Go modules, so there is
# no Docker or release download involved; bumping the version there makes
# `build` produce a new binary.
#
# Ports (all bound to $JAEGER_LISTEN_HOST, default 127.0.0.1) come from these
# env vars, read by hack/jaeger/config.yaml; set different ones to run two
# instances (say, tests and `make run`) side by side:
#   JAEGER_OTLP_GRPC_PORT   4317   OTLP/gRPC receiver
#   JAEGER_OTLP_HTTP_PORT   4318   OTLP/HTTP receiver (POST /v1/traces)
#   JAEGER_QUERY_PORT       16686  UI + HTTP query API (/api/v3/..., /api/...)
#   JAEGER_QUERY_GRPC_PORT  16685  gRPC query API
#   JAEGER_HEALTH_PORT      13133  healthcheckv2 (GET /status)
#   JAEGER_METRICS_PORT     8888   Jaeger's own Prometheus metrics (/metrics)
# Other knobs: JAEGER_START_TIMEOUT (s, default 60), JAEGER_STOP_TIMEOUT
# (s, default 10), JAEGER_LOG_LEVEL, JAEGER_MEMORY_MAX_TRACES,
# JAEGER_UI_ASSETS_PATH (see config.yaml), JAEGER_BIN_DIR (default .run/bin).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MOD_DIR=$ROOT/hack/jaeger
CONFIG=$MOD_DIR/config.yaml
BIN_DIR=${JAEGER_BIN_DIR:-$ROOT/.run/bin}
JAEGER_MODULE=github.com/jaegertracing/jaeger

# Defaults live here as well as in config.yaml because the script needs the
# values to probe ports and health; the config keeps its own defaults so it
# also works when run by hand.
: "${JAEGER_LISTEN_HOST:=127.0.0.1}"
: "${JAEGER_OTLP_GRPC_PORT:=4317}"
: "${JAEGER_OTLP_HTTP_PORT:=4318}"
: "${JAEGER_QUERY_PORT:=16686}"
: "${JAEGER_QUERY_GRPC_PORT:=16685}"
: "${JAEGER_HEALTH_PORT:=13133}"
: "${JAEGER_METRICS_PORT:=8888}"
# Exported so the Jaeger process sees exactly the values the script probes.
export JAEGER_LISTEN_HOST JAEGER_OTLP_GRPC_PORT JAEGER_OTLP_HTTP_PORT \
  JAEGER_QUERY_PORT JAEGER_QUERY_GRPC_PORT JAEGER_HEALTH_PORT JAEGER_METRICS_PORT

log() { echo "jaeger.sh: $*" >&2; }
die() { log "$@"; exit 1; }

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# The pinned version, read straight from go.mod (no `go` invocation) so that
# the already-built fast path costs nothing. Handles both the one-line
# `require M v` form and a require block.
jaeger_version() {
  local v
  v=$(awk -v m="$JAEGER_MODULE" '
    $1 == "require" { $1 = ""; $0 = $0 }
    $1 == m && $2 ~ /^v/ { print $2; exit }
  ' "$MOD_DIR/go.mod")
  [[ -n $v ]] || die "cannot find $JAEGER_MODULE in $MOD_DIR/go.mod"
  echo "$v"
}

bin_path() { echo "$BIN_DIR/jaeger-$(jaeger_version)"; }

# Run go in the tools module. GOWORK=off: a go.work at the repo root (if one
# ever appears) would not list this module and would make the build fail.
go_tools() { (cd "$MOD_DIR" && GOWORK=off go "$@"); }

cmd_build() {
  local bin version dir v2 date
  bin=$(bin_path)
  if [[ -x $bin ]]; then
    echo "$bin"
    return
  fi
  version=$(jaeger_version)
  log "building Jaeger $version -> $bin (cold build takes minutes, later ones reuse the Go build cache)"
  go_tools mod download "$JAEGER_MODULE"
  dir=$(go_tools list -m -f '{{.Dir}}' "$JAEGER_MODULE")
  date=$(go_tools list -m -f '{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$JAEGER_MODULE")
  # Jaeger tags each release twice (v1.x.y for the v1 binaries, v2.x.y for
  # the `jaeger` v2 binary) and its own Makefile stamps the v2 tag into
  # cmd/jaeger. The Go module only knows v1.x.y, so look up the pair in the
  # module's CHANGELOG ("v1.76.0 / v2.13.0 (date)"); fall back to the module
  # version if the format ever changes.
  v2=$(awk -v v="$version" '$1 == v && $2 == "/" && $3 ~ /^v2\./ { print $3; exit }' "$dir/CHANGELOG.md" 2>/dev/null || true)
  mkdir -p "$BIN_DIR"
  # Build to a temp name and rename: an interrupted or concurrent build must
  # never leave a partial file that the -x check above would accept.
  BUILD_TMP=$(mktemp "$BIN_DIR/.jaeger-build.XXXXXX")
  trap 'rm -f "$BUILD_TMP"' EXIT
  # Static (CGO off) like the official image's binary, so one build serves the tests, `make run` and
  # the in-cluster image (hack/cluster/images.sh): a cold Jaeger build costs minutes, twice would hurt.
  CGO_ENABLED=0 go_tools build -o "$BUILD_TMP" -ldflags "\
-X $JAEGER_MODULE/internal/version.latestVersion=${v2:-$version} \
-X $JAEGER_MODULE/internal/version.commitSHA=module-$version \
-X $JAEGER_MODULE/internal/version.date=$date" \
    "$JAEGER_MODULE/cmd/jaeger"
  mv -f "$BUILD_TMP" "$bin"
  trap - EXIT
  echo "$bin"
}

# Host to connect to when probing: a wildcard listen address isn't dialable.
probe_host() {
  case $JAEGER_LISTEN_HOST in
    "" | 0.0.0.0 | "::" | "[::]") echo 127.0.0.1 ;;
    *) echo "$JAEGER_LISTEN_HOST" ;;
  esac
}

# http_ok PORT PATH: a GET of PATH is answered 200. bash's /dev/tcp, as curl is not on minimal
# Debian and Ubuntu images.
http_ok() {
  local line
  exec 3<>"/dev/tcp/$(probe_host)/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$(probe_host)" >&3
  IFS= read -r -t 1 line <&3
  exec 3<&- 3>&-
  [[ $line == "HTTP/"*" 200"* ]]
}

port_in_use() {
  # bash's /dev/tcp connect: succeeds only if something is listening.
  (exec 3<>"/dev/tcp/$(probe_host)/$1") 2>/dev/null
}

# True if PID is a live (non-zombie) process. After `stop` the process is no
# longer our child, so a zombie waiting for its reaper still answers kill -0.
alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ $state != Z ]]
}

read_pid() {
  local pidfile=$1/jaeger.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Guard against pid reuse after a reboot or a crash: only act on a process
  # that is actually one of our Jaeger binaries.
  [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *jaeger-*--config* ]] || return 1
  echo "$pid"
}

cmd_start() {
  local dir bin pid host deadline port name
  [[ $# -eq 1 ]] || usage
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)

  if pid=$(read_pid "$dir") && alive "$pid"; then
    die "already running in $dir (pid $pid); run: $0 stop $dir"
  fi
  rm -f "$dir/jaeger.pid"

  # Fail fast with a clear message instead of a bind error buried in the log
  # and, worse, a health probe answered by whoever else holds the port.
  for name in JAEGER_OTLP_GRPC_PORT JAEGER_OTLP_HTTP_PORT JAEGER_QUERY_PORT \
    JAEGER_QUERY_GRPC_PORT JAEGER_HEALTH_PORT JAEGER_METRICS_PORT; do
    port=${!name}
    if port_in_use "$port"; then
      die "port $port ($name) is already in use; pick another via $name"
    fi
  done

  bin=$(cmd_build)

  # stdin/stdout/stderr are all redirected so the background process holds no
  # pipe of the caller: otherwise e.g. Go's exec.Cmd.Output() or $(...) would
  # block until Jaeger exits.
  "$bin" --config "$CONFIG" </dev/null >>"$dir/jaeger.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/jaeger.pid"

  # Ready = healthcheckv2 says every component is OK *and* the query API
  # answers. Poll against a deadline rather than sleeping a fixed time.
  host=$(probe_host)
  deadline=$((SECONDS + ${JAEGER_START_TIMEOUT:-60} + 1)) # +1: see cmd_stop
  until http_ok "$JAEGER_HEALTH_PORT" /status 2>/dev/null &&
    http_ok "$JAEGER_QUERY_PORT" /api/v3/services 2>/dev/null; do
    if ! alive "$pid"; then
      rm -f "$dir/jaeger.pid"
      tail -n 20 "$dir/jaeger.log" >&2 || true
      die "Jaeger exited during startup; see $dir/jaeger.log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$dir/jaeger.log" >&2 || true
      cmd_stop "$dir"
      die "Jaeger not healthy after ${JAEGER_START_TIMEOUT:-60}s; see $dir/jaeger.log"
    fi
    sleep 0.1
  done
  # A probe can race with a bind failure on a later port; make sure it's still up.
  alive "$pid" || die "Jaeger exited during startup; see $dir/jaeger.log"

  log "Jaeger running (pid $pid), UI/API http://$host:$JAEGER_QUERY_PORT, log $dir/jaeger.log"
  cat <<EOF
JAEGER_PID=$pid
JAEGER_OTLP_GRPC_ENDPOINT=$host:$JAEGER_OTLP_GRPC_PORT
JAEGER_OTLP_HTTP_ENDPOINT=http://$host:$JAEGER_OTLP_HTTP_PORT
JAEGER_QUERY_URL=http://$host:$JAEGER_QUERY_PORT
EOF
}

cmd_stop() {
  local dir pid deadline
  [[ $# -eq 1 ]] || usage
  [[ -d $1 ]] || return 0
  dir=$(cd "$1" && pwd)
  # Idempotent: stopping something that isn't running is success, so cleanup
  # traps can call this unconditionally.
  if ! pid=$(read_pid "$dir") || ! alive "$pid"; then
    rm -f "$dir/jaeger.pid"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  # +1: SECONDS ticks in whole seconds, so this guarantees at least the full
  # timeout rather than anywhere between N-1 and N seconds.
  deadline=$((SECONDS + ${JAEGER_STOP_TIMEOUT:-10} + 1))
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if alive "$pid"; then
    log "pid $pid ignored SIGTERM for ${JAEGER_STOP_TIMEOUT:-10}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    while alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    alive "$pid" && die "pid $pid survived SIGKILL"
  fi
  rm -f "$dir/jaeger.pid"
}

case ${1:-} in
  build) shift; [[ $# -eq 0 ]] || usage; cmd_build ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) usage ;;
esac
