//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// poller parks idle copy directions in an epoll set of its own, so an idle
// session holds no goroutine (and no stack) at all. Go's runtime poller
// cannot do that: every wait in it is a parked goroutine.
//
// Each parked direction is registered EPOLLONESHOT under a token that is
// never reused; a stale event for a finished direction finds no token and
// is dropped, so an fd number reused by another connection cannot wake the
// wrong direction.
type poller struct {
	epfd int
	evfd int // eventfd that wakes the loop to stop

	mu     sync.Mutex // also serialises epoll_ctl with closing epfd
	next   uint64
	dirs   map[uint64]*direction
	closed bool

	parked  atomic.Int64  // directions in state dirParked
	resumed atomic.Uint64 // directions resumed, ever
}

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(evfd)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	return &poller{epfd: epfd, evfd: evfd, next: 1, dirs: map[uint64]*direction{}}, nil
}

func setToken(ev *unix.EpollEvent, tok uint64) {
	ev.Fd = int32(uint32(tok))
	ev.Pad = int32(uint32(tok >> 32))
}

func getToken(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// arm registers (or re-arms) fd for one readiness event for d. The kernel
// checks readiness at once, so data that arrived before arm is not missed.
func (pl *poller) arm(fd int, d *direction) error {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed {
		return errors.New("poller closed")
	}
	if d.state.Load() != dirParked {
		return errors.New("direction ended") // abort took it; do not leave a token behind
	}
	op := unix.EPOLL_CTL_MOD
	if d.token == 0 {
		op = unix.EPOLL_CTL_ADD
		d.token = pl.next
		pl.next++
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	setToken(&ev, d.token)
	if err := unix.EpollCtl(pl.epfd, op, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	pl.dirs[d.token] = d
	return nil
}

// forget drops d's token; the fd leaves the epoll set when it is closed.
func (pl *poller) forget(d *direction) {
	pl.mu.Lock()
	if d.token != 0 {
		delete(pl.dirs, d.token)
	}
	pl.mu.Unlock()
}

// run waits for parked directions to become readable and resumes each on
// a fresh goroutine, until stop.
func (pl *poller) run(p *Proxy) {
	defer p.wg.Done()
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(pl.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			// Cannot happen with valid arguments; stop parking new ones.
			p.log.Error("epoll_wait failed; idle connections stay on goroutines", "err", err)
			pl.shut()
			pl.mu.Lock()
			for _, d := range pl.dirs {
				if d.state.CompareAndSwap(dirParked, dirRunning) {
					pl.parked.Add(-1)
					p.wg.Add(1)
					go d.resume()
				}
			}
			pl.mu.Unlock()
			return
		}
		stop := false
		for i := 0; i < n; i++ {
			tok := getToken(&events[i])
			if tok == 0 {
				stop = true
				continue
			}
			pl.mu.Lock()
			d := pl.dirs[tok]
			pl.mu.Unlock()
			if d != nil && d.state.CompareAndSwap(dirParked, dirRunning) {
				pl.parked.Add(-1)
				pl.resumed.Add(1)
				p.wg.Add(1)
				go d.resume()
			}
		}
		if stop {
			pl.shut()
			return
		}
	}
}

// stop makes run return and close the poller's fds.
func (pl *poller) stop() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if !pl.closed {
		one := [8]byte{1}
		_, _ = unix.Write(pl.evfd, one[:])
	}
}

func (pl *poller) shut() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.closed = true
	_ = unix.Close(pl.epfd)
	_ = unix.Close(pl.evfd)
}
