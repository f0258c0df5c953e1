package httpapi

import (
	"strconv"
	"time"
)

// What reads tell browsers and CDNs in front of the service (Cache-Control, RFC 9111 and 5861).
//
// The service promises that a read which starts after a write has returned reflects it, and it
// serves a value past its TTL only while no write has retired it. An HTTP cache in front cannot
// know about writes that do not pass through it (to other URLs, from other clients, from psql),
// so any reuse without asking the service trades those promises away for the clients behind it.
// Hence:
//
//   - GET /cache, the one view every client reads alike and the one worth offloading, says what
//     the operator chose (HTTP_CACHE_*), by default max-age=0, stale-while-revalidate=0,
//     stale-if-error=0: store it, but ask every time (the weak ETag makes that a 304 without a
//     body). Raising them is a deliberate trade of freshness at the edge for load.
//   - GET /samples/:id says no-cache, whatever is configured: an item is what a client has
//     just written (PUT, then GET; POST, then follow Location) or is waiting to exist (a cached
//     404 outlives the POST that creates it, which goes to another URL), so reuse would show
//     exactly the staleness the service exists to prevent, and the item space is too wide for
//     an edge to gain much.
//   - GET /sample says no-store: it is the uncached baseline, read from Postgres on every
//     request; an HTTP cache keeping it would turn the comparison it exists for into a cache
//     measurement.
const (
	revalidate = "no-cache"
	noStore    = "no-store"
)

// Caching is the freshness GET /cache grants HTTP caches, in whole seconds.
type Caching struct {
	MaxAge               time.Duration
	StaleWhileRevalidate time.Duration
	StaleIfError         time.Duration
}

func (p Caching) header() string {
	secs := func(d time.Duration) string { return strconv.FormatInt(int64(max(0, d)/time.Second), 10) }
	return "max-age=" + secs(p.MaxAge) + ", stale-while-revalidate=" + secs(p.StaleWhileRevalidate) +
		", stale-if-error=" + secs(p.StaleIfError)
}
