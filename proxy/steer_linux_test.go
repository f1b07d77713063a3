//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// acceptAll accepts what is queued on a nonblocking listening socket.
func acceptAll(t *testing.T, fd int) int {
	t.Helper()
	n := 0
	for {
		c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EAGAIN) {
			return n
		}
		if err != nil {
			t.Fatalf("accept: %v", err)
		}
		_ = unix.Close(c)
		n++
	}
}

// TestSteerProgram: the kernel obeys the reuseport program: with one
// active socket every connection queues on the group's first; with two,
// on both.
func TestSteerProgram(t *testing.T) {
	fds, addr, err := bindGroup(unix.AF_INET, net.IPv4(127, 0, 0, 1), 0, false, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFDs(fds)
	connect := func(n int) {
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
	}
	// Connections queued on a socket are not always accepted at once:
	// count until all n have shown up.
	count := func(n int) (first, second int) {
		testwait.For(t, fmt.Sprintf("%d connections accepted", n), 5*time.Second, func() bool {
			first += acceptAll(t, fds[0])
			second += acceptAll(t, fds[1])
			return first+second >= n
		})
		return first, second
	}

	if err := attachSteer(fds[0], 1); err != nil {
		t.Fatalf("attach: %v", err)
	}
	connect(40)
	if first, second := count(40); second != 0 || first != 40 {
		t.Fatalf("one active socket: %d and %d connections, want 40 and 0", first, second)
	}
	if err := attachSteer(fds[1], 2); err != nil { // any socket of the group will do
		t.Fatalf("attach: %v", err)
	}
	connect(100)
	if first, second := count(100); first == 0 || second == 0 {
		t.Fatalf("two active sockets: %d and %d connections, want both used", first, second)
	}
}

// TestSteerStep: accept-bound loops get one more loop after
// steerGrowAfter windows, busy loops without new connections never do, and
// the extra loop is given back only after steerShrinkAfter calm windows.
func TestSteerStep(t *testing.T) {
	churn := int64(3 * steerAccepts) // new connections a window
	cases := []struct {
		name    string
		n, base int
		k       int
		share   float64
		accepts int64
		windows int
		want    int
	}{
		{"churn grows", 2, 1, 1, 0.9, churn, steerGrowAfter, 2},
		{"one window is not enough", 2, 1, 1, 0.9, churn, steerGrowAfter - 1, 1},
		{"requests never grow", 2, 1, 1, 0.99, 0, 100, 1},
		{"slow churn never grows", 2, 1, 1, 0.3, churn, 100, 1},
		{"no more than n", 2, 1, 2, 0.95, 2 * churn, 100, 2},
		{"one at a time", 4, 2, 2, 0.9, 3 * churn, steerGrowAfter, 3},
		{"calm shrinks", 2, 1, 2, 0.1, 0, steerShrinkAfter, 1},
		{"calm, but not long enough", 2, 1, 2, 0.1, 0, steerShrinkAfter - 1, 2},
		{"still loaded: kept", 2, 1, 2, 0.8, churn, 10 * steerShrinkAfter, 2},
		{"never below base", 4, 2, 2, 0, 0, 10 * steerShrinkAfter, 2},
	}
	for _, c := range cases {
		st := steerer{n: c.n, base: c.base}
		k := c.k
		for range c.windows {
			k = st.step(k, c.share, c.accepts)
		}
		if k != c.want {
			t.Errorf("%s: %d loops after %d windows, want %d", c.name, k, c.windows, c.want)
		}
	}
}

// TestSteeredLoops: with steering, new connections go to the active loops
// only; a loop that stops taking them goes on serving what it holds.
func TestSteeredLoops(t *testing.T) {
	be := startEcho(t)
	p := newProxy(t, Options{Loops: 2, steer: true, steerByHand: true}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	addr := p.addrOf(t, "svc")
	sync := func() {
		for _, l := range p.loops {
			l.call(func() {}) // the posted re-steering has run
		}
	}
	accepted := func(i int) uint64 { return p.Loops()[i].Accepted }

	for i := range 30 {
		c := dial(t, addr)
		roundTrip(t, c, fmt.Sprintf("one %d\n", i))
		c.Close()
	}
	if st := p.Loops(); accepted(1) != 0 || !st[0].Steered || st[1].Steered {
		t.Fatalf("one active loop: %+v, want every connection on loop 0", st)
	}

	p.setActive(2)
	sync()
	var held []*net.TCPConn
	for i := 0; accepted(1) < 5; i++ {
		if i == 500 {
			t.Fatalf("two active loops: loop 1 accepted %d of 500 connections", accepted(1))
		}
		c := dial(t, addr)
		roundTrip(t, c, fmt.Sprintf("two %d\n", i))
		held = append(held, c)
	}
	if st := p.Loops(); !st[1].Steered {
		t.Fatalf("loop 1 not reported as steered to: %+v", st)
	}

	p.setActive(1)
	sync()
	before := accepted(1)
	for i := range 30 {
		c := dial(t, addr)
		roundTrip(t, c, fmt.Sprintf("back %d\n", i))
		c.Close()
	}
	if got := accepted(1); got != before {
		t.Fatalf("loop 1 accepted %d connections after it stopped taking them", got-before)
	}
	// Sessions on loop 1 still flow.
	for i, c := range held {
		roundTrip(t, c, fmt.Sprintf("still %d\n", i))
		c.Close()
	}
}

// TestSteerController: the controller gives the second loop new
// connections when the first is accept-bound, and takes it back when
// the load is gone. The load is written into the loops' counters, so the
// test does not depend on how fast this machine accepts.
func TestSteerController(t *testing.T) {
	p := newProxy(t, Options{Loops: 2, steer: true})
	steered := func() bool { return p.Loops()[1].Steered }
	if steered() {
		t.Fatal("loop 1 steered to before any load")
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			now := time.Now()
			l := p.loops[0]
			l.busyNS.Add(int64(now.Sub(last)) * 9 / 10)
			l.accepted.Add(uint64(3 * steerAccepts * now.Sub(last) / steerEvery))
			last = now
		}
	}()
	testwait.For(t, "loop 1 steered to under churn", 10*time.Second, steered)
	close(stop)
	<-done
	testwait.For(t, "loop 1 given back after the churn", 20*time.Second, func() bool { return !steered() })
}

// TestSteerHandedOver: a proxy with `loops` set that takes over the
// sockets of one that steered takes new connections on every loop (the
// program stays with the socket group until it is detached), and the old
// proxy, still running, no longer changes the program.
func TestSteerHandedOver(t *testing.T) {
	be := startEcho(t)
	cfg := oneBackend("svc", be.addr())
	p1 := newProxy(t, Options{Loops: 2, steer: true, steerByHand: true}, cfg)
	p1.SetHealth("svc", "a", upAny)
	addr := p1.addrOf(t, "svc")
	fds, err := p1.ListenerFDs()
	if err != nil {
		t.Fatal(err)
	}
	p2 := newProxy(t, Options{Loops: 2, Inherited: fds}, cfg)
	p2.SetHealth("svc", "a", upAny)
	// The old proxy's count changes while the new one starts (its
	// controller would): the program the new one set must stay.
	p1.setActive(1)
	for _, l := range p1.loops {
		l.call(func() {})
	}
	p1.StopAccepting()
	untilLoopAccepts(t, p2, addr, 1)
}

// TestSteerHandOverFailed: after a hand-over that did not happen the
// proxy steers its sockets again.
func TestSteerHandOverFailed(t *testing.T) {
	be := startEcho(t)
	p := newProxy(t, Options{Loops: 2, steer: true, steerByHand: true}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	addr := p.addrOf(t, "svc")
	fds, err := p.ListenerFDs()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fds {
		closeFDs(f)
	}
	p.HandOverFailed()
	p.setActive(2)
	for _, l := range p.loops {
		l.call(func() {})
	}
	untilLoopAccepts(t, p, addr, 1)
}

// untilLoopAccepts makes connections through addr, each answered and
// closed, until loop i of p has accepted one; 200 without fails the test.
func untilLoopAccepts(t *testing.T, p *Proxy, addr string, i int) {
	t.Helper()
	for n := 0; p.Loops()[i].Accepted == 0; n++ {
		if n == 200 {
			t.Fatalf("loop %d accepted none of 200 connections: %+v", i, p.Loops())
		}
		c := dial(t, addr)
		roundTrip(t, c, fmt.Sprintf("hello %d\n", n))
		c.Close()
	}
}
