package main

import (
	"context"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/drill"
)

// writeTimeout bounds one write, connecting included: longer than the
// proxy's switch hold, so a held connection gets its chance.
const writeTimeout = 6 * time.Second

// writer is the drill's Writer telling the timeline what it sees: the
// first error of each kind and the first good write after the kill.
type writer struct {
	*drill.Writer
	tl   *timeline
	name string

	mu     sync.Mutex
	killed time.Time // zero until the primary is killed
}

func newWriter(tl *timeline, name string, write func(ctx context.Context, id int64) error) *writer {
	w := &writer{Writer: drill.NewWriter(write, writeTimeout), tl: tl, name: name}
	w.OnError = func(at time.Time, err error) {
		w.tl.at(at, "%s: write failed (first of its kind): %s", w.name, err)
	}
	w.OnRecovered = func(a drill.Ack) {
		w.tl.at(a.Done, "%s: FIRST GOOD WRITE after the kill: id %d acknowledged, %.3fs after the kill", w.name, a.ID, a.Done.Sub(w.killedAt()).Seconds())
	}
	return w
}

// markKill records the moment the primary was killed.
func (w *writer) markKill(t time.Time) {
	w.mu.Lock()
	w.killed = t
	w.mu.Unlock()
	w.Mark(t)
}

func (w *writer) killedAt() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.killed
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
		a, f := w.Counts()
		w.tl.printf("%s: %5d writes acknowledged, %4d failed in the last %s", w.name, a-lastA, f-lastF, period)
		lastA, lastF = a, f
	}
}

// fill copies the writer's figures into r and checks found, the ids read
// back at the end, against the acknowledged ones.
func (w *writer) fill(r *result, found map[int64]bool) {
	killed := w.killedAt()
	r.FirstGoodWrite = w.FirstGood()
	_, r.Errors = w.Counts()
	acked := w.Acked()
	r.Acked = len(acked)
	for _, a := range acked {
		after := !killed.IsZero() && !a.Sent.Before(killed)
		if after {
			r.AckedAfterKill++
		}
		if found[a.ID] {
			r.ReadBack++
			continue
		}
		r.Lost++
		if after {
			r.LostAfterKill++
		}
		if len(r.LostIDs) < 20 {
			r.LostIDs = append(r.LostIDs, a.ID)
		}
	}
}
