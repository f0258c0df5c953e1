#!/bin/sh
# Entrypoint of the Postgres stand-in image (hack/cluster/images.sh), doing what the official postgres image's
# docker-entrypoint.sh does, in POSIX sh:
#   - options as the first argument mean `postgres OPTIONS` (the chart passes only `-c name=value` args);
#   - started as root, it hands PGDATA and the socket directory to postgres (uid 70) and drops to it;
#   - on an empty PGDATA: initdb with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its password
#     (each also as a *_FILE), POSTGRES_INITDB_ARGS and POSTGRES_INITDB_WALDIR; a `host all all all` line with
#     POSTGRES_HOST_AUTH_METHOD (default: password_encryption, i.e. scram-sha-256); then a socket-only
#     temporary server creates POSTGRES_DB (default POSTGRES_USER) and runs /docker-entrypoint-initdb.d/*
#     (*.sh run or sourced, *.sql, *.sql.gz, *.sql.xz, *.sql.zst), and stops;
#   - then exec postgres with the arguments (PGPORT, from the env, sets its port).
# Not carried over: nss_wrapper for a uid that /etc/passwd does not know (initdb then fails: run as uid 70).
set -eu

# file_env VAR [DEFAULT]: VAR, or the contents of the file VAR_FILE names (not both), else DEFAULT.
file_env() {
	_var=$1
	_def=${2:-}
	eval "_val=\${$_var:-}"
	eval "_file=\${${_var}_FILE:-}"
	if [ -n "$_val" ] && [ -n "$_file" ]; then
		echo >&2 "error: both $_var and ${_var}_FILE are set (but are exclusive)"
		exit 1
	fi
	if [ -n "$_file" ]; then
		_val=$(cat "$_file")
	elif [ -z "$_val" ]; then
		_val=$_def
	fi
	export "$_var=$_val"
	unset "${_var}_FILE"
}

# want_help ARGS: postgres is only asked to print something (no setup then).
want_help() {
	for _arg; do
		case $_arg in
			-'?' | --help | --describe-config | -V | --version | -C) return 0 ;;
		esac
	done
	return 1
}

create_db_directories() {
	mkdir -p "$PGDATA"
	# Fails on a volume postgres does not own; initdb then says what is wrong.
	chmod 00700 "$PGDATA" 2>/dev/null || :
	mkdir -p /var/run/postgresql 2>/dev/null || :
	chmod 03775 /var/run/postgresql 2>/dev/null || :
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
		chmod 700 "$POSTGRES_INITDB_WALDIR" 2>/dev/null || :
	fi
	if [ "$(id -u)" = 0 ]; then
		find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
		find /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
		if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
			find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres:postgres '{}' +
		fi
	fi
}

verify_minimum_env() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'EOM'
			Error: Database is uninitialized and superuser password is not specified.
			       You must specify POSTGRES_PASSWORD to a non-empty value for the
			       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

			       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
			       connections without a password. This is *not* recommended.
		EOM
		exit 1
	fi
	if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
		echo >&2 'WARNING: POSTGRES_HOST_AUTH_METHOD has been set to "trust": every connection is accepted without a password.'
	fi
}

init_database_dir() {
	_waldir=
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		_waldir="--waldir=$POSTGRES_INITDB_WALDIR"
	fi
	# The trailing newline matters: initdb refuses an empty password file, not an empty password.
	printf '%s\n' "$POSTGRES_PASSWORD" |
		eval 'initdb --username="$POSTGRES_USER" --pwfile=/dev/stdin ${_waldir:+"$_waldir"} '"$POSTGRES_INITDB_ARGS"
}

setup_hba_conf() {
	if [ -z "$POSTGRES_HOST_AUTH_METHOD" ]; then
		POSTGRES_HOST_AUTH_METHOD=$(postgres -C password_encryption "$@")
	fi
	{
		printf '\n'
		if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
			printf '# warning trust is enabled for all connections\n'
		fi
		printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
	} >>"$PGDATA/pg_hba.conf"
}

# quote ARGS: ARGS as one shell-quoted string (pg_ctl -o hands its options to a shell).
quote() {
	for _arg; do
		printf "'%s' " "$(printf '%s' "$_arg" | sed "s/'/'\\\\''/g")"
	done
}

temp_server_start() {
	NOTIFY_SOCKET='' PGUSER="${PGUSER:-$POSTGRES_USER}" \
		pg_ctl -D "$PGDATA" -o "$(quote "$@" -c listen_addresses= -p "${PGPORT:-5432}")" -w start
}

temp_server_stop() {
	PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
}

# process_sql DB [PSQL ARGS]: psql as the superuser into DB over the temporary server's socket.
process_sql() {
	_db=$1
	shift
	PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc \
		--dbname "$_db" "$@"
}

setup_db() {
	_exists=$(process_sql postgres --set db="$POSTGRES_DB" --tuples-only <<-'EOSQL'
		SELECT 1 FROM pg_database WHERE datname = :'db' ;
	EOSQL
	)
	if [ -z "$_exists" ]; then
		process_sql postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db" ;
		EOSQL
		printf '\n'
	fi
}

process_init_files() {
	for f; do
		case $f in
			*.sh)
				if [ -x "$f" ]; then
					printf '%s: running %s\n' "$0" "$f"
					"$f"
				else
					printf '%s: sourcing %s\n' "$0" "$f"
					# shellcheck disable=SC1090
					. "$f"
				fi
				;;
			*.sql) printf '%s: running %s\n' "$0" "$f"; process_sql "$POSTGRES_DB" -f "$f"; printf '\n' ;;
			*.sql.gz) printf '%s: running %s\n' "$0" "$f"; gunzip -c "$f" | process_sql "$POSTGRES_DB"; printf '\n' ;;
			*.sql.xz) printf '%s: running %s\n' "$0" "$f"; xzcat "$f" | process_sql "$POSTGRES_DB"; printf '\n' ;;
			*.sql.zst) printf '%s: running %s\n' "$0" "$f"; zstd -dc "$f" | process_sql "$POSTGRES_DB"; printf '\n' ;;
			*) if [ -e "$f" ]; then printf '%s: ignoring %s\n' "$0" "$f"; fi ;;
		esac
	done
}

if [ "${1#-}" != "$1" ]; then
	set -- postgres "$@"
fi

if [ "$1" = postgres ] && ! want_help "$@"; then
	: "${PGDATA:=/var/lib/postgresql/data}"
	export PGDATA
	if [ "$(id -u)" = 0 ]; then
		create_db_directories
		exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
	fi
	create_db_directories
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=}"
	shift # the options for the temporary server and hba's default: those after `postgres`
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		verify_minimum_env
		# Fails early, with a clear message, when the directory cannot be read.
		ls /docker-entrypoint-initdb.d/ >/dev/null
		init_database_dir
		setup_hba_conf "$@"
		export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
		temp_server_start "$@"
		setup_db
		process_init_files /docker-entrypoint-initdb.d/*
		temp_server_stop
		unset PGPASSWORD
		printf '\nPostgreSQL init process complete; ready for start up.\n\n'
	else
		printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
	fi
	set -- postgres "$@"
fi

exec "$@"
