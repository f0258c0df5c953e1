#!/usr/bin/env bash
# Build the images of the in-cluster test (make e2e-cluster) without Docker or a registry, and import them
# into the test cluster's containerd.
#
#   hack/cluster/images.sh build [NAME...]    write the archives under .run/cluster-cache/images/ (default: all)
#   hack/cluster/images.sh import [NAME...]   import them into the cluster $CLUSTER_DIR/env describes
#   hack/cluster/images.sh refs [NAME...]     print "NAME REFERENCE ARCHIVE" lines
#
# NAME is one of: pause cacheside postgres redis curl jaeger otel-collector. `cacheside:TAG` builds the
# service under another tag (default e2e-1, or $CACHESIDE_TAG); its VERSION is the tag unless
# $CACHESIDE_VERSION says otherwise, so e2e-2 has another binary, label and digest (the upgrade check).
#
# Each archive is an OCI image layout in a tar (hack/cluster/imagebuild writes it), named in index.json with
# the annotation `ctr images import` reads, io.containerd.image.name:
#   localhost/standin/pause:3.10         the sandbox image: a tiny static Go program (imagebuild/pause)
#   localhost/cacheside:<tag>            the service: built as the Dockerfile's build stage builds it, laid out
#                                        as its final stage (distroless static, nonroot 65532)
#   localhost/standin/postgres:17        Debian's postgresql-17 (trixie), uid 70, an entrypoint doing what the
#                                        official image's does (images/postgres/docker-entrypoint.sh)
#   localhost/standin/redis:7            Debian's redis-server 7 (bookworm), uid 999
#   localhost/standin/curl:8             sh and Debian's curl 8 (trixie), uid 100 as curlimages/curl
#   localhost/standin/jaeger:<v>         the Jaeger hack/jaeger.sh builds (static), uid 10001, as the official
#   localhost/standin/otel-collector:<v> a collector from the Go modules (hack/cluster/otelcol), uid 10001
# The Jaeger and collector tags are those of k8s/observability's manifests, which the checks rewrite to these.
#
# Every archive is cached with a key of its inputs (recipe, sources, versions) beside it; a warm run rebuilds
# nothing. Debian root filesystems come from mmdebstrap (installed from Debian when missing), from the
# default Debian mirror or $DEBIAN_MIRROR, and are cached by suite and package list. Building needs root
# (mmdebstrap's root mode, and files staged with their owners).

set -euo pipefail
shopt -s inherit_errexit
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/hack/cluster
CACHE=$ROOT/.run/cluster-cache
OUT=$CACHE/images
CLUSTER_DIR=${CLUSTER_DIR:-$ROOT/.run/cluster}

ALL=(pause cacheside postgres redis curl jaeger otel-collector)
CACHESIDE_TAG=${CACHESIDE_TAG:-e2e-1}
# Debian suites: trixie has PostgreSQL 17 and curl 8; bookworm has Redis 7 (trixie's is 8) and is the base of
# distroless' static-debian12, whose CA bundle and zoneinfo the static images carry.
POSTGRES_SUITE=trixie
POSTGRES_MAJOR=17
REDIS_SUITE=bookworm
CURL_SUITE=trixie
STATIC_SUITE=bookworm

log() { echo "images.sh: $*" >&2; }
die() { log "$@"; exit 1; }

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# manifest_tag FILE IMAGE: the tag of IMAGE in a k8s/observability manifest.
manifest_tag() {
  local tag
  tag=$(sed -n "s|^ *image: *$2:\([^ ]*\)$|\1|p" "$1")
  [[ -n $tag ]] || die "no $2 image in $1"
  echo "$tag"
}

# ref NAME[:TAG]: the image reference.
ref() {
  case $1 in
    pause) echo localhost/standin/pause:3.10 ;;
    cacheside) echo "localhost/cacheside:$CACHESIDE_TAG" ;;
    cacheside:*) echo "localhost/cacheside:${1#cacheside:}" ;;
    postgres) echo "localhost/standin/postgres:$POSTGRES_MAJOR" ;;
    redis) echo localhost/standin/redis:7 ;;
    curl) echo localhost/standin/curl:8 ;;
    jaeger) echo "localhost/standin/jaeger:$(manifest_tag "$ROOT/k8s/observability/jaeger.yaml" jaegertracing/jaeger)" ;;
    otel-collector) echo "localhost/standin/otel-collector:$(manifest_tag "$ROOT/k8s/observability/otel-collector.yaml" otel/opentelemetry-collector-contrib)" ;;
    *) die "unknown image $1 (known: ${ALL[*]}, cacheside:TAG)" ;;
  esac
}

# archive NAME[:TAG]: where its archive goes, e.g. .run/cluster-cache/images/cacheside-e2e-1.tar.
archive() {
  local r
  r=$(ref "$1")
  r=${r##*/}
  echo "$OUT/${r%%:*}-${r#*:}.tar"
}

# key [ARGS...]: a short hash of the arguments and of the files among them (by content). Each build passes
# its own recipe (`declare -f` of its functions) so a changed recipe is a changed key.
key() {
  local a
  for a; do
    if [[ -f $a ]]; then
      printf 'file %s %s\n' "${a#"$ROOT"/}" "$(sha256sum <"$a")"
    else
      printf 'arg %s\n' "$a"
    fi
  done | sha256sum | cut -c1-20
}

# fresh ARCHIVE KEY: the archive exists and was built from KEY (then UP_TO_DATE says so to cmd_build).
UP_TO_DATE=0
fresh() {
  [[ -f $1 && -f $1.key && $(<"$1.key") == "$2" ]] || return 1
  UP_TO_DATE=1
}

# go_in DIR ARGS...: go in a tooling module, ignoring any go.work.
go_in() { (cd "$1" && GOWORK=off go "${@:2}"); }

# tool: build hack/cluster/imagebuild once per version of its sources; print the binary.
tool() {
  local k dir
  k=$(key "$(go env GOVERSION)" "$HERE"/imagebuild/go.mod "$HERE"/imagebuild/go.sum "$HERE"/imagebuild/main.go)
  dir=$CACHE/imagebuild-$k
  if [[ ! -x $dir/imagebuild ]]; then
    log "building the imagebuild tool -> $dir"
    mkdir -p "$dir"
    go_in "$HERE/imagebuild" build -trimpath -o "$dir/imagebuild.part" .
    mv "$dir/imagebuild.part" "$dir/imagebuild"
    find "$CACHE" -maxdepth 1 -name 'imagebuild-*' ! -path "$dir" -exec rm -rf {} +
  fi
  echo "$dir/imagebuild"
}

# stage NAME: an empty staging directory for NAME's files (owners and modes are kept in the layer).
stage() {
  local d=$OUT/.stage/$1
  rm -rf "$d"
  mkdir -p "$d"
  echo "$d"
}

# need_mmdebstrap installs Debian's mmdebstrap when it is missing (a fresh machine has none): building is
# root's work anyway.
need_mmdebstrap() {
  command -v mmdebstrap >/dev/null && return
  log "installing Debian's mmdebstrap (to build the Debian root filesystems)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2; } ||
    die "could not install mmdebstrap (apt-get install mmdebstrap)"
}

# rootfs NAME SUITE PACKAGES HOOK [CUSTOMIZE]: a Debian root filesystem tar from mmdebstrap (variant essential:
# dpkg, sh and coreutils, no apt), without docs, man pages, locales' messages, apt lists or device nodes; HOOK
# runs (sh, $1 = the root) after the essential packages, before PACKAGES are installed (e.g. to fix a user's
# uid), CUSTOMIZE after them. Cached by its inputs: prints the tar.
rootfs() {
  local name=$1 suite=$2 packages=$3 hook=$4 customize=${5:-} k tar start
  k=$(key "$suite" "$packages" "$hook" "$customize" "$(declare -f rootfs)" "${DEBIAN_MIRROR:-}")
  tar=$CACHE/rootfs/$name-$suite-$k.tar
  if [[ -f $tar ]]; then
    echo "$tar"
    return
  fi
  need_mmdebstrap
  mkdir -p "$CACHE/rootfs"
  log "$name: mmdebstrap $suite with $packages (a minute or two)"
  start=$SECONDS
  local verbosity=--quiet # MMDEBSTRAP_VERBOSE=1 shows what dpkg and the hooks do
  [[ -z ${MMDEBSTRAP_VERBOSE:-} ]] || verbosity=--verbose
  # A clean PATH: a Python shim on PATH made mmdebstrap ten times slower.
  # shellcheck disable=SC2016 # $1 is the hook's argument, expanded by mmdebstrap's shell
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    mmdebstrap "$verbosity" --mode=root --format=tar --variant=essential --include="$packages" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/log/*' \
    --skip=output/dev \
    ${hook:+--essential-hook="$hook"} ${customize:+--customize-hook="$customize"} "$suite" "$tar.part" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} >&2
  mv "$tar.part" "$tar"
  # Older keys of the same root filesystem are dead weight (never descend: a running mmdebstrap has mounts).
  find "$CACHE/rootfs" -mindepth 1 -maxdepth 1 -name "$name-$suite-*" ! -path "$tar" ! -path "${tar%.tar}.files" \
    -exec rm -rf {} +
  log "$name: root filesystem $(du -h "$tar" | cut -f1) in $((SECONDS - start))s"
  echo "$tar"
}

# add_user_hook USER UID GROUP GID HOME SHELL: a rootfs HOOK adding a user and its group with fixed ids (the
# official images'), before the packages that would create them with the next free ids; fails if either id
# is taken.
add_user_hook() {
  # shellcheck disable=SC2016 # $1 is the hook's argument
  printf 'if grep -q "^[^:]*:[^:]*:%s:" "$1/etc/passwd" || grep -q "^[^:]*:[^:]*:%s:" "$1/etc/group"; then echo "uid %s or gid %s is taken" >&2; exit 1; fi; ' "$2" "$4" "$2" "$4"
  # shellcheck disable=SC2016
  printf 'echo "%s:x:%s:%s::%s:%s" >>"$1/etc/passwd"; echo "%s:x:%s:" >>"$1/etc/group"; ' "$1" "$2" "$4" "$5" "$6" "$3" "$4"
  # shellcheck disable=SC2016
  printf 'if [ -e "$1/etc/shadow" ]; then echo "%s:*:1::::::" >>"$1/etc/shadow"; fi; ' "$1"
  # shellcheck disable=SC2016
  printf 'if [ -e "$1/etc/gshadow" ]; then echo "%s:!::" >>"$1/etc/gshadow"; fi; ' "$3"
}

# static_files: the CA bundle and zoneinfo of Debian $STATIC_SUITE (what distroless static-debian12 carries),
# taken from a root filesystem with ca-certificates and tzdata installed; prints the directory holding them.
static_files() {
  local tar dir
  tar=$(rootfs static "$STATIC_SUITE" ca-certificates,tzdata '')
  dir=${tar%.tar}.files
  if [[ ! -d $dir ]]; then
    mkdir -p "$dir.part"
    tar -xf "$tar" -C "$dir.part" ./etc/ssl/certs/ca-certificates.crt ./usr/share/zoneinfo
    mv "$dir.part" "$dir"
  fi
  echo "$dir"
}

# stage_static_base DIR: the distroless static (nonroot) layout under DIR: /etc/passwd and /etc/group with root,
# nobody and nonroot (65532), /etc/nsswitch.conf, the CA bundle, zoneinfo, /tmp (1777), /root and
# /home/nonroot (0700, owned by nonroot).
stage_static_base() {
  local d=$1 files
  files=$(static_files)
  install -d -m 0755 "$d/etc/ssl/certs" "$d/usr/share"
  install -d -m 1777 "$d/tmp"
  install -d -m 0700 "$d/root"
  install -d -m 0700 -o 65532 -g 65532 "$d/home/nonroot"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$d/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$d/etc/group"
  printf '%s\n' 'hosts: files dns' >"$d/etc/nsswitch.conf"
  chmod 0644 "$d/etc/passwd" "$d/etc/group" "$d/etc/nsswitch.conf"
  install -m 0644 "$files/etc/ssl/certs/ca-certificates.crt" "$d/etc/ssl/certs/"
  cp -a "$files/usr/share/zoneinfo" "$d/usr/share/"
}

# The distroless static image's environment.
STATIC_ENV=(-env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  -env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)

build_pause() {
  local out=$1 k s
  k=$(key "$TOOL" "$(declare -f build_pause)" "$(go env GOVERSION)" "$HERE/imagebuild/pause/main.go")
  fresh "$out" "$k" && return
  s=$(stage pause)
  CGO_ENABLED=0 go_in "$HERE/imagebuild" build -trimpath -ldflags '-s -w' -o "$s/pause" ./pause
  "$TOOL" build -ref "$(ref pause)" -o "$out" -layer "$s" \
    -user 65535:65535 -entrypoint /pause
  echo "$k" >"$out.key"
}

# cacheside_build_command: the `go build` between the Dockerfile's cacheside:go-build markers, without RUN and
# its --mount flags (charts/tests/dockerfile_test.go reads the same lines): the image's binary is built by the
# very command the Dockerfile runs.
cacheside_build_command() {
  sed -n '/^# cacheside:go-build:begin$/,/^# cacheside:go-build:end$/p' "$ROOT/Dockerfile" |
    sed -e '/^#/d' -e 's/\\$//' | tr '\n' ' ' |
    sed -e 's/^ *RUN //' -e 's/--mount=[^ ]* *//g' -e 's/  */ /g'
}

build_cacheside() {
  local out=$1 tag=$2 version=${CACHESIDE_VERSION:-$2} commit created cmd k s bin f
  commit=$(git -C "$ROOT" rev-parse HEAD)
  created=$(git -C "$ROOT" log -1 --format=%ct)
  cmd=$(cacheside_build_command)
  [[ $cmd == *"go build"*"-o /out/cacheside ./app"* ]] || die "cannot read the go build command from the Dockerfile: $cmd"
  local -a inputs=("$ROOT/go.mod" "$ROOT/go.sum")
  while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$ROOT/app" -type f -print0 | sort -z)
  k=$(key "$TOOL" "$(declare -f build_cacheside stage_static_base static_files rootfs)" "$(go env GOVERSION)" "$cmd" "$tag" "$version" \
    "$commit" "$created" "${inputs[@]}")
  fresh "$out" "$k" && return
  s=$(stage "cacheside-$tag")
  stage_static_base "$s/base"
  mkdir -p "$s/app"
  bin=$s/app/cacheside
  log "cacheside:$tag: $cmd (VERSION=$version COMMIT=$commit)"
  # The build stage's environment: its ARGs, and no VCS stamping (the build context has no .git).
  # shellcheck disable=SC2016 # expanded by the eval below
  cmd=${cmd/"-o /out/cacheside"/'-o "$bin"'}
  (
    cd "$ROOT"
    export TARGETOS=linux TARGETARCH VERSION=$version COMMIT=$commit GOFLAGS=-buildvcs=false
    TARGETARCH=$(go env GOARCH)
    eval "$cmd"
  )
  chmod 0755 "$bin"
  "$TOOL" build -ref "$(ref "cacheside:$tag")" -o "$out" -created "$created" -layer "$s/base" -layer "$s/app" \
    "${STATIC_ENV[@]}" -user 65532:65532 -workdir /home/nonroot -entrypoint /cacheside -cmd serve -expose 8080/tcp \
    -label org.opencontainers.image.title=cacheside \
    -label 'org.opencontainers.image.description=Cache-aside demo API: Gin over Postgres with a Redis cache' \
    -label org.opencontainers.image.source=https://github.com/cacheside/cacheside \
    -label "org.opencontainers.image.version=$version" \
    -label "org.opencontainers.image.revision=$commit"
  echo "$k" >"$out.key"
}

build_postgres() {
  local out=$1 hook tar k s
  hook="$(add_user_hook postgres 70 postgres 70 /var/lib/postgresql /bin/bash)"
  # As the official image: no cluster of Debian's own (postgresql-common would create "main").
  # shellcheck disable=SC2016 # $1 is the hook's argument
  hook+='mkdir -p "$1/etc/postgresql-common/createcluster.d"; echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/standin.conf"'
  # Without LLVM (and z3, its dependency): 157 of the 379 MB, only for JIT compilation of expensive queries.
  # Without the provider library postgres runs with JIT unavailable (it checks that the file exists).
  local customize="rm -rf \"\$1\"/usr/lib/postgresql/$POSTGRES_MAJOR/lib/llvmjit* \"\$1\"/usr/lib/postgresql/$POSTGRES_MAJOR/lib/bitcode"
  # Trixie's names: another suite fails here, loudly.
  customize+="; chroot \"\$1\" dpkg --force-depends --purge libllvm19 libz3-4"
  # As the official image (its Dockerfile edits the sample initdb copies): listen on every address, or
  # no other pod reaches the server (the app's db-role init container waits forever).
  customize+="; sed -ri \"s!^#?(listen_addresses)\\s*=\\s*\\S+.*!\\1 = '*'!\" \"\$1\"/usr/share/postgresql/$POSTGRES_MAJOR/postgresql.conf.sample"
  customize+="; grep -q \"^listen_addresses = '\\*'\" \"\$1\"/usr/share/postgresql/$POSTGRES_MAJOR/postgresql.conf.sample"
  tar=$(rootfs postgres "$POSTGRES_SUITE" "postgresql-$POSTGRES_MAJOR" "$hook" "$customize")
  k=$(key "$TOOL" "$(declare -f build_postgres)" "${tar##*/}" "$HERE/images/postgres/docker-entrypoint.sh")
  fresh "$out" "$k" && return
  s=$(stage postgres)
  install -D -m 0755 "$HERE/images/postgres/docker-entrypoint.sh" "$s/usr/local/bin/docker-entrypoint.sh"
  ln -s usr/local/bin/docker-entrypoint.sh "$s/docker-entrypoint.sh"
  install -d -m 0755 "$s/docker-entrypoint-initdb.d"
  install -d -m 0755 -o 70 -g 70 "$s/var/lib/postgresql"
  install -d -m 1777 "$s/var/lib/postgresql/data"
  install -d -m 3777 -o 70 -g 70 "$s/run/postgresql"
  "$TOOL" build -ref "$(ref postgres)" -o "$out" -layer "$tar" -layer "$s" \
    -env "PATH=/usr/lib/postgresql/$POSTGRES_MAJOR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    -env "PG_MAJOR=$POSTGRES_MAJOR" -env LANG=C.UTF-8 -env PGDATA=/var/lib/postgresql/data \
    -volume /var/lib/postgresql/data -entrypoint /usr/local/bin/docker-entrypoint.sh -cmd postgres \
    -stop-signal SIGINT -expose 5432/tcp
  echo "$k" >"$out.key"
}

build_redis() {
  local out=$1 tar k s
  tar=$(rootfs redis "$REDIS_SUITE" redis-server,redis-tools "$(add_user_hook redis 999 redis 999 /var/lib/redis /usr/sbin/nologin)")
  k=$(key "$TOOL" "$(declare -f build_redis)" "${tar##*/}" "$HERE/images/redis/docker-entrypoint.sh")
  fresh "$out" "$k" && return
  s=$(stage redis)
  install -D -m 0755 "$HERE/images/redis/docker-entrypoint.sh" "$s/usr/local/bin/docker-entrypoint.sh"
  install -d -m 0755 -o 999 -g 999 "$s/data"
  "$TOOL" build -ref "$(ref redis)" -o "$out" -layer "$tar" -layer "$s" \
    -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    -volume /data -workdir /data -entrypoint /usr/local/bin/docker-entrypoint.sh -cmd redis-server -expose 6379/tcp
  echo "$k" >"$out.key"
}

build_curl() {
  local out=$1 tar k s
  # curlimages/curl's user: curl_user (uid 100) in curl_group (gid 101).
  tar=$(rootfs curl "$CURL_SUITE" curl,ca-certificates "$(add_user_hook curl_user 100 curl_group 101 /home/curl_user /bin/sh)")
  k=$(key "$TOOL" "$(declare -f build_curl)" "${tar##*/}" "$HERE/images/curl/entrypoint.sh")
  fresh "$out" "$k" && return
  s=$(stage curl)
  install -D -m 0755 "$HERE/images/curl/entrypoint.sh" "$s/entrypoint.sh"
  install -d -m 0755 -o 100 -g 101 "$s/home/curl_user"
  "$TOOL" build -ref "$(ref curl)" -o "$out" -layer "$tar" -layer "$s" \
    -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -env CURL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    -user 100:101 -workdir /home/curl_user -entrypoint /entrypoint.sh -cmd curl
  echo "$k" >"$out.key"
}

# jaeger_binary: the Jaeger of hack/jaeger.sh, static (CGO off) as the official image's: .run/bin's when it was
# built so, else built by hack/jaeger.sh into the cache with CGO_ENABLED=0.
jaeger_binary() {
  local version bin
  # As hack/jaeger.sh reads it: the one-line or the block form of require.
  version=$(awk -v m=github.com/jaegertracing/jaeger '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ { print $2; exit }' "$ROOT/hack/jaeger/go.mod")
  [[ -n $version ]] || die "cannot read Jaeger's version from hack/jaeger/go.mod"
  bin=$ROOT/.run/bin/jaeger-$version
  if [[ -x $bin ]] && go version -m "$bin" | grep -q 'CGO_ENABLED=0'; then
    echo "$bin"
    return
  fi
  bin=$CACHE/jaeger-$version-static/jaeger-$version
  if [[ ! -x $bin ]]; then
    log "jaeger: building Jaeger $version with CGO_ENABLED=0 (cold: several minutes)"
  fi
  CGO_ENABLED=0 JAEGER_BIN_DIR=$CACHE/jaeger-$version-static "$ROOT/hack/jaeger.sh" build >/dev/null
  echo "$bin"
}

build_jaeger() {
  local out=$1 bin k s
  bin=$(jaeger_binary)
  k=$(key "$TOOL" "$(declare -f build_jaeger stage_static_base static_files rootfs)" "$(stat -c '%n %s %Y' "$bin")")
  fresh "$out" "$k" && return
  s=$(stage jaeger)
  stage_static_base "$s/base"
  install -D -m 0755 "$bin" "$s/app/cmd/jaeger/jaeger-linux"
  # The official image's layout, user and ports (jaegertracing/jaeger: cmd/jaeger/Dockerfile).
  "$TOOL" build -ref "$(ref jaeger)" -o "$out" -layer "$s/base" -layer "$s/app" "${STATIC_ENV[@]}" \
    -user 10001 -entrypoint /cmd/jaeger/jaeger-linux -volume /tmp \
    -expose 4317/tcp -expose 4318/tcp -expose 5778/tcp -expose 9411/tcp -expose 13133/tcp \
    -expose 14250/tcp -expose 14268/tcp -expose 16685/tcp -expose 16686/tcp -expose 8888/tcp
  echo "$k" >"$out.key"
}

build_otel_collector() {
  local out=$1 mod=$HERE/otelcol k s
  k=$(key "$TOOL" "$(declare -f build_otel_collector stage_static_base static_files rootfs)" "$(go env GOVERSION)" "$mod/go.mod" "$mod/go.sum" "$mod/main.go")
  fresh "$out" "$k" && return
  s=$(stage otel-collector)
  stage_static_base "$s/base"
  mkdir -p "$s/app"
  log "otel-collector: building hack/cluster/otelcol (cold: a few minutes)"
  CGO_ENABLED=0 go_in "$mod" build -trimpath -ldflags '-s -w' -o "$s/app/otelcol-contrib" .
  # The official contrib image's binary name, user and ports; the manifest passes --config.
  "$TOOL" build -ref "$(ref otel-collector)" -o "$out" -layer "$s/base" -layer "$s/app" "${STATIC_ENV[@]}" \
    -user 10001:10001 -entrypoint /otelcol-contrib \
    -expose 4317/tcp -expose 4318/tcp -expose 55678/tcp -expose 55679/tcp
  echo "$k" >"$out.key"
}

cmd_build() {
  local name out start
  [[ $EUID -eq 0 ]] || die "build needs root (mmdebstrap's root mode; files staged with their owners)"
  (($# > 0)) || set -- "${ALL[@]}"
  mkdir -p "$OUT"
  # Each image's key holds the tool's path, which holds the hash of the tool's sources.
  TOOL=$(tool)
  for name; do
    out=$(archive "$name")
    start=$SECONDS
    UP_TO_DATE=0
    case $name in
      pause) build_pause "$out" ;;
      cacheside) build_cacheside "$out" "$CACHESIDE_TAG" ;;
      cacheside:*) build_cacheside "$out" "${name#cacheside:}" ;;
      postgres) build_postgres "$out" ;;
      redis) build_redis "$out" ;;
      curl) build_curl "$out" ;;
      jaeger) build_jaeger "$out" ;;
      otel-collector) build_otel_collector "$out" ;;
      *) ref "$name" >/dev/null ;;
    esac
    if ((UP_TO_DATE)); then
      log "$name: $(ref "$name") up to date (${out#"$ROOT"/})"
    else
      log "$name: $(ref "$name") -> ${out#"$ROOT"/} ($(du -h "$out" | cut -f1), $((SECONDS - start))s)"
    fi
  done
  rm -rf "$OUT/.stage"
}

cmd_refs() {
  local name
  (($# > 0)) || set -- "${ALL[@]}"
  for name; do
    echo "$name $(ref "$name") $(archive "$name")"
  done
}

cmd_import() {
  local name out env=$CLUSTER_DIR/env
  [[ -f $env ]] || die "no $env: is the cluster up (hack/cluster/up.sh)?"
  # shellcheck disable=SC1090
  source "$env"
  [[ -n ${CTR:-} && -n ${CONTAINERD_ADDRESS:-} ]] || die "$env sets no CTR or CONTAINERD_ADDRESS"
  (($# > 0)) || set -- "${ALL[@]}"
  for name; do
    out=$(archive "$name")
    [[ -f $out ]] || die "$name: no ${out#"$ROOT"/}; run: hack/cluster/images.sh build $name"
    log "$name: importing $(ref "$name")"
    "$CTR" -a "$CONTAINERD_ADDRESS" -n k8s.io images import --all-platforms "$out" >&2
  done
}

case ${1:-} in
  build) shift; cmd_build "$@" ;;
  import) shift; cmd_import "$@" ;;
  refs) shift; cmd_refs "$@" ;;
  *) usage ;;
esac
