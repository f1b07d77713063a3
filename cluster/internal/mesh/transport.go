package mesh

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// closingTransport wraps the memberlist transport so Close does not wait
// out a TCP timeout: memberlist's Shutdown leaves dials and streams in
// flight (a join to a black-holed peer holds its goroutine for the whole
// timeout); abort cancels the dials this node makes and closes their conns.
type closingTransport struct {
	memberlist.NodeAwareTransport
	direct bool // inner is a NetTransport: dial here, under ctx

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	aborted bool
}

func newClosingTransport(inner memberlist.Transport) *closingTransport {
	t := &closingTransport{conns: make(map[net.Conn]struct{})}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	switch v := inner.(type) {
	case *memberlist.NetTransport:
		t.NodeAwareTransport, t.direct = v, true
	case *guardTransport:
		t.NodeAwareTransport, t.direct = v, true
	case memberlist.NodeAwareTransport:
		t.NodeAwareTransport = v
	default:
		t.NodeAwareTransport = shimTransport{v}
	}
	return t
}

var _ memberlist.NodeAwareTransport = (*closingTransport)(nil)

// DialTimeout implements memberlist.Transport.
func (t *closingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *closingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	var err error
	if t.direct {
		// What NetTransport does, plus cancellation.
		d := net.Dialer{Timeout: timeout}
		c, err = d.DialContext(t.ctx, "tcp", a.Addr)
	} else {
		c, err = t.NodeAwareTransport.DialAddressTimeout(a, timeout)
	}
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.aborted {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	t.conns[c] = struct{}{}
	return &dialedConn{Conn: c, t: t}, nil
}

// abort cancels dials in flight and closes the conns this node dialed.
func (t *closingTransport) abort() {
	t.cancel()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.aborted = true
	for c := range t.conns {
		_ = c.Close()
	}
	clear(t.conns)
}

type dialedConn struct {
	net.Conn
	t *closingTransport
}

func (c *dialedConn) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c.Conn)
	c.t.mu.Unlock()
	return c.Conn.Close()
}

// shimTransport makes a plain Transport node-aware, as memberlist does.
type shimTransport struct{ memberlist.Transport }

func (s shimTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	return s.WriteTo(b, a.Addr)
}

func (s shimTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return s.DialTimeout(a.Addr, timeout)
}
