package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/cacheside/cacheside/app/samples"
)

// apiError is a client mistake with the status and code the client should see.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Message }

func clientError(status int, code, format string, args ...any) error {
	return &apiError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// handle adapts a handler that returns an error to Gin; errors are rendered by errorsMiddleware.
func handle(h func(*gin.Context) error) gin.HandlerFunc {
	return func(c *gin.Context) {
		if err := h(c); err != nil {
			_ = c.Error(err)
		}
	}
}

// errorsMiddleware is the one place errors become responses: it picks the status and writes the
// JSON body. Internal errors are never echoed to the client; the access log line of the request
// carries them (see accessLog), so each request is logged once.
func errorsMiddleware(retryAfter time.Duration) gin.HandlerFunc {
	retry := strconv.Itoa(max(1, int(retryAfter.Seconds())))
	return func(c *gin.Context) {
		c.Next()
		if len(c.Errors) == 0 || c.Writer.Written() {
			return
		}
		err := c.Errors.Last().Err
		var (
			api *apiError
			bad *samples.ValidationError
		)
		switch {
		case errors.Is(err, context.Canceled) && c.Request.Context().Err() != nil:
			// The client hung up, whatever the call was doing when it noticed (dialling Postgres
			// included); nobody reads this status, but the access log shows it.
			c.Status(499)
		case errors.As(err, &api):
			c.JSON(api.Status, errorBody{errorDetail{Code: api.Code, Message: api.Message}})
		case errors.As(err, &bad):
			c.JSON(http.StatusUnprocessableEntity, errorBody{errorDetail{Code: "validation_failed", Message: bad.Error(), Field: bad.Field}})
		case errors.Is(err, samples.ErrNotFound):
			c.JSON(http.StatusNotFound, errorBody{errorDetail{Code: "not_found", Message: "no sample has this id"}})
		case errors.Is(err, samples.ErrUnavailable):
			c.Header("Retry-After", retry)
			c.JSON(http.StatusServiceUnavailable, errorBody{errorDetail{Code: "unavailable", Message: "the database is unavailable, retry later"}})
		default:
			c.JSON(http.StatusInternalServerError, errorBody{errorDetail{Code: "internal", Message: "internal error"}})
		}
	}
}

// recoverMiddleware turns a panic into a 500 JSON error; the panic and its stack go into the
// request's access log line.
func recoverMiddleware() gin.HandlerFunc {
	return gin.CustomRecoveryWithWriter(nil, func(c *gin.Context, p any) {
		c.Set(panicKey, panicked{value: fmt.Sprint(p), stack: string(debug.Stack())})
		c.AbortWithStatusJSON(http.StatusInternalServerError, errorBody{errorDetail{Code: "internal", Message: "internal error"}})
	})
}

const panicKey = "cacheside.panic"

type panicked struct{ value, stack string }
