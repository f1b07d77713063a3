package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"time"
)

// Counters count what a Machine dropped or refused, for /status and metrics.
type Counters struct {
	Garbage        uint64 // payloads that did not decode
	Stranger       uint64 // payloads from names outside the peer list
	UnknownService uint64 // payloads about services this proxy does not have
	Replay         uint64 // observations not newer than one already seen
	Stale          uint64 // answers to requests no longer pending, old records
	VotesGranted   uint64
	VotesRefused   uint64
	Proposals      uint64
	GivenUp        uint64 // proposals abandoned (no quorum in time, yielded, refused...)
	Commits        uint64
	Saves          uint64 // state saves (fsyncs); one per step that changed anything
	Adoptions      uint64
	NoCandidate    uint64 // failovers not proposed for want of a candidate
	PersistErrors  uint64
	QueueFull      uint64 // payloads a Node dropped because its queue was full
	// WireVersion counts payloads dropped for their wire format: one this
	// proxy does not speak, or from a peer that speaks none it does.
	WireVersion uint64
}

// Machine is the agreement protocol of one proxy as a deterministic state
// machine. Its inputs are Step (a payload from a peer), Tick (time passes),
// Observe (the local health view) and Switchover; its outputs are messages
// through the Transport, saves through the Store (always before the
// messages that depend on them) and the OnRecord/OnHook callbacks. It is not
// safe for concurrent use: one goroutine owns it.
type Machine struct {
	cfg     Config
	q       quorum
	others  []string
	members map[string]bool
	clock   Clock
	tr      Transport
	store   Store
	log     *slog.Logger
	rng     *rand.Rand

	st         State
	recovering bool
	startedAt  time.Duration
	sync       map[string]bool // peers that answered our sync request
	syncState  State           // max of what they answered
	lastSync   time.Duration

	svcs  map[string]*service
	order []string
	heard map[string]time.Duration // last time a message came from each peer
	// higherAt is when a round's message (a proposal or an accept, for any
	// service) last came from a peer named higher than this proxy: one at
	// work on a mass failover, which reaches it in several steps (rankWait).
	higherAt time.Duration
	wire     map[string]*peerWire // what each peer speaks (wire.go)
	wireGen  uint64               // counts changes to wire
	counter  uint64               // lease request nonce
	pending  map[uint64]*leaseReq
	lastReq  time.Duration
	obsSeq   uint64
	lastObs  time.Duration
	started  bool
	// leaseSoon asks for leases at the end of this step: a new record
	// routes only under a lease at its epoch, and waiting for the next
	// periodic request would add up to LeaseTimeout/4 to every switch.
	leaseSoon bool
	// due are the services whose view of a backend changed (up, down or
	// role) since their last tick: TickDue ticks them at the end of the
	// step instead of at the next periodic tick.
	due map[string]bool
	// hadQuorum is whether the last tick reached a quorum (sayQuorum).
	hadQuorum bool
	// storeErr is the last failed save, nil once a save worked again:
	// while it is set the proxy answers nothing it could not persist, so
	// it neither votes, proposes, confirms leases nor routes.
	storeErr   error
	storeProbe time.Duration
	opSeq      uint64
	// lastInput and resumedAt notice a pause (ticks alone come every
	// LeaseTimeout/8): what this proxy knew of the databases may have
	// changed unseen meanwhile.
	lastInput, resumedAt time.Duration

	version  uint64        // counts changes to st in memory (Node re-encodes LocalState on one)
	stepAt   time.Duration // the clock when the payload being stepped came in
	out      outbox        // the step's saves and output (commit.go)
	counters Counters
}

// service is one service's state on this proxy (what is persisted lives
// in State), grouped by the concern that owns it.
type service struct {
	cfg       ServiceConfig
	backends  map[string]BackendConfig
	widest    Value // the largest value the config allows, to size payloads
	views           // what this proxy and its peers see (observe.go)
	leasing         // this proxy's lease on the record (lease.go)
	proposing       // this proxy's proposal and its votes' timing (propose.go)
	requests        // operators' requests (operator.go)
	acting          // actions on the databases (actions.go)
	reporting       // what status and the logs say (status.go)
}

// views is what this proxy and its peers see of a service's backends.
type views struct {
	local  map[string]Observation
	remote map[string]*peerView
	obsAt  map[string]time.Duration // when this proxy's own view of it last changed
}

// leasing is this proxy's lease on the service's record.
type leasing struct {
	lease    lease
	leaseAt  time.Duration // when we last held a lease or adopted a record
	recordAt time.Duration // when the current record was committed or adopted here
}

// proposing is this proxy's proposal and what paces its next one.
type proposing struct {
	prop *proposal
	next time.Duration // no proposal before this (backoff)
	hint Ballot        // highest vote heard of above our record
	// peerMaxVoted is the highest MaxVoted a peer's answer carried.
	peerMaxVoted uint64
	votedAt      time.Duration // when we last cast a vote
	// Since downSince this proxy has wanted a new primary for the record
	// at downEpoch (its primary objectively down, or none yet): the rank
	// delay before its own proposal counts from then. downSet: it does.
	downSet   bool
	downEpoch uint64
	downSince time.Duration
}

// requests are operators' requests made on this proxy.
type requests struct {
	switchTo string     // pending operator switchover
	switchAt uint64     // record epoch when it was asked for
	fenceOp  *fenceOp   // pending operator fence or unfence
	pauseOp  *pauseOp   // pending operator pause or resume
	op       *Operation // the last operator request and how it ended
}

// acting is what this proxy knows of its actions on the databases.
type acting struct {
	hooks       HookConfig
	act         actState
	hookFenced  map[string]bool          // a fence hook succeeded on it and it has not come up since
	fenceFailed map[string]time.Duration // when a fence hook on it last failed
	latePromote map[string]time.Duration // until when a promote of ours on it may still land
	// primarySeen is, per backend, the highest Since of a record naming it
	// primary under which this proxy saw it report primary: its promote
	// for that decision is done.
	primarySeen map[string]uint64
	// retry is a failed promote of the record's primary that this proxy
	// knows not to be primary and has not yet moved away from; failed
	// holds, per backend, when its last failed promote stops excluding it
	// from candidates.
	retry    *promoteFailure
	failed   map[string]time.Duration
	followTo string // the one backend reporting primary, to route to instead
}

// reporting is what status and the logs say.
type reporting struct {
	decision string            // last decision and why
	said     map[string]string // what was last logged per topic, to log a change once
}

// NewMachine builds the state machine from cfg and the state in store. A
// store that was never written makes the machine start recovering.
func NewMachine(cfg Config, clock Clock, tr Transport, store Store) (*Machine, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, clock: clock, tr: tr, store: store, log: cfg.Logger,
		members: map[string]bool{}, svcs: map[string]*service{}, heard: map[string]time.Duration{}, wire: map[string]*peerWire{},
		pending: map[uint64]*leaseReq{}, out: outbox{dirty: map[string]dirtyState{}}, due: map[string]bool{}}
	for _, p := range cfg.Peers {
		if m.members[p] {
			return nil, fmt.Errorf("cluster: peer %q listed twice", p)
		}
		m.members[p] = true
		if p != cfg.Name {
			m.others = append(m.others, p)
		}
	}
	if !m.members[cfg.Name] {
		return nil, fmt.Errorf("cluster: node name %q is not in the peer list", cfg.Name)
	}
	sort.Strings(m.others)
	m.q = quorum{n: len(cfg.Peers)}
	m.rng = rand.New(rand.NewPCG(cfg.Seed, cfg.BootID^0x9e3779b97f4a7c15))
	for _, p := range cfg.Peers {
		if p == "" || len(p) > 255 {
			return nil, fmt.Errorf("cluster: peer name %q: want 1 to 255 bytes", p)
		}
	}
	for _, sc := range cfg.Services {
		if _, dup := m.svcs[sc.Name]; dup {
			return nil, fmt.Errorf("cluster: service %q listed twice", sc.Name)
		}
		if err := checkServiceFits(sc); err != nil {
			return nil, err
		}
		s := &service{cfg: sc, backends: map[string]BackendConfig{},
			views: views{local: map[string]Observation{}, remote: map[string]*peerView{}, obsAt: map[string]time.Duration{}},
			acting: acting{hooks: sc.Hooks, hookFenced: map[string]bool{}, fenceFailed: map[string]time.Duration{},
				latePromote: map[string]time.Duration{}, primarySeen: map[string]uint64{}, failed: map[string]time.Duration{}},
			reporting: reporting{said: map[string]string{}}}
		for _, b := range sc.Backends {
			s.backends[b.Name] = b
		}
		s.widest = widestValue(sc.Backends)
		m.svcs[sc.Name] = s
		m.order = append(m.order, sc.Name)
	}
	st, err := store.Load()
	if err != nil {
		return nil, fmt.Errorf("cluster: loading state: %w", err)
	}
	if st.Services == nil {
		st.Services = map[string]ServiceState{}
	}
	m.st = st
	m.recovering = !st.Synced
	m.startedAt = clock.Now()
	for _, s := range m.svcs {
		s.leaseAt = m.startedAt
		s.recordAt = m.startedAt
		s.next = m.startedAt
	}
	return m, nil
}

// Quorum returns Q, the number of distinct proxies a decision needs.
func (m *Machine) Quorum() int { return m.q.size() }

// Recovering reports whether the machine is still learning its state.
func (m *Machine) Recovering() bool { return m.recovering }

func (m *Machine) svcState(name string) ServiceState { return m.st.Services[name] }

// save records a service's new persisted state; it reaches the disk with
// everything else the step changed when the step ends (flush), before any
// message or callback of the step leaves. If that Save fails, memory goes
// back to what is on disk, so nothing that depends on the change is ever
// answered (a duplicate gets the answer that was saved), and the proxy
// takes no part until a save works again (storeFailed).
func (m *Machine) save(name string, ss ServiceState) {
	if len(m.out.dirty) == 0 {
		m.out.counted = m.counters
	}
	if _, seen := m.out.dirty[name]; !seen {
		old, had := m.st.Services[name]
		m.out.dirty[name] = dirtyState{old: old, had: had}
	}
	m.st.Services[name] = ss
	m.version++
}

// storeFailed stops the proxy's part in the agreement until the store
// works again: it votes, proposes, confirms leases and routes nothing it
// could not persist. Said once, at ERROR; Tick probes the store.
func (m *Machine) storeFailed(err error) {
	m.counters.PersistErrors++
	if m.storeErr == nil {
		m.log.Error("cluster: state_dir cannot be written: this proxy stops voting, proposing and routing until it can", "err", err)
		m.storeProbe = m.clock.Now()
		for _, s := range m.svcs {
			if s.prop != nil {
				m.abandon(s.cfg.Name, s, m.storeProbe, "the state could not be saved")
			}
		}
	}
	m.storeErr = err
}

// probeStore saves the state again, at most every LeaseTimeout/4, while
// the store fails, and resumes once it works.
func (m *Machine) probeStore(now time.Duration) {
	if m.storeErr == nil || now-m.storeProbe < m.cfg.LeaseTimeout/4 {
		return
	}
	m.storeProbe = now
	if err := m.store.Save(m.st.clone()); err != nil {
		m.counters.PersistErrors++
		m.storeErr = err
		return
	}
	clear(m.out.dirty) // on disk now
	m.storeErr = nil
	m.log.Info("cluster: state_dir can be written again: this proxy takes part again")
	for _, s := range m.svcs {
		s.leaseAt = now // no liveness proposal before the others had a chance
	}
}

// StoreError is the error of the failed save that keeps this proxy out of
// the agreement, or nil.
func (m *Machine) StoreError() error { return m.storeErr }

func (m *Machine) send(to string, b []byte, err error) {
	if err != nil {
		m.log.Error("cluster: encoding message", "err", err)
		return
	}
	m.out.msgs = append(m.out.msgs, pendingOut{to: to, b: b})
}

// Transports that can also send without retries (UDP) implement one of
// these; lease traffic uses it, since a late lease message is useless.
type (
	bestEffortSender interface {
		SendBestEffort(to string, msg []byte) error
	}
	bestEffortSenderNoErr interface{ SendBestEffort(to string, msg []byte) }
)

// sendLossy sends a payload whose loss the protocol shrugs off (best
// effort, where the transport offers it).
func (m *Machine) sendLossy(to string, b []byte, err error) {
	if err != nil {
		m.log.Error("cluster: encoding message", "err", err)
		return
	}
	m.out.msgs = append(m.out.msgs, pendingOut{to: to, b: b, lossy: true})
}

// broadcast gossips b under key when the step ends.
func (m *Machine) broadcast(key string, b []byte) {
	m.out.msgs = append(m.out.msgs, pendingOut{key: key, b: b})
}

func (m *Machine) sendAll(b []byte, err error, except string) {
	for _, p := range m.others {
		if p != except {
			m.send(p, b, err)
		}
	}
}

// wake notes an input at now; a gap of more than LeaseTimeout/2 since the
// last one means this proxy stood still.
func (m *Machine) wake(now time.Duration) {
	if m.lastInput != 0 && now-m.lastInput > m.cfg.LeaseTimeout/2 {
		m.resumed(now, now-m.lastInput)
	}
	m.lastInput = now
}

// Step handles one payload from peer from.
func (m *Machine) Step(from string, payload []byte) {
	defer m.endStep()
	now := m.clock.Now()
	m.wake(now)
	m.stepAt = now
	m.step(from, payload, true)
}

// step handles one payload; a batch (only at the top) is handled payload
// by payload.
func (m *Machine) step(from string, payload []byte, top bool) {
	if !m.members[from] || from == m.cfg.Name {
		m.counters.Stranger++
		return
	}
	// A payload of a known type is judged by its format first; bytes
	// that are not even a known type are garbage, whatever byte 2 says.
	if len(payload) >= 2 && msgType(payload[0]) > msgInvalid && msgType(payload[0]) <= msgBatch {
		if top && !m.heardWire(from, payload[1]) {
			return
		}
		if lo, hi := m.wireRange(); !top && (payload[1] < lo || payload[1] > hi) {
			m.counters.WireVersion++
			return
		}
	}
	t, d, err := header(payload)
	if err != nil {
		m.drop(from, err)
		return
	}
	// Each case decodes into a value of its own type and handles it only
	// if the whole payload parsed.
	ok := func() bool {
		if err := d.finish(); err != nil {
			m.drop(from, fmt.Errorf("message type %d: %w", t, err))
			return false
		}
		m.heard[from] = m.stepAt
		return true
	}
	switch t {
	case msgObservation:
		if x := decObs(d); ok() {
			m.onObs(from, x, d.v)
		}
	case msgPropose:
		if x := decPropose(d); ok() {
			m.noteHigher(from)
			m.onPropose(from, x)
		}
	case msgVote:
		if x := decVote(d); ok() {
			m.onVote(from, x)
		}
	case msgCommit:
		if x := decCommit(d); ok() {
			m.onCommit(from, x)
		}
	case msgLeaseReq:
		if x := decLeaseReq(d); ok() {
			m.onLeaseReq(from, x)
		}
	case msgLeaseAck:
		if x := decLeaseAck(d); ok() {
			m.onLeaseAck(from, x)
		}
	case msgSyncReq:
		if x := decSyncReq(d); ok() {
			m.onSyncReq(from, x)
		}
	case msgSyncReply:
		if x := decSyncReply(d); ok() {
			m.onSyncReply(from, x)
		}
	case msgAccept:
		if x := decAccept(d); ok() {
			m.noteHigher(from)
			m.onAccept(from, x)
		}
	case msgAccepted:
		if x := decAccepted(d); ok() {
			m.onAccepted(from, x)
		}
	case msgBatch:
		parts := decBatch(d)
		if !top {
			m.drop(from, errors.New("batch inside a batch"))
			return
		}
		if d.err != nil {
			m.drop(from, fmt.Errorf("batch: %w", d.err))
			return
		}
		for _, p := range parts {
			m.step(from, p, false)
		}
	default:
		m.drop(from, fmt.Errorf("unknown message type %d", t))
	}
}

func (m *Machine) drop(from string, err error) {
	m.counters.Garbage++
	m.log.Debug("cluster: dropping payload", "peer", from, "err", err)
}

// Tick lets time pass: lease requests, gossip refresh, proposals, commits,
// retries and hooks. Call it every LeaseTimeout/8 or more often.
func (m *Machine) Tick() {
	defer m.endStep()
	now := m.clock.Now()
	m.wake(now)
	if !m.started || now-m.lastObs >= m.cfg.LeaseTimeout/2 {
		m.started = true
		m.lastObs = now
		for _, name := range m.order {
			m.broadcastObs(name, m.svcs[name], false)
		}
	}
	m.sayQuorum(now)
	if m.recovering {
		m.tickRecover(now)
		return
	}
	if m.storeErr != nil {
		m.probeStore(now)
		if m.storeErr != nil {
			return
		}
	}
	if now-m.lastReq >= m.cfg.LeaseTimeout/4 || m.lastReq == 0 {
		m.lastReq = now
		m.requestLeases(now)
	}
	clear(m.due)
	for _, name := range m.order {
		m.tickService(name, m.svcs[name], now)
	}
}

// TickDue ticks the services whose view of a backend changed since their
// last tick, now rather than at the next periodic tick (LeaseTimeout/8
// away): a failover starts once a quorum sees the primary down, not up to
// a tick later. The Node calls it at the end of every step.
func (m *Machine) TickDue() {
	if len(m.due) == 0 {
		return
	}
	defer m.endStep()
	defer clear(m.due)
	now := m.clock.Now()
	// As a tick: a pause shows here first, and what it makes this proxy
	// forget (fence hooks' successes) must be forgotten before it acts.
	m.wake(now)
	if !m.started || m.recovering || m.storeErr != nil {
		return // the periodic Tick handles these states
	}
	for _, name := range m.order {
		if m.due[name] {
			m.tickService(name, m.svcs[name], now)
		}
	}
}
