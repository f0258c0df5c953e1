#!/bin/sh
# Entrypoint of the Redis stand-in image (hack/cluster/images.sh), doing what the official redis image's
# docker-entrypoint.sh does: options or a .conf file as the first argument mean redis-server; started as root it
# hands /data to the redis user (uid 999) and drops to it (setpriv instead of gosu); the default umask becomes
# 0077. The chart does not use it: it runs redis-server directly as uid 999.
set -eu

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
	set -- redis-server "$@"
fi

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$(umask)" = 0022 ]; then
	umask 0077
fi

exec "$@"
