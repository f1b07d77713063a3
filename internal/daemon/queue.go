package daemon

import "sync"

// queue is a FIFO whose put never blocks, for callbacks that must not block
// their caller (the cluster Node's OnRoute runs on the Node's only
// goroutine). It grows instead of blocking; what it carries comes at the
// pace of the agreement's decisions, a few per lease at most, and one
// goroutine drains it.
type queue[T any] struct {
	mu     sync.Mutex
	items  []T
	closed bool
	wake   chan struct{} // one pending wake-up at most
}

func newQueue[T any]() *queue[T] { return &queue[T]{wake: make(chan struct{}, 1)} }

// put appends v; after close it drops v.
func (q *queue[T]) put(v T) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.items = append(q.items, v)
	q.mu.Unlock()
	q.signal()
}

func (q *queue[T]) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// close ends the queue: take returns what is left, then false.
func (q *queue[T]) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

// take waits for the next item, in put order; false once the queue is
// closed and empty. One goroutine takes.
func (q *queue[T]) take() (T, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			v := q.items[0]
			var zero T
			q.items[0] = zero
			q.items = q.items[1:]
			q.mu.Unlock()
			return v, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			var zero T
			return zero, false
		}
		<-q.wake
	}
}
