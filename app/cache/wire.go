package cache

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"strings"
	"time"
	"unsafe"

	"github.com/cacheside/cacheside/app/view"
)

// How a view is laid out in Redis.
//
// Each key K has two Redis keys sharing a hash tag, so they live in one Cluster slot and one
// MGET reads both:
//
//	<prefix>:{<space>:<id>}:g   the current generation: 16 random hex characters
//	<prefix>:{<space>:<id>}:v   the stored view: a 59-byte header, then the body
//	<prefix>:{<space>:<id>}:p   a plain copy of a gzip view, laid out as :v (same header: its
//	                            generation, stored, expires and load time are :v's), kept for the
//	                            clients that do not take gzip once one has read the view (see Cache.look)
//
// The header, in order:
//
//	format      1 byte   '2' (this layout)
//	generation 16 bytes  the generation the view was loaded under
//	kind        1 byte   '1' found, '0' a remembered absence
//	encoding    1 byte   'g' gzip, 'i' identity
//	etag       16 bytes  16 hex characters; zeros for an absence
//	stored      8 bytes  when it was stored, Unix milliseconds, big-endian
//	expires     8 bytes  when its TTL ends (a miss from then on, still usable as stale), likewise
//	load time   8 bytes  how long the load took, microseconds, big-endian (early refresh's delta)
//
// A stored view counts only if its generation is the current one (see the package
// documentation). The format byte comes first so that a value of the earlier layout (which
// began with its generation) never parses as this one and the other way round: a process of
// either release reads the other's values as misses during a rolling deploy, and stores its own.
// Times are the storing process's wall clock; clocks that disagree by a few milliseconds move a
// value's expiry by as much, which only shifts when it is refreshed.
const (
	formatV2    = '2'
	genLen      = 16
	etagLen     = 16
	genAt       = 1
	kindAt      = genAt + genLen
	encAt       = kindAt + 1
	etagAt      = encAt + 1
	storedAt    = etagAt + etagLen
	expiresAt   = storedAt + 8
	loadTimeAt  = expiresAt + 8
	headerLen   = loadTimeAt + 8
	kindFound   = '1'
	kindGone    = '0'
	encGzip     = 'g'
	encIdent    = 'i'
	maxLoadTime = time.Hour // a bound on what is stored, so a corrupt value cannot overflow
)

func (c *Cache) genKey(k Key) string { return c.opts.Prefix + ":{" + k.Space + ":" + k.ID + "}:g" }

func (c *Cache) valKey(k Key) string { return c.opts.Prefix + ":{" + k.Space + ":" + k.ID + "}:v" }

func (c *Cache) plainKey(k Key) string { return c.opts.Prefix + ":{" + k.Space + ":" + k.ID + "}:p" }

// newToken is a fresh generation: random, so a generation recreated after Redis lost it never
// matches a value stored under an old one.
func newToken() string {
	var b [genLen / 2]byte
	v := rand.Uint64()
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return hex.EncodeToString(b[:])
}

// pack lays out v, loaded under gen, for storing. v.Stored, v.Expires and v.LoadTime say when.
func pack(gen string, v view.View) []byte {
	kind, enc, etag := byte(kindGone), byte(encIdent), v.ETag
	if v.Found {
		kind = kindFound
	}
	if v.Encoding == "gzip" {
		enc = encGzip
	}
	if len(etag) != etagLen {
		etag = strings.Repeat("0", etagLen)
	}
	out := make([]byte, 0, headerLen+len(v.Body))
	out = append(append(append(append(out, formatV2), gen...), kind, enc), etag...)
	out = binary.BigEndian.AppendUint64(out, uint64(v.Stored.UnixMilli()))
	out = binary.BigEndian.AppendUint64(out, uint64(v.Expires.UnixMilli()))
	out = binary.BigEndian.AppendUint64(out, uint64(min(max(v.LoadTime, 0), maxLoadTime).Microseconds()))
	return append(out, v.Body...)
}

// unpack reads a stored view, if it is one and was stored under the current generation gen,
// whether or not its TTL has ended (the caller decides: see Expires).
func unpack(stored, gen string) (view.View, bool) {
	if gen == "" || len(stored) < headerLen || stored[0] != formatV2 || stored[genAt:kindAt] != gen {
		return view.View{}, false
	}
	v := view.View{
		Found:    stored[kindAt] == kindFound,
		Stored:   time.UnixMilli(int64(binary.BigEndian.Uint64([]byte(stored[storedAt:expiresAt])))),
		Expires:  time.UnixMilli(int64(binary.BigEndian.Uint64([]byte(stored[expiresAt:loadTimeAt])))),
		LoadTime: min(time.Duration(binary.BigEndian.Uint64([]byte(stored[loadTimeAt:headerLen])))*time.Microsecond, maxLoadTime),
	}
	if !v.Found {
		return v, true
	}
	v.ETag = stored[etagAt:storedAt]
	if stored[encAt] == encGzip {
		v.Encoding = "gzip"
	}
	v.Body = bytesOf(stored[headerLen:])
	return v, true
}

// bytesOf is s's bytes without a copy. The stored value is the body of every hit, 5 KB gzipped
// and 75 KB plain at 1,000 rows, and copying it was a hit's largest allocation after go-redis's
// own read of the reply (which hands over a string that aliases a buffer of its own, made for
// that reply: util.BytesToString). That is safe because a view's Body and Plain are read-only
// everywhere: one view is shared by every member of a lookup round and by the near-cache, so
// nothing may write into them anyway, and a write into these bytes would be a write into a
// string.
func bytesOf(s string) []byte {
	if len(s) == 0 {
		return []byte{} // not nil: a nil Plain means no plain copy (view.View.JSON)
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
