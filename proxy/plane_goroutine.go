//go:build !linux

package proxy

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// The goroutine data plane, kept for platforms without epoll: a goroutine
// per direction, parked only where the platform allows.

type listener struct {
	ln     net.Listener
	listen string // the address as configured
	addr   string
	stop   chan struct{}
}

func (s *service) listen(addr string) (*listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("service %q: listen %s: %w", s.name, addr, err)
	}
	return &listener{ln: ln, listen: addr, addr: ln.Addr().String(), stop: make(chan struct{})}, nil
}

// errNoHandover: handing listening sockets to another process is done on
// Linux only (the platform quorumproxy is run on as a service).
var errNoHandover = errors.New("handing listeners over is supported on Linux only")

func (l *listener) dup() ([]int, error) { return nil, errNoHandover }

// closeFDs has nothing to close: no sockets are handed over here.
func closeFDs([]int) {}

// holdSteering: no loops, nothing steered.
func (p *Proxy) holdSteering(bool) {}

// Loops reports no event loops: there are none here.
func (p *Proxy) Loops() []LoopStatus { return nil }

func (s *service) startAccept(l *listener) {
	s.p.wg.Add(1)
	go s.acceptLoop(l)
}

func (l *listener) close() {
	if l == nil {
		return
	}
	close(l.stop)
	_ = l.ln.Close()
}

// acceptLoop accepts until the listener closes, backing off on other errors
// (EMFILE) by their rate (see acceptBackoff).
func (s *service) acceptLoop(l *listener) {
	defer s.p.wg.Done()
	var bo acceptBackoff
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay, logNow, n := bo.failed(time.Now())
			if logNow {
				s.p.log.Warn("accept failed", "service", s.name, "err", err, "errors", n, "retry_in", delay)
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.stop:
				t.Stop()
				return
			}
			continue
		}
		s.accepted.Add(1)
		tc := c.(*net.TCPConn)
		max := s.maxConns.Load()
		if n := s.conns.Add(1); max > 0 && n > max {
			s.conns.Add(-1)
			s.refused.Add(1)
			_ = tc.Close()
			continue
		}
		s.p.active.Add(1)
		s.p.wg.Add(1)
		go s.handle(tc)
	}
}

// leasePoll is how often a held connection of an External service looks at
// its lease, whose renewal is not signalled.
const leasePoll = 20 * time.Millisecond

// handle holds, dials and proxies one client connection.
func (s *service) handle(c *net.TCPConn) {
	defer s.p.wg.Done()
	var holdEnd time.Time
	held := false
	unhold := func() {
		if held {
			held = false
			s.held.Add(-1)
		}
	}
hold:
	for {
		pl, changed := s.plan()
		if len(pl.try) > 0 {
			unhold()
			if s.dialAndRun(c, pl) {
				return
			}
			break
		}
		now := time.Now()
		if !held {
			if pl.hold <= 0 {
				break
			}
			held = true
			s.held.Add(1)
			holdEnd = now.Add(pl.hold)
		}
		left := holdEnd.Sub(now)
		if left <= 0 {
			break
		}
		if pl.poll && left > leasePoll {
			left = leasePoll
		}
		t := time.NewTimer(left)
		select {
		case <-changed:
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			break hold // removed or closing: refuse now
		}
		t.Stop()
	}
	unhold()
	s.refused.Add(1)
	s.release()
	_ = c.Close()
}

// dialAndRun dials pl.try in order within the connect timeout and proxies
// c. It returns false (c still open, not counted) if no session started.
func (s *service) dialAndRun(c *net.TCPConn, pl plan) bool {
	var deadline time.Time
	if pl.connect > 0 {
		deadline = time.Now().Add(pl.connect)
	}
	anyFull := false
	for i, t := range pl.try {
		b := t.b
		if !b.reserve() {
			anyFull = true
			continue
		}
		d := net.Dialer{}
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				b.active.Add(-1)
				break
			}
			// Share what is left among the remaining candidates, so one
			// black hole cannot use up the whole budget.
			d.Deadline = time.Now().Add(left / time.Duration(len(pl.try)-i))
		}
		if pl.lease != nil {
			rem := pl.lease.Remaining()
			if rem <= 0 {
				b.active.Add(-1)
				break
			}
			if ld := time.Now().Add(rem); d.Deadline.IsZero() || ld.Before(d.Deadline) {
				d.Deadline = ld
			}
		}
		gen := b.generation()
		nc, err := d.DialContext(s.ctx, "tcp", t.addr)
		if err != nil {
			b.active.Add(-1)
			b.dialFail.Add(1)
			s.p.log.Debug("dial failed", "service", s.name, "backend", t.name, "address", t.addr, "err", err)
			continue
		}
		sc := nc.(*net.TCPConn)
		sess, err := newSession(s, b, c, sc, pl.idle, pl.lease)
		if err != nil || !b.addSession(sess, gen, &s.p.closing) {
			b.active.Add(-1)
			_ = sc.Close()
			return false
		}
		b.sessions.Add(1)
		sess.start()
		s.p.wg.Add(1)
		go sess.copyClientToBackend()
		sess.copyBackendToClient()
		return true
	}
	if anyFull {
		for _, t := range pl.try {
			if m := t.b.max.Load(); m > 0 && t.b.active.Load() >= m {
				t.b.refused.Add(1)
			}
		}
	}
	return false
}

// plane is the goroutine data plane's state: none beyond the poller.
type plane struct{}

func (p *Proxy) startPlane(Options) {
	if p.parkAfter < 0 {
		return
	}
	pl, err := newPoller()
	if err != nil {
		p.log.Warn("idle connections will keep their goroutines", "err", err)
		return
	}
	p.poller = pl
	p.wg.Add(2)
	go pl.run(p)
	go p.reclaimLoop()
}

func (p *Proxy) stopPlane() {
	if p.poller != nil {
		p.poller.stop()
	}
}

// resolvedAddr is the event loops' dial-address cache; unused here.
type resolvedAddr struct{}

// wakeHeld: held connections here wait on the service's channel and
// context.
func (s *service) wakeHeld() {}

// planeSupports refuses what only the Linux event loops implement.
func planeSupports(c *ServiceConfig) error {
	if len(c.AcceptProxy) > 0 {
		return errors.New("accepting the PROXY protocol needs the Linux data plane")
	}
	for _, b := range c.Backends {
		if b.SendProxy != ProxyNone {
			return fmt.Errorf("backend %q: sending the PROXY protocol needs the Linux data plane", b.Name)
		}
	}
	return nil
}
