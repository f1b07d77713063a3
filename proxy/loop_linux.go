//go:build linux

package proxy

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// loopBufSize is the per-loop read buffer: one read moves at most this
// much, and a direction whose peer is full keeps at most this much.
const loopBufSize = 64 << 10

// readBudget bounds the reads one direction does per wake-up, so a bulk
// stream cannot starve the loop's other sessions (edge-triggered: a
// direction with budget left over goes on the ready list).
const readBudget = 16

// maxPooledBufs bounds the pending buffers a loop keeps for reuse.
const maxPooledBufs = 64

// readyer is work a loop comes back to after its next poll: a direction
// or a listener that spent its budget with more to do.
type readyer interface {
	again()
}

// pollable is what an epoll event is delivered to.
type pollable interface {
	onEvent(ev uint32)
}

// loop is one event loop: an edge-triggered epoll set served by one
// goroutine. Every fd of a session is registered
// on the loop that accepted it, and only that loop touches the session,
// so the data path takes no lock.
type loop struct {
	id   int
	p    *Proxy
	epfd int
	evfd int // eventfd: wakes the loop for posted tasks

	mu      sync.Mutex // guards tasks, woken, stopped
	tasks   []func()
	woken   bool // an eventfd write is pending
	stopped bool

	// Owned by the loop goroutine.
	batch    *batch // nil: one system call per read and write
	buf      []byte
	events   []unix.EpollEvent
	slots    []pollable
	gens     []uint32
	free     []uint32
	timers   timerHeap
	ready    []readyer
	bufs     [][]byte
	pipes    []*pipe
	sessions map[*session]struct{}
	lns      map[*lfd]struct{}
	stopping bool
	nowNS    int64 // nanotime when the last epoll_wait returned
	// shedUntil: until then new connections are closed as soon as they
	// are accepted, because a backend socket just failed for want of fds
	// (see shedFor).
	shedUntil int64
	// noPipeUntil: until then bulk directions copy (see noPipeFor).
	noPipeUntil int64

	// Read by other goroutines (status, tests); written by the loop.
	parked   atomic.Int64  // directions waiting for data, holding nothing
	resumed  atomic.Uint64 // parked directions woken by data, ever
	spliced  atomic.Uint64 // directions moved to splice, ever
	lent     atomic.Int64  // pipes lent to directions now
	batched  atomic.Uint64 // reads sent to the kernel in a batch, ever
	busyNS   atomic.Int64  // time spent serving, not in epoll_wait, ever
	accepted atomic.Uint64 // connections this loop accepted, ever
	_        [64]byte      // keep other loops' counters off this cache line
}

func newLoop(p *Proxy, id int) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, err
	}
	l := &loop{
		id: id, p: p, epfd: epfd, evfd: evfd,
		buf:      make([]byte, loopBufSize),
		events:   make([]unix.EpollEvent, 256),
		slots:    []pollable{nil}, // token 0 is the eventfd
		gens:     []uint32{0},
		sessions: map[*session]struct{}{},
		lns:      map[*lfd]struct{}{},
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		l.closeFDs()
		return nil, err
	}
	return l, nil
}

func (l *loop) closeFDs() {
	_ = unix.Close(l.epfd)
	_ = unix.Close(l.evfd)
	if l.batch != nil {
		l.batch.r.close()
	}
}

// register adds fd to the epoll set, edge-triggered for both readiness
// kinds (for TCP, EPOLLOUT only fires after a write ran out of room, so
// keeping it armed costs nothing), and returns its token.
func (l *loop) register(fd int, h pollable) (uint64, error) {
	var idx uint32
	if n := len(l.free); n > 0 {
		idx = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		idx = uint32(len(l.slots))
		l.slots = append(l.slots, nil)
		l.gens = append(l.gens, 0)
	}
	l.gens[idx]++
	l.slots[idx] = h
	tok := uint64(l.gens[idx])<<32 | uint64(idx)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET}
	setToken(&ev, tok)
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.unregister(tok)
		return 0, err
	}
	return tok, nil
}

// unregister frees tok's slot; an event already fetched for it is then
// dropped. The fd itself leaves the epoll set when it is closed.
func (l *loop) unregister(tok uint64) {
	if tok == 0 {
		return
	}
	idx := uint32(tok)
	if l.gens[idx] != uint32(tok>>32) {
		return
	}
	l.gens[idx]++
	l.slots[idx] = nil
	l.free = append(l.free, idx)
}

func setToken(ev *unix.EpollEvent, tok uint64) {
	ev.Fd = int32(uint32(tok))
	ev.Pad = int32(uint32(tok >> 32))
}

func getToken(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// post runs f on the loop. It reports false if the loop has stopped (then
// f does not run: the loop closed everything it owned on its way out).
func (l *loop) post(f func()) bool {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return false
	}
	l.tasks = append(l.tasks, f)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		one := [8]byte{1}
		_, _ = unix.Write(l.evfd, one[:])
	}
	return true
}

// call runs f on the loop and waits for it; if the loop has stopped, f
// runs here (nothing else touches the loop's state any more).
func (l *loop) call(f func()) {
	done := make(chan struct{})
	if !l.post(func() { f(); close(done) }) {
		f()
		return
	}
	<-done
}

// runTasks runs what other goroutines posted.
func (l *loop) runTasks() {
	var b [8]byte
	_, _ = unix.Read(l.evfd, b[:])
	l.mu.Lock()
	tasks := l.tasks
	l.tasks = nil
	l.woken = false
	l.mu.Unlock()
	for i, f := range tasks {
		f()
		tasks[i] = nil
	}
}

// run is the loop: wait for events and timers, serve them, until stopped.
func (l *loop) run() {
	defer l.p.wg.Done()
	// Not locked to its thread: measured, a locked loop made more context
	// switches (sysmon keeps retaking the P of a goroutine that never
	// passes through the scheduler, and each retake costs a hand-off). A
	// yield every yieldEvery keeps the scheduler's view current instead,
	// and lets the proxy's other goroutines run (see epollWait).
	l.nowNS = nanotime()
	lastYield := l.nowNS
	for !l.stopping {
		if l.nowNS-lastYield > yieldEvery {
			lastYield = l.nowNS
			runtime.Gosched()
		}
		timeout := -1
		if len(l.ready) > 0 {
			timeout = 0
		} else if len(l.timers) > 0 {
			d := l.timers[0].when - nanotime()
			switch {
			case d <= 0:
				timeout = 0
			case d > int64(time.Hour):
				timeout = int(time.Hour / time.Millisecond)
			default:
				timeout = int((d + int64(time.Millisecond) - 1) / int64(time.Millisecond))
			}
		}
		// A loop that holds no session (one that takes no new connections
		// and whose sessions have ended, or any loop of an idle proxy)
		// waits as an ordinary system call:
		// its P goes to the proxy's other goroutines meanwhile, and the
		// wait needs no bound.
		standby := len(l.sessions) == 0 && timeout != 0
		if !standby && (timeout < 0 || timeout > maxWaitMS) {
			timeout = maxWaitMS
		}
		l.busyNS.Add(nanotime() - l.nowNS) // the round that ends here
		var n int
		var err error
		if standby {
			n, err = epollWaitBlocking(l.epfd, l.events, timeout)
		} else {
			n, err = epollWait(l.epfd, l.events, timeout)
		}
		l.nowNS = nanotime()
		if err != nil {
			if !errors.Is(err, unix.EINTR) {
				l.p.log.Error("epoll_wait failed; the loop stops", "loop", l.id, "err", err)
				break
			}
			// A signal: most likely the runtime asking this goroutine to
			// stop for the garbage collector. Yield now, so that a
			// stop-the-world does not wait for the next wait to end.
			runtime.Gosched()
			lastYield = l.nowNS
		}
		for i := 0; i < n; i++ {
			ev := &l.events[i]
			tok := getToken(ev)
			if tok == 0 {
				l.runTasks()
				continue
			}
			idx := uint32(tok)
			if int(idx) >= len(l.slots) || l.gens[idx] != uint32(tok>>32) {
				continue // its fd was closed earlier in this batch
			}
			if l.batch != nil {
				if e, ok := l.slots[idx].(*endpoint); ok && l.batch.take(e, ev.Events) {
					continue
				}
			}
			l.slots[idx].onEvent(ev.Events)
		}
		if l.batch != nil && len(l.batch.q) > 0 {
			l.runBatch()
		}
		if len(l.ready) > 0 {
			ready := l.ready
			l.ready = nil
			for _, r := range ready {
				r.again()
			}
		}
		if len(l.timers) > 0 {
			l.runTimers(l.nowNS)
		}
	}
	l.shutdown()
}

// shutdown closes what the loop still owns: listeners, sessions, pipes.
func (l *loop) shutdown() {
	l.mu.Lock()
	l.stopped = true
	tasks := l.tasks
	l.tasks = nil
	l.mu.Unlock()
	for _, f := range tasks {
		f() // aborts and listener closes posted before the stop
	}
	for ln := range l.lns {
		ln.close()
	}
	for s := range l.sessions {
		s.abortNow(false)
	}
	for _, pp := range l.pipes {
		pp.close()
	}
	l.pipes = nil
	l.closeFDs()
	l.p.spares.drop()
}

// getBuf returns a pending buffer from the loop's pool.
func (l *loop) getBuf() []byte {
	if n := len(l.bufs); n > 0 {
		b := l.bufs[n-1]
		l.bufs = l.bufs[:n-1]
		return b
	}
	return make([]byte, loopBufSize)
}

func (l *loop) putBuf(b []byte) {
	if len(l.bufs) < maxPooledBufs {
		l.bufs = append(l.bufs, b[:cap(b)])
	}
}

// now is the loop's clock, read once per wake-up: precise enough for idle
// timeouts, and free.
func (l *loop) now() int64 { return l.nowNS }

// yieldEvery is how often a busy loop passes through the scheduler: well
// under sysmon's 10ms forced preemption.
const yieldEvery = int64(time.Millisecond)

// epoch is the origin of nanotime.
var epoch = time.Now()

// nanotime is monotonic nanoseconds since epoch.
func nanotime() int64 { return int64(time.Since(epoch)) }

// ltimer is an entry of a loop's timer heap; one per session (its next
// deadline of any kind) and one per paused listener.
type ltimer struct {
	when int64 // nanotime
	idx  int   // position in the heap, -1 when not scheduled
	fire func(now int64)
}

// timerHeap is a binary min-heap on when.
type timerHeap []*ltimer

// schedule sets t to fire at when, (re)placing it in the heap.
func (l *loop) schedule(t *ltimer, when int64) {
	t.when = when
	h := &l.timers
	if t.idx >= 0 && t.idx < len(*h) && (*h)[t.idx] == t {
		h.fix(t.idx)
		return
	}
	t.idx = len(*h)
	*h = append(*h, t)
	h.up(t.idx)
}

// unschedule removes t from the heap if it is there.
func (l *loop) unschedule(t *ltimer) {
	h := &l.timers
	i := t.idx
	if i < 0 || i >= len(*h) || (*h)[i] != t {
		return
	}
	last := len(*h) - 1
	if i != last {
		h.swap(i, last)
	}
	(*h)[last] = nil
	*h = (*h)[:last]
	t.idx = -1
	if i != last {
		h.fix(i)
	}
}

func (l *loop) runTimers(now int64) {
	for len(l.timers) > 0 && l.timers[0].when <= now {
		t := l.timers[0]
		l.unschedule(t)
		t.fire(now)
	}
}

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}

func (h timerHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].when <= h[i].when {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h timerHeap) down(i int) bool {
	start := i
	n := len(h)
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && h[r].when < h[c].when {
			c = r
		}
		if h[i].when <= h[c].when {
			break
		}
		h.swap(i, c)
		i = c
	}
	return i > start
}

func (h timerHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}
