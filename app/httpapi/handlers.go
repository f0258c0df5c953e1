package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/cacheside/cacheside/app/samples"
	"github.com/cacheside/cacheside/app/view"
)

type handlers struct{ Deps }

const jsonType = "application/json; charset=utf-8"

// list is the same handler for /sample and /cache; only the store differs.
func (h handlers) list(store Reader) func(*gin.Context) error {
	return func(c *gin.Context) error {
		v, err := store.List(readContext(c))
		return respond(c, v, err)
	}
}

func (h handlers) get(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	v, err := h.Cached.Get(readContext(c), id)
	return respond(c, v, err)
}

// readContext is the context of a read: it tells the cache when the client does not take gzip,
// so that a tier holding a plain copy answers with it instead of a body to decompress.
func readContext(c *gin.Context) context.Context {
	if acceptsGzip(c.GetHeader("Accept-Encoding")) {
		return c.Request.Context()
	}
	return view.WantPlain(c.Request.Context())
}

// respond sends a read. How the cache served it becomes the X-Cache headers (even for a 404). The
// ETag is weak because it names the JSON, whichever encoding carries it; a client holding it
// gets a 304 and no body. A gzip-stored body goes out as stored to clients that accept gzip;
// the others get the view's plain copy, or the body decompressed when it has none.
func respond(c *gin.Context, v view.View, err error) error {
	h := c.Writer.Header()
	if v.Served.Outcome != "" {
		h.Set("X-Cache", string(v.Served.Outcome))
	}
	if v.Served.Tier != "" {
		h.Set("X-Cache-Tier", string(v.Served.Tier))
	}
	if err != nil {
		return err
	}
	etag := `W/"` + v.ETag + `"`
	h.Set("ETag", etag)
	h.Set("Vary", "Accept-Encoding")
	if matches(c.GetHeader("If-None-Match"), etag) {
		c.Status(http.StatusNotModified)
		return nil
	}
	body := v.Body
	if v.Encoding == "gzip" {
		if acceptsGzip(c.GetHeader("Accept-Encoding")) {
			h.Set("Content-Encoding", "gzip")
		} else if body, err = v.JSON(); err != nil {
			return fmt.Errorf("decompressing a cached body: %w", err)
		}
	}
	c.Data(http.StatusOK, jsonType, body)
	return nil
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

// decodeTitle reads {"title": "…"} strictly: one JSON object, no unknown fields, no trailing
// data, within the size limit, and a title the domain accepts.
func (h handlers) decodeTitle(c *gin.Context) (string, error) {
	if ct := c.GetHeader("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return "", clientError(http.StatusUnsupportedMediaType, "unsupported_media_type", "send the body as Content-Type: application/json")
		}
	}
	body := http.MaxBytesReader(c.Writer, c.Request.Body, h.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	var in *struct { // a pointer, so that a JSON null leaves it nil instead of an empty object
		Title *string `json:"title"`
	}
	if err := dec.Decode(&in); err != nil {
		return "", decodeError(err, h.MaxBodyBytes)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return "", decodeError(err, h.MaxBodyBytes)
		}
		return "", clientError(http.StatusBadRequest, "invalid_json", "the body must hold exactly one JSON object")
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

func decodeError(err error, limit int64) error {
	var (
		tooBig  *http.MaxBytesError
		syntax  *json.SyntaxError
		typeErr *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooBig):
		return clientError(http.StatusRequestEntityTooLarge, "body_too_large", "the body must be at most %d bytes", limit)
	case errors.Is(err, io.EOF):
		return clientError(http.StatusBadRequest, "invalid_json", "the body is empty; send a JSON object")
	case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
		return clientError(http.StatusBadRequest, "invalid_json", "the body is not valid JSON")
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return clientError(http.StatusBadRequest, "invalid_json", "the body must be a JSON object")
		}
		return &samples.ValidationError{Field: typeErr.Field, Message: "must be a " + typeErr.Type.String()}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json has no typed error for this; the message format is part of its API.
		return clientError(http.StatusBadRequest, "unknown_field", "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return clientError(http.StatusBadRequest, "invalid_json", "the body could not be read")
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

type readiness struct {
	Status string         `json:"status"`
	Checks map[string]any `json:"checks"`
}

// readyz is ready when Postgres answers. Redis is reported but never makes the pod unready: the
// service still answers (from Postgres) without it, and pulling every pod out of a Service
// because a shared Redis is down would turn a slowdown into an outage.
func (h handlers) readyz(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), 2*time.Second)
	defer cancel()
	// Both at once: a hung Postgres using up the budget must not make Redis look down.
	redis := make(chan any, 1)
	go func() { redis <- h.Health.Redis(ctx) }()
	pg := map[string]string{"status": "up"}
	status, code := "ready", http.StatusOK
	if err := h.Health.Postgres(ctx); err != nil {
		pg = map[string]string{"status": "down", "error": "postgres is not reachable"}
		status, code = "not ready", http.StatusServiceUnavailable
		h.Log.WarnContext(ctx, "readiness: postgres down", "err", err)
	}
	c.JSON(code, readiness{Status: status, Checks: map[string]any{
		"postgres":    pg,
		"redis":       <-redis,
		"replication": h.Health.Replication(),
	}})
}
