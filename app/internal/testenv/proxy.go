package testenv

import (
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
)

// Proxy forwards TCP connections to a Postgres server and can hold the server's replies:
// requests still reach the server and are executed, but nothing comes back until Release. It
// shows the fault a real server cannot be made to show on demand: a write that committed while
// its reply was lost, so the client sees a timeout or a cancellation.
type Proxy struct {
	Port     int
	upstream string
	ln       net.Listener

	mu         sync.Mutex
	held       bool
	holdOnExec bool // hold once the next Execute message has gone through
	refuse     bool // close new connections at once
	refused    int
	freed      *sync.Cond
	conns      []net.Conn
}

// StartProxy forwards a free loopback port to upstream (host:port) until the test ends.
func StartProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Port: ln.Addr().(*net.TCPAddr).Port, upstream: upstream, ln: ln}
	p.freed = sync.NewCond(&p.mu)
	go p.accept()
	t.Cleanup(func() {
		p.Release()
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)) }

// HoldAfterExecute holds what the server sends once the next Execute message (the frontend
// protocol's "run the bound statement") has reached it: the statement's preparation round trip,
// if any, goes through, and its result does not.
func (p *Proxy) HoldAfterExecute() { p.mu.Lock(); p.holdOnExec = true; p.mu.Unlock() }

// Release forwards what was held and everything after it.
func (p *Proxy) Release() {
	p.mu.Lock()
	p.held, p.holdOnExec = false, false
	p.freed.Broadcast()
	p.mu.Unlock()
}

// RefuseNew closes every new connection at once, as a network that lets established connections
// through but not new ones would: a query's cancel request, which pgx sends on a new connection
// when a query's context ends, is then lost. Refused counts them; AcceptNew ends it.
func (p *Proxy) RefuseNew() { p.mu.Lock(); p.refuse = true; p.mu.Unlock() }

// AcceptNew undoes RefuseNew.
func (p *Proxy) AcceptNew() { p.mu.Lock(); p.refuse = false; p.mu.Unlock() }

// Refused is how many connections RefuseNew closed.
func (p *Proxy) Refused() int { p.mu.Lock(); defer p.mu.Unlock(); return p.refused }

func (p *Proxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		if refuse {
			p.refused++
		}
		p.mu.Unlock()
		if refuse {
			client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.upstream)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(server, &frontend{p: p, r: client}); server.Close() }()
		go func() { _, _ = io.Copy(heldWriter{p, client}, server); client.Close() }()
	}
}

// heldWriter waits while the proxy holds replies.
type heldWriter struct {
	p *Proxy
	w io.Writer
}

func (h heldWriter) Write(b []byte) (int, error) {
	h.p.mu.Lock()
	for h.p.held {
		h.p.freed.Wait()
	}
	h.p.mu.Unlock()
	return h.w.Write(b)
}

// frontend reads what a Postgres client sends, message by message, and tells the proxy when an
// Execute message has been read (it is forwarded as soon as Read returns it).
type frontend struct {
	p       *Proxy
	r       io.Reader
	started bool // past the startup packet, which has no type byte
	head    []byte
	left    int // bytes of the current message body still to pass through
	length  int
	typ     byte
}

func (f *frontend) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	for i := 0; i < n; {
		if f.left > 0 {
			step := min(f.left, n-i)
			f.left -= step
			i += step
			if f.left == 0 {
				f.ended()
			}
			continue
		}
		f.head = append(f.head, b[i])
		i++
		want := 5 // type byte and length
		if !f.started {
			want = 4 // length only
		}
		if len(f.head) < want {
			continue
		}
		length := int(binary.BigEndian.Uint32(f.head[want-4:]))
		f.typ = 0
		if f.started {
			f.typ = f.head[0]
		}
		f.head, f.left, f.length = f.head[:0], length-4, length
		if f.left == 0 {
			f.ended()
		}
	}
	return n, err
}

func (f *frontend) ended() {
	if !f.started {
		// An 8-byte SSL or GSS encryption request is followed by another untyped packet, the
		// startup message, which is always longer.
		f.started = f.length != 8
		return
	}
	if f.typ == 'E' {
		f.p.mu.Lock()
		if f.p.holdOnExec {
			f.p.holdOnExec, f.p.held = false, true
		}
		f.p.mu.Unlock()
	}
}
