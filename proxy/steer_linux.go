//go:build linux

package proxy

import (
	"time"

	"golang.org/x/sys/unix"
)

// New connections are steered to a subset of the loops, which grows while
// accepting is what keeps them busy. Measured on 2 CPUs (docs/design.md):
// one loop serves requests best (bigger batches, a CPU left to the kernel
// and the peers), but under connection churn a loop is busy ~90% of the
// time on accept, connect and close, and two loops in parallel make 1.1-1.2x
// the connections a second of one. So the plane runs a loop per CPU and a
// classic BPF program on each listener's SO_REUSEPORT group sends new
// connections, at random, to the first `active` sockets (socket i belongs
// to loop i); the other loops keep serving what they hold and wait.

const (
	// steerEvery is the window the steering looks at.
	steerEvery = 100 * time.Millisecond
	// steerBusy: the active loops' mean busy share at or above which,
	// with steerAccepts, they count as accept-bound.
	steerBusy = 0.75
	// steerAccepts is the number of new connections per active loop in
	// a window (1,000 a second) at or above which, with steerBusy, one
	// more loop takes new connections.
	steerAccepts = 100
	// steerGrowAfter and steerShrinkAfter are the windows in a row the
	// condition must hold: quick to help, slow to give it back.
	steerGrowAfter   = 2
	steerShrinkAfter = 20
)

// skfAdRandom is classic BPF's ancillary load of a random number:
// SKF_AD_OFF (-0x1000) + SKF_AD_RANDOM (56), as an unsigned offset
// (linux/filter.h; golang.org/x/sys/unix lacks them).
const skfAdRandom = 0xfffff000 + 56

// steerProg returns the reuseport program that picks one of the first
// active sockets of the group at random.
func steerProg(active int) []unix.SockFilter {
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdRandom},
		{Code: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: uint32(max(active, 1))},
		{Code: unix.BPF_RET | unix.BPF_A},
	}
}

// attachSteer sets fd's reuseport group to send new connections to its
// first active sockets.
func attachSteer(fd, active int) error {
	prog := steerProg(active)
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
}

// steer applies the current steering to a's group if a is its
// listener's first socket (the program belongs to the group: one attach
// is enough). Run on a's loop, after any change of the count.
func (a *lfd) steer() {
	if a.closed || len(a.ln.fds) == 0 || a.ln.fds[0] != a {
		return
	}
	a.l.p.steerGroup(a.ln, a.fd)
}

// steerGroup attaches the program for the current count to the group of
// ln, whose first socket fd is. Without steering, it removes the program
// a process that handed the sockets over may have left there, so that
// every loop takes new connections.
func (p *Proxy) steerGroup(ln *listener, fd int) {
	if p.steerHeld.Load() {
		return // handed over: the process that took the sockets steers
	}
	if !p.steering || p.steerFailed.Load() {
		if !ln.adopted {
			return
		}
		err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DETACH_REUSEPORT_BPF, 0)
		if err == unix.ENOPROTOOPT {
			// Before Linux 5.8 there is no detach: a program that picks
			// any socket of the group at random does the same.
			err = attachSteer(fd, len(ln.fds))
		}
		if err != nil && err != unix.ENOENT { // ENOENT: there was none
			p.log.Warn("a steering program left on handed-over sockets could not be removed; some loops may get no new connections", "service", ln.svc.name, "err", err)
		}
		return
	}
	if err := attachSteer(fd, int(p.activeLoops.Load())); err != nil {
		// Refused (a seccomp filter, a kernel without reuseport BPF):
		// every loop is counted as taking new connections from now on,
		// and no listener tries again.
		if p.steerFailed.CompareAndSwap(false, true) {
			p.log.Warn("steering new connections to some loops failed; the kernel spreads them over all loops", "service", ln.svc.name, "err", err)
		}
	}
}

// holdSteering stops this proxy from changing the steering programs of
// its listeners (the sockets are being handed to a new process, which
// steers them from its start), or, with false, lets it again and puts its
// own back (the hand-over failed).
func (p *Proxy) holdSteering(hold bool) {
	p.steerHeld.Store(hold)
	if !hold {
		p.setActive(int(p.activeLoops.Load()))
	}
}

// steerer decides, one window at a time, how many loops take new
// connections: one more after steerGrowAfter windows in which the active
// loops were accept-bound, one fewer (not below base) after
// steerShrinkAfter windows in which the others could have carried the
// load with room to spare.
type steerer struct {
	n, base   int
	hot, cold int
}

// step takes a window's figures for the k active loops (their mean busy
// share, and new connections a window over all loops) and returns the
// number of loops that should be active now.
func (st *steerer) step(k int, share float64, accepts int64) int {
	per := int64(steerAccepts)
	if share >= steerBusy && accepts >= int64(k)*per {
		st.hot++
	} else {
		st.hot = 0
	}
	if accepts < int64(k-1)*per/2 || share*float64(k) < float64(k-1)*steerBusy/2 {
		st.cold++
	} else {
		st.cold = 0
	}
	switch {
	case k < st.n && st.hot >= steerGrowAfter:
		k++
	case k > st.base && st.cold >= steerShrinkAfter:
		k--
	default:
		return k
	}
	st.hot, st.cold = 0, 0
	return k
}

// setActive makes k loops take new connections, on every listener.
func (p *Proxy) setActive(k int) {
	p.activeLoops.Store(int32(k))
	for _, l := range p.loops {
		l.post(func() {
			for a := range l.lns {
				a.steer()
			}
		})
	}
}

// steer watches the loops and moves the number that take new connections.
func (p *Proxy) steer() {
	defer p.wg.Done()
	t := time.NewTicker(steerEvery)
	defer t.Stop()
	st := steerer{n: len(p.loops), base: int(p.activeLoops.Load())}
	type mark struct{ busy, acc int64 }
	prev := make([]mark, len(p.loops))
	for i, l := range p.loops {
		prev[i] = mark{l.busyNS.Load(), int64(l.accepted.Load())}
	}
	last := time.Now()
	for {
		select {
		case <-p.ctx.Done():
			return
		case now := <-t.C:
			window := max(now.Sub(last), time.Millisecond)
			last = now
			if p.steerFailed.Load() {
				return
			}
			k := int(p.activeLoops.Load())
			var busy, acc int64
			for i, l := range p.loops {
				b, a := l.busyNS.Load(), int64(l.accepted.Load())
				if i < k {
					busy += b - prev[i].busy
				}
				acc += a - prev[i].acc
				prev[i] = mark{b, a}
			}
			share := float64(busy) / float64(k) / float64(window)
			accepts := acc * int64(steerEvery) / int64(window)
			if next := st.step(k, share, accepts); next != k {
				p.log.Debug("loops taking new connections", "loops", next, "of", len(p.loops),
					"accepts_per_second", accepts*int64(time.Second/steerEvery), "busy", share)
				p.setActive(next)
			}
		}
	}
}
