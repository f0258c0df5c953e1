package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/cacheside/cacheside/app/samples"
	"github.com/cacheside/cacheside/app/view"
)

type handlers struct{ Deps }

const jsonType = "application/json; charset=utf-8"

// list is the same handler for /sample and /cache; only the store and what HTTP caches are told
// differ.
func (h handlers) list(store Reader, cacheControl string) func(*gin.Context) error {
	return func(c *gin.Context) error {
		v, err := store.List(readContext(c))
		return respond(c, v, cacheControl, err)
	}
}

func (h handlers) get(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	v, err := h.Cached.Get(readContext(c), id)
	return respond(c, v, revalidate, err)
}

// readContext is the context of a read: it tells the cache when the client does not take gzip,
// so that a tier holding a plain copy answers with it instead of a body to decompress.
func readContext(c *gin.Context) context.Context {
	if acceptsGzip(c.GetHeader("Accept-Encoding")) {
		return c.Request.Context()
	}
	return view.WantPlain(c.Request.Context())
}

// respond sends a read. How the cache served it becomes the X-Cache headers (even for a 404), and
// a stale value's age the Age header. The ETag is weak because it names the JSON, whichever
// encoding carries it; a client holding it gets a 304 and no body. A gzip-stored body goes out
// as stored to clients that accept gzip; the others get the view's plain copy, or the body
// decompressed when it has none.
func respond(c *gin.Context, v view.View, cacheControl string, err error) error {
	h := headers{h: c.Writer.Header(), vals: make([]string, 0, 9)}
	if v.Served.Outcome != "" {
		h.set("X-Cache", string(v.Served.Outcome))
	}
	if v.Served.Outcome == view.Stale {
		h.set("Age", strconv.FormatInt(max(0, int64(time.Since(v.Stored)/time.Second)), 10))
	}
	if v.Served.Tier != "" {
		h.set("X-Cache-Tier", string(v.Served.Tier))
	}
	if errors.Is(err, view.ErrNotFound) {
		// A 404 is cacheable too; never an error of the service's own (an HTTP cache storing a
		// 503 under the list's max-age would go on failing after the service recovered).
		h.set("Cache-Control", cacheControl)
	}
	if err != nil {
		return err
	}
	etag := `W/"` + v.ETag + `"`
	h.set("Cache-Control", cacheControl)
	h.set("Etag", etag)
	h.set("Vary", "Accept-Encoding")
	if matches(c.GetHeader("If-None-Match"), etag) {
		c.Status(http.StatusNotModified)
		return nil
	}
	body := v.Body
	if v.Encoding == "gzip" {
		if acceptsGzip(c.GetHeader("Accept-Encoding")) {
			h.set("Content-Encoding", "gzip")
		} else if body, err = v.JSON(); err != nil {
			return fmt.Errorf("decompressing a cached body: %w", err)
		}
	}
	// What c.Data would do, with its two headers in h's array: it sets each with an allocation
	// of its own (and one more for the render.Data it boxes).
	h.set("Content-Type", jsonType)
	if len(body) > 0 {
		h.set("Content-Length", strconv.Itoa(len(body)))
	}
	c.Status(http.StatusOK)
	if _, err := c.Writer.Write(body); err != nil {
		_ = c.Error(err) // as gin's c.Render reports it: the client is gone, nothing to answer
		c.Abort()
	}
	return nil
}

// headers sets the response headers of a read from one backing array, where Header.Set makes a
// slice for each: a hit's allocations are much of what it costs besides the Redis round trip,
// and these were a tenth of them. Keys must be in canonical form (as Set would make them). Each
// value is a slice of its own, capacity 1, so a later Add copies instead of writing into a
// neighbour; Set replaces it.
type headers struct {
	h    http.Header
	vals []string
}

func (h *headers) set(key, value string) {
	h.vals = append(h.vals, value)
	n := len(h.vals)
	h.h[key] = h.vals[n-1 : n : n]
}

func (h handlers) create(c *gin.Context) error {
	title, err := h.decodeTitle(c)
	if err != nil {
		return err
	}
	s, err := h.Cached.Create(c.Request.Context(), title)
	if err != nil {
		return err
	}
	c.Header("Location", "/samples/"+strconv.FormatInt(s.ID, 10))
	c.JSON(http.StatusCreated, s)
	return nil
}

func (h handlers) update(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	title, err := h.decodeTitle(c)
	if err != nil {
		return err
	}
	s, err := h.Cached.Update(c.Request.Context(), id, title)
	if err != nil {
		return err
	}
	c.JSON(http.StatusOK, s)
	return nil
}

func (h handlers) delete(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	if err := h.Cached.Delete(c.Request.Context(), id); err != nil {
		return err
	}
	c.Status(http.StatusNoContent)
	return nil
}

func pathID(c *gin.Context) (int64, error) {
	raw := c.Param("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 1 {
		return 0, clientError(http.StatusBadRequest, "invalid_id", "id must be a positive integer, got %q", truncate(raw, 40))
	}
	return id, nil
}

// decodeTitle reads {"title": "…"} strictly: one JSON object of UTF-8 text, no unknown or
// repeated fields, no trailing data, within the size limit, and a title the domain accepts.
// Nothing is repaired: encoding/json would turn invalid UTF-8 and escaped lone surrogates into
// U+FFFD and keep the last of two "title" members, changing the client's data without a word;
// the v2 decoder (encoding/json/v2's implementation) refuses all three.
func (h handlers) decodeTitle(c *gin.Context) (string, error) {
	// Refused before a byte is read: a client that sent Expect: 100-continue is told at once
	// and uploads nothing (net/http sends 100 Continue only when the body is first read).
	if c.Request.ContentLength > h.MaxBodyBytes {
		return "", bodyTooLarge(h.MaxBodyBytes)
	}
	if ct := c.GetHeader("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return "", clientError(http.StatusUnsupportedMediaType, "unsupported_media_type", "send the body as Content-Type: application/json")
		}
		// JSON is UTF-8 on the wire (RFC 8259 8.1); a body declared otherwise would be misread.
		if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
			return "", clientError(http.StatusUnsupportedMediaType, "unsupported_charset", "the body must be UTF-8; charset=%s is not supported", truncate(cs, 40))
		}
	}
	// Chunked bodies have no declared length: the reader stops them at the limit.
	raw, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, h.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return "", bodyTooLarge(h.MaxBodyBytes)
		}
		return "", fmt.Errorf("reading the request body: %w", err)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return "", clientError(http.StatusBadRequest, "invalid_json", "the body is empty; send a JSON object")
	}
	if !utf8.Valid(raw) {
		return "", clientError(http.StatusBadRequest, "invalid_utf8", "the body is not valid UTF-8")
	}
	var in *struct { // a pointer, so that a JSON null leaves it nil instead of an empty object
		Title *string `json:"title"`
	}
	if err := json.Unmarshal(raw, &in, json.RejectUnknownMembers(true)); err != nil {
		return "", decodeError(err)
	}
	if in == nil {
		return "", clientError(http.StatusBadRequest, "invalid_json", "the body must hold exactly one JSON object, not null")
	}
	if in.Title == nil {
		return "", &samples.ValidationError{Field: "title", Message: "is required"}
	}
	if err := samples.ValidateTitle(*in.Title); err != nil {
		return "", err
	}
	return *in.Title, nil
}

func bodyTooLarge(limit int64) error {
	return clientError(http.StatusRequestEntityTooLarge, "body_too_large", "the body must be at most %d bytes", limit)
}

// decodeError maps the v2 decoder's errors. Its syntax messages name what is wrong and where
// (an escaped lone surrogate, a repeated member, trailing data), and hold nothing internal.
func decodeError(err error) error {
	var (
		syntax   *jsontext.SyntacticError
		semantic *json.SemanticError
	)
	switch {
	case errors.As(err, &syntax) && errors.Is(syntax.Err, jsontext.ErrDuplicateName):
		return clientError(http.StatusBadRequest, "duplicate_field", "the field %s appears more than once", syntax.JSONPointer.LastToken())
	case errors.As(err, &syntax):
		return clientError(http.StatusBadRequest, "invalid_json", "the body is not valid JSON: %s at byte %d", syntax.Err, syntax.ByteOffset)
	case errors.As(err, &semantic) && errors.Is(semantic.Err, json.ErrUnknownName):
		return clientError(http.StatusBadRequest, "unknown_field", "unknown field %q", semantic.JSONPointer.LastToken())
	case errors.As(err, &semantic) && semantic.JSONPointer == "":
		return clientError(http.StatusBadRequest, "invalid_json", "the body must be a JSON object")
	case errors.As(err, &semantic) && semantic.GoType != nil:
		return &samples.ValidationError{Field: semantic.JSONPointer.LastToken(), Message: "must be a " + kindOf(semantic.GoType)}
	}
	return clientError(http.StatusBadRequest, "invalid_json", "the body could not be read as a JSON object")
}

// kindOf names a Go type as a JSON client knows it.
func kindOf(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.String {
		return "string"
	}
	return t.String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func (h handlers) healthz(c *gin.Context) {
	c.JSON(http.StatusOK, gin.H{"status": "ok"})
}
