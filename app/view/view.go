// Package view is the one shape a read takes on its way from the store to the client: the
// serialized body in its encoding, the body's ETag, and how the cache served it. The Postgres
// store makes it, the cache engine keeps and returns it, the handler sends it; nobody converts it.
package view

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
)

// View is a serialized read. Its Body and Plain are read-only: the cache hands one view to many
// readers at once, and their bytes may alias a string read from Redis.
type View struct {
	Body     []byte // JSON, encoded as Encoding says; nil when not Found
	Encoding string // "gzip", or "" for the JSON as it is
	// Plain is the JSON as it is, when Body is compressed and a tier had it at hand (a miss, or a
	// tier keeping a plain copy for clients that do not take gzip); nil otherwise. Read it
	// through JSON.
	Plain []byte
	ETag  string // Fingerprint of the JSON, the same for every encoding and tier
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

// JSON is the body as it is, whatever its encoding: the plain copy when the view carries one,
// else Body, decompressed if it is gzip.
func (v View) JSON() ([]byte, error) {
	switch {
	case v.Plain != nil:
		return v.Plain, nil
	case v.Encoding == "":
		return v.Body, nil
	case v.Encoding == "gzip":
		return gunzip(v.Body)
	}
	return nil, fmt.Errorf("a view encoded as %q", v.Encoding)
}

// Readers are reused: a gzip.Reader holds about 40 KB of window and tables.
var gzipReaders sync.Pool

// gunzip decompresses b. A gzip header records no size (only the trailer, which a reader
// streaming it cannot trust before the end), so the output grows from a guess.
func gunzip(b []byte) ([]byte, error) {
	r, _ := gzipReaders.Get().(*gzip.Reader)
	var err error
	if r == nil {
		r, err = gzip.NewReader(bytes.NewReader(b))
	} else {
		err = r.Reset(bytes.NewReader(b))
	}
	if err != nil {
		return nil, fmt.Errorf("reading a gzip header: %w", err)
	}
	defer gzipReaders.Put(r)
	out := bytes.NewBuffer(make([]byte, 0, plainSizeGuess(b)))
	if _, err := io.Copy(out, r); err != nil {
		return nil, fmt.Errorf("decompressing gzip: %w", err)
	}
	return out.Bytes(), nil
}

// plainSizeGuess is the size gzip's trailer records (ISIZE, the input's length modulo 2^32),
// bounded so a corrupt trailer cannot make it allocate much. JSON of this service compresses
// about 15 times; the bound is 32 times the compressed size.
func plainSizeGuess(b []byte) int {
	if len(b) < 18 {
		return 512
	}
	n := int(binary.LittleEndian.Uint32(b[len(b)-4:]))
	return min(max(n, 512), 32*len(b)) + bytes.MinRead
}

type plainKey struct{}

// WantPlain marks ctx as a read for a client that does not take gzip. Tiers that can then
// answer with Plain set, and keep plain copies of what such clients read.
func WantPlain(ctx context.Context) context.Context {
	return context.WithValue(ctx, plainKey{}, true)
}

// WantsPlain reports whether ctx was marked by WantPlain.
func WantsPlain(ctx context.Context) bool {
	v, _ := ctx.Value(plainKey{}).(bool)
	return v
}
