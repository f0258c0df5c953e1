package httpapi

import (
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/cacheside/cacheside/app/ratelimit"
)

// rateLimit holds every client to its budget: reads (GET, HEAD, OPTIONS) and writes (every other
// method) apart, so a client reading hard can still write and the other way round. The client is
// the peer's address, or the forwarded one when the peer is a trusted proxy (gin's ClientIP, see
// Deps.TrustedProxies). Probes and scrapes are never limited: the kubelet and Prometheus are
// one client each and must always get through.
//
// Every answer carries the RateLimit-Policy and RateLimit fields of the IETF httpapi draft
// (draft-ietf-httpapi-ratelimit-headers-11): the policy is the burst (q) that refills in w
// seconds; r is what the client may still send at once, t the seconds until its burst is whole.
// A limited request gets 429 with Retry-After, the seconds until one more will be allowed.
func rateLimit(l *ratelimit.Limiter) gin.HandlerFunc {
	if l == nil {
		return func(c *gin.Context) { c.Next() }
	}
	policies := map[string]string{}
	for _, p := range []ratelimit.Policy{l.Read(), l.Write()} {
		policies[p.Name] = strconv.Quote(p.Name) + ";q=" + strconv.Itoa(p.Burst) + ";w=" + strconv.Itoa(p.Window())
	}
	return func(c *gin.Context) {
		if untraced[c.FullPath()] {
			c.Next()
			return
		}
		p := l.Write()
		switch c.Request.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			p = l.Read()
		}
		r := l.Allow(c.Request.Context(), p, clientKey(c.ClientIP()))
		h := c.Writer.Header()
		h.Set("RateLimit-Policy", policies[p.Name])
		h.Set("RateLimit", strconv.Quote(p.Name)+";r="+strconv.Itoa(r.Remaining)+";t="+strconv.Itoa(ceilSeconds(r.ResetAfter)))
		if !r.Allowed {
			h.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(r.RetryAfter))))
			_ = c.Error(clientError(http.StatusTooManyRequests, "rate_limited",
				"too many %s from this client: at most %d per second (bursts of %d); retry after the time in Retry-After", p.Name, p.Rate, p.Burst))
			c.Abort()
			return
		}
		c.Next()
	}
}

// clientKey is the address a budget belongs to. An IPv6 client is its /64: a host is handed a
// whole /64, and keying on single addresses would let it take a fresh budget per address.
func clientKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is6() {
		return netip.PrefixFrom(a, 64).Masked().String()
	}
	return a.String()
}

func ceilSeconds(d time.Duration) int { return int(math.Ceil(d.Seconds())) }
