package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// inboxSize bounds the queue between transport callbacks and the state
// machine; a full queue drops (and counts) payloads rather than block the
// transport, and the protocol retries.
const inboxSize = 4096

// Node runs a Machine for a proxy: one goroutine owns the machine and is fed
// through a channel, so transport callbacks copy their buffer and return at
// once, and saves (fsync) never run inside them. The data path reads routes
// from atomics.
type Node struct {
	m       *Machine
	clock   Clock
	keep    bool
	tick    time.Duration
	tr      *asyncTransport
	in      chan func()
	routes  map[string]*atomic.Pointer[route]
	state   atomic.Pointer[[]byte]              // LocalState snapshot
	wire    atomic.Pointer[map[string]wireView] // for Members
	wireAt  uint64                              // the Machine's wireGen when wire and state were taken
	stateAt uint64                              // the Machine's version when state was encoded

	dropped   atomic.Uint64
	onRoute   func(service, backend string)
	startOnce sync.Once
	started   atomic.Bool
	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
}

type route struct {
	backend  string
	deadline time.Duration // on the clock; 0 with a backend: no lease (keep)
	paused   bool          // the record's automatic decisions are paused
}

// asyncTransport stands between the machine and the real transport. It
// lets the Node exist before its transport (whose constructor wants the
// Node as its handler), and it sends reliable payloads from one goroutine
// per peer: a reliable send dials TCP and may wait seconds on a dead peer,
// which must never stall the state machine. A full peer queue drops the
// payload; the protocol retries what matters.
type asyncTransport struct {
	tr      Transport
	queues  map[string]chan []byte
	dropped *atomic.Uint64
	// While hold is set (during one step of the machine, on the Node's
	// goroutine) payloads wait in out: they leave only after the step's
	// route changes are published, so that a proxy's vote, which stops its
	// routing, never reaches a proposer before its data path has stopped.
	hold bool
	out  []outMsg
}

type outMsg struct {
	to, key    string
	msg        []byte
	bestEffort bool
	broadcast  bool
}

// release sends what a step produced, in order.
func (a *asyncTransport) release() {
	a.hold = false
	for i, o := range a.out {
		switch {
		case o.broadcast:
			_ = a.Broadcast(o.key, o.msg)
		case o.bestEffort:
			_ = a.SendBestEffort(o.to, o.msg)
		default:
			_ = a.Send(o.to, o.msg)
		}
		a.out[i] = outMsg{}
	}
	a.out = a.out[:0]
}

const peerQueue = 256

func (a *asyncTransport) Send(to string, msg []byte) error {
	q := a.queues[to]
	if q == nil {
		return fmt.Errorf("cluster: send to unknown peer %q", to)
	}
	if a.hold {
		a.out = append(a.out, outMsg{to: to, msg: msg})
		return nil
	}
	select {
	case q <- msg:
		return nil
	default:
		a.dropped.Add(1)
		return fmt.Errorf("cluster: send queue to %q is full", to)
	}
}

func (a *asyncTransport) SendBestEffort(to string, msg []byte) error {
	if a.hold {
		a.out = append(a.out, outMsg{to: to, msg: msg, bestEffort: true})
		return nil
	}
	switch t := a.tr.(type) {
	case bestEffortSender:
		return t.SendBestEffort(to, msg)
	case bestEffortSenderNoErr:
		t.SendBestEffort(to, msg)
		return nil
	}
	return a.Send(to, msg)
}

func (a *asyncTransport) Broadcast(key string, msg []byte) error {
	if a.tr == nil {
		return errors.New("cluster: transport not started")
	}
	if a.hold {
		a.out = append(a.out, outMsg{key: key, msg: msg, broadcast: true})
		return nil
	}
	return a.tr.Broadcast(key, msg)
}

// sendLoop feeds one peer's queue to the transport until done.
func (a *asyncTransport) sendLoop(to string, done <-chan struct{}) {
	q := a.queues[to]
	for {
		select {
		case <-done:
			return
		case msg := <-q:
			_ = a.tr.Send(to, msg) // failures are retried by the protocol
		}
	}
}

// NodeOptions are the runner's callbacks. Each runs on the Node's
// goroutine and must not block.
type NodeOptions struct {
	// OnRoute is called when the backend the Node forwards a service to
	// changes ("" when it stops): close sessions to anything else.
	OnRoute func(service, backend string)
}

// NewNode loads the state from store and builds the Node; nothing runs
// before Start. cfg.OnRecord and cfg.OnAction, if set, run on the Node's
// goroutine and must not block (run hooks elsewhere, then call
// ActionDone).
func NewNode(cfg Config, store Store, clock Clock, opts NodeOptions) (*Node, error) {
	if cfg.BootID == 0 {
		cfg.BootID = uint64(time.Now().UnixNano())
	}
	n := &Node{clock: clock, keep: cfg.OnQuorumLoss == QuorumLossKeep,
		in: make(chan func(), inboxSize), routes: map[string]*atomic.Pointer[route]{},
		onRoute: opts.OnRoute, done: make(chan struct{})}
	n.tr = &asyncTransport{queues: map[string]chan []byte{}, dropped: &n.dropped}
	for _, p := range cfg.Peers {
		if p != cfg.Name {
			n.tr.queues[p] = make(chan []byte, peerQueue)
		}
	}
	m, err := NewMachine(cfg, clock, n.tr, store)
	if err != nil {
		return nil, err
	}
	n.m = m
	n.tick = m.cfg.LeaseTimeout / 8
	for _, s := range cfg.Services {
		n.routes[s.Name] = &atomic.Pointer[route]{}
		n.routes[s.Name].Store(&route{})
	}
	n.publish()
	return n, nil
}

// Start runs the state machine over tr until Close.
func (n *Node) Start(tr Transport) {
	n.startOnce.Do(func() {
		n.tr.tr = tr
		for p := range n.tr.queues {
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				n.tr.sendLoop(p, n.done)
			}()
		}
		n.wg.Add(1)
		go n.run()
		n.started.Store(true)
	})
}

func (n *Node) run() {
	defer n.wg.Done()
	t := time.NewTicker(n.tick)
	defer t.Stop()
	n.tr.hold = true
	n.m.Tick()
	n.publish()
	n.tr.release()
	for {
		select {
		case <-n.done:
			return
		case f := <-n.in:
			n.tr.hold = true
			n.m.Batch(func() {
				f()
				n.drain()
				n.m.TickDue()
			})
		case <-t.C:
			n.tr.hold = true
			n.m.Batch(func() {
				n.m.Tick()
				n.drain()
				n.m.TickDue()
			})
		}
		n.publish()
		n.tr.release()
	}
}

// stepBatch bounds how many queued inputs one step takes: their saves
// share one fsync and their messages one payload per peer, and a bound
// keeps a step from holding back routes and answers for long.
const stepBatch = 512

// drain runs what is queued, up to stepBatch inputs, in the current step.
func (n *Node) drain() {
	for range stepBatch {
		select {
		case f := <-n.in:
			f()
		default:
			return
		}
	}
}

// publish copies what other goroutines read out of the machine.
func (n *Node) publish() {
	now := n.clock.Now()
	for name, p := range n.routes {
		b, rem := n.m.routeAt(name, now)
		r := &route{backend: b, paused: n.m.svcState(name).Record.Paused}
		if b != "" && rem > 0 {
			r.deadline = now + rem
		}
		old := p.Load()
		if *old != *r {
			p.Store(r)
		}
		if old.backend != r.backend && n.onRoute != nil {
			n.onRoute(name, r.backend)
		}
	}
	wireChanged := n.m.wireGen != n.wireAt
	if wireChanged || n.wire.Load() == nil {
		n.wireAt = n.m.wireGen
		w := n.m.wireViews()
		n.wire.Store(&w)
	}
	// Encoded again only when the records, or the peers' formats and so
	// the state's own (stateWire), may have changed.
	if v := n.m.version; v != n.stateAt || wireChanged || n.state.Load() == nil {
		n.stateAt = v
		b := n.m.localState()
		n.state.Store(&b)
	}
}

// enqueue hands f to the machine's goroutine without blocking; a full
// queue drops it and counts it (QueueFull).
func (n *Node) enqueue(f func()) bool {
	if n.offer(f) {
		return true
	}
	n.dropped.Add(1)
	return false
}

// offer is enqueue for the transport's callbacks, which count their drops
// themselves.
func (n *Node) offer(f func()) bool {
	select {
	case n.in <- f:
		return true
	default:
		return false
	}
}

// call runs f on the machine's goroutine and waits for it.
func (n *Node) call(f func()) error {
	if !n.started.Load() {
		return errors.New("cluster: node not started")
	}
	ch := make(chan struct{})
	select {
	case n.in <- func() { f(); close(ch) }:
	case <-n.done:
		return errors.New("cluster: node closed")
	}
	select {
	case <-ch:
		return nil
	case <-n.done:
		return errors.New("cluster: node closed")
	}
}

// Paused reports whether the service's automatic decisions are paused, as
// of the Node's last step. It does not wait for the Node's goroutine.
func (n *Node) Paused(service string) bool {
	p := n.routes[service]
	return p != nil && p.Load().paused
}

// Route returns the backend to forward service to now and how long that
// holds (the lease deadline); "" means hold or refuse the connection. With
// on_quorum_loss "keep" the last primary comes back with no deadline.
func (n *Node) Route(service string) (string, time.Duration) {
	p := n.routes[service]
	if p == nil {
		return "", 0
	}
	r := p.Load()
	if r.backend == "" {
		return "", 0
	}
	if r.deadline == 0 {
		return r.backend, 0 // keep mode
	}
	rem := r.deadline - n.clock.Now()
	if rem <= 0 {
		if n.keep {
			return r.backend, 0
		}
		return "", 0
	}
	return r.backend, rem
}

// Observe reports this proxy's own view of a backend (from health checks).
func (n *Node) Observe(service, backend string, o Observation) {
	n.enqueue(func() {
		if err := n.m.Observe(service, backend, o); err != nil {
			n.m.log.Warn("cluster: observation dropped", "err", err)
		}
	})
}

// Switchover asks the cluster to move service to backend to; the move
// itself goes through the vote, and Status reports the outcome of the
// operation whose id it returns.
func (n *Node) Switchover(service, to string) (uint64, error) {
	var id uint64
	var err error
	if cerr := n.call(func() { id, err = n.m.Switchover(service, to) }); cerr != nil {
		return 0, cerr
	}
	return id, err
}

// Fence asks the cluster to fence backend off service (unfence when fence
// is false); the change goes through the vote, and Status reports the
// outcome of the operation whose id it returns.
func (n *Node) Fence(service, backend string, fence bool) (uint64, error) {
	var id uint64
	var err error
	if cerr := n.call(func() { id, err = n.m.Fence(service, backend, fence) }); cerr != nil {
		return 0, cerr
	}
	return id, err
}

// Pause asks the cluster to pause the service's automatic decisions (on)
// or resume them, by a vote; it returns the operation's id.
func (n *Node) Pause(service string, on bool) (uint64, error) {
	var id uint64
	var err error
	if cerr := n.call(func() { id, err = n.m.Pause(service, on) }); cerr != nil {
		return 0, cerr
	}
	return id, err
}

// ActionDone reports how an action handed out through Config.OnAction
// ended (the runner runs the hook, checks the backend at once, and calls
// this).
func (n *Node) ActionDone(service string, a Action, r ActionResult) error {
	var err error
	if cerr := n.call(func() { err = n.m.ActionDone(service, a, r) }); cerr != nil {
		return cerr
	}
	return err
}

// SetHooks tells the Node which hooks a service has (after a reload).
func (n *Node) SetHooks(service string, h HookConfig) error {
	var err error
	if cerr := n.call(func() { err = n.m.SetHooks(service, h) }); cerr != nil {
		return cerr
	}
	return err
}

// Status returns a snapshot for /status.
func (n *Node) Status() (Status, error) {
	var st Status
	// Saved first: a status read in the middle of a step would otherwise
	// show what the step has not saved yet (and may never save).
	err := n.call(func() {
		n.m.flush()
		st = n.m.Status()
	})
	st.Counters.QueueFull = n.dropped.Load()
	return st, err
}

// Close stops the Node and waits for its goroutines. It does not close the
// transport or the store; close the transport first, so that a reliable
// send in flight returns instead of holding Close up.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { close(n.done) })
	n.wg.Wait()
	return nil
}

// OnMessage takes a payload from a peer (the transport's message handler).
// It copies msg and never blocks; false when the Node's queue (the one
// queue between the transport and the machine) is full and the payload
// was dropped, which the transport counts.
func (n *Node) OnMessage(from string, msg []byte) bool {
	b := append([]byte(nil), msg...)
	return n.offer(func() { n.m.Step(from, b) })
}

// OnPeerChange is told when the transport sees a peer come or go. Leases
// and votes do not depend on it; it is only logged.
func (n *Node) OnPeerChange(name string, alive bool) {
	n.enqueue(func() {
		if alive {
			n.m.log.Info("cluster: peer reachable (gossip)", "peer", name)
		} else {
			n.m.log.Warn("cluster: peer unreachable: gossip marked it dead or it left", "peer", name)
		}
	})
}

// OnPeerMeta takes a peer's gossip node meta (the transport calls it at
// the peer's join and whenever its meta changes): the wire formats it
// speaks (WireMeta). It never blocks.
func (n *Node) OnPeerMeta(name string, meta []byte) {
	b := append([]byte(nil), meta...)
	n.enqueue(func() { n.m.peerMeta(name, b) })
}

// LocalState returns this proxy's records for a joiner's full sync.
func (n *Node) LocalState() []byte {
	if p := n.state.Load(); p != nil {
		return *p
	}
	return nil
}

// MergeRemoteState adopts the higher records of a peer's full sync; false
// when it could not be taken (undecodable, or the queue is full).
func (n *Node) MergeRemoteState(buf []byte) bool {
	recs, err := decodeRecords(buf)
	if err != nil {
		return false
	}
	return n.offer(func() { n.m.mergeRecords(recs) })
}

// mergeRecords adopts the records of a peer's full sync that are newer
// than ours. memberlist repeats the sync every push/pull interval, so an
// equal record is the normal case, not a stale message: counted as one,
// a healthy 3-proxy cluster with 5 services grew "stale" by 20 a minute.
func (m *Machine) mergeRecords(recs map[string]Record) {
	if m.recovering {
		return // it learns the state by its own sync
	}
	for svc, r := range recs {
		if m.svcs[svc] != nil && r.Epoch > m.svcState(svc).Record.Epoch {
			m.adopt(svc, r, "")
		}
	}
}

// stateMark starts a full-state sync since wire format 5, before its
// version: read as the u16 count of the format before it, 0xFFFE promises
// more records than any sync holds, so a proxy of that version drops it
// instead of misreading the records (which gained the paused flag); and a
// sync whose mark names a format this proxy does not speak is dropped.
var stateMark = [2]byte{0xFF, 0xFE}

// localState encodes every service's record (committed decisions only, so
// adopting them is always safe), after stateMark and the format, with a
// u16 count (a count byte once cut the sync off at 255 services).
// memberlist hands it to any peer, so it is written in the lowest format
// a peer is sent in (records read the same in formats 5 and 6).
func (m *Machine) localState() []byte {
	v := m.stateWire()
	e := &enc{b: append([]byte(nil), stateMark[0], stateMark[1], v), v: v}
	n := min(len(m.order), 1<<16-1)
	e.b = binary.BigEndian.AppendUint16(e.b, uint16(n))
	for _, name := range m.order[:n] {
		e.str(name)
		e.record(m.svcState(name).Record)
	}
	return e.b
}

func decodeRecords(b []byte) (map[string]Record, error) {
	if len(b) < 3 || !bytes.HasPrefix(b, stateMark[:]) || !wireSpoken(b[2]) {
		return nil, fmt.Errorf("remote state: %w", errVersion)
	}
	d := &dec{v: b[2]}
	b = b[3:]
	if len(b) < 2 {
		return nil, fmt.Errorf("remote state: %w", errShort)
	}
	n := int(binary.BigEndian.Uint16(b))
	d.b = b[2:]
	if n*10 > len(d.b) {
		return nil, fmt.Errorf("remote state: %w", errShort)
	}
	out := make(map[string]Record, n)
	for i := 0; i < n && d.err == nil; i++ {
		name := d.str()
		out[name] = d.record()
	}
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("remote state: %w", err)
	}
	return out, nil
}
