package main

import (
	"context"
	"regexp"
	"sync"
	"time"
)

// writeTimeout bounds one write, connecting included: longer than the
// proxy's switch hold, so a held connection gets its chance.
const writeTimeout = 6 * time.Second

// maxErrorKinds is how many distinct error messages the timeline shows.
const maxErrorKinds = 8

var digits = regexp.MustCompile(`[0-9]+`)

// writer writes unique ids through the proxy one at a time and remembers
// which were acknowledged and when, as Jepsen's set checker does.
type writer struct {
	tl    *timeline
	name  string
	write func(ctx context.Context, id int64) error // nil error = acknowledged

	mu        sync.Mutex
	acked     []ack
	failed    int
	errSeen   map[string]bool
	killed    time.Time     // zero until the primary is killed
	firstGood time.Time     // first write sent after the kill and acknowledged
	recovered chan struct{} // closed at firstGood
}

type ack struct {
	id   int64
	sent time.Time
}

func newWriter(tl *timeline, name string, write func(ctx context.Context, id int64) error) *writer {
	return &writer{tl: tl, name: name, write: write, errSeen: map[string]bool{}, recovered: make(chan struct{})}
}

// run writes until ctx ends.
func (w *writer) run(ctx context.Context) {
	for id := int64(1); ctx.Err() == nil; id++ {
		sent := time.Now()
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		err := w.write(wctx, id)
		cancel()
		now := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return // interrupted, not failed
			}
			w.fail(now, err)
			// Failures during a switch come fast; do not spin.
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		w.mu.Lock()
		w.acked = append(w.acked, ack{id: id, sent: sent})
		first := !w.killed.IsZero() && !sent.Before(w.killed) && w.firstGood.IsZero()
		if first {
			w.firstGood = now
			close(w.recovered)
		}
		killed := w.killed
		w.mu.Unlock()
		if first {
			w.tl.at(now, "%s: FIRST GOOD WRITE after the kill: id %d acknowledged, %.3fs after the kill", w.name, id, now.Sub(killed).Seconds())
		}
	}
}

func (w *writer) fail(at time.Time, err error) {
	msg := err.Error()
	// For the display only: messages that differ in a port number or
	// an id are one kind.
	kind := digits.ReplaceAllString(msg, "#")
	w.mu.Lock()
	w.failed++
	show := !w.errSeen[kind] && len(w.errSeen) < maxErrorKinds
	w.errSeen[kind] = true
	w.mu.Unlock()
	if show {
		w.tl.at(at, "%s: write failed (first of its kind): %s", w.name, msg)
	}
}

// markKill records the moment the primary was killed.
func (w *writer) markKill(t time.Time) {
	w.mu.Lock()
	w.killed = t
	w.mu.Unlock()
}

// counts returns acknowledged and failed writes so far.
func (w *writer) counts() (acked, failed int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked), w.failed
}

// progress prints acknowledged and failed writes every period until ctx ends.
func (w *writer) progress(ctx context.Context, period time.Duration) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	lastA, lastF := 0, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a, f := w.counts()
		w.tl.printf("%s: %5d writes acknowledged, %4d failed in the last %s", w.name, a-lastA, f-lastF, period)
		lastA, lastF = a, f
	}
}

// fill copies the writer's figures into r and checks found, the ids read
// back at the end, against the acknowledged ones.
func (w *writer) fill(r *result, found map[int64]bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r.FirstGoodWrite = w.firstGood
	r.Acked = len(w.acked)
	r.Errors = w.failed
	for _, a := range w.acked {
		after := !w.killed.IsZero() && !a.sent.Before(w.killed)
		if after {
			r.AckedAfterKill++
		}
		if found[a.id] {
			r.ReadBack++
			continue
		}
		r.Lost++
		if after {
			r.LostAfterKill++
		}
		if len(r.LostIDs) < 20 {
			r.LostIDs = append(r.LostIDs, a.id)
		}
	}
}

// ids returns the acknowledged ids.
func (w *writer) ids() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]int64, len(w.acked))
	for i, a := range w.acked {
		out[i] = a.id
	}
	return out
}
