//go:build linux

package proxy

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// plane is the Linux data plane: event loops, each on its own thread.
type plane struct {
	loops    []*loop
	spares   spareFDs     // shared by the loops' listeners, one per loop
	bigPipes atomic.Int64 // open pipes of pipeSize, all loops (see getPipe)

	// steering: new connections go to the first activeLoops loops only
	// (see steer).
	steering    bool
	activeLoops atomic.Int32
	steerFailed atomic.Bool // an attach was refused: the kernel spreads
	steerHeld   atomic.Bool // listeners handed over (see holdSteering)
}

// poller sums the loops' counters of parked directions (waiting for data,
// holding no buffer) and of their wake-ups.
type poller struct {
	parked  loopSum
	resumed loopSum
}

// loopSum is a counter kept per loop (no cache line shared between loops
// on the data path) and summed when read.
type loopSum struct {
	p   *Proxy
	get func(*loop) int64
}

// Load sums the counter over the loops.
func (c loopSum) Load() int64 {
	var n int64
	for _, l := range c.p.loops {
		n += c.get(l)
	}
	return n
}

func (p *Proxy) startPlane(opts Options) {
	raiseNoFileOnce.Do(func() { raiseNoFile(p) })
	n := opts.Loops
	steer := opts.steer
	if n <= 0 {
		n = DefaultLoops()
		steer = n > 1
	}
	var uringErr error
	for i := 0; i < n; i++ {
		l, err := newLoop(p, i)
		if err != nil {
			p.log.Error("event loop could not start", "loop", i, "err", err)
			break
		}
		if !opts.NoIOURing && uringErr == nil {
			if l.batch, uringErr = newBatch(); uringErr != nil {
				p.log.Info("io_uring refused here; the loops make one system call per read and write", "err", uringErr)
			}
		}
		p.loops = append(p.loops, l)
		p.spares.add()
	}
	p.poller = &poller{
		parked:  loopSum{p, func(l *loop) int64 { return l.parked.Load() }},
		resumed: loopSum{p, func(l *loop) int64 { return int64(l.resumed.Load()) }},
	}
	p.steering = steer && len(p.loops) > 1
	if p.steering {
		p.activeLoops.Store(int32((len(p.loops) + 1) / 2))
	}
	if len(p.loops) > 0 {
		p.log.Info("data plane started", "loops", len(p.loops), "taking_new_connections", p.steered(),
			"io_uring_batching", p.loops[0].batch != nil)
	}
	for _, l := range p.loops {
		p.wg.Add(1)
		go l.run()
	}
	if p.steering && !opts.steerByHand {
		p.wg.Add(1)
		go p.steer()
	}
}

// DefaultLoops is the number of loops when none is set: one per CPU the
// runtime uses. New connections go to half of them (rounded up) until
// accepting keeps those busy (see steer): measured on 2 CPUs with the load
// generator and the server on the same machine (README, Performance), one
// loop made 1.1–1.3× the request throughput of two at 0.6–0.7× the CPU per
// request (bigger batches, fewer wake-ups, a CPU left to the kernel's TCP
// work and the peers), and two accepting in parallel made more
// connections a second than one.
func DefaultLoops() int { return runtime.GOMAXPROCS(0) }

// steered is the number of loops new connections go to now.
func (p *Proxy) steered() int {
	if !p.steering || p.steerFailed.Load() {
		return len(p.loops)
	}
	return int(p.activeLoops.Load())
}

// Loops reports the event loops.
func (p *Proxy) Loops() []LoopStatus {
	out := make([]LoopStatus, len(p.loops))
	for i, l := range p.loops {
		out[i] = LoopStatus{Busy: time.Duration(l.busyNS.Load()), Accepted: l.accepted.Load(),
			Steered: i < p.steered()}
	}
	return out
}

// stopPlane makes every loop close what it still owns and exit.
func (p *Proxy) stopPlane() {
	for _, l := range p.loops {
		l.post(func() { l.stopping = true })
	}
}

var raiseNoFileOnce sync.Once

// raiseNoFile lifts the soft RLIMIT_NOFILE to the hard limit, as HAProxy
// does: every proxied connection holds two fds.
func raiseNoFile(p *Proxy) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		p.log.Warn("RLIMIT_NOFILE unknown", "err", err)
		return
	}
	// The Go runtime already raises it when the process starts; this
	// covers a limit lowered since, and says what it is.
	old := rl.Cur
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			p.log.Warn("RLIMIT_NOFILE could not be raised", "soft", old, "hard", rl.Max, "err", err)
			return
		}
	}
	if old != rl.Cur {
		p.log.Info("open-file limit raised to the hard limit", "soft", rl.Cur, "was", old, "hard", rl.Max, "sessions_at_most", rl.Cur/2)
		return
	}
	p.log.Info("open-file limit at the hard limit", "soft", rl.Cur, "hard", rl.Max, "sessions_at_most", rl.Cur/2)
}
