package health

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
)

// fakeMode is how a fakeServer treats each connection it accepts.
type fakeMode int

const (
	// silent accepts and never says anything, as a frozen server would.
	silent fakeMode = iota
	// garbage answers bytes that belong to no protocol and keeps the connection open.
	garbage
	// reset closes with SO_LINGER 0, sending a TCP reset.
	reset
	// httpServer answers the way a web server on the wrong port would, and closes.
	httpServer
)

// garbageBytes is not RESP, has an invalid PostgreSQL message length and an empty MySQL packet.
var garbageBytes = []byte("\x00\x00\x00\x00\x00garbage garbage garbage\r\n")

var httpReply = []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

// fakeServer listens on loopback and treats each connection as mode says until t ends.
func fakeServer(t *testing.T, mode fakeMode) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			switch mode {
			case reset:
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				continue
			case garbage:
				c.Write(garbageBytes)
			case httpServer:
				c.Write(httpReply)
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// checkOnce builds a checker for spec and address, runs one check under spec's timeout and
// closes the checker.
func checkOnce(t *testing.T, spec Spec, address string) Result {
	t.Helper()
	c, err := NewChecker(spec, address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return checkWith(c, spec)
}

func checkWith(c Checker, spec Spec) Result {
	spec = spec.withDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), spec.Timeout)
	defer cancel()
	return c.Check(ctx)
}

// wantDown fails t unless r is down with an error matching target.
func wantDown(t *testing.T, r Result, target error) {
	t.Helper()
	if r.Up {
		t.Fatalf("up, want down with %v", target)
	}
	if !errors.Is(r.Err, target) {
		t.Fatalf("down with %v, want %v", r.Err, target)
	}
	if r.Role != RoleUnknown {
		t.Errorf("down with role %v, want unknown", r.Role)
	}
}

// wantUp fails t unless r is up with role.
func wantUp(t *testing.T, r Result, role Role) {
	t.Helper()
	if !r.Up {
		t.Fatalf("down (%v), want up", r.Err)
	}
	if r.Role != role {
		t.Fatalf("role %v, want %v", r.Role, role)
	}
}
