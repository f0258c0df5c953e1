package cache

import (
	"encoding/hex"
	"math/rand/v2"
	"strings"

	"github.com/cacheside/cacheside/app/view"
)

// How a view is laid out in Redis.
//
// Each key K has two Redis keys sharing a hash tag, so they live in one Cluster slot and one
// MGET reads both:
//
//	<prefix>:{<space>:<id>}:g   the current generation: 16 random hex characters
//	<prefix>:{<space>:<id>}:v   the stored view: a 34-byte header, then the body
//	<prefix>:{<space>:<id>}:p   a plain copy of a gzip view, laid out as :v, kept for the clients
//	                            that do not take gzip once one has read the view (see Cache.look)
//
// The header is the generation the view was loaded under (16 bytes), whether it was found ('1')
// or is a remembered absence ('0'), its encoding ('g' gzip, 'i' identity), and its ETag (16 hex
// characters; zeros for an absence). A stored view counts only if its generation is the current
// one (see the package documentation).
const (
	genLen    = 16
	etagLen   = 16
	headerLen = genLen + 2 + etagLen
	kindFound = '1'
	kindGone  = '0'
	encGzip   = 'g'
	encIdent  = 'i'
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

// pack lays out v, loaded under gen, for storing.
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
	return append(append(append(append(out, gen...), kind, enc), etag...), v.Body...)
}

// unpack reads a stored view, if it is one and was stored under the current generation gen.
func unpack(stored, gen string) (view.View, bool) {
	if gen == "" || len(stored) < headerLen || stored[:genLen] != gen {
		return view.View{}, false
	}
	v := view.View{Found: stored[genLen] == kindFound}
	if !v.Found {
		return v, true
	}
	v.ETag = stored[genLen+2 : headerLen]
	if stored[genLen+1] == encGzip {
		v.Encoding = "gzip"
	}
	v.Body = []byte(stored[headerLen:])
	return v, true
}
