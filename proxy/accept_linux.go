//go:build linux

package proxy

import (
	"fmt"
	"net"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// acceptBudget bounds the connections a listener accepts per wake-up.
const acceptBudget = 64

// listenBacklog is passed to listen(2); the kernel caps it at somaxconn.
const listenBacklog = 65535

// listener is a service's listening address: one SO_REUSEPORT socket per
// loop, so the kernel spreads new connections over the loops (those
// steered to, see steer) and each loop accepts its own without a
// hand-off: measured, more connections a second than one acceptor posting
// each new session to the loops in turn, at the same CPU per connection
// (docs/design.md has the figures).
type listener struct {
	svc    *service
	listen string // the address as configured, which a hand-over names it by
	addr   string
	fds    []*lfd
	errs   logEvery // accept errors, logged once a second for all its loops
	// adopted: the sockets were handed over by another process, whose
	// steering program may still be on the group.
	adopted bool
}

// lfd is one listening socket, owned by its loop once started.
type lfd struct {
	l      *loop
	ln     *listener
	fd     int
	tok    uint64
	closed bool
	paused bool
	queued bool
	bo     acceptBackoff // paces accepts that meet errors, by their rate
	tm     ltimer
}

func (s *service) listen(addr string) (*listener, error) {
	loops := s.p.loops
	if len(loops) == 0 {
		return nil, fmt.Errorf("service %q: listen %s: no event loop running", s.name, addr)
	}
	var fds []int
	var bound string
	var err error
	got := s.p.takeInherited(addr)
	if len(got) > 0 {
		fds, bound, err = adoptGroup(got, len(loops))
		if err == nil {
			s.p.log.Info("listening on sockets handed over", "service", s.name, "addr", bound, "sockets", len(got), "loops", len(loops))
		}
	} else {
		fds, bound, err = listenGroup(addr, len(loops))
	}
	if err != nil {
		return nil, fmt.Errorf("service %q: listen %s: %w", s.name, addr, err)
	}
	ln := &listener{svc: s, listen: addr, addr: bound, adopted: len(got) > 0}
	for i, fd := range fds {
		// More handed-over sockets than loops (the old process ran more):
		// a loop takes several rather than close one, whose queued
		// connections the kernel would reset.
		a := &lfd{l: loops[i%len(loops)], ln: ln, fd: fd}
		a.tm.idx = -1
		a.tm.fire = a.resume
		ln.fds = append(ln.fds, a)
	}
	// Before any client is told the address (a.steer, on the loop, keeps
	// it in step with later changes).
	s.p.steerGroup(ln, fds[0])
	return ln, nil
}

// startAccept hands each socket to its loop.
func (s *service) startAccept(ln *listener) {
	for _, a := range ln.fds {
		if !a.l.post(a.start) {
			a.close()
		}
	}
}

// close closes every socket of the listener, each on its loop, and
// returns once they are closed (the address can then be bound again).
func (ln *listener) close() {
	if ln == nil {
		return
	}
	for _, a := range ln.fds {
		a.l.call(a.close)
	}
}

func (a *lfd) start() {
	if a.closed {
		return
	}
	tok, err := a.l.register(a.fd, a)
	if err != nil {
		a.l.p.log.Error("epoll_ctl on a listener failed", "service", a.ln.svc.name, "err", err)
		a.close()
		return
	}
	a.tok = tok
	a.l.lns[a] = struct{}{}
	a.steer()
	a.accept() // connections queued before registration raised no edge
}

func (a *lfd) close() {
	if a.closed {
		return
	}
	a.closed = true
	if a.tok != 0 {
		// Explicitly: a socket handed to another process stays open
		// there, and closing this fd would leave it in the epoll set.
		_ = unix.EpollCtl(a.l.epfd, unix.EPOLL_CTL_DEL, a.fd, nil)
	}
	a.l.unregister(a.tok)
	a.l.unschedule(&a.tm)
	delete(a.l.lns, a)
	_ = unix.Close(a.fd)
}

// dup returns a duplicate of every socket of the listener (close-on-exec),
// each taken on its loop; the caller owns them.
func (ln *listener) dup() ([]int, error) {
	var out []int
	var err error
	for _, a := range ln.fds {
		a.l.call(func() {
			if err != nil {
				return
			}
			if a.closed {
				err = fmt.Errorf("listener %s closed", ln.addr)
				return
			}
			var fd int
			if fd, err = unix.FcntlInt(uintptr(a.fd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
				out = append(out, fd)
			}
		})
	}
	if err != nil {
		closeFDs(out)
		return nil, err
	}
	return out, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

func (a *lfd) onEvent(uint32) {
	if !a.paused && !a.closed {
		a.accept()
	}
}

func (a *lfd) again() {
	a.queued = false
	if !a.paused && !a.closed {
		a.accept()
	}
}

// resume ends a back-off pause.
func (a *lfd) resume(int64) {
	a.paused = false
	if !a.closed {
		a.accept()
	}
}

// accept takes new connections until none is left, the budget is spent
// (then it comes back after the next poll) or an error pauses it.
func (a *lfd) accept() {
	svc := a.ln.svc
	for i := 0; i < acceptBudget; i++ {
		fd, sa, err := accept4(a.fd)
		switch {
		case err == nil:
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR || err == unix.ECONNABORTED:
			continue
		case err == unix.EMFILE || err == unix.ENFILE || err == unix.ENOBUFS || err == unix.ENOMEM:
			a.refuseQueued()
			a.pause(err)
			return
		default:
			a.pause(err)
			return
		}
		svc.accepted.Add(1)
		a.l.accepted.Add(1)
		if a.l.shedUntil > a.l.nowNS {
			// Out of fds for backends: a session could not start, and
			// each one tried holds a slot another loop's accept needs.
			svc.refused.Add(1)
			_ = unix.Close(fd)
			continue
		}
		max := svc.maxConns.Load()
		if n := svc.conns.Add(1); max > 0 && n > max {
			svc.conns.Add(-1)
			svc.refused.Add(1)
			_ = unix.Close(fd)
			continue
		}
		svc.p.active.Add(1)
		a.l.newSession(svc, fd, sa)
	}
	if !a.queued {
		a.queued = true
		a.l.ready = append(a.l.ready, a)
	}
}

// accept4 accepts a connection, nonblocking and close-on-exec, with its
// peer's address. unix.Accept4 asks the listener's protocol with a
// getsockopt on every AF_INET accept (to tell L2TP apart): a system call
// per connection that a TCP listener does not need.
func accept4(lfd int) (int, unix.Sockaddr, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	fd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, nil, e
	}
	switch rsa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		sa := &unix.SockaddrInet4{Addr: p.Addr}
		port := (*[2]byte)(unsafe.Pointer(&p.Port))
		sa.Port = int(port[0])<<8 | int(port[1])
		return int(fd), sa, nil
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		sa := &unix.SockaddrInet6{Addr: p.Addr, ZoneId: p.Scope_id}
		port := (*[2]byte)(unsafe.Pointer(&p.Port))
		sa.Port = int(port[0])<<8 | int(port[1])
		return int(fd), sa, nil
	}
	// Not a TCP/IP peer (not expected of these listeners): the general
	// conversion.
	sa, err := unix.Getpeername(int(fd))
	if err != nil {
		_ = unix.Close(int(fd))
		return -1, nil, unix.ECONNABORTED // this one connection, not the listener
	}
	return int(fd), sa, nil
}

// refuseQueued closes connections waiting in the accept queue while the
// process is out of fds, each through a spare fd (see spareFDs), so their
// clients get a clean close at once instead of waiting in the queue.
func (a *lfd) refuseQueued() {
	svc := a.ln.svc
	a.l.p.spares.refuse(acceptBudget, func() bool {
		fd, _, err := unix.Accept4(a.fd, unix.SOCK_CLOEXEC)
		if err != nil {
			return false
		}
		_ = unix.Close(fd)
		svc.accepted.Add(1)
		svc.refused.Add(1)
		return true
	})
}

// pause stops accepting for a delay that grows while errors go on (by
// their rate, not the last accept's outcome: under fd exhaustion most
// accepts in between succeed), and logs at most once a second.
func (a *lfd) pause(err error) {
	now := time.Now()
	delay, _, _ := a.bo.failed(now)
	if logNow, n := a.ln.errs.tick(now, acceptLogEvery); logNow {
		a.l.p.log.Warn("accept failed", "service", a.ln.svc.name, "err", err, "errors", n, "retry_in", delay)
	}
	a.paused = true
	a.l.schedule(&a.tm, nanotime()+int64(delay))
}

// wakeHeld makes held connections of s look at the service again.
func (s *service) wakeHeld() {
	s.version.Add(1)
	if s.held.Load() == 0 {
		return
	}
	for _, l := range s.p.loops {
		l.post(func() {
			for sess := range l.sessions {
				if sess.held && sess.svc == s && !sess.closed {
					sess.route()
				}
			}
		})
	}
}

// listenGroup binds n SO_REUSEPORT sockets to addr (the same port when
// addr asks for port 0) and returns them with the bound address.
func listenGroup(addr string, n int) ([]int, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", err
	}
	pn, err := net.LookupPort("tcp", port)
	if err != nil {
		return nil, "", err
	}
	family, v6only := unix.AF_INET6, false
	var ip net.IP
	switch {
	case host == "":
		ip = net.IPv6unspecified // dual stack, as Go's net.Listen
	default:
		ta, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, "", err
		}
		ip = ta.IP
		if ip.To4() != nil {
			family = unix.AF_INET
		} else {
			v6only = true
		}
	}
	if pn != 0 {
		// SO_REUSEPORT would let this group share a port that another
		// process's group (an instance already running) holds: a plain
		// bind first says "address in use" as net.Listen would.
		if err := probeBind(family, sockaddr(ip, pn), v6only); err != nil {
			return nil, "", err
		}
	}
	return bindGroup(family, ip, pn, v6only, n)
}

// adoptGroup takes handed-over listening sockets for n loops: fewer than
// n are joined by new ones bound beside them in their SO_REUSEPORT group
// (same address, same user), after them in the group's order.
func adoptGroup(got []int, n int) ([]int, string, error) {
	fail := func(err error) ([]int, string, error) {
		closeFDs(got)
		return nil, "", err
	}
	var sa unix.Sockaddr
	for _, fd := range got {
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
			return fail(fmt.Errorf("handed-over fd %d is not a listening socket (%v)", fd, err))
		}
		// Non-blocking is a property of the socket, shared with the old
		// process: already set there, set again in case.
		if err := unix.SetNonblock(fd, true); err != nil {
			return fail(err)
		}
		unix.CloseOnExec(fd)
		if sa == nil {
			var err error
			if sa, err = unix.Getsockname(fd); err != nil {
				return fail(err)
			}
		}
	}
	bound := sockaddrTCP(sa)
	if bound == nil {
		return fail(fmt.Errorf("handed-over fd %d is not an inet socket", got[0]))
	}
	if len(got) >= n {
		return got, bound.String(), nil
	}
	family, v6only := unix.AF_INET, false
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
		v, err := unix.GetsockoptInt(got[0], unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return fail(err)
		}
		v6only = v == 1
	}
	more, _, err := bindGroup(family, bound.IP, bound.Port, v6only, n-len(got))
	if err != nil {
		return fail(fmt.Errorf("binding beside the handed-over sockets: %w", err))
	}
	return append(got, more...), bound.String(), nil
}

// bindGroup binds n SO_REUSEPORT sockets to ip:pn, a port chosen by the
// first when pn is 0, and listens on them.
func bindGroup(family int, ip net.IP, pn int, v6only bool, n int) ([]int, string, error) {
	var fds []int
	fail := func(err error) ([]int, string, error) {
		closeFDs(fds)
		return nil, "", err
	}
	for i := 0; i < n; i++ {
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fail(err)
		}
		fds = append(fds, fd)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail(fmt.Errorf("SO_REUSEPORT: %w", err))
		}
		if family == unix.AF_INET6 {
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, boolInt(v6only))
		}
		// Accepted sockets inherit TCP_NODELAY: no setsockopt per client.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if err := unix.Bind(fd, sockaddr(ip, pn)); err != nil {
			return fail(&net.OpError{Op: "listen", Net: "tcp", Addr: &net.TCPAddr{IP: ip, Port: pn}, Err: err})
		}
		if pn == 0 {
			sa, err := unix.Getsockname(fd)
			if err != nil {
				return fail(err)
			}
			pn = sockaddrPort(sa)
		}
		if err := unix.Listen(fd, listenBacklog); err != nil {
			return fail(err)
		}
	}
	return fds, net.JoinHostPort(ip.String(), strconv.Itoa(pn)), nil
}

func probeBind(family int, sa unix.Sockaddr, v6only bool) error {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if family == unix.AF_INET6 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, boolInt(v6only))
	}
	if err := unix.Bind(fd, sa); err != nil {
		return &net.OpError{Op: "listen", Net: "tcp", Addr: sockaddrTCP(sa), Err: err}
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sockaddrPort(sa unix.Sockaddr) int {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return a.Port
	case *unix.SockaddrInet6:
		return a.Port
	}
	return 0
}

// sockaddrTCP converts an inet sockaddr; nil for other kinds.
func sockaddrTCP(sa unix.Sockaddr) *net.TCPAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}
