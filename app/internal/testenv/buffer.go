package testenv

import (
	"bytes"
	"compress/gzip"
	"io"
	"sync"
	"testing"
)

// Buffer collects output written concurrently, e.g. a server's log or a child process's
// stdout and stderr, and reads it back safely.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }

func (l *Buffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// Gunzip decompresses a gzip body, failing the test if it is not one.
func Gunzip(t testing.TB, b []byte) []byte {
	t.Helper()
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	return out
}
