package drill

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// With RecoveredFrom set, only a write sent at or after that moment
// recovers: the drill waits for the proxy to forward to the new primary,
// not for the first write after the failure.
func TestWriterRecoveredFrom(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var from atomic.Int64 // unix nanos; 0: not yet
	var w *Writer
	w = NewWriter(func(_ context.Context, id int64) error {
		switch {
		case id == 3:
			w.Mark(time.Now()) // the failure, while 3 is in flight
		case id == 5 || id == 6:
			return errors.New("dial 127.0.0.1:" + string(rune('0'+id)) + ": refused")
		case id == 8:
			from.Store(time.Now().UnixNano()) // routed from here on: 8 was sent before
		case id == 20:
			cancel()
		}
		return nil
	}, time.Second)
	w.RecoveredFrom = func() time.Time {
		if n := from.Load(); n != 0 {
			return time.Unix(0, n)
		}
		return time.Time{}
	}
	var recovered Ack
	w.OnRecovered = func(a Ack) { recovered = a }
	w.Run(ctx)
	select {
	case <-w.Recovered():
	default:
		t.Fatal("not recovered")
	}
	if recovered.ID != 9 {
		t.Errorf("recovered by id %d, want 9 (the first sent after RecoveredFrom)", recovered.ID)
	}
	if acked, failed := w.Counts(); failed != 2 || acked != 18 {
		t.Errorf("acked %d failed %d, want 18 and 2", acked, failed)
	}
	if errs := w.Errors(); len(errs) != 1 {
		t.Errorf("errors %q: two that differ in a number are one kind", errs)
	}
	if !w.FirstFailure().After(time.Time{}) {
		t.Error("no first failure after the mark")
	}
}

// Outage is the longest pause between acknowledgements that ends after the
// failure, and when it ended.
func TestOutage(t *testing.T) {
	t0 := time.Unix(100, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	acked := []Ack{{ID: 1, Done: at(-20)}, {ID: 2, Done: at(-10)}, {ID: 3, Done: at(300)}, {ID: 4, Done: at(310)}, {ID: 5, Done: at(900)}}
	w, end := Outage(acked, t0)
	if w != 590*time.Millisecond || !end.Equal(at(900)) {
		t.Errorf("outage %v ending %v, want 590ms ending at +900ms", w, end.Sub(t0))
	}
}
