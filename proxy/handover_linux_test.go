//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestListenerHandOver passes a service's listening sockets from one Proxy
// to the next, as an upgrade does between processes: the second runs more
// loops than it was given sockets (it binds beside them), the third fewer
// (one loop accepts on three). Every connection made while two proxies
// share the sockets and after the old one stopped accepting is served, and
// a session of the old one runs on until it ends, which ends its drain.
func TestListenerHandOver(t *testing.T) {
	be := startEcho(t)
	cfg := ServiceConfig{Name: "svc", Listen: "127.0.0.1:0", Mode: ActiveActive,
		Backends: []Backend{{Name: "a", Address: be.addr()}}}
	p1 := newProxy(t, Options{Loops: 2}, cfg)
	p1.SetHealth("svc", "a", upAny)
	addr := p1.addrOf(t, "svc")
	old := dial(t, addr)
	roundTrip(t, old, "before\n")

	next := func(from *Proxy, loops, want int) *Proxy {
		t.Helper()
		fds, err := from.ListenerFDs()
		if err != nil {
			t.Fatal(err)
		}
		if got := len(fds["127.0.0.1:0"]); got != want {
			t.Fatalf("handed over %d sockets, want %d: %v", got, want, fds)
		}
		p := newProxy(t, Options{Loops: loops, Inherited: fds}, cfg)
		p.SetHealth("svc", "a", upAny)
		if got := p.addrOf(t, "svc"); got != addr {
			t.Fatalf("new proxy listens on %s, want %s", got, addr)
		}
		return p
	}
	ask := func(n int) {
		t.Helper()
		for i := range n {
			c := dial(t, addr)
			roundTrip(t, c, fmt.Sprintf("hello %d\n", i))
			c.Close()
		}
	}

	p2 := next(p1, 3, 2)
	b1, b2 := p1.statusOf("svc").Accepted, p2.statusOf("svc").Accepted
	ask(20) // both accept, from the sockets they share
	if a1, a2 := p1.statusOf("svc").Accepted-b1, p2.statusOf("svc").Accepted-b2; a1+a2 != 20 {
		t.Fatalf("p1 accepted %d and p2 %d of 20 connections while they shared the sockets", a1, a2)
	}
	p1.StopAccepting() // returns once its sockets are closed
	drained := make(chan error, 1)
	go func() { drained <- p1.Drain(context.Background()) }()
	before := p2.statusOf("svc").Accepted
	ask(30) // p2 alone, on the two handed-over sockets and its own
	if got := p2.statusOf("svc").Accepted - before; got != 30 {
		t.Fatalf("p2 accepted %d of 30 connections made after p1 stopped", got)
	}
	roundTrip(t, old, "still on p1\n")
	if n := p1.statusOf("svc").Active; n != 1 {
		t.Fatalf("p1 has %d sessions while draining, want the one opened before the hand-over", n)
	}
	select {
	case err := <-drained:
		t.Fatalf("p1 drained with a session open: %v", err)
	default:
	}
	old.Close()
	if err := <-drained; err != nil {
		t.Fatalf("p1 drain: %v", err)
	}

	p3 := next(p2, 1, 3)
	go func() { drained <- p2.Drain(context.Background()) }()
	if err := <-drained; err != nil {
		t.Fatalf("p2 drain: %v", err)
	}
	before = p3.statusOf("svc").Accepted
	ask(30) // the kernel spreads them over all three sockets: none may hang
	if got := p3.statusOf("svc").Accepted - before; got != 30 {
		t.Fatalf("p3 accepted %d of 30", got)
	}
}

// TestInheritedUnusedClosed: a handed-over socket that no service takes is
// closed by Apply, so its address refuses rather than queue clients.
func TestInheritedUnusedClosed(t *testing.T) {
	be := startEcho(t)
	cfg := ServiceConfig{Name: "svc", Listen: "127.0.0.1:0", Mode: ActiveActive,
		Backends: []Backend{{Name: "a", Address: be.addr()}}}
	p1 := newProxy(t, Options{Loops: 1}, cfg)
	addr := p1.addrOf(t, "svc")
	fds, err := p1.ListenerFDs()
	if err != nil {
		t.Fatal(err)
	}
	p1.Close() // its own fds; the duplicates keep the socket listening
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("the handed-over socket does not listen: %v", err)
	}
	c.Close()
	moved := cfg
	moved.Listen = "127.0.0.1:0"
	moved.Name = "other"
	newProxy(t, Options{Loops: 1, Inherited: map[string][]int{"127.0.0.1:1": fds["127.0.0.1:0"]}}, moved)
	if _, err := net.DialTimeout("tcp", addr, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s after Apply left its socket unused: %v, want connection refused", addr, err)
	}
}
