package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/failover"
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
	Commits        uint64
	Adoptions      uint64
	NoCandidate    uint64 // failovers not proposed for want of a candidate
	PersistErrors  uint64
	QueueFull      uint64 // payloads a Node dropped because its queue was full
}

// Machine is the agreement protocol of one proxy as a deterministic state
// machine. Its inputs are Step (a payload from a peer), Tick (time passes),
// Observe (the local health view) and Switchover; its outputs are messages
// through the Transport, saves through the Store (always before the
// messages that depend on them) and the OnRecord/OnHook callbacks. It is not
// safe for concurrent use: one goroutine owns it.
type Machine struct {
	cfg     Config
	n, q    int
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

	svcs    map[string]*service
	order   []string
	heard   map[string]time.Duration // last time a message came from each peer
	counter uint64                   // lease request nonce
	pending map[uint64]*leaseReq
	lastReq time.Duration
	obsSeq  uint64
	lastObs time.Duration
	started bool
	// leaseSoon asks for leases at the end of this step: a new record
	// routes only under a lease at its epoch, and waiting for the next
	// periodic request would add up to LeaseTimeout/4 to every switch.
	leaseSoon bool
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

	counters Counters
}

type service struct {
	cfg      ServiceConfig
	backends map[string]BackendConfig
	local    map[string]Observation
	remote   map[string]*peerView
	lease    lease
	prop     *proposal
	next     time.Duration // no proposal before this (backoff)
	hint     Ballot        // highest vote heard of above our record
	// peerPromised is the highest Promised a peer's answer carried.
	peerPromised uint64
	votedAt      time.Duration // when we last cast a vote
	leaseAt      time.Duration // when we last held a lease or adopted a record
	switchTo     string        // pending operator switchover
	switchAt     uint64        // record epoch when it was asked for
	widest       Value         // the largest value the config allows, to size payloads
	fenceOp      *fenceOp      // pending operator fence or unfence
	op           *Operation    // the last operator request and how it ended
	decision     string        // last decision and why, for status
	// retry is a failed promote of the record's primary that this proxy
	// reported and has not yet moved away from; failed holds, per backend,
	// when its last failed promote stops excluding it from candidates.
	retry  *promoteFailure
	failed map[string]time.Duration
	// downEpoch is the record epoch whose primary this proxy has seen
	// objectively down since downSince (0: not down).
	downEpoch uint64
	downSince time.Duration

	// Actions on databases (actions.go).
	hooks       HookConfig
	act         actState
	hookFenced  map[string]bool          // a fence hook succeeded on it and it has not come up since
	fenceFailed map[string]time.Duration // when a fence hook on it last failed
	latePromote map[string]time.Duration // until when a promote of ours on it may still land
	obsAt       map[string]time.Duration // when this proxy's own view of it last changed
	recordAt    time.Duration            // when the current record was committed or adopted here
	followTo    string                   // the one backend reporting primary, to route to instead
	// primarySeen is, per backend, the highest Since of a record naming it
	// primary under which this proxy saw it report primary: its promote
	// for that decision is done.
	primarySeen map[string]uint64
	said        map[string]string // what was last logged per topic, to log a change once
}

// fenceOp is an operator's fence (or unfence) of a backend, asked for
// when the record was at epoch at.
type fenceOp struct {
	backend string
	fence   bool
	at      uint64
}

// promoteFailure is a promote hook that failed: the backend it should have
// promoted, the epoch of that decision and what the runner said.
type promoteFailure struct {
	epoch   uint64
	backend string
	reason  string
	fenced  bool          // a fence hook fenced it: it joins the fenced set
	at      time.Duration // when it was known not to be primary
}

type peerView struct {
	boot, seq uint64
	at        time.Duration
	view      map[string]Observation
}

type lease struct {
	epoch  uint64
	expiry time.Duration
}

type proposal struct {
	epoch, base uint64
	value       Value
	from        string
	kind        kind
	sentAt      time.Duration
	lastSend    time.Duration
	promises    map[string]Ballot // voter -> what it had accepted before
	accepts     map[string]bool
	phase2      bool
	commitAt    time.Duration
}

type leaseReq struct {
	sentAt time.Duration
	slots  []leaseSlot
}

type leaseSlot struct {
	service string
	epoch   uint64
	acks    []string // distinct confirming peers
}

func (r *leaseReq) slot(service string) *leaseSlot {
	for i := range r.slots {
		if r.slots[i].service == service {
			return &r.slots[i]
		}
	}
	return nil
}

// NewMachine builds the state machine from cfg and the state in store. A
// store that was never written makes the machine start recovering.
func NewMachine(cfg Config, clock Clock, tr Transport, store Store) (*Machine, error) {
	cfg.setDefaults()
	m := &Machine{cfg: cfg, clock: clock, tr: tr, store: store, log: cfg.Logger,
		members: map[string]bool{}, svcs: map[string]*service{}, heard: map[string]time.Duration{},
		pending: map[uint64]*leaseReq{}}
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
	m.n = len(cfg.Peers)
	m.q = m.n/2 + 1
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
		s := &service{cfg: sc, backends: map[string]BackendConfig{}, local: map[string]Observation{}, remote: map[string]*peerView{},
			failed: map[string]time.Duration{}, hooks: sc.Hooks, hookFenced: map[string]bool{}, fenceFailed: map[string]time.Duration{},
			latePromote: map[string]time.Duration{}, obsAt: map[string]time.Duration{}, said: map[string]string{},
			primarySeen: map[string]uint64{}}
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
func (m *Machine) Quorum() int { return m.q }

// Recovering reports whether the machine is still learning its state.
func (m *Machine) Recovering() bool { return m.recovering }

// commitWait is how long a proposer waits after the Q-th vote so that a
// lease confirmed before any of those votes has expired in real time on
// any proxy whose clock runs within the margin.
func (m *Machine) commitWait() time.Duration {
	r := m.cfg.ClockMargin
	return time.Duration(float64(m.cfg.LeaseTimeout) * (1 + r) / (1 - r))
}

// recoverWait is how long a proxy with an empty store waits before it
// syncs: by then any proposal that counted a vote it forgot has committed
// or been given up, so what it learns from N-Q+1 peers covers that vote.
func (m *Machine) recoverWait() time.Duration {
	r := m.cfg.ClockMargin
	span := m.cfg.VoteTimeout + m.commitWait() + m.cfg.LeaseTimeout
	return time.Duration(float64(span) * (1 + r) / (1 - r))
}

func (m *Machine) svcState(name string) ServiceState { return m.st.Services[name] }

// save persists the state with one service changed. On error the
// in-memory state stays what is on disk, so nothing that depends on the
// change is ever answered (a duplicate gets the answer that was saved),
// and the proxy takes no part until a save works again (storeFailed).
func (m *Machine) save(name string, ss ServiceState) error {
	old, had := m.st.Services[name]
	m.st.Services[name] = ss
	if err := m.store.Save(m.st.clone()); err != nil {
		if had {
			m.st.Services[name] = old
		} else {
			delete(m.st.Services, name)
		}
		m.storeFailed(err)
		return fmt.Errorf("service %q: saving state: %w", name, err)
	}
	return nil
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
	if e := m.tr.Send(to, b); e != nil {
		m.log.Debug("cluster: send failed", "peer", to, "err", e)
	}
}

// Transports that can also send without retries (UDP) implement one of
// these; lease traffic uses it, since a late lease message is useless.
type (
	bestEffortSender interface {
		SendBestEffort(to string, msg []byte) error
	}
	bestEffortSenderNoErr interface{ SendBestEffort(to string, msg []byte) }
)

// sendLossy sends a payload whose loss the protocol shrugs off.
func (m *Machine) sendLossy(to string, b []byte, err error) {
	if err != nil {
		m.log.Error("cluster: encoding message", "err", err)
		return
	}
	switch t := m.tr.(type) {
	case bestEffortSender:
		_ = t.SendBestEffort(to, b)
	case bestEffortSenderNoErr:
		t.SendBestEffort(to, b)
	default:
		m.send(to, b, nil)
	}
}

func (m *Machine) sendAll(b []byte, err error, except string) {
	for _, p := range m.others {
		if p != except {
			m.send(p, b, err)
		}
	}
}

// Observe records this proxy's own view of a backend and gossips it when it
// changed.
func (m *Machine) Observe(svc, backend string, o Observation) error {
	s := m.svcs[svc]
	if s == nil {
		return fmt.Errorf("cluster: observe: unknown service %q", svc)
	}
	if _, ok := s.backends[backend]; !ok {
		return fmt.Errorf("cluster: observe: service %q has no backend %q", svc, backend)
	}
	old, had := s.local[backend]
	if had && old == o {
		return nil
	}
	if !had || old.Up != o.Up || old.Role != o.Role {
		s.obsAt[backend] = m.clock.Now()
	}
	if had && !old.Up && o.Up {
		// Back up after a fence: whatever the hook did is undone.
		delete(s.hookFenced, backend)
	}
	s.local[backend] = o
	m.broadcastObs(svc, s, true)
	return nil
}

// broadcastObs gossips this proxy's view of a service. A change (direct)
// also goes straight to every peer, best effort: a failover waits for Q
// proxies to see the primary down, and gossip alone adds up to a gossip
// interval to every hop.
func (m *Machine) broadcastObs(name string, s *service, direct bool) {
	m.obsSeq++
	msg := obsMsg{Service: name, Boot: m.cfg.BootID, Seq: m.obsSeq}
	for _, b := range s.cfg.Backends {
		if o, ok := s.local[b.Name]; ok {
			msg.Entries = append(msg.Entries, obsEntry{Backend: b.Name, Obs: o})
		}
	}
	if len(msg.Entries) == 0 {
		return
	}
	b, err := encodeObs(msg)
	if err != nil {
		m.log.Error("cluster: encoding observation", "service", name, "err", err)
		return
	}
	if err := m.tr.Broadcast("obs/"+name, b); err != nil {
		m.log.Debug("cluster: gossip failed", "service", name, "err", err)
	}
	if direct {
		for _, p := range m.others {
			m.sendLossy(p, b, nil)
		}
	}
}

// Route returns the backend this proxy may forward the service to now and
// how long that stays true. An empty backend means: do not forward. With
// OnQuorumLoss keep, the last primary comes back without a lease and a
// non-positive remaining time.
func (m *Machine) Route(svc string) (string, time.Duration) {
	s := m.svcs[svc]
	if s == nil {
		return "", 0
	}
	ss := m.svcState(svc)
	if ss.Record.Primary == "" || m.storeErr != nil {
		return "", 0
	}
	if rem := m.leaseRemaining(svc, s, ss); rem > 0 {
		return ss.Record.Primary, rem
	}
	if m.cfg.OnQuorumLoss == QuorumLossKeep && !m.recovering {
		return ss.Record.Primary, 0
	}
	return "", 0
}

func (m *Machine) leaseRemaining(svc string, s *service, ss ServiceState) time.Duration {
	if m.recovering || s.lease.epoch != ss.Record.Epoch || ss.Record.Epoch == 0 {
		return 0
	}
	if ss.Promised > ss.Record.Epoch && !m.cfg.knobs.voterKeepsRouting {
		return 0
	}
	return s.lease.expiry - m.clock.Now()
}

// Switchover asks the cluster to move the service to backend to. It
// returns the id of the operation, whose outcome Status reports.
func (m *Machine) Switchover(svc, to string) (uint64, error) {
	s := m.svcs[svc]
	if s == nil {
		return 0, fmt.Errorf("cluster: switchover: unknown service %q", svc)
	}
	if _, ok := s.backends[to]; !ok {
		return 0, fmt.Errorf("cluster: switchover: service %q has no backend %q", svc, to)
	}
	if err := m.operable(svc, "switchover"); err != nil {
		return 0, err
	}
	rec := m.svcState(svc).Record
	if rec.Fenced.Has(to) {
		return 0, fmt.Errorf("cluster: switchover of service %q: backend %q is fenced (since a failover or an operator's fence); unfence it first", svc, to)
	}
	if err := m.switchCheck(s, rec, to); err != nil {
		return 0, fmt.Errorf("cluster: switchover of service %q to %q: %w", svc, to, err)
	}
	// A decision in flight (ours, or one we voted for) does not end the
	// request: only one above it does.
	s.switchTo, s.switchAt = to, max(rec.Epoch, m.svcState(svc).Promised)
	s.next = m.clock.Now()
	id := m.newOp(s, "switchover", to)
	if to == rec.Primary {
		// Nothing to decide; what remains is that it reports primary.
		s.op.State, s.op.Epoch, s.op.primary, s.op.fenceSeen = OpCommitted, rec.Epoch, to, true
		s.op.Detail = fmt.Sprintf("%q is already the primary at epoch %d", to, rec.Epoch)
		if !s.cfg.RoleAware || m.ownPrimary(s, to) {
			m.opEnd(s, OpDone, s.op.Detail)
		}
	}
	return id, nil
}

// operable refuses an operator's request while this proxy cannot carry it.
func (m *Machine) operable(svc, verb string) error {
	switch {
	case m.recovering:
		return fmt.Errorf("cluster: %s of service %q: this proxy is still recovering its state", verb, svc)
	case m.storeErr != nil:
		return fmt.Errorf("cluster: %s of service %q: this proxy cannot save its state (%v); ask another proxy", verb, svc, m.storeErr)
	}
	return nil
}

// switchCheck refuses, up front, a move of the primary to `to` that would
// leave two primaries: promoting it while another backend, which no hook
// here can fence, reports primary (or, without roles, while the current
// primary is up).
func (m *Machine) switchCheck(s *service, rec Record, to string) error {
	if !s.hooks.Promote || s.hooks.Fence {
		return nil
	}
	if !s.cfg.RoleAware {
		if p := rec.Primary; p != "" && p != to && m.ownUp(s, p) {
			return fmt.Errorf("the primary %q is up and there is no fence hook to fence it before %q is promoted, "+
				"which would leave two primaries: stop %q first, or configure [service.hooks] fence", p, to, p)
		}
		return nil
	}
	if m.ownPrimary(s, to) {
		return nil // nothing to promote
	}
	for _, p := range m.reportedPrimaries(s) {
		if p != to {
			return fmt.Errorf("%q reports primary and there is no fence hook to fence it before %q is promoted, "+
				"which would leave two primaries: demote or stop %q first, or configure [service.hooks] fence", p, to, p)
		}
	}
	return nil
}

// Fence asks the cluster to fence backend off the service: no failover
// picks it until it is unfenced, and if it is the primary the service
// moves to the best candidate. Unfence (fence false) takes it back. Both
// are decided by a vote, at a new epoch. It returns the operation's id.
func (m *Machine) Fence(svc, backend string, fence bool) (uint64, error) {
	verb := map[bool]string{true: "fence", false: "unfence"}[fence]
	s := m.svcs[svc]
	if s == nil {
		return 0, fmt.Errorf("cluster: %s: unknown service %q", verb, svc)
	}
	rec := m.svcState(svc).Record
	_, known := s.backends[backend]
	if !known && !(rec.Fenced.Has(backend) && !fence) {
		// a fenced backend removed from the config can still be unfenced
		return 0, fmt.Errorf("cluster: %s: service %q has no backend %q", verb, svc, backend)
	}
	if err := m.operable(svc, verb); err != nil {
		return 0, err
	}
	switch {
	case rec.Primary == "":
		return 0, fmt.Errorf("cluster: %s in service %q: the cluster has not chosen a first primary yet", verb, svc)
	case fence && rec.Fenced.Has(backend):
		return 0, fmt.Errorf("cluster: fence: backend %q of service %q is already fenced", backend, svc)
	case !fence && !rec.Fenced.Has(backend):
		return 0, fmt.Errorf("cluster: unfence: backend %q of service %q is not fenced", backend, svc)
	}
	if fence && backend == rec.Primary {
		c, why := m.candidate(s, rec.Primary)
		if c == "" {
			return 0, fmt.Errorf("cluster: fence: %q is the primary of service %q and no backend can take over: %s", backend, svc, why)
		}
		if err := m.switchCheck(s, rec, c); err != nil {
			return 0, fmt.Errorf("cluster: fence of primary %q in service %q: %w", backend, svc, err)
		}
	}
	s.fenceOp = &fenceOp{backend: backend, fence: fence, at: max(rec.Epoch, m.svcState(svc).Promised)}
	s.next = m.clock.Now()
	return m.newOp(s, verb, backend), nil
}

// fenceValue is the value that carries out op on rec, or "" and why not.
func (m *Machine) fenceValue(s *service, rec Record, op *fenceOp) (Value, string) {
	if !op.fence {
		return Value{Primary: rec.Primary, Fenced: rec.Fenced.Without(op.backend)}, ""
	}
	v := Value{Primary: rec.Primary, Fenced: rec.Fenced.With(op.backend)}
	if op.backend == rec.Primary {
		c, why := m.candidate(s, rec.Primary)
		if c == "" {
			return Value{}, why
		}
		v.Primary = c
	}
	return v, ""
}

// excluded reports whether backend's promote failed too recently for it to
// be a candidate. (s.failed holds at most one entry per backend.)
func (m *Machine) excluded(s *service, backend string, now time.Duration) bool {
	until, ok := s.failed[backend]
	return ok && now < until
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
	m.wake(m.clock.Now())
	if !m.members[from] || from == m.cfg.Name {
		m.counters.Stranger++
		return
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
		m.heard[from] = m.clock.Now()
		return true
	}
	switch t {
	case msgObservation:
		if x := decObs(d); ok() {
			m.onObs(from, x)
		}
	case msgPropose:
		if x := decPropose(d); ok() {
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
			m.onAccept(from, x)
		}
	case msgAccepted:
		if x := decAccepted(d); ok() {
			m.onAccepted(from, x)
		}
	default:
		m.drop(from, fmt.Errorf("unknown message type %d", t))
	}
	m.flushLeaseSoon()
}

// flushLeaseSoon sends the lease requests a new record asked for.
func (m *Machine) flushLeaseSoon() {
	if !m.leaseSoon || m.recovering {
		return
	}
	m.leaseSoon = false
	now := m.clock.Now()
	m.lastReq = now
	m.requestLeases(now)
}

func (m *Machine) drop(from string, err error) {
	m.counters.Garbage++
	m.log.Debug("cluster: dropping payload", "peer", from, "err", err)
}

func (m *Machine) onObs(from string, x obsMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	pv := s.remote[from]
	now := m.clock.Now()
	// A lower boot id is a replay, unless the peer has been silent for a
	// whole TTL (its wall clock may have been set back across a restart).
	if pv != nil && ((x.Boot < pv.boot && now-pv.at < m.cfg.ObservationTTL) || (x.Boot == pv.boot && x.Seq <= pv.seq)) {
		m.counters.Replay++
		return
	}
	if pv == nil {
		pv = &peerView{}
		s.remote[from] = pv
	}
	pv.boot, pv.seq, pv.at = x.Boot, x.Seq, now
	if pv.view == nil {
		pv.view = make(map[string]Observation, len(x.Entries))
	}
	clear(pv.view)
	for _, e := range x.Entries {
		if _, ok := s.backends[e.Backend]; ok {
			pv.view[e.Backend] = e.Obs
		}
	}
}

// reports counts proxies, self included, whose fresh view of backend
// satisfies pred; self must satisfy it.
func (m *Machine) reports(s *service, backend string, pred func(Observation) bool) int {
	o, ok := s.local[backend]
	if !ok || !pred(o) {
		return 0
	}
	n := 1
	now := m.clock.Now()
	for _, p := range m.others {
		pv := s.remote[p]
		if pv == nil || now-pv.at >= m.cfg.ObservationTTL {
			continue
		}
		if o, ok := pv.view[backend]; ok && pred(o) {
			n++
		}
	}
	return n
}

func isDown(o Observation) bool { return !o.Up }
func isUp(o Observation) bool   { return o.Up }

func (m *Machine) objectivelyDown(s *service, b string) bool { return m.reports(s, b, isDown) >= m.q }
func (m *Machine) healthy(s *service, b string) bool         { return m.reports(s, b, isUp) >= m.q }

func (m *Machine) ownUp(s *service, b string) bool {
	o, ok := s.local[b]
	return ok && o.Up
}

func (m *Machine) ownDown(s *service, b string) bool {
	o, ok := s.local[b]
	return ok && !o.Up
}

// maxLag is the largest lag, in bytes and in time, that any fresh report
// gives for backend (negative: unknown to every report).
func (m *Machine) maxLag(s *service, b string) (int64, time.Duration) {
	o := s.local[b]
	bytes, lag := o.LagBytes, o.Lag
	now := m.clock.Now()
	for _, p := range m.others {
		if pv := s.remote[p]; pv != nil && now-pv.at < m.cfg.ObservationTTL {
			if o, ok := pv.view[b]; ok && o.Up {
				bytes, lag = max(bytes, o.LagBytes), max(lag, o.Lag)
			}
		}
	}
	return bytes, lag
}

// policy is the service's failover policy (package failover, shared with
// a proxy alone).
func (s *service) policy() failover.Policy {
	return failover.Policy{RoleAware: s.cfg.RoleAware, MaxLag: s.cfg.MaxLagOnFailover, MaxLagBytes: s.cfg.MaxLagBytesOnFailover}
}

// candidate picks the successor of primary by the one failover policy,
// from what this cluster knows: healthy in a quorum's view, the role this
// proxy's own check reports, the largest lag any fresh report gives, not
// fenced by the record and not held out after a failed promote here.
func (m *Machine) candidate(s *service, primary string) (string, string) {
	now := m.clock.Now()
	fenced := m.svcState(s.cfg.Name).Record.Fenced
	cs := make([]failover.Candidate, 0, len(s.cfg.Backends))
	for i, b := range s.cfg.Backends {
		bytes, lag := m.maxLag(s, b.Name)
		cs = append(cs, failover.Candidate{Name: b.Name, Priority: b.Priority, Order: i,
			Up: m.healthy(s, b.Name), Role: failoverRole(s.local[b.Name].Role), LagBytes: bytes, Lag: lag,
			Fenced: fenced.Has(b.Name) && !m.cfg.knobs.ignoreFenced, Held: m.excluded(s, b.Name, now)})
	}
	return failover.Successor(s.policy(), cs, primary)
}

func failoverRole(r Role) failover.Role {
	switch r {
	case RolePrimary:
		return failover.RolePrimary
	case RoleReplica:
		return failover.RoleReplica
	}
	return failover.RoleUnknown
}

// bestUp is the highest-priority backend up in this proxy's own view.
func (m *Machine) bestUp(s *service) string {
	best, prio := "", 0
	fenced := m.svcState(s.cfg.Name).Record.Fenced
	for _, b := range s.cfg.Backends {
		if m.ownUp(s, b.Name) && !fenced.Has(b.Name) && (best == "" || b.Priority > prio) {
			best, prio = b.Name, b.Priority
		}
	}
	return best
}

// reachesQuorum reports whether this proxy heard from Q-1 peers lately.
func (m *Machine) reachesQuorum() bool {
	n := 1
	now := m.clock.Now()
	for _, p := range m.others {
		if t, ok := m.heard[p]; ok && now-t < m.cfg.LeaseTimeout {
			n++
		}
	}
	return n >= m.q
}

// Tick lets time pass: lease requests, gossip refresh, proposals, commits,
// retries and hooks. Call it every LeaseTimeout/8 or more often.
func (m *Machine) Tick() {
	now := m.clock.Now()
	m.wake(now)
	if !m.started || now-m.lastObs >= m.cfg.LeaseTimeout/2 {
		m.started = true
		m.lastObs = now
		for _, name := range m.order {
			m.broadcastObs(name, m.svcs[name], false)
		}
	}
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
	for _, name := range m.order {
		m.tickService(name, m.svcs[name], now)
	}
	m.flushLeaseSoon()
}

func (m *Machine) tickRecover(now time.Duration) {
	if now-m.startedAt < m.recoverWait() {
		return
	}
	if m.sync == nil {
		m.sync = map[string]bool{}
		m.syncState = State{Services: map[string]ServiceState{}}
	}
	if m.synced() {
		m.finishRecovery()
		return
	}
	if m.lastSync == 0 || now-m.lastSync >= m.cfg.LeaseTimeout/2 {
		m.lastSync = now
		b, err := encodeSyncReq(syncReqMsg{Boot: m.cfg.BootID})
		m.sendAll(b, err, "")
	}
}

func (m *Machine) onSyncReq(from string, x syncReqMsg) {
	reply := syncReplyMsg{Boot: x.Boot, Recovering: m.recovering}
	size := listHeader
	for _, name := range m.order {
		ss := m.svcState(name)
		e := syncEntry{Service: name, Record: ss.Record, Promised: ss.Promised, Accepted: ss.Accepted}
		if n := syncEntrySize(e); size+n > MaxMessageSize || len(reply.Entries) == 255 {
			reply.More = true
			b, err := encodeSyncReply(reply)
			m.send(from, b, err)
			reply.Entries, reply.More, size = reply.Entries[:0], false, listHeader
		}
		reply.Entries = append(reply.Entries, e)
		size += syncEntrySize(e)
	}
	b, err := encodeSyncReply(reply)
	m.send(from, b, err)
}

func (m *Machine) onSyncReply(from string, x syncReplyMsg) {
	if !m.recovering || m.sync == nil || x.Boot != m.cfg.BootID {
		m.counters.Stale++
		return
	}
	for _, e := range x.Entries {
		if m.svcs[e.Service] == nil {
			m.counters.UnknownService++
			continue
		}
		ss := m.syncState.Services[e.Service]
		if e.Record.Epoch > ss.Record.Epoch {
			ss.Record = e.Record
		}
		ss.Promised = max(ss.Promised, e.Promised)
		if e.Accepted.Epoch > ss.Accepted.Epoch {
			ss.Accepted = e.Accepted
		}
		m.syncState.Services[e.Service] = ss
	}
	// A reply spans several payloads when there are many services; count
	// the peer once the last one arrived.
	if !x.More {
		m.sync[from] = !x.Recovering
	}
	if m.synced() {
		m.finishRecovery()
	}
}

// synced reports whether the sync answers cover every vote that could be
// part of a quorum: N-Q+1 peers that are not recovering themselves, or
// every peer (a new cluster, where all start empty).
func (m *Machine) synced() bool {
	good := 0
	for _, ok := range m.sync {
		if ok {
			good++
		}
	}
	return good >= m.n-m.q+1 || len(m.sync) == m.n-1
}

func (m *Machine) finishRecovery() {
	st := m.st.clone()
	for name, learned := range m.syncState.Services {
		ss := st.Services[name]
		if learned.Record.Epoch > ss.Record.Epoch {
			ss.Record = learned.Record
		}
		ss.Promised = max(ss.Promised, learned.Promised, learned.Accepted.Epoch)
		ss.PromisedTo = ""
		if learned.Accepted.Epoch > ss.Accepted.Epoch {
			ss.Accepted = learned.Accepted
		}
		st.Services[name] = ss
	}
	st.Synced = true
	if err := m.store.Save(st.clone()); err != nil {
		// Still recovering: tried again at the next answer; said once.
		m.storeFailed(err)
		return
	}
	if m.storeErr != nil {
		m.storeErr = nil
		m.log.Info("cluster: state_dir can be written again: this proxy takes part again")
	}
	m.st = st
	m.recovering = false
	m.sync = nil
	now := m.clock.Now()
	for _, name := range m.order {
		s := m.svcs[name]
		s.leaseAt = now
		s.switchTo, s.fenceOp = "", nil
		m.log.Info("cluster: recovered state from peers", "service", name, "epoch", st.Services[name].Record.Epoch)
	}
}

func (m *Machine) requestLeases(now time.Duration) {
	for c, p := range m.pending {
		if now-p.sentAt > m.cfg.LeaseTimeout {
			delete(m.pending, c)
		}
	}
	var entries []leaseEntry
	size := listHeader
	flush := func() {
		if len(entries) == 0 {
			return
		}
		m.counter++
		req := &leaseReq{sentAt: now, slots: make([]leaseSlot, 0, len(entries))}
		for _, e := range entries {
			req.slots = append(req.slots, leaseSlot{service: e.Service, epoch: e.Record.Epoch})
		}
		m.pending[m.counter] = req
		b, err := encodeLeaseReq(leaseReqMsg{Boot: m.cfg.BootID, Counter: m.counter, Entries: entries})
		for _, p := range m.others {
			m.sendLossy(p, b, err)
		}
		if m.q == 1 {
			for i := range req.slots {
				m.maybeLease(&req.slots[i], req.sentAt, now)
			}
		}
		entries, size = nil, listHeader
	}
	for _, name := range m.order {
		ss := m.svcState(name)
		if ss.Record.Epoch == 0 {
			continue
		}
		// Sent even while our own vote forbids us a lease: the record it
		// carries lets peers that missed a commit catch up.
		e := leaseEntry{Service: name, Record: ss.Record}
		// The answer is larger than the request: size the batch by it,
		// with the largest value the service's config allows, or ours if
		// larger (a fenced set can name a backend removed since). The
		// answering peer splits its answer if its values are larger still.
		w := m.svcs[name].widest
		n := leaseAckEntrySize(leaseAckEntry{Service: name, Record: Record{Value: wider(w, ss.Record.Value)},
			Accepted: Ballot{Value: wider(w, ss.Accepted.Value)}})
		if size+n > MaxMessageSize || len(entries) == 255 {
			flush()
		}
		entries = append(entries, e)
		size += n
	}
	flush()
}

func (m *Machine) onLeaseReq(from string, x leaseReqMsg) {
	ack := leaseAckMsg{Boot: x.Boot, Counter: x.Counter}
	size := listHeader
	flush := func() {
		if len(ack.Entries) == 0 {
			return
		}
		b, err := encodeLeaseAck(ack)
		m.sendLossy(from, b, err)
		ack.Entries, size = nil, listHeader
	}
	for _, e := range x.Entries {
		if m.svcs[e.Service] == nil {
			m.counters.UnknownService++
			continue
		}
		if !m.recovering && e.Record.Epoch > m.svcState(e.Service).Record.Epoch {
			m.adopt(e.Service, e.Record, "")
		}
		ss := m.svcState(e.Service)
		ok := !m.recovering && m.storeErr == nil && ss.Record.Epoch == e.Record.Epoch && ss.Promised <= e.Record.Epoch
		ae := leaseAckEntry{Service: e.Service, Epoch: e.Record.Epoch, OK: ok, Record: ss.Record,
			Promised: ss.Promised, Accepted: ss.Accepted}
		// The request was sized for its answer to fit one payload, by the
		// config's widest value; a fenced set that names backends since
		// removed from the config can be wider, so split if need be.
		if n := leaseAckEntrySize(ae); size+n > MaxMessageSize {
			flush()
		}
		ack.Entries = append(ack.Entries, ae)
		size += leaseAckEntrySize(ae)
	}
	flush()
}

func (m *Machine) onLeaseAck(from string, x leaseAckMsg) {
	if x.Boot != m.cfg.BootID {
		m.counters.Stale++
		return
	}
	req := m.pending[x.Counter]
	for _, e := range x.Entries {
		if m.svcs[e.Service] == nil {
			m.counters.UnknownService++
			continue
		}
		if m.recovering {
			continue
		}
		m.learn(e.Service, e.Record, e.Accepted)
		if !e.OK || req == nil {
			continue
		}
		sl := req.slot(e.Service)
		if sl == nil || sl.epoch != e.Epoch {
			continue
		}
		if !slices.Contains(sl.acks, from) {
			sl.acks = append(sl.acks, from)
		}
		m.maybeLease(sl, req.sentAt, m.clock.Now())
	}
	if req == nil {
		m.counters.Stale++
	}
}

func (m *Machine) maybeLease(sl *leaseSlot, sentAt, now time.Duration) {
	name := sl.service
	s := m.svcs[name]
	ss := m.svcState(name)
	e := sl.epoch
	if e != ss.Record.Epoch || len(sl.acks) < m.q-1 {
		return
	}
	exp := sentAt + m.cfg.LeaseTimeout
	if s.lease.epoch != e {
		s.lease = lease{epoch: e, expiry: exp}
	} else if exp > s.lease.expiry {
		s.lease.expiry = exp
	}
	if m.leaseRemaining(name, s, ss) > 0 {
		s.leaseAt = now
	}
	m.actuate(name, s, now)
}

// learn takes what a peer told about its state: a higher record is
// adopted, an accepted value above our record is remembered as a hint of
// what phase 1 will force.
func (m *Machine) learn(name string, rec Record, accepted Ballot) {
	ss := m.svcState(name)
	if rec.Epoch > ss.Record.Epoch {
		m.adopt(name, rec, "")
		ss = m.svcState(name)
	}
	s := m.svcs[name]
	if accepted.Epoch > ss.Record.Epoch && accepted.Epoch > s.hint.Epoch {
		s.hint = accepted
	}
}

// adopt persists a higher record and announces it. relayExcept is the
// peer the commit came from ("" when it did not come as a commit).
func (m *Machine) adopt(name string, rec Record, relayExcept string) {
	s := m.svcs[name]
	ss := m.svcState(name)
	if rec.Epoch <= ss.Record.Epoch {
		m.counters.Stale++
		return
	}
	old := ss.Record
	ss.Record = rec
	if ss.Intent.Epoch < rec.Epoch {
		ss.Intent = HookIntent{}
	}
	if err := m.save(name, ss); err != nil {
		m.log.Debug("cluster: adopting record", "service", name, "epoch", rec.Epoch, "err", err)
		return
	}
	m.counters.Adoptions++
	s.lease = lease{}
	s.leaseAt = m.clock.Now()
	s.recordAt = s.leaseAt
	s.followTo = ""
	m.leaseSoon = true
	if s.hint.Epoch <= rec.Epoch {
		s.hint = Ballot{}
	}
	if s.prop != nil && s.prop.epoch <= rec.Epoch {
		s.prop = nil
	}
	if rec.Epoch > s.switchAt {
		// any decision that lands first ends the switchover request
		s.switchTo = ""
	}
	m.endRetry(s, rec)
	m.endFenceOp(s, rec)
	m.opDecided(s, rec, old)
	m.unverified(s, old, rec)
	s.decision = fmt.Sprintf("adopted epoch %d %s", rec.Epoch, rec.Value)
	if relayExcept != "" {
		b, err := encodeCommit(commitMsg{Service: name, Record: rec})
		m.sendAll(b, err, relayExcept)
	}
	if m.cfg.OnRecord != nil {
		m.cfg.OnRecord(name, old, rec)
	}
}

func (m *Machine) onCommit(from string, x commitMsg) {
	if m.svcs[x.Service] == nil {
		m.counters.UnknownService++
		return
	}
	if m.recovering {
		// It is learned again through sync; adopting now could not be
		// relied on before the sync finishes anyway.
		return
	}
	m.adopt(x.Service, x.Record, from)
}

// endRetry forgets a failed promote at any later decision (checked here,
// at the decision, since two can land between two ticks): one that names
// another primary makes it moot, and one that keeps the same backend as
// primary makes the proxy that committed it act on it (intentFor), so
// moving away from it now could cross that proxy's promote.
func (m *Machine) endRetry(s *service, rec Record) {
	if s.retry != nil && rec.Epoch > s.retry.epoch {
		s.retry = nil
	}
}

// endFenceOp ends an operator's fence or unfence at the first decision
// that lands after it was asked for, its own or another: like a
// switchover it is one attempt, and the operator sees the outcome. Left
// pending, it could be carried out long after, on a cluster that moved on.
func (m *Machine) endFenceOp(s *service, rec Record) {
	if op := s.fenceOp; op != nil && rec.Epoch > op.at {
		if rec.Fenced.Has(op.backend) != op.fence {
			s.decision = fmt.Sprintf("%s dropped: epoch %d was decided first", m.fenceOpString(op), rec.Epoch)
		}
		s.fenceOp = nil
	}
}

func (m *Machine) fenceOpString(op *fenceOp) string {
	return map[bool]string{true: "fence ", false: "unfence "}[op.fence] + op.backend
}

func (m *Machine) tickService(name string, s *service, now time.Duration) {
	// The rank delay counts from when this proxy first saw the primary
	// down, even if a backoff or a vote holds its own proposal back.
	rec := m.svcState(name).Record
	down := rec.Primary != "" && m.objectivelyDown(s, rec.Primary)
	switch {
	case !down:
		s.downEpoch = 0
	case s.downEpoch != rec.Epoch:
		s.downEpoch, s.downSince = rec.Epoch, now
	}
	if m.ownPrimary(s, rec.Primary) {
		s.primarySeen[rec.Primary] = max(s.primarySeen[rec.Primary], rec.Since)
	}
	if p := s.prop; p != nil {
		m.tickProposal(name, s, p, now)
		return
	}
	m.actuate(name, s, now)
	m.opCheck(s)
	if now < s.next {
		return
	}
	ss := m.svcState(name)
	// A vote we cast above our record belongs to a proposal that may still
	// commit: give its proposer the time to do so.
	if ss.Promised > ss.Record.Epoch && now-s.votedAt < m.cfg.VoteTimeout+m.commitWait() {
		return
	}
	forced := s.hint
	if ss.Accepted.Epoch > forced.Epoch {
		forced = ss.Accepted
	}
	if forced.Epoch <= ss.Record.Epoch || m.cfg.knobs.noPhase1 {
		forced = Ballot{}
	}
	if s.retry != nil && m.ownPrimary(s, s.retry.backend) {
		// Its promote landed after all: there is nothing to move on from.
		m.log.Info("cluster: the backend whose promote failed reports primary: not moving on", "service", name, "backend", s.retry.backend)
		delete(s.failed, s.retry.backend)
		s.retry = nil
	}
	retryTo := ""
	if s.retry != nil && forced.Epoch == 0 && !down {
		retryTo = m.retryCandidate(name, s, rec)
		if r := s.retry; retryTo == "" && !s.hookFenced[r.backend] && r.epoch == rec.Epoch && now-r.at >= m.fenceRetry(s) &&
			ss.Intent.Epoch == rec.Epoch && !ss.Intent.Done && m.ownUp(s, r.backend) {
			// Nothing else can take over: try the promote again, as
			// carefully as the first time (a failure may be passing).
			m.log.Info("cluster: no other candidate: trying the promote again", "service", name, "backend", r.backend, "epoch", rec.Epoch)
			s.retry = nil
			delete(s.failed, r.backend)
			if s.act.epoch == rec.Epoch {
				s.act.promoted, s.act.failed = false, nil
			}
			m.actuate(name, s, now)
			return
		}
	}
	keep := func(primary string) Value { return Value{Primary: primary, Fenced: rec.Fenced} }
	drop := func(why string) {
		s.decision = why
		m.opEnd(s, OpFailed, why)
	}
	switch {
	case (s.switchTo != "" || s.fenceOp != nil) && forced.Epoch != 0:
		m.propose(name, s, forced.Value, kindForced, rec.Primary, now)
	case s.switchTo != "" && s.switchTo == rec.Primary:
		s.switchTo = ""
	case s.switchTo != "":
		to := s.switchTo
		err := m.switchCheck(s, rec, to)
		switch {
		case rec.Fenced.Has(to):
			drop(fmt.Sprintf("switchover to %q dropped: it was fenced meanwhile", to))
			s.switchTo = ""
		case !m.ownUp(s, to):
			drop(fmt.Sprintf("switchover to %q dropped: it is not up here", to))
			s.switchTo = ""
		case err != nil:
			drop(fmt.Sprintf("switchover to %q dropped: %v", to, err))
			s.switchTo = ""
		default:
			v := keep(to)
			if failover.FenceOldPrimary(s.policy()) && rec.Primary != "" {
				// Without roles, nothing tells the old primary from a
				// standby later: it stays fenced until an operator
				// unfences it (and so vouches that it is one).
				v.Fenced = rec.Fenced.With(rec.Primary)
			}
			m.propose(name, s, v, kindSwitchover, rec.Primary, now)
		}
	case s.fenceOp != nil:
		op := s.fenceOp
		v, why := m.fenceValue(s, rec, op)
		k := map[bool]kind{true: kindFence, false: kindUnfence}[op.fence]
		switch {
		case why != "":
			drop(fmt.Sprintf("fence of %q dropped: no backend can take over: %s", op.backend, why))
			s.fenceOp = nil
		case v == rec.Value:
			s.fenceOp = nil // already done by a decision that landed meanwhile
			m.opEnd(s, OpDone, fmt.Sprintf("already so at epoch %d", rec.Epoch))
		default:
			m.propose(name, s, v, k, op.backend, now)
		}
	case rec.Primary == "":
		if forced.Epoch != 0 {
			if m.reachesQuorum() {
				m.propose(name, s, forced.Value, kindForced, "", now)
			}
			return
		}
		if best := m.bootstrapChoice(name, s); best != "" && m.healthy(s, best) {
			m.propose(name, s, keep(best), kindBootstrap, "", now)
		}
	case down:
		if forced.Epoch != 0 {
			m.propose(name, s, forced.Value, kindForced, rec.Primary, now)
			return
		}
		if now-s.downSince < m.rankDelay(now) && !m.cfg.knobs.noRankDelay {
			return
		}
		c, why := m.candidate(s, rec.Primary)
		if c == "" {
			if m.say(name, s, "candidate", fmt.Sprintf("no failover from %q: %s", rec.Primary, why)) {
				m.counters.NoCandidate++
			}
			return
		}
		v := keep(c)
		if failover.FenceOldPrimary(s.policy()) {
			v.Fenced = rec.Fenced.With(rec.Primary)
		}
		m.propose(name, s, v, kindFailover, rec.Primary, now)
	case s.retry != nil && forced.Epoch != 0:
		m.propose(name, s, forced.Value, kindForced, rec.Primary, now)
	case retryTo != "":
		v := keep(retryTo)
		if s.retry.fenced || failover.FenceOldPrimary(s.policy()) {
			// fenced by a hook: it stays out until an operator unfences it
			v.Fenced = rec.Fenced.With(rec.Primary)
		}
		m.propose(name, s, v, kindPromoteFailed, rec.Primary, now)
	case forced.Epoch == 0 && m.promoteStalled(s, rec, ss, now):
		// Nobody carries out the promote of the record's primary (the
		// proxy that committed it failed, or lost its state): decide it
		// again, so that this proxy acts on it.
		m.log.Warn("cluster: the primary of the record still reports replica and no proxy promotes it: deciding it again",
			"service", name, "primary", rec.Primary)
		m.propose(name, s, rec.Value, kindReaffirm, rec.Primary, now)
	case forced.Epoch == 0 && m.followTarget(name, s, rec, now) != "":
		y := m.followTarget(name, s, rec, now)
		m.log.Warn("cluster: the primary of the record does not report primary and another backend does: routing there",
			"service", name, "record_primary", rec.Primary, "reports_primary", y)
		m.propose(name, s, keep(y), kindReaffirm, rec.Primary, now)
	case m.leaseRemaining(name, s, ss) <= 0 && now-s.leaseAt > m.livenessAfter() && m.reachesQuorum():
		// Every proxy that lost its lease with the others, or voted with
		// them, gets here at the same moment; in a bare quorum their
		// duels then repeat in step. The rank delay breaks the tie.
		since := max(s.leaseAt+m.livenessAfter(), s.votedAt+m.cfg.VoteTimeout+m.commitWait())
		if now-since < m.rankDelay(now) && !m.cfg.knobs.noRankDelay {
			return
		}
		switch {
		case forced.Epoch != 0:
			m.propose(name, s, forced.Value, kindForced, rec.Primary, now)
		case s.cfg.RoleAware && !m.ownPrimary(s, rec.Primary) && m.onlyPrimary(s, rec.Fenced) != "":
			// Roles are facts: re-affirm the backend that reports primary.
			m.propose(name, s, keep(m.onlyPrimary(s, rec.Fenced)), kindReaffirm, rec.Primary, now)
		case m.ownUp(s, rec.Primary):
			m.propose(name, s, rec.Value, kindReaffirm, rec.Primary, now)
		}
	}
}

// bootstrapChoice is the first primary of a new cluster ("" to wait): for
// a service with roles, the one backend that reports primary, once this
// proxy has heard from every backend (roles are facts; priorities only
// break ties between equals, and there are none: with no primary or two,
// nothing is chosen and the status says why); without roles, the
// highest-priority backend up.
func (m *Machine) bootstrapChoice(name string, s *service) string {
	if !s.cfg.RoleAware || m.cfg.knobs.bootstrapByPriority {
		return m.bestUp(s)
	}
	for _, b := range s.cfg.Backends {
		if _, ok := s.local[b.Name]; !ok {
			m.say(name, s, "bootstrap", "no primary yet: waiting for the first health report of "+b.Name)
			return ""
		}
	}
	switch ps := m.reportedPrimaries(s); len(ps) {
	case 0:
		m.say(name, s, "bootstrap", "no primary yet: no backend reports primary; a new cluster promotes nothing by itself: "+
			"start the primary, or choose one with quorumproxy switchover")
	case 1:
		return ps[0]
	default:
		m.say(name, s, "bootstrap", fmt.Sprintf("no primary yet: dual primary: %s all report primary; routing none", strings.Join(ps, ", ")))
	}
	return ""
}

// say sets the service's decision to what and logs it at WARN when it
// differs from what was last said on the same topic; it reports whether
// it logged.
func (m *Machine) say(name string, s *service, topic, what string) bool {
	s.decision = what
	if s.said[topic] == what {
		return false
	}
	s.said[topic] = what
	m.log.Warn("cluster: "+what, "service", name)
	return true
}

// rankDelay is how long this proxy lets a failover wait before it proposes
// one itself: a tick for each reachable peer with a higher name. The
// highest proposes at once and the others usually vote for it before their
// own turn, so one proposal gathers every vote and commits without the
// lease wait; when several propose at once, votes split between them, the
// winner lacks some and waits out the commit wait (or nobody reaches Q and
// all back off). A peer that does not propose costs at most this delay.
func (m *Machine) rankDelay(now time.Duration) time.Duration {
	rank := 0
	for _, p := range m.others {
		if t, ok := m.heard[p]; ok && p > m.cfg.Name && now-t < m.cfg.LeaseTimeout {
			rank++
		}
	}
	return time.Duration(rank) * m.cfg.LeaseTimeout / 8
}

// retryCandidate is the backend to move to after the record's primary
// failed to promote, or "" (with a loud status) when there is none.
func (m *Machine) retryCandidate(name string, s *service, rec Record) string {
	c, why := m.candidate(s, rec.Primary)
	if c != "" {
		return c
	}
	if m.say(name, s, "candidate", fmt.Sprintf("promote of %q at epoch %d failed (%s); no other candidate: %s",
		s.retry.backend, s.retry.epoch, s.retry.reason, why)) {
		m.counters.NoCandidate++
	}
	return ""
}

// livenessAfter is how long a proxy goes without a lease before it
// re-proposes: longer than a proposal's whole life, so it does not cut in.
func (m *Machine) livenessAfter() time.Duration {
	return m.cfg.VoteTimeout + m.commitWait() + m.cfg.LeaseTimeout
}

func (m *Machine) backoff(s *service, now time.Duration) {
	cw := m.commitWait()
	s.next = now + cw + time.Duration(m.rng.Int64N(int64(cw+m.cfg.LeaseTimeout)))
}

// persistVote saves a vote (promise or acceptance) unless a test knob says
// not to; a vote that cannot be saved is not sent.
func (m *Machine) persistVote(name string, ss ServiceState) error {
	if m.cfg.knobs.noVotePersist {
		m.st.Services[name] = ss
		return nil
	}
	if m.cfg.knobs.answerUnpersisted {
		// The rule this knob breaks: an unsaved vote stays in memory,
		// where a duplicate finds it and is answered from it.
		m.st.Services[name] = ss
		if err := m.store.Save(m.st.clone()); err != nil {
			m.counters.PersistErrors++
			return err
		}
		return nil
	}
	return m.save(name, ss)
}

// propose stops routing (our own vote is above the record), persists our
// vote, then asks every peer for theirs (phase 1).
func (m *Machine) propose(name string, s *service, value Value, k kind, from string, now time.Duration) {
	if m.storeErr != nil {
		return
	}
	ss := m.svcState(name)
	// Any epoch above our own promise is ours to propose; above what peers
	// promised, it can win.
	e := max(ss.Record.Epoch, ss.Promised, s.peerPromised) + 1
	if k != kindForced {
		// a forced value keeps the Since it was proposed with
		value.Since = ss.Record.Since
		if value.Primary != ss.Record.Primary {
			value.Since = e
		}
	}
	prev := ss.Accepted
	ss.Promised, ss.PromisedTo, ss.PrevAccepted = e, m.cfg.Name, prev
	if err := m.persistVote(name, ss); err != nil {
		m.log.Debug("cluster: saving own vote", "service", name, "epoch", e, "err", err)
		m.backoff(s, now)
		return
	}
	m.counters.Proposals++
	s.prop = &proposal{epoch: e, base: ss.Record.Epoch, value: value, from: from, kind: k, sentAt: now, lastSend: now,
		promises: map[string]Ballot{m.cfg.Name: prev}, accepts: map[string]bool{}}
	s.decision = fmt.Sprintf("proposed epoch %d %s (%s)", e, value, k)
	m.log.Info("cluster: proposing", "service", name, "epoch", e, "primary", value.Primary, "fenced", string(value.Fenced), "kind", k.String())
	m.resend(name, s.prop)
	m.checkPromises(name, s, s.prop, now)
}

// resend sends the current phase's request to every peer that has not
// answered it yet.
func (m *Machine) resend(name string, p *proposal) {
	var b []byte
	var err error
	if p.phase2 {
		b, err = encodeAccept(acceptMsg{Service: name, Epoch: p.epoch, Value: p.value})
	} else {
		b, err = encodePropose(proposeMsg{Service: name, Epoch: p.epoch, Value: p.value, Kind: p.kind, From: p.from, Base: p.base})
	}
	for _, peer := range m.others {
		_, promised := p.promises[peer]
		if (p.phase2 && !p.accepts[peer]) || (!p.phase2 && !promised) {
			m.send(peer, b, err)
		}
	}
}

func (m *Machine) tickProposal(name string, s *service, p *proposal, now time.Duration) {
	if p.phase2 && len(p.accepts) >= m.q && (now >= p.commitAt || m.allStopped(p)) {
		m.commit(name, s, p, now)
		return
	}
	if now-p.sentAt > m.cfg.VoteTimeout && len(p.accepts) < m.q {
		m.abandon(name, s, now, "no quorum of votes in time")
		return
	}
	if now-p.lastSend >= m.cfg.LeaseTimeout/4 {
		p.lastSend = now
		m.resend(name, p)
	}
}

func (m *Machine) abandon(name string, s *service, now time.Duration, why string) {
	if p := s.prop; p != nil {
		switch p.kind {
		case kindSwitchover:
			// one attempt per request: the operator sees it failed
			s.switchTo = ""
			m.opEnd(s, OpFailed, fmt.Sprintf("gave up epoch %d: %s", p.epoch, why))
		case kindFence, kindUnfence:
			s.fenceOp = nil
			m.opEnd(s, OpFailed, fmt.Sprintf("gave up epoch %d: %s", p.epoch, why))
		}
		s.decision = fmt.Sprintf("gave up epoch %d: %s", p.epoch, why)
		m.log.Info("cluster: proposal given up", "service", name, "epoch", p.epoch, "why", why)
	}
	s.prop = nil
	m.backoff(s, now)
}

func (m *Machine) onVote(from string, x voteMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	if m.recovering {
		return
	}
	m.learn(x.Service, x.Record, x.Accepted)
	// A refusal says how far the voter has promised: the next proposal
	// starts above it rather than climbing one refused epoch at a time.
	s.peerPromised = max(s.peerPromised, x.Promised)
	p := s.prop
	if p == nil || x.Epoch != p.epoch {
		m.counters.Stale++
		return
	}
	if !x.Granted {
		return
	}
	if _, dup := p.promises[from]; dup {
		return
	}
	p.promises[from] = x.Prev
	m.checkPromises(x.Service, s, p, m.clock.Now())
}

// checkPromises moves to phase 2 once Q proxies voted for the epoch.
func (m *Machine) checkPromises(name string, s *service, p *proposal, now time.Duration) {
	if p.phase2 {
		if m.allStopped(p) {
			m.maybeCommit(name, s, p, now)
		}
		return
	}
	if len(p.promises) < m.q {
		return
	}
	if now > p.sentAt+m.cfg.VoteTimeout {
		m.abandon(name, s, now, "quorum came too late")
		return
	}
	// Paxos phase 1: the highest value accepted above our base may have
	// been chosen already; it is the only value we may propose.
	// Ties are broken by value so that the choice never depends on map
	// order: in a correct run one epoch carries one value, but the
	// simulation must replay a seed exactly even when a rule is off.
	var high Ballot
	for _, b := range p.promises {
		if b.Epoch > p.base && (b.Epoch > high.Epoch || b.Epoch == high.Epoch && high.Value.less(b.Value)) {
			high = b
		}
	}
	if high.Epoch != 0 && high.Value != p.value && !m.cfg.knobs.noPhase1 {
		s.decision = fmt.Sprintf("epoch %d forced to %s by a vote at epoch %d", p.epoch, high.Value, high.Epoch)
		p.value, p.kind = high.Value, kindForced
	}
	ss := m.svcState(name)
	if ss.Promised != p.epoch || ss.PromisedTo != m.cfg.Name {
		// we voted for someone else's higher epoch meanwhile
		m.abandon(name, s, now, "superseded by a higher epoch")
		return
	}
	ss.Accepted = Ballot{Epoch: p.epoch, Value: p.value}
	if err := m.persistVote(name, ss); err != nil {
		m.log.Debug("cluster: saving own acceptance", "service", name, "epoch", p.epoch, "err", err)
		m.abandon(name, s, now, "could not persist")
		return
	}
	p.phase2 = true
	p.accepts[m.cfg.Name] = true
	// The lease wait starts now: every proxy that confirmed a lease at the
	// old epoch before it voted is among any quorum's reach.
	p.commitAt = now + m.commitWait()
	if m.cfg.knobs.noLeaseWait {
		p.commitAt = now
	}
	p.lastSend = now
	m.resend(name, p)
	m.maybeCommit(name, s, p, now)
}

func (m *Machine) onAccepted(from string, x acceptedMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	if m.recovering {
		return
	}
	m.learn(x.Service, x.Record, x.Accepted)
	p := s.prop
	if p == nil || !p.phase2 || x.Epoch != p.epoch || x.Value != p.value || !x.OK {
		m.counters.Stale++
		return
	}
	p.accepts[from] = true
	m.maybeCommit(x.Service, s, p, m.clock.Now())
}

// allStopped reports whether every proxy voted for the proposal or
// accepted its value: either saved Promised = E before answering, which
// stopped its routing and its lease confirmations at older epochs, so no
// lease at an older epoch is left to wait out. (A peer that refused the
// vote because its own check lagged accepts on a resent accept.)
func (m *Machine) allStopped(p *proposal) bool {
	n := len(p.promises)
	for peer := range p.accepts {
		if _, ok := p.promises[peer]; !ok {
			n++
		}
	}
	return n == m.n
}

func (m *Machine) maybeCommit(name string, s *service, p *proposal, now time.Duration) {
	if len(p.accepts) < m.q || (now < p.commitAt && !m.allStopped(p)) {
		return
	}
	if now > p.sentAt+m.cfg.VoteTimeout+m.commitWait()+m.cfg.LeaseTimeout/2 {
		m.abandon(name, s, now, "commit came too late")
		return
	}
	m.commit(name, s, p, now)
}

func (m *Machine) commit(name string, s *service, p *proposal, now time.Duration) {
	ss := m.svcState(name)
	if p.epoch <= ss.Record.Epoch {
		s.prop = nil
		return
	}
	old := ss.Record
	rec := Record{Epoch: p.epoch, Value: p.value}
	ss.Record = rec
	ss.Intent = m.intentFor(s, p.kind, old, rec)
	if err := m.save(name, ss); err != nil {
		m.log.Debug("cluster: saving commit", "service", name, "epoch", rec.Epoch, "err", err)
		m.abandon(name, s, now, "could not persist the commit")
		return
	}
	m.counters.Commits++
	s.prop = nil
	s.lease = lease{}
	s.leaseAt = now
	s.recordAt = now
	s.followTo = ""
	m.leaseSoon = true
	s.hint = Ballot{}
	if rec.Epoch > s.switchAt {
		s.switchTo = ""
	}
	m.endRetry(s, rec)
	m.endFenceOp(s, rec)
	m.opDecided(s, rec, old)
	if p.kind != kindPromoteFailed {
		// (moving on, this proxy already knows the old primary is not one)
		m.unverified(s, old, rec)
	}
	s.decision = fmt.Sprintf("committed epoch %d %s (%s, %d votes)", rec.Epoch, rec.Value, p.kind, len(p.accepts))
	m.log.Info("cluster: committed", "service", name, "epoch", rec.Epoch, "primary", rec.Primary, "fenced", string(rec.Fenced),
		"kind", p.kind.String(), "votes", len(p.accepts))
	b, err := encodeCommit(commitMsg{Service: name, Record: rec})
	m.sendAll(b, err, "")
	if m.cfg.OnRecord != nil {
		m.cfg.OnRecord(name, old, rec)
	}
}

// newlyFenced is a backend in to that is not in from ("" if none).
func newlyFenced(from, to Fenced) string {
	for _, b := range to.List() {
		if !from.Has(b) {
			return b
		}
	}
	return ""
}

// intentFor is what the committing proxy must do to the databases for a
// decision of kind k from old to rec: fence the old primary and promote
// the new one on a failover or a switchover; only promote (nothing is to
// be fenced) when the first primary is an operator's choice or when the
// decision follows a backend that reports primary; fence a standby that
// an operator fenced; and finish a promote that an earlier decision's
// proxy did not carry out when a decision keeps a primary that reports
// replica.
func (m *Machine) intentFor(s *service, k kind, old, rec Record) HookIntent {
	in := HookIntent{Epoch: rec.Epoch}
	switch {
	case old.Primary == rec.Primary || old.Primary == "":
		in.Fence = newlyFenced(old.Fenced, rec.Fenced)
	case k == kindReaffirm:
		in.Promote = rec.Primary
	default:
		in.Fence, in.Promote = old.Primary, rec.Primary
	}
	if in.Promote == "" && s.cfg.RoleAware && m.ownReplica(s, rec.Primary) {
		// The decision that made it primary was not carried out (its
		// proxy failed, or its intent gave way to this record), or an
		// operator chose it as the first primary. (Without roles, a
		// first primary is never promoted: nothing tells whether another
		// backend is one already.)
		in.Promote = rec.Primary
	}
	if in.Fence == "" && in.Promote == "" {
		return HookIntent{}
	}
	return in
}

var (
	errRecovering = errors.New("recovering")
	errDuplicate  = errors.New("duplicate of the proposal voted for")
	errStore      = errors.New("this proxy cannot save its state")
)

// onPropose is phase 1 at a voter: the vote for an epoch.
func (m *Machine) onPropose(from string, x proposeMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	ss := m.svcState(x.Service)
	reply := voteMsg{Service: x.Service, Epoch: x.Epoch, Value: x.Value, Recovering: m.recovering}
	if _, known := s.backends[x.From]; x.Kind == kindPromoteFailed && known && !m.recovering && x.Base >= ss.Record.Epoch {
		// the proposer's promote of From failed: not a candidate here either
		s.failed[x.From] = m.clock.Now() + m.cfg.FailedPromoteHold
	}
	err := m.voteCheck(s, ss, from, x)
	switch {
	case err == nil:
		prev := ss.Accepted
		ss.Promised, ss.PromisedTo, ss.PrevAccepted = x.Epoch, from, prev
		if err := m.persistVote(x.Service, ss); err != nil {
			m.log.Debug("cluster: saving vote", "service", x.Service, "epoch", x.Epoch, "err", err)
			return
		}
		s.votedAt = m.clock.Now()
		m.counters.VotesGranted++
		reply.Granted, reply.Prev = true, prev
		if p := s.prop; p != nil && p.epoch == x.Epoch {
			// our own proposal at this epoch lost the duel
			m.abandon(x.Service, s, s.votedAt, fmt.Sprintf("yielded to %s at the same epoch", from))
		}
		s.decision = fmt.Sprintf("voted epoch %d for %s (%s, %s)", x.Epoch, from, x.Kind, x.Value)
	case errors.Is(err, errDuplicate):
		reply.Granted, reply.Prev = true, ss.PrevAccepted
	default:
		m.counters.VotesRefused++
		m.log.Debug("cluster: vote refused", "service", x.Service, "epoch", x.Epoch, "peer", from, "why", err)
	}
	reply.Promised, reply.Accepted, reply.Record = ss.Promised, ss.Accepted, ss.Record
	b, e := encodeVote(reply)
	m.send(from, b, e)
}

// voteCheck applies the vote rules; nil means vote.
func (m *Machine) voteCheck(s *service, ss ServiceState, from string, x proposeMsg) error {
	if m.recovering {
		return errRecovering
	}
	if m.storeErr != nil {
		// Not even a duplicate: its answer is on disk, but a proxy whose
		// disk fails takes no part until it works again.
		return errStore
	}
	if x.Epoch == ss.Promised && from == ss.PromisedTo {
		return errDuplicate
	}
	if x.Epoch < ss.Promised || (x.Epoch == ss.Promised && !m.outranks(from, ss)) {
		return fmt.Errorf("already voted at epoch %d", ss.Promised)
	}
	if x.Epoch <= ss.Record.Epoch || x.Base < ss.Record.Epoch {
		return fmt.Errorf("record is at epoch %d", ss.Record.Epoch)
	}
	v := x.Value
	if _, ok := s.backends[v.Primary]; !ok {
		return fmt.Errorf("unknown backend %q", v.Primary)
	}
	if v.Fenced.Has(v.Primary) && !m.cfg.knobs.ignoreFenced {
		return fmt.Errorf("primary %q is in its own fenced set", v.Primary)
	}
	// A fenced backend is never made primary, except by a forced value (an
	// earlier vote may have chosen it, and phase 1 must finish that) and
	// by an unfence, which keeps the primary as it is.
	fenced := ss.Record.Fenced
	switch x.Kind {
	case kindForced:
		return nil
	case kindUnfence:
		if v.Primary != ss.Record.Primary && x.Base == ss.Record.Epoch {
			return fmt.Errorf("unfence of %q moves the primary", x.From)
		}
		return nil
	}
	if fenced.Has(v.Primary) && !m.cfg.knobs.ignoreFenced {
		return fmt.Errorf("backend %q is fenced", v.Primary)
	}
	switch x.Kind {
	case kindFailover:
		if !m.ownDown(s, x.From) {
			return fmt.Errorf("own check does not see %q down", x.From)
		}
	case kindBootstrap:
		if s.cfg.RoleAware && !m.cfg.knobs.bootstrapByPriority {
			if ps := m.reportedPrimaries(s); len(ps) != 1 || ps[0] != v.Primary {
				return fmt.Errorf("own check does not see %q as the one backend reporting primary (primaries: %v)", v.Primary, ps)
			}
		} else if !m.ownUp(s, v.Primary) || m.bestUp(s) != v.Primary {
			return fmt.Errorf("own check does not see %q as the best backend up", v.Primary)
		}
	case kindFence:
		if !v.Fenced.Has(x.From) {
			return fmt.Errorf("fence of %q leaves it out of the fenced set", x.From)
		}
		if v.Primary != ss.Record.Primary && !m.ownUp(s, v.Primary) {
			return fmt.Errorf("own check does not see %q up", v.Primary)
		}
	case kindSwitchover, kindReaffirm, kindPromoteFailed:
		if !m.ownUp(s, v.Primary) {
			return fmt.Errorf("own check does not see %q up", v.Primary)
		}
		if x.Kind == kindPromoteFailed && v.Primary == x.From {
			return fmt.Errorf("move away from %q proposes %q again", x.From, v.Primary)
		}
		if x.Kind == kindPromoteFailed && s.cfg.RoleAware && m.ownPrimary(s, x.From) {
			return fmt.Errorf("move away from %q, whose promote failed, but it reports primary here", x.From)
		}
		if x.Kind == kindReaffirm && s.cfg.RoleAware && v.Primary != ss.Record.Primary {
			// Roles are facts: a re-affirmation moves the primary only to
			// the backend that reports primary, from one that does not.
			if !m.ownPrimary(s, v.Primary) {
				return fmt.Errorf("own check does not see %q reporting primary", v.Primary)
			}
			if m.ownPrimary(s, ss.Record.Primary) {
				return fmt.Errorf("the record's primary %q still reports primary here", ss.Record.Primary)
			}
		}
	}
	return nil
}

// outranks reports whether a proposal from `from` at our Promised epoch
// may take the vote we gave ourselves at that epoch. When two proxies
// propose one epoch at once each has voted for itself, and in a bare quorum
// both are refused until their random backoffs part them, round after
// round. Instead the lower name yields: it gives its vote to the higher one
// and drops its own proposal, which settles the duel in one round trip.
// Only a proposer's vote for itself moves, and only before it accepted its
// own value (phase 2 starts with that acceptance), so the proposal it drops
// never sent an accept and every vote at an epoch still counts toward at
// most one proposal that reaches phase 2. Votes given to other proxies never
// move: with two values accepted at one epoch, a later phase 1 could not
// tell which one may have been chosen.
func (m *Machine) outranks(from string, ss ServiceState) bool {
	if m.cfg.knobs.anyVoteYields && ss.PromisedTo != "" {
		return from > ss.PromisedTo && ss.Accepted.Epoch < ss.Promised
	}
	return ss.PromisedTo == m.cfg.Name && from > m.cfg.Name && ss.Accepted.Epoch < ss.Promised
}

// onAccept is phase 2 at a voter: only the proxy it voted for at this
// epoch (or an epoch above any vote) gets its value accepted.
func (m *Machine) onAccept(from string, x acceptMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	ss := m.svcState(x.Service)
	reply := acceptedMsg{Service: x.Service, Epoch: x.Epoch, Value: x.Value}
	_, known := s.backends[x.Value.Primary]
	switch {
	case m.recovering || !known || m.storeErr != nil:
	case ss.Accepted.Epoch == x.Epoch && ss.Accepted.Value == x.Value:
		reply.OK = true
	case x.Epoch > ss.Accepted.Epoch && x.Epoch > ss.Record.Epoch &&
		((x.Epoch == ss.Promised && from == ss.PromisedTo) || x.Epoch > ss.Promised):
		if x.Epoch > ss.Promised {
			ss.Promised, ss.PromisedTo, ss.PrevAccepted = x.Epoch, from, ss.Accepted
			s.votedAt = m.clock.Now()
		}
		ss.Accepted = Ballot{Epoch: x.Epoch, Value: x.Value}
		if err := m.persistVote(x.Service, ss); err != nil {
			m.log.Debug("cluster: saving acceptance", "service", x.Service, "epoch", x.Epoch, "err", err)
			return
		}
		reply.OK = true
	}
	reply.Promised, reply.Accepted, reply.Record = ss.Promised, ss.Accepted, ss.Record
	b, e := encodeAccepted(reply)
	m.send(from, b, e)
}

// ServiceStatus is one service's agreement state for /status.
type ServiceStatus struct {
	Service  string
	Record   Record
	Promised uint64 // highest epoch voted in (max_voted)
	Accepted Ballot
	// Routing is the backend this proxy forwards to now ("" for none) and
	// Lease how long its lease still runs (zero or negative: no lease).
	Routing string
	Lease   time.Duration
	// Proposing is the epoch of this proxy's proposal in flight (0: none)
	// and Votes how many votes it has.
	Proposing  uint64
	Votes      int
	Switchover string // pending operator switchover target
	Fencing    string // pending operator fence or unfence: "fence b", "unfence b"
	Decision   string // the last decision and why
	// PromoteFailed lists the backends that are no failover candidate on
	// this proxy now because a promote hook of theirs failed lately.
	PromoteFailed []string
	// Alerts say what needs an operator: "dual_primary: ...",
	// "no_primary: ...", "promote_held: ...".
	Alerts []string
	// Operation is the last operator request made on this proxy.
	Operation *Operation
}

// Status is a snapshot of the Machine for /status.
type Status struct {
	Node       string
	Peers      int
	Quorum     int
	Recovering bool
	Reachable  []string // peers heard from within LeaseTimeout
	// StoreError is set while state_dir cannot be written: the proxy then
	// neither votes, proposes nor routes.
	StoreError string
	Services   []ServiceStatus
	Counters   Counters
}

// Status returns a snapshot of the machine's state.
func (m *Machine) Status() Status {
	now := m.clock.Now()
	st := Status{Node: m.cfg.Name, Peers: m.n, Quorum: m.q, Recovering: m.recovering, Counters: m.counters}
	if m.storeErr != nil {
		st.StoreError = m.storeErr.Error()
	}
	for _, p := range m.others {
		if t, ok := m.heard[p]; ok && now-t < m.cfg.LeaseTimeout {
			st.Reachable = append(st.Reachable, p)
		}
	}
	for _, name := range m.order {
		s := m.svcs[name]
		ss := m.svcState(name)
		b, rem := m.Route(name)
		x := ServiceStatus{Service: name, Record: ss.Record, Promised: ss.Promised, Accepted: ss.Accepted,
			Routing: b, Lease: rem, Switchover: s.switchTo, Decision: s.decision}
		if op := s.fenceOp; op != nil {
			x.Fencing = m.fenceOpString(op)
		}
		if p := s.prop; p != nil {
			x.Proposing, x.Votes = p.epoch, len(p.promises)
		}
		for _, b := range s.cfg.Backends {
			if m.excluded(s, b.Name, now) {
				x.PromoteFailed = append(x.PromoteFailed, b.Name)
			}
		}
		x.Alerts = m.alerts(s, ss)
		if s.op != nil {
			op := *s.op
			x.Operation = &op
		}
		st.Services = append(st.Services, x)
	}
	return st
}

// alerts say what about a service needs an operator.
func (m *Machine) alerts(s *service, ss ServiceState) []string {
	var out []string
	if ps := m.reportedPrimaries(s); s.cfg.RoleAware && len(ps) >= 2 {
		out = append(out, fmt.Sprintf("dual_primary: %s all report primary", strings.Join(ps, ", ")))
	}
	if ss.Record.Primary == "" && !m.recovering && strings.HasPrefix(s.decision, "no primary yet: no backend reports primary") {
		out = append(out, "no_primary: "+strings.TrimPrefix(s.decision, "no primary yet: "))
	}
	if p := ss.Record.Primary; s.cfg.RoleAware && m.ownReplica(s, p) && m.clock.Now()-max(s.obsAt[p], s.recordAt) > m.cfg.LeaseTimeout {
		// Seen on every proxy, not only on the one that acts: the record's
		// primary is not promoted (yet), and writes wait for it.
		out = append(out, fmt.Sprintf("awaiting_promotion: %q, the primary since epoch %d, reports replica; the proxy that committed it promotes it (see its status)", p, ss.Record.Since))
	}
	if ss.Intent.Epoch == ss.Record.Epoch && !ss.Intent.Done && s.act.epoch == ss.Intent.Epoch && s.act.held != "" {
		out = append(out, "promote_held: "+s.act.held)
	}
	return out
}

// widestValue is a value as long as any the backends allow: a primary and
// every other backend fenced (whichever is primary, that is every name once).
func widestValue(bs []BackendConfig) Value {
	var w Value
	for _, b := range bs {
		if len(b.Name) > len(w.Primary) {
			w.Primary = b.Name
		}
	}
	for _, b := range bs {
		if b.Name != w.Primary {
			w.Fenced = w.Fenced.With(b.Name)
		}
	}
	return w
}

// wider is whichever of a and b takes more bytes on the wire.
func wider(a, b Value) Value {
	if valueSize(b) > valueSize(a) {
		return b
	}
	return a
}

// checkServiceFits rejects names the wire format cannot carry and services
// whose full observation would not fit one payload.
func checkServiceFits(sc ServiceConfig) error {
	if sc.Name == "" || len(sc.Name) > 255 {
		return fmt.Errorf("cluster: service name %q: want 1 to 255 bytes", sc.Name)
	}
	msg := obsMsg{Service: sc.Name}
	seen := map[string]bool{}
	for _, b := range sc.Backends {
		if b.Name == "" || len(b.Name) > 255 {
			return fmt.Errorf("cluster: service %q: backend name %q: want 1 to 255 bytes", sc.Name, b.Name)
		}
		if strings.Contains(b.Name, ",") {
			// the fenced set joins names with commas
			return fmt.Errorf("cluster: service %q: backend name %q: no commas", sc.Name, b.Name)
		}
		if seen[b.Name] {
			return fmt.Errorf("cluster: service %q: backend %q listed twice", sc.Name, b.Name)
		}
		seen[b.Name] = true
		msg.Entries = append(msg.Entries, obsEntry{Backend: b.Name})
	}
	if len(msg.Entries) > 255 {
		return fmt.Errorf("cluster: service %q has %d backends, at most 255", sc.Name, len(msg.Entries))
	}
	if _, err := encodeObs(msg); err != nil {
		return fmt.Errorf("cluster: service %q: its backends' names are too long for one gossip packet: %w", sc.Name, err)
	}
	w := widestValue(sc.Backends)
	wb := Ballot{Epoch: 1, Value: w}
	if _, err := encodeVote(voteMsg{Service: sc.Name, Value: w, Prev: wb, Accepted: wb, Record: Record{Value: w}}); err != nil {
		return fmt.Errorf("cluster: service %q: its backends' names are too long for a vote (which may name them all four times): %w", sc.Name, err)
	}
	if _, err := encodeLeaseAck(leaseAckMsg{Entries: []leaseAckEntry{{Service: sc.Name, Record: Record{Value: w}, Accepted: wb}}}); err != nil {
		return fmt.Errorf("cluster: service %q: its backends' names are too long for a lease answer in one packet (which may name them all twice): %w", sc.Name, err)
	}
	return nil
}
