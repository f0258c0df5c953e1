// Package samples is the domain: the Sample model and its rules, a Postgres store, and a cached
// store that wraps it behind the same interface so handlers never know which one they hold.
package samples

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cacheside/cacheside/app/view"
)

// PayloadVersion names the JSON shape of a cached view. Bump it whenever that shape changes: it is
// part of every cache key, so a deploy never reads values written by the previous release.
const PayloadVersion = "v1"

// MaxTitleLen is the tutorial model's CharField(max_length=200), counted in characters.
const MaxTitleLen = 200

// Sample is one row, as clients see it.
type Sample struct {
	ID        int64     `json:"id"`
	Title     string    `json:"title"`
	CreatedAt time.Time `json:"created_at"`
}

// Reader serves reads as their JSON: a view.View, which the cache keeps and the handler sends as
// it is. A sample that does not exist is view.ErrNotFound.
type Reader interface {
	List(ctx context.Context) (view.View, error)
	Get(ctx context.Context, id int64) (view.View, error)
}

// Writer changes samples. A write that returns nil is durable and visible to every later read.
type Writer interface {
	Create(ctx context.Context, title string) (Sample, error)
	Update(ctx context.Context, id int64, title string) (Sample, error)
	Delete(ctx context.Context, id int64) error
}

// Store is a Reader and a Writer.
type Store interface {
	Reader
	Writer
}

var (
	// ErrNotFound means no sample has the id; it is view.ErrNotFound, the one not-found error
	// from the store through the cache to the handler.
	ErrNotFound = view.ErrNotFound
	// ErrUnavailable means the database could not be reached; retrying later may succeed.
	ErrUnavailable = errors.New("database unavailable")
)

// ValidationError says which field is wrong and why.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Message) }

// ValidateTitle enforces what the database's CHECK constraint also enforces, plus what Postgres
// text cannot hold (NUL), so bad input is a 422 rather than a database error.
func ValidateTitle(title string) error {
	switch n := utf8.RuneCountInString(title); {
	case strings.TrimSpace(title) == "":
		return &ValidationError{Field: "title", Message: "must not be empty"}
	case n > MaxTitleLen:
		return &ValidationError{Field: "title", Message: fmt.Sprintf("must be at most %d characters, got %d", MaxTitleLen, n)}
	case !utf8.ValidString(title):
		return &ValidationError{Field: "title", Message: "must be valid UTF-8"}
	case strings.ContainsRune(title, 0):
		return &ValidationError{Field: "title", Message: "must not contain NUL characters"}
	}
	return nil
}
