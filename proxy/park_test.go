package proxy

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// waitParked waits until n directions are parked (no goroutine).
func waitParked(t *testing.T, p *Proxy, n int64) {
	t.Helper()
	testwait.For(t, "parked directions", waitLimit, func() bool { return p.parked() == n })
}

// TestParkedSessions drives sessions whose both directions sit in the
// poller: data, half-close, fencing, idle timeout and Close must all reach
// them.
func TestParkedSessions(t *testing.T) {
	be := startEcho(t)
	cfg := oneBackend("svc", be.addr())
	idle := oneBackend("idle", be.addr())
	idle.IdleTimeout = 100 * time.Millisecond
	p := newProxy(t, Options{parkAfter: 10 * time.Millisecond}, cfg, idle)
	p.SetHealth("svc", "a", upAny)
	p.SetHealth("idle", "a", upAny)
	addr := p.addrOf(t, "svc")

	// Data both ways after parking, repeatedly.
	c := dial(t, addr)
	for i := 0; i < 3; i++ {
		waitParked(t, p, 2)
		roundTrip(t, c, "wake up")
	}
	// A large write into a parked session.
	waitParked(t, p, 2)
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	go func() { _, _ = c.Write(big) }()
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != big[i] {
			t.Fatalf("byte %d differs", i)
		}
	}

	// Half-close from the parked state.
	waitParked(t, p, 2)
	if _, err := c.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	rest, err := io.ReadAll(c)
	if err != nil || string(rest) != "last" {
		t.Fatalf("after half-close: %q %v", rest, err)
	}
	testwait.For(t, "session end", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })
	waitParked(t, p, 0)

	// Fencing parked sessions.
	var cs []*net.TCPConn
	for i := 0; i < 5; i++ {
		cs = append(cs, dial(t, addr))
		roundTrip(t, cs[i], "x")
	}
	waitParked(t, p, 10)
	if n := p.CloseSessions("svc", "a"); n != 5 {
		t.Fatalf("closed %d", n)
	}
	for _, x := range cs {
		expectClosed(t, x)
	}
	waitParked(t, p, 0)
	testwait.For(t, "fenced sessions released", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })

	// Idle timeout of a parked session.
	ic := dial(t, p.addrOf(t, "idle"))
	roundTrip(t, ic, "x")
	expectClosed(t, ic)
	testwait.For(t, "idle session released", waitLimit, func() bool { return p.statusOf("idle").Active == 0 })

	// Close with parked sessions leaves no goroutine behind (goleak).
	last := dial(t, addr)
	roundTrip(t, last, "y")
	waitParked(t, p, 2)
	_ = p.Close()
	expectClosed(t, last)
	if p.parked() != 0 {
		t.Fatalf("%d still parked after Close", p.parked())
	}
}

// TestParkChurn: many sessions alternate bursts and pauses longer than
// parkAfter, so directions park and resume thousands of times while data
// must stay exact.
func TestParkChurn(t *testing.T) {
	be := startEcho(t)
	p := newProxy(t, Options{parkAfter: time.Millisecond}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	addr := p.addrOf(t, "svc")
	const sessions, rounds = 24, 20
	errc := make(chan error, sessions)
	for i := 0; i < sessions; i++ {
		go func() {
			errc <- func() error {
				rng := rand.New(rand.NewPCG(uint64(i), 99))
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				defer c.Close()
				for r := 0; r < rounds; r++ {
					msg := make([]byte, 1+rng.IntN(100<<10))
					for j := range msg {
						msg[j] = byte(rng.Uint32())
					}
					werr := make(chan error, 1)
					go func() { _, err := c.Write(msg); werr <- err }()
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(c, got); err != nil {
						return err
					}
					if err := <-werr; err != nil {
						return err
					}
					if !bytes.Equal(got, msg) {
						return fmt.Errorf("session %d round %d: data differs", i, r)
					}
					// Idle long enough to park now and then.
					time.Sleep(time.Duration(rng.IntN(4)) * time.Millisecond)
				}
				_ = c.(*net.TCPConn).CloseWrite()
				if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
					return fmt.Errorf("after half-close: %d bytes, %v", len(rest), err)
				}
				return nil
			}()
		}()
	}
	for i := 0; i < sessions; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	testwait.For(t, "sessions closed", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })
	waitParked(t, p, 0)
	if n := p.poller.resumed.Load(); n == 0 {
		t.Fatal("no direction ever resumed from the poller")
	} else {
		t.Logf("%d resumes from the poller", n)
	}
}
