package httpapi

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

// securityHeaders sets what every JSON response should carry. X-Content-Type-Options: nosniff
// stops a browser from guessing a JSON body (which holds client-supplied titles) to be HTML or
// script. Cache-Control: no-store keeps errors and write responses out of every cache on the
// way: an error is true only now, and a write's answer is the caller's alone. Successful reads
// are left to the read handlers, which know how long their views may be reused.
func securityHeaders() gin.HandlerFunc {
	return func(c *gin.Context) {
		h := c.Writer.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		if c.Request.Method != http.MethodGet && c.Request.Method != http.MethodHead {
			h.Set("Cache-Control", "no-store")
		}
		// Errors are written from several places (the errors middleware, recovery, /readyz,
		// whatever middleware refuses a request); the status is where they all meet.
		c.Writer = noStoreOnError{c.Writer}
		c.Next()
	}
}

// noStoreOnError marks every response of status 400 or more Cache-Control: no-store, replacing
// whatever a handler set for a successful answer.
type noStoreOnError struct{ gin.ResponseWriter }

func (w noStoreOnError) WriteHeader(code int) {
	if code >= http.StatusBadRequest {
		w.Header().Set("Cache-Control", "no-store")
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (drainBody sets its read deadline).
func (w noStoreOnError) Unwrap() http.ResponseWriter { return w.ResponseWriter }

const (
	// drainLimit is how much of a request body left unread (one refused as too large, or
	// answered before it was read) is read and thrown away after the response, so that a client
	// still uploading finishes and reads the answer. Without it net/http reads 256 KiB, waits
	// half a second and closes, and a client still sending gets a reset instead of its 413.
	// Beyond it the connection is closed: a client that sends more is not worth more.
	drainLimit = 16 << 20
	// drainTimeout bounds how long a slow uploader may hold the connection for that.
	drainTimeout = 5 * time.Second
)

// drainBody reads what the handler left of the request body, after the response has been
// written and flushed, up to drainLimit bytes and for at most drainTimeout. A client that asked
// to be told before uploading (Expect: 100-continue) is left alone: net/http sends 100 Continue
// on the first read, so draining would invite the upload the answer just refused.
func drainBody() gin.HandlerFunc {
	return func(c *gin.Context) {
		body := c.Request.Body
		c.Next()
		if body == nil || body == http.NoBody || c.Request.ContentLength == 0 ||
			strings.EqualFold(c.Request.Header.Get("Expect"), "100-continue") {
			return
		}
		// One byte first: a handler that read its body (the usual case) left nothing, and
		// costs no flush and no deadline.
		var one [1]byte
		if n, err := body.Read(one[:]); n == 0 && err != nil {
			return
		}
		// Send the answer now, so a client that reads while it uploads can stop uploading.
		c.Writer.Flush()
		rc := http.NewResponseController(c.Writer)
		if err := rc.SetReadDeadline(time.Now().Add(drainTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return
		}
		_, _ = io.CopyN(io.Discard, body, drainLimit)
	}
}
