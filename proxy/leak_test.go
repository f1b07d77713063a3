package proxy

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// TestNoFDLeakUnderFaults runs refusing, resetting, black-holed and
// vanishing peers through a proxy, closes everything, and requires the
// process's fd count back where it started (goroutines: goleak).
func TestNoFDLeakUnderFaults(t *testing.T) {
	// The runtime's own poller fds appear on first network use.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = ln.Close()
	before := countFDs(t)
	t.Run("faults", func(t *testing.T) {
		echoBE := startEcho(t)
		reset := startServer(t, "rst", func(c *net.TCPConn) {
			_, _ = io.ReadFull(c, make([]byte, 1))
			_ = c.SetLinger(0)
		})
		hole := blackHole(t)
		p := New(Options{Logger: testLogger(t), parkAfter: 5 * time.Millisecond})
		defer p.Close()
		if err := p.Apply([]ServiceConfig{
			oneBackend("echo", echoBE.addr()),
			oneBackend("reset", reset.addr()),
			oneBackend("refuse", closedPort(t)),
			{Name: "hole", Listen: "127.0.0.1:0", ConnectTimeout: 100 * time.Millisecond,
				Backends: []Backend{{Name: "a", Address: hole}}},
		}); err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"echo", "reset", "refuse", "hole"} {
			p.SetHealth(s, "a", upAny)
		}
		for i := 0; i < 20; i++ {
			// Client vanishes mid-transfer with a reset.
			c := dial(t, p.addrOf(t, "echo"))
			roundTrip(t, c, "x")
			go func() { _, _ = c.Write(make([]byte, 1<<20)) }()
			_ = c.SetLinger(0)
			_ = c.Close()

			r := dial(t, p.addrOf(t, "reset"))
			_, _ = r.Write([]byte{1})
			expectClosed(t, r)
			expectClosed(t, dial(t, p.addrOf(t, "refuse")))
		}
		expectClosed(t, dial(t, p.addrOf(t, "hole")))
		testwait.For(t, "all sessions gone", waitLimit, func() bool {
			for _, st := range p.Status() {
				if st.Active != 0 {
					return false
				}
			}
			return true
		})
		// An idle parked session left open is closed by Close.
		c := dial(t, p.addrOf(t, "echo"))
		roundTrip(t, c, "y")
		waitParked(t, p, 2)
		_ = p.Close()
		_ = c.Close()
	})
	// The subtest's cleanups closed the test's own conns and servers.
	start := time.Now()
	// The test's echo servers use io.Copy, whose splice pipes are pooled
	// by the runtime and closed by finalizers: collect them.
	testwait.For(t, "fds back to the start", waitLimit, func() bool {
		runtime.GC()
		return countFDs(t) == before
	})
	t.Logf("fds back after %v", time.Since(start))
}
