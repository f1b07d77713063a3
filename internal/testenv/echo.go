package testenv

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
)

// FreeAddr is a loopback address whose port is free for TCP and UDP (see
// FreePort); it fails t when there is none.
func FreeAddr(t testing.TB) string {
	t.Helper()
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}

// EchoServer is a real TCP backend that answers every line with its name,
// a colon and the line: a client through a proxy can tell which backend
// served it.
type EchoServer struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup
}

// ListenEcho starts an EchoServer called name on addr ("127.0.0.1:0" for a
// free port).
func ListenEcho(name, addr string) (*EchoServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	e := &EchoServer{name: name, ln: ln}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s:%s", e.name, line)
				}
			}()
		}
	}()
	return e, nil
}

// StartEcho is ListenEcho on a free loopback port, closed when t ends.
func StartEcho(t testing.TB, name string) *EchoServer {
	t.Helper()
	e, err := ListenEcho(name, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// Addr is the address the server listens on.
func (e *EchoServer) Addr() string { return e.ln.Addr().String() }

// Close stops accepting: a backend that died. Sessions already open run
// on until their client closes them.
func (e *EchoServer) Close() { e.ln.Close() }

// Wait waits until every session has ended, after Close.
func (e *EchoServer) Wait() { e.wg.Wait() }
