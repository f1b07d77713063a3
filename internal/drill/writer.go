package drill

import (
	"context"
	"regexp"
	"sync"
	"time"
)

// MaxErrorKinds is how many distinct write errors a Writer keeps.
const MaxErrorKinds = 8

// digits folds numbers out of error messages (see ErrorKind).
var digits = regexp.MustCompile(`[0-9]+`)

// ErrorKind is err's message with its numbers folded, so that messages
// that differ in a port or an id are one kind of error.
func ErrorKind(err error) string { return digits.ReplaceAllString(err.Error(), "#") }

// Ack is one acknowledged write: its id, when it was sent and when the
// acknowledgement came.
type Ack struct {
	ID         int64
	Sent, Done time.Time
}

// Writer writes unique ids through the proxy one at a time and remembers
// which were acknowledged and when, as Jepsen's set checker does; the ids
// read back at the end tell which acknowledged writes were lost. The drill
// and the demo both measure with it. Set the optional fields before Run.
type Writer struct {
	write   func(ctx context.Context, id int64) error
	timeout time.Duration

	// OnError, if set, hears the first error of each kind (up to
	// MaxErrorKinds), outside the Writer's lock.
	OnError func(at time.Time, err error)
	// OnRecovered, if set, hears the acknowledgement that recovered (see
	// Recovered), outside the Writer's lock.
	OnRecovered func(a Ack)
	// RecoveredFrom, if set, says from when a write counts as recovered
	// after the failure (zero: not yet); nil: any write sent at or after
	// the failure. The drill waits for the proxy to forward to the new
	// primary. It is called outside the Writer's lock.
	RecoveredFrom func() time.Time

	mu        sync.Mutex
	acked     []Ack
	failed    int
	kinds     map[string]bool
	errs      []string
	failedAt  time.Time // Mark
	firstFail time.Time // the first failed write sent after Mark
	firstGood time.Time
	recovered chan struct{}
}

// NewWriter returns a Writer whose writes are write(ctx, id) (nil error:
// acknowledged), each bounded by timeout, connecting included: make it
// longer than the proxy's switch_hold so a held connection gets its chance.
func NewWriter(write func(ctx context.Context, id int64) error, timeout time.Duration) *Writer {
	return &Writer{write: write, timeout: timeout, kinds: map[string]bool{}, recovered: make(chan struct{})}
}

// Run writes ids 1, 2, ... back to back until ctx ends. A write cut short
// by ctx is neither acknowledged nor failed.
func (w *Writer) Run(ctx context.Context) {
	for id := int64(1); ctx.Err() == nil; id++ {
		sent := time.Now()
		wctx, cancel := context.WithTimeout(ctx, w.timeout)
		err := w.write(wctx, id)
		cancel()
		now := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.fail(sent, now, err)
			// Failures during a switch come fast: do not spin.
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		w.ack(Ack{ID: id, Sent: sent, Done: now})
	}
}

func (w *Writer) fail(sent, now time.Time, err error) {
	kind := ErrorKind(err)
	w.mu.Lock()
	w.failed++
	if !w.failedAt.IsZero() && w.firstFail.IsZero() {
		w.firstFail = sent
	}
	first := !w.kinds[kind] && len(w.kinds) < MaxErrorKinds
	if first {
		w.kinds[kind] = true
		w.errs = append(w.errs, err.Error())
	}
	w.mu.Unlock()
	if first && w.OnError != nil {
		w.OnError(now, err)
	}
}

func (w *Writer) ack(a Ack) {
	w.mu.Lock()
	w.acked = append(w.acked, a)
	check := !w.failedAt.IsZero() && w.firstGood.IsZero()
	from := w.failedAt
	w.mu.Unlock()
	if !check {
		return
	}
	if w.RecoveredFrom != nil {
		from = w.RecoveredFrom()
	}
	if from.IsZero() || a.Sent.Before(from) {
		return
	}
	w.mu.Lock()
	first := w.firstGood.IsZero()
	if first {
		w.firstGood = a.Done
		close(w.recovered)
	}
	w.mu.Unlock()
	if first && w.OnRecovered != nil {
		w.OnRecovered(a)
	}
}

// Mark records the moment the primary was failed.
func (w *Writer) Mark(t time.Time) {
	w.mu.Lock()
	w.failedAt = t
	w.mu.Unlock()
}

// Recovered is closed once a write sent after the failure (after
// RecoveredFrom, when set) is acknowledged.
func (w *Writer) Recovered() <-chan struct{} { return w.recovered }

// FirstGood is when the recovering write was acknowledged (zero: not yet).
func (w *Writer) FirstGood() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.firstGood
}

// FirstFailure is when the first write that failed after Mark was sent
// (zero: none failed).
func (w *Writer) FirstFailure() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.firstFail
}

// Counts returns the acknowledged and failed writes so far.
func (w *Writer) Counts() (acked, failed int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked), w.failed
}

// Acked returns a copy of the acknowledged writes, in order.
func (w *Writer) Acked() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack(nil), w.acked...)
}

// IDs returns the acknowledged ids, in order.
func (w *Writer) IDs() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]int64, len(w.acked))
	for i, a := range w.acked {
		out[i] = a.ID
	}
	return out
}

// Errors returns the first message of each kind of error seen.
func (w *Writer) Errors() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.errs...)
}

// Outage finds, among the acknowledgements, the longest pause that ends
// after t0: its length and when it ended. The Writer writes back to back,
// so outside a failure the pauses are one round trip long.
func Outage(acked []Ack, t0 time.Time) (window time.Duration, end time.Time) {
	prev := t0
	for _, a := range acked {
		if !a.Done.After(t0) {
			prev = a.Done
			continue
		}
		if gap := a.Done.Sub(prev); gap > window {
			window, end = gap, a.Done
		}
		prev = a.Done
	}
	return window, end
}
