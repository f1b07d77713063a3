package mesh

import "sync"

type eventKind int

const (
	evMessage eventKind = iota
	evPeer
	evState
)

type event struct {
	kind    eventKind
	name    string
	alive   bool
	payload []byte
}

// dispatcher is the FIFO between memberlist's goroutines, which must never
// block, and the handler's single event loop. Messages and states are
// bounded; peer changes are rare and always queued so none is lost.
type dispatcher struct {
	mu    sync.Mutex
	items []event
	msgs  int
	wake  chan struct{}
}

func (d *dispatcher) init() { d.wake = make(chan struct{}, 1) }

// push queues e; false if e is a message or state and the queue is full.
func (d *dispatcher) push(e event) bool {
	d.mu.Lock()
	if e.kind != evPeer {
		if d.msgs >= maxQueuedMessages {
			d.mu.Unlock()
			return false
		}
		d.msgs++
	}
	d.items = append(d.items, e)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return true
}

func (d *dispatcher) take() []event {
	d.mu.Lock()
	defer d.mu.Unlock()
	items := d.items
	d.items, d.msgs = nil, 0
	return items
}

// dispatchLoop runs the handler's callbacks, one at a time, until Close.
func (m *Mesh) dispatchLoop() {
	defer m.wg.Done()
	for {
		select {
		case <-m.stop:
			return
		case <-m.disp.wake:
		}
		for _, e := range m.disp.take() {
			select {
			case <-m.stop:
				return
			default:
			}
			switch e.kind {
			case evMessage:
				m.h.OnMessage(e.name, e.payload)
			case evPeer:
				m.h.OnPeerChange(e.name, e.alive)
			case evState:
				m.h.MergeRemoteState(e.payload)
			}
		}
	}
}
