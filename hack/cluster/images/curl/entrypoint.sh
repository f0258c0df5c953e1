#!/bin/sh
# Entrypoint of the curl stand-in image (hack/cluster/images.sh), as curlimages/curl's: arguments that are
# options, or not a command, are curl's. The chart's `helm test` pod replaces it with `sh -c`.
set -e

if [ "${1#-}" != "${1}" ] || [ -z "$(command -v "${1}")" ]; then
	set -- curl "$@"
fi

exec "$@"
