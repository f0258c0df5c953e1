package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
)

// Auth says which requests need a bearer token and which tokens are accepted.
type Auth struct {
	// Tokens are the accepted bearer tokens; several at once let a token be rotated without
	// downtime. With none (and Disabled false) every request that needs a token is refused: a
	// router built without tokens fails closed.
	Tokens []string
	// Reads makes GET and HEAD need a token too, except on the probes.
	Reads bool
	// Disabled serves every request without a token: local development only.
	Disabled bool
}

// public paths never need a token: the kubelet's probes carry none. (Prometheus scrapes the admin
// port, whose router has no auth and no routes that change anything.)
var public = map[string]bool{"/healthz": true, "/readyz": true}

// challenge is the WWW-Authenticate of every 401 (RFC 6750 section 3).
const challenge = `Bearer realm="cacheside"`

// authenticate refuses, with 401 and a WWW-Authenticate challenge, a request that needs a token
// and does not carry an accepted one. Every method but GET and HEAD needs one, on every path, so
// a write route added later is guarded without anyone remembering to. Tokens are compared as
// SHA-256 digests in constant time, against every configured token without stopping at a match,
// so neither a token's length nor which one matched shows in the response time. The token is
// never logged, traced or echoed; the Authorization header is dropped from the request once
// checked, so nothing later in the chain can record it.
func authenticate(a Auth) gin.HandlerFunc {
	digests := make([][sha256.Size]byte, len(a.Tokens))
	for i, t := range a.Tokens {
		digests[i] = sha256.Sum256([]byte(t))
	}
	return func(c *gin.Context) {
		token, present, wellFormed := bearer(c.Request.Header)
		c.Request.Header.Del("Authorization") // on every request, needed or not
		if a.Disabled || !needsToken(c.Request.Method, c.FullPath(), a.Reads) {
			return
		}
		var err error
		switch {
		case !present:
			c.Header("WWW-Authenticate", challenge)
			err = clientError(http.StatusUnauthorized, "unauthenticated", "%s %s needs a token: send Authorization: Bearer <token>", c.Request.Method, c.Request.URL.Path)
		case !wellFormed:
			c.Header("WWW-Authenticate", challenge+`, error="invalid_request", error_description="send exactly one Authorization: Bearer <token> header"`)
			err = clientError(http.StatusUnauthorized, "invalid_request", "the Authorization header is malformed: send exactly one Authorization: Bearer <token>")
		case !accepted(token, digests):
			c.Header("WWW-Authenticate", challenge+`, error="invalid_token", error_description="the token is not accepted"`)
			err = clientError(http.StatusUnauthorized, "invalid_token", "the bearer token is not accepted")
		default:
			return
		}
		_ = c.Error(err)
		c.Abort()
	}
}

// needsToken: every method but GET and HEAD; GET and HEAD too when reads are guarded, but never
// on the public paths. A request for no route (path "") needs one as well then, so that which
// routes exist is not shown to a caller without a token.
func needsToken(method, path string, reads bool) bool {
	if method != http.MethodGet && method != http.MethodHead {
		return true
	}
	return reads && !public[path]
}

// bearer returns the token of the request's Authorization header. present is false when there is
// no header, or it is of another scheme (Basic, say): the request carries no bearer token at all
// (RFC 6750 section 3.1). wellFormed is false for repeated headers and a missing or spaced token.
func bearer(h http.Header) (token string, present, wellFormed bool) {
	values := h.Values("Authorization")
	if len(values) == 0 {
		return "", false, false
	}
	if len(values) > 1 {
		return "", true, false
	}
	scheme, token, _ := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", false, false
	}
	token = strings.TrimLeft(token, " ")
	if token == "" || strings.ContainsAny(token, " \t,") {
		return "", true, false
	}
	return token, true, true
}

// accepted compares the token with every configured one, in time that depends on neither.
func accepted(token string, digests [][sha256.Size]byte) bool {
	sum := sha256.Sum256([]byte(token))
	match := 0
	for _, d := range digests {
		match |= subtle.ConstantTimeCompare(sum[:], d[:])
	}
	return match == 1
}
