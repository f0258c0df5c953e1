package testenv

import (
	"bytes"
	"sync"
)

// Buffer collects output written concurrently, e.g. a server's log or a child process's
// stdout and stderr, and reads it back safely.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }

func (l *Buffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }
