//go:build linux

package proxy

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Session states on a loop.
const (
	stHeader      = iota // reading the PROXY header of a client from an AcceptProxy network
	stHeld               // waiting for a usable target (switch_hold)
	stResolving          // the backend's host name is being looked up
	stConnecting         // nonblocking connect in progress
	stEstablished        // bytes flow
)

// spliceAfter is how many consecutive reads that fill the whole loop
// buffer move a direction to splice: by then it is a bulk stream, and the
// kernel can move its pages without copying them through user space.
const spliceAfter = 2

// maxPipesPerLoop bounds the pipes one loop has in use (two fds each),
// like HAProxy's maxpipes; past it, bulk directions copy.
const maxPipesPerLoop = 512

// maxPooledPipes bounds the empty pipes a loop keeps for reuse.
const maxPooledPipes = 16

// pipeSize is a splice pipe's capacity, and the most one splice moves:
// four times the kernel's default. iperf3 through the proxy, one stream
// (4 interleaved rounds): 13.6-16.0 Gbit/s at 257-332 ms of proxy CPU per
// GB, against 10.2-12.5 Gbit/s and 468-531 ms with the default 64 KiB;
// 1 MiB measured no better. A direction in splice mode keeps at most
// this much (kernel pages referenced by the pipe, not the proxy's heap).
const pipeSize = 256 << 10

// maxBigPipes bounds the pipes of pipeSize open at once (see getPipe).
const maxBigPipes = 128

// noPipeFor is how long a loop copies instead of splicing after it could
// not get a useful pipe (out of fds, or pipes cut to a few pages): a bulk
// direction asks for one on every full read, and each failed try costs
// up to five system calls.
const noPipeFor = time.Second

// session is one client connection and, once dialled, its backend
// connection. It belongs to one loop and is touched only there.
type session struct {
	l      *loop
	svc    *service
	b      *backend // set while a dial or the session holds a slot of b
	cfd    int
	sfd    int // -1 until a dial starts
	ctok   uint64
	stok   uint64
	client endpoint
	server endpoint
	state  int
	closed bool
	held   bool

	pl      plan
	next    int   // next candidate of pl.try
	anyFull bool  // some candidate was at its MaxConns
	dialEnd int64 // nanotime: end of all attempts (0: none)
	tryEnd  int64 // nanotime: end of this attempt (0: none)
	holdEnd int64
	gen     uint64 // b's close generation when the dial began
	attempt int    // dial attempts begun, to match a lookup's answer

	idle int64 // idle timeout, ns (0: none)
	last int64 // loop time of the last read either way
	tm   ltimer

	peer      unix.Sockaddr // the client's address, as the socket says
	hdrSrc    net.Addr      // the client's address, as a PROXY header said
	hdrDst    net.Addr
	sendProxy ProxyVersion // the header the backend being dialled wants

	up, down direction // client→backend, backend→client

	// For the access log: when the client came and why the session ended
	// (the first reason given wins).
	start int64
	why   string
}

// side names the end of the session a read from d's source (src) or a
// write to its destination touches.
func (d *direction) side(src bool) string {
	if (d == &d.s.up) == src {
		return "client"
	}
	return "backend"
}

// end notes why the session ends, for the access log.
func (s *session) end(why string) {
	if s.why == "" {
		s.why = why
	}
}

// endpoint is one fd of a session, as registered with epoll.
type endpoint struct {
	s      *session
	server bool
	// hup: an event before the session was established reported a
	// hang-up (or an error), so its first reads must go on to EOF.
	hup bool
}

// direction is one way of a session. Bytes read go straight to the peer;
// only what the peer cannot take now is kept (pend, or a pipe in splice
// mode), and the source is not read again until that drained.
type direction struct {
	s     *session
	src   int
	dst   int
	count *atomic.Uint64
	moved uint64 // bytes this direction passed on (the access log)
	lease Lease  // bounds writes when set (client→backend of External)

	pend []byte // pooled; pend[off:n] waits for dst
	off  int
	n    int
	hdr  int // leading bytes of pend that are a PROXY header, not counted
	pipe *pipe
	full int // consecutive reads that filled the buffer

	eof    bool // src ended; dst was shut for writing
	parked bool // waiting for src with nothing kept
	queued bool // on the loop's ready list
}

// pipe is a splice pipe and how many bytes it holds.
type pipe struct {
	r, w int
	n    int
	big  *atomic.Int64 // the count of pipes of pipeSize, if it is one
}

func (pp *pipe) close() {
	_ = unix.Close(pp.r)
	_ = unix.Close(pp.w)
	if pp.big != nil {
		pp.big.Add(-1)
	}
}

// newSession takes an accepted client fd; the session is registered with
// the loop and routed at once.
func (l *loop) newSession(svc *service, fd int, peer unix.Sockaddr) {
	s := &session{l: l, svc: svc, cfd: fd, sfd: -1, peer: peer, start: nanotime()}
	s.client.s, s.server.s, s.server.server = s, s, true
	s.up.s, s.down.s = s, s
	s.tm.idx = -1
	s.tm.fire = s.onTimer
	tok, err := l.register(fd, &s.client)
	if err != nil {
		l.p.log.Warn("epoll_ctl on an accepted connection failed", "service", svc.name, "err", err)
		svc.refused.Add(1)
		_ = unix.Close(fd)
		svc.release()
		return
	}
	s.ctok = tok
	l.sessions[s] = struct{}{}
	if svc.wantsProxyHeader(peer) {
		s.state = stHeader
		s.tryEnd = nanotime() + int64(proxyHeaderTimeout)
		s.armTimer()
		s.readHeader()
		return
	}
	s.state = stHeld
	s.route()
}

// route plans the session's backend: it dials, holds, or refuses.
func (s *session) route() {
	for {
		if s.svc.ctx.Err() != nil || s.l.p.closing.Load() {
			s.refuse() // service removed or proxy closing
			return
		}
		v := s.svc.version.Load()
		pl, _ := s.svc.plan()
		now := nanotime()
		if len(pl.try) > 0 {
			s.unhold()
			s.pl, s.next, s.anyFull = pl, 0, false
			s.idle = int64(pl.idle)
			s.dialEnd = 0
			if pl.connect > 0 {
				s.dialEnd = now + int64(pl.connect)
			}
			s.dialNext()
			return
		}
		if !s.held {
			if pl.hold <= 0 {
				s.refuse()
				return
			}
			s.held = true
			s.state = stHeld
			s.pl = pl
			s.holdEnd = now + int64(pl.hold)
			s.svc.held.Add(1)
		}
		if now >= s.holdEnd {
			s.refuse()
			return
		}
		// A change that landed between plan and held++ found no held
		// session to wake: look again.
		if s.svc.version.Load() == v {
			s.armTimer()
			return
		}
	}
}

func (s *session) unhold() {
	if s.held {
		s.held = false
		s.svc.held.Add(-1)
	}
}

// refuse closes a client that got no session.
func (s *session) refuse() {
	s.svc.refused.Add(1)
	s.end("refused: no backend to send it to (no target, a limit, or switch_hold over)")
	s.close()
}

// dialNext starts a connect to the next candidate, or refuses the client
// when none is left.
func (s *session) dialNext() {
	for s.next < len(s.pl.try) {
		i := s.next
		t := s.pl.try[i]
		s.next++
		b := t.b
		if !b.reserve() {
			s.anyFull = true
			continue
		}
		now := nanotime()
		var end int64
		if s.dialEnd != 0 {
			left := s.dialEnd - now
			if left <= 0 {
				b.active.Add(-1)
				break
			}
			// Share what is left among the remaining candidates, so one
			// black hole cannot use up the whole budget.
			end = now + left/int64(len(s.pl.try)-i)
		}
		if s.pl.lease != nil {
			rem := s.pl.lease.Remaining()
			if rem <= 0 {
				b.active.Add(-1)
				break
			}
			if le := now + int64(rem); end == 0 || le < end {
				end = le
			}
		}
		gen := b.generation()
		if !b.addSession(s, gen, &s.l.p.closing) {
			b.active.Add(-1)
			break
		}
		s.b, s.gen, s.tryEnd = b, gen, end
		s.sendProxy = t.proxy
		s.attempt++
		sa := b.dialAddr(t.addr)
		if sa == nil {
			s.resolve(t)
			return
		}
		if s.connect(sa) {
			return
		}
	}
	if s.anyFull {
		for _, t := range s.pl.try {
			if m := t.b.max.Load(); m > 0 && t.b.active.Load() >= m {
				t.b.refused.Add(1)
			}
		}
	}
	s.refuse()
}

// connect starts a nonblocking connect to sa for s.b. It reports false,
// with the attempt counted as failed, if the connect failed at once.
func (s *session) connect(sa unix.Sockaddr) bool {
	l := s.l
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := sysSocket(family)
	if err != nil {
		if err == unix.EMFILE || err == unix.ENFILE {
			l.shedUntil = nanotime() + int64(shedFor)
		}
		s.dropBackend()
		if logNow, n := s.svc.socketErrs.tick(time.Now(), acceptLogEvery); logNow {
			l.p.log.Warn("socket for a backend connection failed", "service", s.svc.name, "err", err, "errors", n)
		}
		return false
	}
	sysSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	err = sysConnect(fd, sa)
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		_ = unix.Close(fd)
		s.dialFailed(err, false)
		return false
	}
	tok, rerr := l.register(fd, &s.server)
	if rerr != nil {
		_ = unix.Close(fd)
		s.dialFailed(rerr, false)
		return false
	}
	s.sfd, s.stok = fd, tok
	s.state = stConnecting
	if err == nil {
		s.established()
		return true
	}
	s.armTimer()
	return true
}

// resolve looks the backend's host up off the loop, then connects.
func (s *session) resolve(t dialTarget) {
	s.state = stResolving
	s.armTimer()
	l, p, attempt := s.l, s.l.p, s.attempt
	timeout := time.Duration(s.tryEnd - nanotime())
	if s.tryEnd == 0 {
		timeout = time.Minute
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ctx, cancel := context.WithTimeout(p.ctx, timeout)
		sa, err := resolveSockaddr(ctx, t.addr)
		cancel()
		l.post(func() {
			if s.closed || s.state != stResolving || s.attempt != attempt {
				return // timed out or closed meanwhile
			}
			if err != nil {
				s.dialFailed(err, true)
				return
			}
			s.connect(sa)
		})
	}()
}

// dropBackend releases the slot of the backend being dialled.
func (s *session) dropBackend() {
	if s.b != nil {
		s.b.removeSession(s)
		s.b = nil
	}
}

// dialFailed counts a failed attempt and moves on to the next candidate
// (when next is set; otherwise the caller does).
func (s *session) dialFailed(err error, next bool) {
	if s.sfd >= 0 {
		s.l.unregister(s.stok)
		sysClose(s.sfd)
		s.sfd, s.stok = -1, 0
	}
	if b := s.b; b != nil {
		b.dialFail.Add(1)
		s.l.p.log.Debug("dial failed", "service", s.svc.name, "backend", b.cfg.Name, "address", b.cfg.Address, "err", err)
	}
	s.dropBackend()
	if next {
		s.dialNext()
	}
}

// onEvent dispatches readiness to the directions.
func (e *endpoint) onEvent(ev uint32) {
	s := e.s
	if s.closed {
		return
	}
	const in = unix.EPOLLIN | hangup
	const out = unix.EPOLLOUT | unix.EPOLLHUP | unix.EPOLLERR
	if s.state != stEstablished {
		if ev&hangup != 0 {
			e.hup = true
		}
		switch {
		case e.server && s.state == stConnecting && ev&out != 0:
			s.connectDone(ev)
		case !e.server && s.state == stHeader && ev&in != 0:
			s.readHeader()
		}
		return // a held client's bytes wait in its socket
	}
	rd, wr := e.dirs()
	if ev&in != 0 {
		// Without a hang-up in the event, a short read means the socket
		// is drained and a later arrival raises a new edge: no read is
		// needed just to see EAGAIN. With one, read on to the EOF.
		rd.wake(ev&hangup == 0)
	}
	if ev&out != 0 && !s.closed && wr.kept() {
		wr.pump()
	}
}

// hangup is the part of an event that says the peer closed or failed: a
// read must then go on to EOF or the error.
const hangup = unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR

// dirs returns the direction that reads this endpoint's fd and the one
// that writes to it.
func (e *endpoint) dirs() (rd, wr *direction) {
	if e.server {
		return &e.s.down, &e.s.up
	}
	return &e.s.up, &e.s.down
}

// connectDone finishes a nonblocking connect.
func (s *session) connectDone(ev uint32) {
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		s.established() // writable and no error: connected
		return
	}
	errno, err := unix.GetsockoptInt(s.sfd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil {
		err = unix.ECONNREFUSED // a hang-up with no error recorded
		if errno != 0 {
			err = unix.Errno(errno)
		}
	}
	s.dialFailed(err, true)
}

// established starts the byte flow of a connected session.
func (s *session) established() {
	b := s.b
	s.state = stEstablished
	s.tryEnd = 0
	b.sessions.Add(1)
	s.up.src, s.up.dst, s.up.count, s.up.lease = s.cfd, s.sfd, &b.bytesIn, s.pl.lease
	s.down.src, s.down.dst, s.down.count = s.sfd, s.cfd, &b.bytesOut
	if s.sendProxy != ProxyNone {
		hdr, err := s.proxyHeader(s.sendProxy)
		if err != nil {
			s.l.p.log.Warn("PROXY header not built; session closed", "service", s.svc.name, "backend", b.cfg.Name, "err", err)
			s.abortNow(false)
			return
		}
		// Sent before any client byte; not counted as client bytes.
		s.up.pend = s.l.getBuf()
		s.up.off, s.up.n = 0, copy(s.up.pend, hdr)
		s.up.hdr = s.up.n
	}
	s.last = nanotime()
	s.armTimer()
	// Edge-triggered: bytes that arrived while dialling raised their edge
	// already, so both directions are pumped now. Without a hang-up seen
	// on a side so far, a short read there drains it (as in onEvent): a
	// later arrival, a FIN included, raises a new edge.
	s.up.pumpFrom(!s.client.hup)
	if !s.closed {
		s.down.pumpFrom(!s.server.hup)
	}
}

// armTimer sets the session's one timer to its next deadline.
func (s *session) armTimer() {
	var when int64
	min := func(t int64) {
		if t != 0 && (when == 0 || t < when) {
			when = t
		}
	}
	switch s.state {
	case stHeader:
		min(s.tryEnd)
	case stHeld:
		min(s.holdEnd)
		if s.pl.poll {
			min(nanotime() + int64(leasePoll))
		}
	case stResolving, stConnecting:
		min(s.tryEnd)
	case stEstablished:
		if s.idle > 0 {
			min(s.last + s.idle)
		}
		if s.pl.lease != nil {
			// Wake at the lease's end to close the session if it was not
			// renewed; a renewed lease just moves the timer on.
			min(nanotime() + max(int64(s.pl.lease.Remaining()), int64(time.Millisecond)))
		}
	}
	if when == 0 {
		s.l.unschedule(&s.tm)
		return
	}
	s.l.schedule(&s.tm, when)
}

// leasePoll is how often a held connection of an External service looks at
// its lease, whose renewal is not signalled.
const leasePoll = 20 * time.Millisecond

func (s *session) onTimer(now int64) {
	if s.closed {
		return
	}
	switch s.state {
	case stHeader:
		if now >= s.tryEnd {
			s.badHeader(errors.New("no PROXY header within " + proxyHeaderTimeout.String()))
			return
		}
	case stHeld:
		s.route()
		return
	case stResolving, stConnecting:
		if s.tryEnd != 0 && now >= s.tryEnd {
			s.dialFailed(unix.ETIMEDOUT, true)
			return
		}
	case stEstablished:
		if s.idle > 0 && now-s.last >= s.idle {
			s.end("idle timeout")
			s.abortNow(false)
			return
		}
		if s.pl.lease != nil && s.pl.lease.Remaining() <= 0 {
			s.leaseLost()
			return
		}
	}
	s.armTimer()
}

// abortNow closes both connections; reset passes a reset on (SO_LINGER 0)
// instead of a clean close.
func (s *session) abortNow(reset bool) {
	if s.closed {
		return
	}
	if reset {
		linger := &unix.Linger{Onoff: 1, Linger: 0}
		_ = unix.SetsockoptLinger(s.cfd, unix.SOL_SOCKET, unix.SO_LINGER, linger)
		if s.sfd >= 0 {
			_ = unix.SetsockoptLinger(s.sfd, unix.SOL_SOCKET, unix.SO_LINGER, linger)
		}
	}
	s.close()
}

// close releases everything of the session.
func (s *session) close() {
	if s.closed {
		return
	}
	s.closed = true
	l := s.l
	l.unschedule(&s.tm)
	s.unhold()
	for _, d := range []*direction{&s.up, &s.down} {
		d.unpark()
		if d.pend != nil {
			l.putBuf(d.pend)
			d.pend = nil
		}
		if d.pipe != nil {
			l.putPipe(d.pipe)
			d.pipe = nil
		}
	}
	delete(l.sessions, s)
	if l.p.accessLog.Load() {
		s.logAccess()
	}
	// Counted out before the fds close: whoever sees the close sees the
	// counts without it.
	s.dropBackend()
	s.svc.release()
	l.unregister(s.ctok)
	sysClose(s.cfd)
	if s.sfd >= 0 {
		l.unregister(s.stok)
		sysClose(s.sfd)
	}
	if l.p.spares.short.Load() {
		l.p.spares.fill() // the spares come before new sessions
	}
}

// kept reports whether the direction holds bytes its peer has not taken.
func (d *direction) kept() bool {
	return d.n > d.off || d.pipe != nil && d.pipe.n > 0
}

func (d *direction) unpark() {
	if d.parked {
		d.parked = false
		d.s.l.parked.Add(-1)
	}
}

// resume counts a parked direction woken by data.
func (d *direction) resume() {
	if d.parked {
		d.unpark()
		d.s.l.resumed.Add(1)
	}
}

// wake runs a direction whose source became readable; short: a short
// read drains the source (see pumpFrom).
func (d *direction) wake(short bool) {
	d.resume()
	if !d.kept() {
		d.pumpFrom(short)
	}
}

// pump moves bytes from src to dst until src has none (park), dst is full
// (keep the rest, stop reading), EOF (half-close) or an error (abort).
func (d *direction) pump() { d.pumpFrom(false) }

// pumpFrom is pump; with short, a read shorter than the buffer ends it
// (the source is drained and a later arrival raises a new edge), where
// pump reads on to EAGAIN.
func (d *direction) pumpFrom(short bool) {
	s, l := d.s, d.s.l
	if d.eof || s.closed {
		return
	}
	if d.pipe != nil && d.pipe.n > 0 && !d.flushPipe() {
		return
	}
	if d.n > d.off && !d.flushBuf() {
		return
	}
	for i := 0; i < readBudget; i++ {
		var n int
		var err error
		if d.pipe != nil {
			n, err = sysSplice(d.src, d.pipe.w, pipeSize)
		} else {
			n, err = sysRead(d.src, l.buf)
		}
		switch {
		case err == unix.EAGAIN:
			if d.pipe != nil {
				// Drained: give the pipe back; an idle session holds none.
				l.putPipe(d.pipe)
				d.pipe = nil
			}
			d.full = 0
			d.park()
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			s.end(d.side(true) + ": " + err.Error())
			s.abortNow(errors.Is(err, unix.ECONNRESET))
			return
		case n == 0:
			d.ended()
			return
		}
		s.last = l.now()
		if d.pipe != nil {
			d.pipe.n = n
			if !d.flushPipe() {
				return
			}
			continue
		}
		if !d.write(l.buf[:n]) {
			return
		}
		if n < len(l.buf) && short {
			d.full = 0
			d.park()
			return
		}
		if n == len(l.buf) {
			if d.full++; d.full >= spliceAfter {
				if d.pipe = l.getPipe(); d.pipe != nil { // nil: keep copying
					l.spliced.Add(1)
				}
			}
		} else {
			d.full = 0
		}
	}
	// Budget spent and src may hold more: edge-triggered, so come back.
	if !d.queued {
		d.queued = true
		l.ready = append(l.ready, d)
	}
}

func (d *direction) again() {
	d.queued = false
	if !d.s.closed {
		d.pump()
	}
}

func (d *direction) park() {
	if !d.parked {
		d.parked = true
		d.s.l.parked.Add(1)
	}
}

// leaseOK checks the lease before a write to the backend.
func (d *direction) leaseOK() bool {
	if d.lease != nil && d.lease.Remaining() <= 0 {
		d.s.leaseLost()
		return false
	}
	return true
}

// leaseLost closes a session whose route's lease ran out, counted for the
// route change that follows (unsent bytes are dropped: a reset).
func (s *session) leaseLost() {
	if s.closed {
		return
	}
	if s.b != nil {
		s.b.leaseLost.Add(1)
	}
	s.end("lease lost: this proxy may no longer route to the backend")
	s.abortNow(true)
}

// write sends b to dst; what dst cannot take is kept. It reports whether
// everything went (false: kept, or the session was aborted).
func (d *direction) write(b []byte) bool {
	if !d.leaseOK() {
		return false
	}
	n, err := writeFD(d.dst, b)
	return d.wrote(b, n, err)
}

// wrote accounts for a write of b that sent n bytes: what was not sent is
// kept, unless err ends the session.
func (d *direction) wrote(b []byte, n int, err error) bool {
	if n > 0 {
		d.count.Add(uint64(n))
		d.moved += uint64(n)
	}
	if n == len(b) {
		return true
	}
	if err != nil && err != unix.EAGAIN {
		d.s.end(d.side(false) + ": " + err.Error())
		d.s.abortNow(errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE))
		return false
	}
	d.pend = d.s.l.getBuf()
	d.off, d.n = 0, copy(d.pend, b[max(n, 0):])
	return false
}

// flushBuf sends kept bytes; true once none are left.
func (d *direction) flushBuf() bool {
	if !d.leaseOK() {
		return false
	}
	n, err := writeFD(d.dst, d.pend[d.off:d.n])
	if n > 0 {
		counted := n
		if d.hdr > 0 {
			h := min(d.hdr, n)
			d.hdr -= h
			counted -= h
		}
		d.count.Add(uint64(counted))
		d.moved += uint64(counted)
		d.off += n
	}
	if d.off == d.n {
		d.s.l.putBuf(d.pend)
		d.pend, d.off, d.n = nil, 0, 0
		return true
	}
	if err != nil && err != unix.EAGAIN {
		d.s.end(d.side(false) + ": " + err.Error())
		d.s.abortNow(errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE))
	}
	return false
}

// flushPipe splices the pipe's bytes to dst; true once it is empty.
func (d *direction) flushPipe() bool {
	for d.pipe.n > 0 {
		if !d.leaseOK() {
			return false
		}
		n, err := sysSplice(d.pipe.r, d.dst, d.pipe.n)
		if n > 0 {
			d.count.Add(uint64(n))
			d.moved += uint64(n)
			d.pipe.n -= int(n)
			continue
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			d.s.end(d.side(false) + ": " + err.Error())
			d.s.abortNow(errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE))
			return false
		default:
			return false // cannot happen: splice of a non-empty pipe moved 0
		}
	}
	return true
}

// ended passes an EOF on as a half-close; the session closes once both
// directions have ended.
func (d *direction) ended() {
	d.eof = true
	d.unpark()
	if d.pipe != nil {
		d.s.l.putPipe(d.pipe)
		d.pipe = nil
	}
	if d.s.up.eof && d.s.down.eof {
		d.s.end("done: both ends closed")
		d.s.close() // both read to their end: close sends the last FIN
		return
	}
	// src is at its end already: only the half-close is passed on.
	sysShutdown(d.dst, unix.SHUT_WR)
}

func writeFD(fd int, b []byte) (int, error) {
	for {
		n, err := sysWrite(fd, b)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// getPipe returns a pipe for splicing, or nil when none can be had.
func (l *loop) getPipe() *pipe {
	if n := len(l.pipes); n > 0 {
		pp := l.pipes[n-1]
		l.pipes = l.pipes[:n-1]
		l.lent.Add(1)
		return pp
	}
	if l.lent.Load() >= maxPipesPerLoop || l.nowNS < l.noPipeUntil {
		return nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		l.noPipeUntil = l.nowNS + int64(noPipeFor)
		return nil
	}
	pp := &pipe{r: fds[0], w: fds[1]}
	// An unprivileged user's pipes share fs.pipe-user-pages-soft (64 MiB
	// of capacity by default), past which the kernel makes new pipes of
	// two pages: at most maxBigPipes are enlarged, half of that, so that
	// the rest still get the default size.
	big := &l.p.bigPipes
	if big.Add(1) <= maxBigPipes {
		if _, err := unix.FcntlInt(uintptr(pp.w), unix.F_SETPIPE_SZ, pipeSize); err == nil {
			pp.big = big
		}
	}
	if pp.big == nil {
		big.Add(-1)
		// Cut to a few pages, a pipe moves less per call than a copy.
		if sz, err := unix.FcntlInt(uintptr(pp.w), unix.F_GETPIPE_SZ, 0); err != nil || sz < loopBufSize {
			pp.close()
			l.noPipeUntil = l.nowNS + int64(noPipeFor)
			return nil
		}
	}
	l.lent.Add(1)
	return pp
}

// putPipe takes a pipe back; one still holding bytes is closed.
func (l *loop) putPipe(pp *pipe) {
	l.lent.Add(-1)
	if pp.n != 0 || len(l.pipes) >= maxPooledPipes {
		pp.close()
		return
	}
	l.pipes = append(l.pipes, pp)
}

// resolvedAddr caches a backend's address when it is an IP literal.
type resolvedAddr struct {
	addr string
	sa   unix.Sockaddr // nil: a host name, looked up on each dial
}

// dialAddr returns the sockaddr for addr, or nil if it needs a lookup.
func (b *backend) dialAddr(addr string) unix.Sockaddr {
	if r := b.resolved.Load(); r != nil && r.addr == addr {
		// A copy: Connect writes into the sockaddr it is given, and the
		// loops share the cache.
		switch sa := r.sa.(type) {
		case *unix.SockaddrInet4:
			c := *sa
			return &c
		case *unix.SockaddrInet6:
			c := *sa
			return &c
		}
		return nil
	}
	r := &resolvedAddr{addr: addr}
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil {
			if pn, err := strconv.Atoi(port); err == nil {
				r.sa = sockaddr(ip, pn)
			}
		}
	}
	b.resolved.Store(r)
	return b.dialAddr(addr)
}

// resolveSockaddr looks addr's host up; the first address is used.
func resolveSockaddr(ctx context.Context, addr string) (unix.Sockaddr, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	pn, err := net.DefaultResolver.LookupPort(ctx, "tcp", port)
	if err != nil {
		return nil, err
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, &net.DNSError{Err: "no address", Name: host}
	}
	return sockaddr(ips[0].IP, pn), nil
}

func sockaddr(ip net.IP, port int) unix.Sockaddr {
	if ip4 := ip.To4(); ip4 != nil {
		sa := &unix.SockaddrInet4{Port: port}
		copy(sa.Addr[:], ip4)
		return sa
	}
	sa := &unix.SockaddrInet6{Port: port}
	copy(sa.Addr[:], ip.To16())
	return sa
}

// abort closes the session from outside its loop (fencing, removal,
// Close): the loop does it at its next wake-up.
func (s *session) abort(reset bool, why string) {
	s.l.post(func() {
		s.end(why)
		s.abortNow(reset)
	})
}

// logAccess writes the access log line of a session that ends: HAProxy's
// tcplog for this proxy.
func (s *session) logAccess() {
	backend := ""
	if s.b != nil {
		backend = s.b.cfg.Name
	}
	client := ""
	if a := sockaddrTCP(s.peer); a != nil {
		client = a.String()
	}
	if s.hdrSrc != nil {
		client = s.hdrSrc.String() // what a load balancer in front said
	}
	why := s.why
	if why == "" {
		why = "closed"
	}
	s.l.p.log.Info("connection", "service", s.svc.name, "client", client, "backend", backend,
		"duration", time.Duration(nanotime()-s.start).Round(time.Microsecond),
		"bytes_to_backend", s.up.moved, "bytes_to_client", s.down.moved, "why", why)
}
