# shellcheck shell=bash
#
# hack/lib/local.sh: start and stop throwaway PostgreSQL and Redis servers as
# plain processes (no Docker, no system services), for hack/test.sh and
# hack/run.sh.  Source it, don't execute it:
#
#   source hack/lib/local.sh
#   local::ensure_packages                      # exports PG_BINDIR, REDIS_SERVER
#   port=$(local::free_port)
#   local::pg_start .run/test/pg "$port"        # ... local::pg_stop .run/test/pg
#
# Conventions:
#   * Everything logs to stderr; stdout only carries values (local::free_port,
#     local::pg_url, local::redis_url), so $(...) captures stay clean.
#   * Callers use `set -euo pipefail`, but bash ignores `set -e` inside a
#     function called from an `if`/`||`, so every step that can fail checks
#     itself and returns non-zero with a message instead of relying on errexit.
#   * local::pg_start and local::redis_start are idempotent.  They set
#     LOCAL_LAST_STARTED=1 (see local::last_started) when they really started
#     a server and 0 when it was already running, so callers stop only what
#     they started.
#
# Knobs (environment):
#   LOCAL_PG_FSYNC=on|off  durability of clusters started by local::pg_start
#                          (default on).  "off" also turns off
#                          synchronous_commit and full_page_writes: much
#                          faster, and fine for clusters that are thrown away.
#   LOCAL_PG_OSUSER=name   when running as root: the OS user to run PostgreSQL
#                          as (default "postgres" if it exists, else a system
#                          user "cacheside", created on demand).
#   LOCAL_TIMEOUT=seconds  how long to wait for servers to start/stop (60).

# Role and database every local cluster gets; the URLs below depend on them.
LOCAL_PG_SUPERUSER=postgres
LOCAL_PG_DATABASE=cacheside

LOCAL_LAST_STARTED=0

# local::last_started: did the latest local::pg_start/local::redis_start
# really start a server (as opposed to finding it running)?
local::last_started() {
	((LOCAL_LAST_STARTED == 1))
}

local::log() {
	printf '[local] %s\n' "$*" >&2
}

# local::_show_log FILE: on failure, the tail of a server log is usually the
# whole explanation, and in CI nobody can go and look at the file afterwards.
local::_show_log() {
	[[ -r $1 ]] || return 0
	local::log "last lines of $1:"
	tail -n 25 -- "$1" | sed 's/^/    /' >&2 || true
}

# ---------------------------------------------------------------------------
# Waiting helpers: poll with a deadline, never a bare long sleep.

# local::wait_until SECONDS WHAT CMD...: run CMD every 0.1s until it succeeds.
local::wait_until() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@"; do
		if ((SECONDS >= deadline)); then
			local::log "timed out after ${timeout}s waiting for ${what}"
			return 1
		fi
		sleep 0.1
	done
}

# local::tcp_open PORT: does something accept connections on 127.0.0.1:PORT?
# Uses bash's /dev/tcp so no nc/ss is needed.  Runs in a subshell so the
# socket is closed again when it returns.
local::tcp_open() (
	exec 3<>"/dev/tcp/127.0.0.1/$1"
) 2>/dev/null

# local::wait_tcp PORT [SECONDS]
local::wait_tcp() {
	local::wait_until "${2:-${LOCAL_TIMEOUT:-60}}" "127.0.0.1:$1 to accept connections" local::tcp_open "$1"
}

# local::_alive PID: process exists and is not a zombie.  Our daemons are
# reparented to PID 1, which may not reap them promptly in a container, and a
# zombie still passes `kill -0`.
local::_alive() {
	local stat
	kill -0 "$1" 2>/dev/null || return 1
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0 # no procfs: trust kill -0
	stat=${stat##*) }                                   # state follows "(comm) "
	[[ ${stat:0:1} != Z ]]
}

local::_gone() { ! local::_alive "$1"; }

# local::_pid_is PID COMM: guards against acting on a recycled PID from a
# stale pid file.
local::_pid_is() {
	local comm
	local::_alive "$1" || return 1
	comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 0 # no procfs: trust liveness
	[[ $comm == "$2" ]]
}

# local::_stop_pid PID NAME SIG ESCALATE: send SIG, wait, then ESCALATE, then KILL.
local::_stop_pid() {
	local pid=$1 name=$2 sig=$3 escalate=$4 timeout=${LOCAL_TIMEOUT:-60}
	kill -s "$sig" "$pid" 2>/dev/null || true
	local::wait_until "$timeout" "$name (pid $pid) to exit" local::_gone "$pid" && return 0
	local::log "sending SIG$escalate to $name (pid $pid)"
	kill -s "$escalate" "$pid" 2>/dev/null || true
	local::wait_until 10 "$name (pid $pid) to exit" local::_gone "$pid" && return 0
	kill -s KILL "$pid" 2>/dev/null || true
	local::wait_until 5 "$name (pid $pid) to exit" local::_gone "$pid"
}

# local::free_port: print a TCP port nobody listens on.  Best: ask the kernel
# (bind port 0).  Without python3: try random ports below the usual ephemeral
# range (32768+) so outgoing connections are unlikely to grab it meanwhile.
local::free_port() {
	local port i
	if command -v python3 >/dev/null 2>&1 &&
		port=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' 2>/dev/null) && [[ $port =~ ^[0-9]+$ ]]; then
		printf '%s\n' "$port"
		return 0
	fi
	for ((i = 0; i < 200; i++)); do
		port=$((20000 + RANDOM % 12000))
		if ! local::tcp_open "$port"; then
			printf '%s\n' "$port"
			return 0
		fi
	done
	local::log "could not find a free TCP port"
	return 1
}

# ---------------------------------------------------------------------------
# Packages

local::_is_pg_bindir() {
	[[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]
}

# Sets PG_BINDIR (not exported here) or returns 1.
local::_find_pg_bindir() {
	local d initdb
	if [[ -n ${PG_BINDIR:-} ]]; then
		local::_is_pg_bindir "$PG_BINDIR" && return 0
		local::log "PG_BINDIR=$PG_BINDIR lacks initdb/pg_ctl/postgres; looking elsewhere"
	fi
	# Debian/Ubuntu keep server binaries off PATH in a directory per major
	# version; prefer the newest.
	while IFS= read -r d; do
		if local::_is_pg_bindir "$d"; then
			PG_BINDIR=$d
			return 0
		fi
	done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -rV)
	# Elsewhere (Fedora, Homebrew, source builds, symlinks in /usr/local/bin)
	# they are on PATH.  Resolve symlinks: all three must sit together.
	initdb=$(command -v initdb 2>/dev/null) || return 1
	for d in "$(dirname -- "$(readlink -f -- "$initdb")")" "$(dirname -- "$initdb")"; do
		if local::_is_pg_bindir "$d"; then
			PG_BINDIR=$d
			return 0
		fi
	done
	return 1
}

# Sets REDIS_SERVER (not exported here) or returns 1.
local::_find_redis_server() {
	local p
	if [[ -n ${REDIS_SERVER:-} ]]; then
		[[ -x $REDIS_SERVER ]] && return 0
		local::log "REDIS_SERVER=$REDIS_SERVER is not executable; looking elsewhere"
	fi
	# /usr/sbin is often missing from a non-root PATH.
	for p in "$(command -v redis-server 2>/dev/null)" /usr/bin/redis-server /usr/sbin/redis-server /usr/local/bin/redis-server; do
		if [[ -n $p && -x $p ]]; then
			REDIS_SERVER=$p
			return 0
		fi
	done
	return 1
}

# local::apt_install PKG...: install Debian/Ubuntu packages when we may (root,
# or passwordless sudo); otherwise print the exact command and fail.
local::apt_install() {
	local sudo=()
	local cmd="apt-get update && apt-get install -y --no-install-recommends $*"
	if ! command -v apt-get >/dev/null 2>&1; then
		local::log "missing: $*. This is not a Debian/Ubuntu system: install the equivalent packages with your package manager"
		local::log "(or point PG_BINDIR at the directory holding initdb/pg_ctl/postgres and REDIS_SERVER at redis-server)"
		return 1
	fi
	if ((EUID != 0)); then
		if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
			sudo=(sudo -n)
		else
			local::log "missing: $*. Install with:"
			local::log "    sudo sh -c '$cmd'"
			return 1
		fi
	fi
	local::log "installing $* (${sudo[*]:+${sudo[*]} }$cmd)"
	# No stdin (CI), no prompts; apt's chatter goes to stderr like all our logs.
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 || return 1
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "$@" </dev/null >&2 || return 1
}

# local::ensure_packages: make sure PostgreSQL server binaries and
# redis-server exist (installing them if we may), then export
#   PG_BINDIR     directory with initdb, pg_ctl, postgres
#   REDIS_SERVER  path of redis-server
#   PG_RUN_AS     only when root: the unprivileged user PostgreSQL must run as
# so that Go tests can start private servers the same way.
local::ensure_packages() {
	local missing=()
	local::_find_pg_bindir || missing+=(postgresql)
	local::_find_redis_server || missing+=(redis-server)
	if ((${#missing[@]} > 0)); then
		# On Debian installing "postgresql" also creates and tries to start a
		# system cluster on 5432 (and redis-server a system Redis on 6379).
		# Harmless: we never use them.
		local::apt_install "${missing[@]}" || return 1
		if ! local::_find_pg_bindir; then
			local::log "PostgreSQL server binaries still not found after installing"
			return 1
		fi
		if ! local::_find_redis_server; then
			local::log "redis-server still not found after installing"
			return 1
		fi
	fi
	export PG_BINDIR REDIS_SERVER
	if ((EUID == 0)); then
		PG_RUN_AS=$(local::_pg_osuser) || return 1
		export PG_RUN_AS
	fi
}

# local::ensure_race_toolchain: `go test -race` needs cgo, i.e. a C compiler,
# which minimal images lack.  Without one Go silently sets CGO_ENABLED=0 and
# -race fails with a confusing message.
local::ensure_race_toolchain() {
	local cc
	cc=$(go env CC) || return 1
	cc=${cc%% *}
	command -v "${cc:-gcc}" >/dev/null 2>&1 && return 0
	local::log "go test -race needs a C compiler (${cc:-gcc}) for cgo"
	local::apt_install gcc libc6-dev
}

# ---------------------------------------------------------------------------
# PostgreSQL
#
# Layout of a cluster DIR (all owned by the user PostgreSQL runs as):
#   DIR/data               PGDATA
#   DIR/data/cacheside.conf  our settings, rewritten on every start
#   DIR/log                server log (initdb output too)
#   DIR/.s.PGSQL.<port>    unix socket (kept out of /var/run/postgresql)
#   DIR/.initialised       written once initdb + CREATE DATABASE succeeded
#
# PostgreSQL refuses to run as root.  As root we run initdb/pg_ctl/postgres
# as an unprivileged user via runuser (no login shell, no PAM session
# needed), falling back to setpriv.  If that user cannot reach DIR (e.g. the
# repo lives under /root, mode 700) DIR becomes a symlink to a directory
# under /var/tmp that it can reach; local::pg_destroy removes both.

# Prints the OS user to run PostgreSQL as (root only), creating it if needed.
local::_pg_osuser() {
	local u=${LOCAL_PG_OSUSER:-}
	if [[ -z $u ]]; then
		if id -u postgres >/dev/null 2>&1; then u=postgres; else u=cacheside; fi
	fi
	if ! id -u "$u" >/dev/null 2>&1; then
		if [[ $u != cacheside ]]; then
			local::log "LOCAL_PG_OSUSER=$u: no such user"
			return 1
		fi
		local::log "creating system user $u to run PostgreSQL (it refuses to run as root)"
		# Ignore a failure if a concurrent run created it first.
		useradd --system --user-group --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin "$u" >&2 || id -u "$u" >/dev/null 2>&1 || return 1
	fi
	printf '%s\n' "$u"
}

# local::_as USER CMD...: run CMD as USER (or as ourselves if USER is empty).
# cd / first: pg_ctl and initdb fail when they cannot read the current
# directory, which the unprivileged user often cannot.
local::_as() {
	local user=$1
	shift
	if [[ -z $user ]]; then
		"$@"
	elif command -v runuser >/dev/null 2>&1; then
		(cd / && runuser -u "$user" -- "$@")
	else
		(cd / && setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- "$@")
	fi
}

# local::_pg_home DIR USER: create DIR if needed and print the absolute
# directory the cluster really lives in (DIR itself, or the target of the
# DIR symlink, see above).
local::_pg_home() {
	local dir=$1 user=$2 home parent
	if [[ -L $dir ]]; then
		home=$(readlink -f -- "$dir")
		if [[ -d $home ]]; then
			printf '%s\n' "$home"
			return 0
		fi
		# The /var/tmp target vanished (cleaned up, reboot); start afresh.
		rm -f -- "$dir"
	fi
	mkdir -p -- "$dir" || return 1
	home=$(cd -- "$dir" && pwd -P) || return 1
	if [[ -n $user ]]; then
		chown "$user:" "$home" || return 1
		chmod 700 "$home" || return 1
		if ! local::_as "$user" test -w "$home" -a -x "$home"; then
			if [[ -n $(ls -A -- "$home") ]]; then
				local::log "user $user cannot reach $home (check the permissions of its parents) and it is not empty"
				return 1
			fi
			parent=$(dirname -- "$home")
			rmdir -- "$home"
			home=$(mktemp -d /var/tmp/cacheside-pg.XXXXXX) || return 1
			chown "$user:" "$home" || return 1
			ln -s -- "$home" "$parent/$(basename -- "$dir")" || return 1
			local::log "user $user cannot reach $parent; keeping the cluster in $home (symlinked from $dir)"
		fi
	fi
	printf '%s\n' "$home"
}

# local::_pg_pid HOME: print the postmaster PID if the cluster is running.
local::_pg_pid() {
	local pid
	[[ -r $1/data/postmaster.pid ]] || return 1
	read -r pid <"$1/data/postmaster.pid" || return 1
	[[ $pid =~ ^[0-9]+$ ]] && local::_pid_is "$pid" postgres || return 1
	printf '%s\n' "$pid"
}

local::_pg_quote() {
	local s=$1
	printf "'%s'" "${s//\'/\'\'}"
}

# local::_pg_write_conf HOME PORT USER: settings applied on every start, so
# the port or LOCAL_PG_FSYNC can change between starts of a dev cluster.
local::_pg_write_conf() {
	local home=$1 port=$2 user=$3 sockdir fsync=${LOCAL_PG_FSYNC:-on}
	case $fsync in
	on | off) ;;
	*)
		local::log "LOCAL_PG_FSYNC must be on or off, not '$fsync'"
		return 1
		;;
	esac
	# Unix socket paths are limited to 107 bytes; a deep checkout can exceed
	# that, and nothing we run needs the socket (pg_ctl -w reads
	# postmaster.pid, clients use TCP), so go TCP-only then.
	sockdir=$home
	if ((${#home} + ${#port} + 13 > 107)); then
		local::log "$home is too long for a unix socket path; TCP only"
		sockdir=
	fi
	cat >"$home/data/cacheside.conf" <<EOF || return 1
# Written by hack/lib/local.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = $(local::_pg_quote "$sockdir")
# Tests create a database per test and run packages in parallel.
max_connections = 200
# Small footprint for a 2-core laptop/CI box.
shared_buffers = 64MB
work_mem = 4MB
maintenance_work_mem = 32MB
max_worker_processes = 4
max_parallel_workers = 2
max_parallel_workers_per_gather = 1
max_wal_size = 256MB
min_wal_size = 32MB
# Durability: LOCAL_PG_FSYNC=off for throwaway clusters.
fsync = $fsync
synchronous_commit = $fsync
full_page_writes = $fsync
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
	if [[ -n $user ]]; then chown "$user:" "$home/data/cacheside.conf" || return 1; fi
}

# local::_pg_init HOME USER BINDIR: initdb + role + database, once.
local::_pg_init() {
	local home=$1 user=$2 bindir=$3 log=$1/log out
	local initdb_args=(-D "$home/data" -U "$LOCAL_PG_SUPERUSER" --auth=trust --encoding=UTF8 --no-locale)
	# An interrupted earlier init leaves a half-made data dir; it holds nothing.
	rm -rf -- "${home:?}/data"
	[[ ${LOCAL_PG_FSYNC:-on} == off ]] && initdb_args+=(--no-sync)
	local::log "initialising PostgreSQL cluster in $home/data"
	# initdb -U makes the bootstrap superuser the role our URLs use; trust
	# auth on local and host (127.0.0.1) lines means no passwords anywhere.
	if ! local::_as "$user" env LC_ALL=C "$bindir/initdb" "${initdb_args[@]}" >>"$log" 2>&1; then
		local::log "initdb failed"
		local::_show_log "$log"
		return 1
	fi
	printf '\n# Added by hack/lib/local.sh\ninclude_if_exists = %s\n' "'cacheside.conf'" >>"$home/data/postgresql.conf" || return 1
	# Create the database in single-user mode: no server, port or socket
	# needed yet, and no dependency on psql/createdb being installed.
	# postgres --single exits 0 even when the statement fails, so look at
	# its output too.
	if ! out=$(printf 'CREATE DATABASE %s;\n' "$LOCAL_PG_DATABASE" |
		local::_as "$user" env LC_ALL=C "$bindir/postgres" --single -D "$home/data" template1 2>&1) ||
		[[ $out == *ERROR:* ]]; then
		printf '%s\n' "$out" >>"$log"
		local::log "creating database $LOCAL_PG_DATABASE failed"
		local::_show_log "$log"
		return 1
	fi
	printf '%s\n' "$out" >>"$log"
	: >"$home/.initialised"
}

# local::_pg_major BINDIR: e.g. "15".
local::_pg_major() {
	local v
	v=$("$1/postgres" --version) || return 1
	v=${v#*) } # "postgres (PostgreSQL) 15.20 (Debian ...)" -> "15.20 (Debian ...)"
	printf '%s\n' "${v%%[.\ ]*}"
}

# local::pg_start DIR PORT: initialise (once) and start a cluster in DIR
# listening on 127.0.0.1:PORT.  Idempotent.
local::pg_start() {
	local dir=${1:?usage: local::pg_start DIR PORT} port=${2:?usage: local::pg_start DIR PORT}
	local user="" home pid running_port bindir want have timeout=${LOCAL_TIMEOUT:-60}
	LOCAL_LAST_STARTED=0
	if ! local::_find_pg_bindir; then
		local::log "PostgreSQL server binaries not found; call local::ensure_packages first"
		return 1
	fi
	bindir=$PG_BINDIR
	if ((EUID == 0)); then user=$(local::_pg_osuser) || return 1; fi
	home=$(local::_pg_home "$dir" "$user") || return 1
	# Log file created by the server's user: pg_ctl (as that user) appends to it.
	if [[ ! -e $home/log ]]; then
		: >"$home/log" || return 1
		if [[ -n $user ]]; then chown "$user:" "$home/log" || return 1; fi
	fi

	if pid=$(local::_pg_pid "$home"); then
		running_port=$(sed -n 4p "$home/data/postmaster.pid")
		if [[ $running_port != "$port" ]]; then
			local::log "PostgreSQL in $home is already running on port $running_port, not $port; stop it first"
			return 1
		fi
		local::log "PostgreSQL already running in $home (pid $pid, port $port)"
		return 0
	fi

	# A cluster made by another major version cannot be started by this one;
	# use that version's binaries if installed (Debian keeps them side by side).
	if [[ -f $home/.initialised && -r $home/data/PG_VERSION ]]; then
		want=$(<"$home/data/PG_VERSION")
		have=$(local::_pg_major "$bindir") || return 1
		if [[ $want != "$have" ]]; then
			if local::_is_pg_bindir "/usr/lib/postgresql/$want/bin"; then
				bindir=/usr/lib/postgresql/$want/bin
			else
				local::log "$home was created by PostgreSQL $want but $bindir is $have; remove $dir (make clean) to start afresh"
				return 1
			fi
		fi
	fi

	if [[ ! -f $home/.initialised ]]; then
		local::_pg_init "$home" "$user" "$bindir" || return 1
	fi
	local::_pg_write_conf "$home" "$port" "$user" || return 1

	local::log "starting PostgreSQL on 127.0.0.1:$port (data $home/data, log $home/log)"
	# -w: wait until postmaster.pid says "ready".  pg_ctl starts the server in
	# its own session, so a Ctrl-C aimed at our script does not hit it.
	if ! local::_as "$user" env LC_ALL=C "$bindir/pg_ctl" start -w -t "$timeout" -s \
		-D "$home/data" -l "$home/log" </dev/null >&2; then
		local::log "PostgreSQL failed to start"
		local::_show_log "$home/log"
		return 1
	fi
	local::wait_tcp "$port" "$timeout" || return 1
	LOCAL_LAST_STARTED=1
}

# local::pg_stop DIR: fast shutdown (SIGINT: roll back sessions, checkpoint,
# exit).  A signal rather than pg_ctl so stopping needs neither the binaries
# nor the server's user.  Idempotent.
local::pg_stop() {
	local dir=${1:?usage: local::pg_stop DIR} home pid
	[[ -e $dir ]] || return 0
	home=$(readlink -f -- "$dir") || return 0
	pid=$(local::_pg_pid "$home") || return 0
	local::log "stopping PostgreSQL in $home (pid $pid)"
	# Escalate to SIGQUIT: immediate shutdown.
	local::_stop_pid "$pid" PostgreSQL INT QUIT
}

# local::pg_destroy DIR: stop and delete the cluster (and its /var/tmp home).
local::pg_destroy() {
	local dir=${1:?usage: local::pg_destroy DIR} home
	[[ -e $dir || -L $dir ]] || return 0
	local::pg_stop "$dir" || return 1
	if [[ -L $dir ]]; then
		home=$(readlink -f -- "$dir")
		# Only ever delete a target we created.
		if [[ $home == /var/tmp/cacheside-pg.* ]]; then rm -rf -- "$home"; fi
	fi
	rm -rf -- "$dir"
}

# local::pg_url PORT: superuser URL for a cluster started by local::pg_start.
local::pg_url() {
	printf 'postgres://%s@127.0.0.1:%s/%s?sslmode=disable\n' "$LOCAL_PG_SUPERUSER" "$1" "$LOCAL_PG_DATABASE"
}

# ---------------------------------------------------------------------------
# Redis (happy to run as root; no privilege dropping needed)

# local::redis_ping PORT: does a Redis answer PING on 127.0.0.1:PORT?
# Speaks RESP over /dev/tcp so redis-cli is not required.
local::redis_ping() (
	local reply=""
	exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
	printf 'PING\r\n' >&3
	IFS= read -r -t 2 reply <&3 || true
	[[ $reply == +PONG* ]]
) 2>/dev/null

local::_redis_pid() {
	local pid
	[[ -r $1/redis.pid ]] || return 1
	read -r pid <"$1/redis.pid" || return 1
	[[ $pid =~ ^[0-9]+$ ]] && local::_pid_is "$pid" redis-server || return 1
	printf '%s\n' "$pid"
}

# local::redis_start DIR PORT: a cache-only Redis (no RDB, no AOF) on
# 127.0.0.1:PORT with pid file and log in DIR.  Idempotent.
local::redis_start() {
	local dir=${1:?usage: local::redis_start DIR PORT} port=${2:?usage: local::redis_start DIR PORT}
	local pid timeout=${LOCAL_TIMEOUT:-60}
	LOCAL_LAST_STARTED=0
	if ! local::_find_redis_server; then
		local::log "redis-server not found; call local::ensure_packages first"
		return 1
	fi
	mkdir -p -- "$dir" && dir=$(cd -- "$dir" && pwd -P) || return 1

	if pid=$(local::_redis_pid "$dir"); then
		if local::redis_ping "$port"; then
			local::log "Redis already running in $dir (pid $pid, port $port)"
			return 0
		fi
		local::log "Redis from $dir (pid $pid) is running but not answering on port $port; stop it first"
		return 1
	fi
	rm -f -- "$dir/redis.pid"
	# Otherwise a foreign server on the port would answer our PINGs.
	if local::tcp_open "$port"; then
		local::log "port $port is already in use"
		return 1
	fi

	local::log "starting Redis on 127.0.0.1:$port (dir $dir, log $dir/log)"
	# --daemonize: own session (Ctrl-C aimed at us does not hit it) and
	# stdio to /dev/null (it won't hold our output pipe open).
	if ! "$REDIS_SERVER" --daemonize yes --bind 127.0.0.1 --port "$port" \
		--save "" --appendonly no --dir "$dir" \
		--pidfile "$dir/redis.pid" --logfile "$dir/log" </dev/null >&2; then
		local::log "redis-server failed to start"
		local::_show_log "$dir/log"
		return 1
	fi
	if ! local::wait_until "$timeout" "Redis to answer PING on port $port" local::redis_ping "$port" ||
		! local::_redis_pid "$dir" >/dev/null; then
		local::log "Redis failed to start"
		local::_show_log "$dir/log"
		return 1
	fi
	LOCAL_LAST_STARTED=1
}

# local::redis_stop DIR: SIGTERM (with --save "" it just exits).  Idempotent.
local::redis_stop() {
	local dir=${1:?usage: local::redis_stop DIR} pid
	[[ -d $dir ]] || return 0
	if pid=$(local::_redis_pid "$dir"); then
		local::log "stopping Redis in $dir (pid $pid)"
		local::_stop_pid "$pid" Redis TERM KILL || return 1
	fi
	rm -f -- "$dir/redis.pid"
}

local::redis_url() {
	printf 'redis://127.0.0.1:%s/0\n' "$1"
}

# ---------------------------------------------------------------------------
# local::supervise CMD...: run CMD and wait for it, forwarding INT/TERM.
#
# Why not just run it in the foreground: bash defers traps until a
# foreground child exits, so a SIGTERM aimed at the script alone (kill, CI
# timeout) would never reach the child and nothing would get cleaned up.
# So: CMD runs in the background in its own session (setsid), the script
# sits in `wait` (which traps interrupt), and the trap signals CMD's whole
# process group exactly once.  Its own session also means a terminal Ctrl-C
# reaches CMD only through us, not twice.  A second signal sends SIGKILL.
#
# LOCAL_SUPERVISE_SIGNAL=TERM forwards SIGTERM whatever we received (for
# servers whose graceful shutdown is wired to SIGTERM).  Returns CMD's status.
local::supervise() {
	local saved_int saved_term rc
	saved_int=$(trap -p INT)
	saved_term=$(trap -p TERM)
	_local_sv_pid="" _local_sv_pending="" _local_sv_count=0
	trap 'local::_sv_forward INT' INT
	trap 'local::_sv_forward TERM' TERM
	if command -v setsid >/dev/null 2>&1; then
		setsid "$@" &
	else
		"$@" &
	fi
	_local_sv_pid=$!
	if [[ -n $_local_sv_pending ]]; then local::_sv_signal "$_local_sv_pending"; fi
	while :; do
		rc=0
		wait "$_local_sv_pid" || rc=$?
		# >128 with the child still there: `wait` was interrupted by a trap.
		if ((rc > 128)) && kill -0 "$_local_sv_pid" 2>/dev/null; then continue; fi
		break
	done
	_local_sv_pid=""
	eval "${saved_int:-trap - INT}"
	eval "${saved_term:-trap - TERM}"
	return "$rc"
}

local::_sv_forward() {
	local sig=${LOCAL_SUPERVISE_SIGNAL:-$1}
	_local_sv_count=$((_local_sv_count + 1))
	if ((_local_sv_count > 1)); then sig=KILL; fi
	if [[ -z $_local_sv_pid ]]; then
		_local_sv_pending=$sig
		return 0
	fi
	local::log "got SIG$1: sending SIG$sig to pid $_local_sv_pid"
	local::_sv_signal "$sig"
}

local::_sv_signal() {
	# setsid made the child a process-group leader: signal its whole group
	# (e.g. go test and the test binaries it runs); fall back to the PID.
	kill -s "$1" -- "-$_local_sv_pid" 2>/dev/null || kill -s "$1" "$_local_sv_pid" 2>/dev/null || true
}
