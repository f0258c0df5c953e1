// Package view is the one shape a read takes on its way from the store to the client: the
// serialized body in its encoding, the body's ETag, and how the cache served it. The Postgres
// store makes it, the cache engine keeps and returns it, the handler sends it; nobody converts it.
package view

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"time"

	"github.com/cespare/xxhash/v2"
)

// View is a serialized read.
type View struct {
	Body     []byte // JSON, encoded as Encoding says; nil when not Found
	Encoding string // "gzip", or "" for the JSON as it is
	ETag     string // Fingerprint of the JSON, the same for every encoding and tier
	// Found is false for an absence, which the cache remembers too; such a read comes back with
	// ErrNotFound.
	Found  bool
	Served Served // how the cache served it; zero for a read that did not go through one

	// What the cache records with a stored value (zero for a read that did not go through one):
	// when it was loaded and stored, when its TTL makes it expire (past that it is a miss, but
	// still usable as a stale answer while its generation is current), and how long its load took
	// (early refresh starts sooner for values that are slow to load).
	Stored   time.Time
	Expires  time.Time
	LoadTime time.Duration
}

// Served says how the cache answered a read.
type Served struct {
	Outcome Outcome
	Tier    Tier // on a hit, the tier that answered
	Shared  bool // a miss or bypass answered by a load another request started
}

// Outcome is the cache's answer to a read.
type Outcome string

const (
	Hit    Outcome = "HIT"    // a tier held a current value
	Miss   Outcome = "MISS"   // loaded from the source and stored
	Bypass Outcome = "BYPASS" // the cache was not usable; loaded from the source, nothing stored
	// Stale is a value past its TTL whose generation is still current (no write has retired it),
	// served because the source failed as unavailable.
	Stale Outcome = "STALE"
)

// Tier is where a hit came from.
type Tier string

const (
	Local Tier = "local" // the in-process near-cache
	Redis Tier = "redis"
)

// ErrNotFound says the thing read or written does not exist.
var ErrNotFound = errors.New("not found")

// Fingerprint identifies a serialized body: it is the ETag of every representation of it.
func Fingerprint(body []byte) string {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], xxhash.Sum64(body))
	return hex.EncodeToString(buf[:])
}
