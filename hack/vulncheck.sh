#!/usr/bin/env bash
# hack/vulncheck.sh: govulncheck over the service's module, failing on a reachable vulnerability
# (one the code calls, not merely one in a module it requires). Run by `make lint`.
#
# The database: $GOVULNDB if set (any URL govulncheck takes, e.g. file:///path or an https mirror);
# otherwise govulncheck's default, when it answers; otherwise a local copy built from the
# golang.org/x/vulndb module (the Go team's database, whose data/osv holds every entry as an OSV file),
# fetched like any module and indexed with vulndb's own cmd/indexdb into .run/vulndb/<version>.
# The newest vulndb version is used when the module proxy answers, the newest cached one otherwise
# (said loudly): the database is as fresh as the vulndb module.
#
# hack/vulncheck-allow.txt lists reachable vulnerabilities accepted for now, each with why and what
# ends it; they are printed on every run, and an entry that is no longer found fails the check, so
# the list cannot outlive its reason.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
# Newest govulncheck at the time of writing, installed into .run/bin once (not `go run`, which
# turns govulncheck's exit status 3, "vulnerabilities found", into its own 1).
GOVULNCHECK_VERSION=${GOVULNCHECK_VERSION:-v1.9.0}
govulncheck=$root/.run/bin/govulncheck-$GOVULNCHECK_VERSION
if [[ ! -x $govulncheck ]]; then
	mkdir -p "$root/.run/bin"
	GOBIN=$root/.run/bin.tmp go install "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION"
	mv "$root/.run/bin.tmp/govulncheck" "$govulncheck"
	rmdir "$root/.run/bin.tmp"
fi
allow=$root/hack/vulncheck-allow.txt

log() { printf '    %s\n' "$*" >&2; }

# local_db: prints a file:// URL of a database built from the newest reachable golang.org/x/vulndb.
local_db() {
	local version dir out
	if version=$(go list -m -f '{{.Version}}' golang.org/x/vulndb@latest 2>/dev/null); then
		out=$root/.run/vulndb/$version
		if [[ ! -s $out/index/db.json ]]; then
			log "building the vulnerability database from golang.org/x/vulndb@$version (a minute or two, once)"
			dir=$(go mod download -json "golang.org/x/vulndb@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
			[[ -d $dir/data/osv ]] || { log "golang.org/x/vulndb@$version has no data/osv"; return 1; }
			rm -rf "$out.tmp"
			go run "golang.org/x/vulndb/cmd/indexdb@$version" -vulns "$dir/data/osv" -out "$out.tmp" >&2
			mv "$out.tmp" "$out"
		fi
	else
		out=$(find "$root/.run/vulndb" -mindepth 1 -maxdepth 1 -type d ! -name '*.tmp' 2>/dev/null | sort | tail -n 1)
		if [[ -z $out ]]; then
			log "no vulnerability database: the default one and the module proxy are unreachable, and none is cached under .run/vulndb"
			return 1
		fi
		log "WARNING: the module proxy does not answer: using the cached database $(basename "$out"), which may be stale"
	fi
	log "database: golang.org/x/vulndb@$(basename "$out") (.run/vulndb)"
	printf 'file://%s\n' "$out"
}

db=${GOVULNDB:-}
if [[ -z $db ]]; then
	# The default database answers if govulncheck can look up one module version in it (its
	# query mode, which reads nothing but the database).
	if "$govulncheck" -mode query -format json golang.org/x/text@v0.3.0 >/dev/null 2>&1; then
		log "database: govulncheck's default"
	else
		log "govulncheck's default database is unreachable; using a local copy"
		db=$(local_db)
	fi
fi

args=(-scan symbol)
[[ -n $db ]] && args+=(-db "$db")
set +e
report=$("$govulncheck" "${args[@]}" ./... 2>&1)
code=$?
set -e
# 0: nothing reachable; 3: reachable vulnerabilities; anything else: govulncheck itself failed.
if ((code != 0 && code != 3)); then
	printf '%s\n' "$report" >&2
	log "govulncheck failed (exit $code)"
	exit 1
fi

mapfile -t found < <(grep -oE '^Vulnerability #[0-9]+: GO-[0-9]+-[0-9]+' <<<"$report" | awk '{print $3}' | sort -u)
mapfile -t allowed < <(grep -oE '^GO-[0-9]+-[0-9]+' "$allow" 2>/dev/null | sort -u)
unexpected=$(comm -23 <(printf '%s\n' "${found[@]}") <(printf '%s\n' "${allowed[@]}") | sed '/^$/d')
stale=$(comm -13 <(printf '%s\n' "${found[@]}") <(printf '%s\n' "${allowed[@]}") | sed '/^$/d')

if [[ -n $unexpected ]]; then
	printf '%s\n' "$report" >&2
	log "reachable vulnerabilities: $(tr '\n' ' ' <<<"$unexpected")"
	log "fix them (go get the fixed version), or, if a fix cannot land yet, list them in hack/vulncheck-allow.txt with why"
	exit 1
fi
if [[ -n $stale ]]; then
	log "hack/vulncheck-allow.txt lists vulnerabilities no longer found: $(tr '\n' ' ' <<<"$stale")- remove them"
	exit 1
fi
if ((${#found[@]} > 0)); then
	log "ACCEPTED FOR NOW (hack/vulncheck-allow.txt), still reachable:"
	grep -E '^GO-' "$allow" | sed 's/^/      /' >&2
fi
log "no reachable vulnerability outside hack/vulncheck-allow.txt"
