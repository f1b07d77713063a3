package proxy

import (
	"sync"
	"time"
)

// Accept back-off bounds. The delay doubles from the first to the last
// while errors go on; it falls back only after a quiet spell. The last is
// short because fds come back as sessions end: a longer wait leaves a
// backlog of clients (often already gone) to drain a few at a time.
const (
	acceptDelayMin = 5 * time.Millisecond
	acceptDelayMax = 50 * time.Millisecond
	// acceptQuiet is how long accepts must go without an error (beyond the
	// wait itself) before the
	// delay starts again from the first: under fd exhaustion most accepts
	// in between succeed (a session ends, its fds are reused at once), so
	// a success alone says nothing.
	acceptQuiet = time.Second
	// acceptLogEvery: accept errors are logged at most this often, with
	// the count since the last line.
	acceptLogEvery = time.Second
	// shedFor: after a backend socket fails for want of fds, a loop
	// closes new connections at once for this long instead of starting
	// sessions that cannot get a backend; without it, loops that each
	// hold a freed slot for a client starve each other's backend sockets
	// and the accept queue drains a few clients per back-off.
	shedFor = acceptDelayMax
)

// acceptBackoff paces an accept loop that meets errors (EMFILE, ENFILE,
// ENOBUFS) by their rate, not by the last accept's outcome. Used by one
// goroutine.
type acceptBackoff struct {
	delay   time.Duration
	lastErr time.Time
	lastLog time.Time
	errors  int // since the last log line
}

// failed records an error at now and returns how long to wait before the
// next accept, and whether to log, with how many errors the line covers.
func (b *acceptBackoff) failed(now time.Time) (wait time.Duration, logNow bool, count int) {
	// The loop itself waited b.delay since the last error; quiet is what
	// passed beyond that.
	if b.delay == 0 || now.Sub(b.lastErr) >= b.delay+acceptQuiet {
		b.delay = acceptDelayMin
	} else {
		b.delay = min(2*b.delay, acceptDelayMax)
	}
	b.lastErr = now
	b.errors++
	if now.Sub(b.lastLog) >= acceptLogEvery {
		b.lastLog = now
		count, b.errors = b.errors, 0
		return b.delay, true, count
	}
	return b.delay, false, 0
}

// logEvery lets a line about repeated errors through at most once per
// interval, with the count since the last one. Safe for concurrent use
// (the loops of one listener share one).
type logEvery struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

// tick counts one event at now and reports whether to log, with how many
// events the line covers.
func (e *logEvery) tick(now time.Time, every time.Duration) (bool, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if now.Sub(e.last) < every {
		return false, 0
	}
	e.last = now
	n := e.n
	e.n = 0
	return true, n
}
