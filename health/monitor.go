package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Status is the rise/fall state of a backend.
type Status int

// Statuses. A backend is StatusUnknown until its first check completes.
const (
	StatusUnknown Status = iota
	StatusUp
	StatusDown
)

// String returns "unknown", "up" or "down".
func (s Status) String() string {
	switch s {
	case StatusUp:
		return "up"
	case StatusDown:
		return "down"
	default:
		return "unknown"
	}
}

// Target is one backend of one service to watch.
type Target struct {
	Service, Backend, Address string
	Spec                      Spec
}

// State is what the Monitor knows about one backend.
type State struct {
	Service, Backend, Address string
	Status                    Status
	// Role, LagBytes and Lag come from the last successful check; they are reset to unknown
	// (RoleUnknown, -1, -1) when the backend goes down. LagBytes of a replica is computed
	// against the Position of the one backend of the same service that is up and primary;
	// it is -1 when there is none or more than one.
	Role     Role
	LagBytes int64
	Lag      time.Duration
	// Latency is how long the last check took.
	Latency time.Duration
	// LastError is the error of the last check, empty after a success.
	LastError string
	// LastCheck is when the last check completed; LastChange when Status last changed.
	LastCheck, LastChange time.Time
	// Reason says why Status last changed.
	Reason string
	// Checks and Failures count all checks and the failed ones since the target was added.
	Checks, Failures uint64
	// Failing is the streak of consecutive failed checks of a backend not yet down (Fall of
	// them bring it down), Rising that of successes of one not yet up (Rise bring it up):
	// a change under way, which Status does not show until it completes. Zero otherwise.
	Failing, Rising int
	// Rise and Fall are the target's thresholds (the spec's, defaults applied).
	Rise, Fall int
	// Position is how far this replica holds the primary's log (see Result.Received), -1
	// when its check reports none. PositionFresh: it was read by a check that started after
	// the first failed check of its service's primary, whose checks have failed since: the
	// replicas' positions are then frozen and compare, and a failover ranks them. While the
	// primary answers, positions are never fresh (each is read at its own moment) and their
	// changes do not call onChange.
	Position      int64
	PositionFresh bool
	// ReplicasUnread, on a primary whose checks fail: a replica of its
	// service that is up has not been checked since the first of those
	// failures (its nudged check is under way), so no position is fresh
	// yet and a failover must wait for it rather than rank stale ones.
	ReplicasUnread bool
	// SyncStandbys is what this backend, at its last successful check as a primary, reported
	// as its synchronous standbys. It outlives the backend going down (rpo = "zero" fails over
	// only to one of them) and is cleared when it answers as a replica.
	SyncStandbys []string
	// Upstream is what a replica's last successful check said it replicates from (see
	// Result.Upstream).
	Upstream string

	// CheckAddress is where its checks connect when that is not Address (Spec.Address or
	// Spec.Port); empty otherwise.
	CheckAddress string
}

// riseFall is the consecutive rise/fall counter of one backend. A success resets the failure
// streak and a failure resets the success streak.
type riseFall struct {
	status   Status
	ups, dns int // current streak of successes while not up, of failures while not down
}

// observe records one check result and reports whether status flipped. The first result
// decides at once (from StatusUnknown), so the proxy learns the state quickly at start; after
// that, rise consecutive successes bring a backend up and fall consecutive failures bring it
// down.
func (r *riseFall) observe(up bool, rise, fall int) bool {
	if up {
		r.dns = 0
		if r.status == StatusUp {
			return false
		}
		r.ups++
		if r.status == StatusUnknown || r.ups >= rise {
			r.status, r.ups = StatusUp, 0
			return true
		}
		return false
	}
	r.ups = 0
	if r.status == StatusDown {
		return false
	}
	r.dns++
	if r.status == StatusUnknown || r.dns >= fall {
		r.status, r.dns = StatusDown, 0
		return true
	}
	return false
}

// changing reports whether a streak toward a new status is in progress.
func (r *riseFall) changing() bool { return r.ups > 0 || r.dns > 0 }

type targetKey struct{ service, backend string }

// loop is one target: its state, and the probe that checks it.
type loop struct {
	target Target
	spec   Spec // target.Spec with defaults
	probe  *probe

	// Guarded by Monitor.mu.
	state    State
	rf       riseFall
	position int64
	// lastStart: when the last check that completed for this target began.
	lastStart time.Time
	// expect/expectUntil: the role this target is about to take (see
	// Expect); until then, or the deadline, it is checked at FastInterval.
	expect      Role
	expectUntil time.Time
	// primaryOK: the last successful check reported primary; failSince:
	// when the first failed check since the last success started (zero
	// after a success).
	primaryOK bool
	failSince time.Time
}

// probe checks one address one way, for every target that checks it so:
// services that share a backend share its check (at 1,000 services over
// two backends, two checks per interval instead of 2,000). Each target
// keeps its own state and rise/fall streak, fed by the shared results.
type probe struct {
	key     string
	address string
	spec    Spec
	checker Checker
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	poke    chan chan struct{} // CheckNow: check at once, then close the channel
	nudge   chan struct{}      // check soon, no answer (buffered: a nudge during a check is kept)

	// targets is guarded by Monitor.mu.
	targets []*loop
	// emit is held while the probe tells onChange, so that Set can wait
	// for a call about a target it just removed (see Set).
	emit sync.Mutex
}

// probeKey is what makes two targets' checks the same: the address checked
// and the whole spec (credentials included, so that two users never share).
func probeKey(t Target) string {
	type plain Spec // no String method: every field, the password too
	addr, spec := t.Spec.checked(t.Address)
	return fmt.Sprintf("%q|%#v", addr, plain(spec.withDefaults()))
}

// Monitor runs one check loop per distinct check (address and spec) and
// keeps each target's State.
type Monitor struct {
	logger   *slog.Logger
	onChange func(State)
	ctx      context.Context
	cancel   context.CancelFunc
	setMu    sync.Mutex // serialises Set
	wg       sync.WaitGroup

	mu     sync.Mutex
	loops  map[targetKey]*loop
	bySvc  map[string][]*loop // the loops of each service
	probes map[string]*probe
	closed bool

	observe atomic.Pointer[func(address, kind string, took time.Duration)]
}

// ObserveChecks has f called after every check with its address, kind
// and duration (for a latency histogram): once per check, however many
// targets share it. f must be quick; nil stops the calls.
func (m *Monitor) ObserveChecks(f func(address, kind string, took time.Duration)) {
	if f == nil {
		m.observe.Store(nil)
		return
	}
	m.observe.Store(&f)
}

// NewMonitor returns a Monitor with no targets. onChange, if not nil, is called after a check
// that changed a target's Status, Role, LagBytes, Lag or LastError, or began or ended a
// rising streak: at most once per check
// and target, from the goroutine of that target's check (so calls for different targets may
// run concurrently), without any Monitor lock held. It must not block long, nor call Set or
// Close.
func NewMonitor(logger *slog.Logger, onChange func(State)) *Monitor {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if onChange == nil {
		onChange = func(State) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Monitor{logger: logger, onChange: onChange, ctx: ctx, cancel: cancel,
		loops: map[targetKey]*loop{}, probes: map[string]*probe{}}
}

// Set makes targets the set of watched backends, as on a config reload. A target whose
// service, backend, address and spec are unchanged keeps its state. A target whose spec
// changed but whose address and kind did not keeps its Status (its streak restarts). Others
// start as StatusUnknown. Targets that check the same address the same way share one check.
// Checks no target needs any more are stopped and waited for, and no onChange about a
// removed or changed target comes after Set returns. A target whose checker cannot be built
// is skipped and reported in the returned error; the others are still applied.
func (m *Monitor) Set(targets []Target) error {
	m.setMu.Lock()
	defer m.setMu.Unlock()

	var errs []error
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errors.New("health monitor is closed")
	}
	next := make(map[targetKey]*loop, len(targets))
	nextProbes := map[string]*probe{}
	members := map[*probe][]*loop{}
	var fresh []*probe
	for _, t := range targets {
		k := targetKey{t.Service, t.Backend}
		if _, dup := next[k]; dup {
			errs = append(errs, fmt.Errorf("service %q backend %q: listed twice", t.Service, t.Backend))
			continue
		}
		key := probeKey(t)
		p := nextProbes[key]
		if p == nil {
			p = m.probes[key]
		}
		if p == nil {
			checker, err := NewChecker(t.Spec, t.Address)
			if err != nil {
				errs = append(errs, fmt.Errorf("service %q backend %q: %w", t.Service, t.Backend, err))
				continue
			}
			p = &probe{key: key, address: t.Spec.CheckAddress(t.Address), spec: t.Spec.withDefaults(), checker: checker, done: make(chan struct{}),
				poke: make(chan chan struct{}), nudge: make(chan struct{}, 1)}
			p.ctx, p.cancel = context.WithCancel(m.ctx)
			fresh = append(fresh, p)
		}
		nextProbes[key] = p
		old := m.loops[k]
		l := old
		if old == nil || !sameTarget(old.target, t) {
			l = &loop{target: t, spec: t.Spec.withDefaults(), position: -1}
			l.state = State{Service: t.Service, Backend: t.Backend, Address: t.Address,
				LagBytes: -1, Lag: -1, Position: -1}
			if a := t.Spec.CheckAddress(t.Address); a != t.Address {
				l.state.CheckAddress = a
			}
			if old != nil && old.target.Address == t.Address && old.state.CheckAddress == l.state.CheckAddress &&
				old.spec.Kind == l.spec.Kind {
				l.state = old.state
				l.rf = riseFall{status: old.rf.status}
				l.state.Failing, l.state.Rising = 0, 0 // the streak restarts
				l.position = old.position
			}
		}
		l.state.Rise, l.state.Fall = l.spec.Rise, l.spec.Fall
		l.probe = p
		next[k] = l
		members[p] = append(members[p], l)
	}
	var stopped, kept []*probe
	for key, p := range m.probes {
		if nextProbes[key] != p {
			p.cancel()
			stopped = append(stopped, p)
		} else {
			kept = append(kept, p)
		}
	}
	for _, p := range nextProbes {
		p.targets = members[p]
	}
	m.loops, m.probes = next, nextProbes
	m.bySvc = make(map[string][]*loop)
	for _, l := range next {
		m.bySvc[l.target.Service] = append(m.bySvc[l.target.Service], l)
	}
	m.mu.Unlock()

	// Stopped checks first, then a barrier on the kept ones: an onChange
	// about a target removed above is either over or will see it gone.
	for _, p := range stopped {
		<-p.done
	}
	for _, p := range kept {
		p.emit.Lock()
		//lint:ignore SA2001 an empty critical section is the barrier
		p.emit.Unlock()
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range fresh {
		if m.closed {
			p.cancel()
			p.checker.Close()
			continue
		}
		m.wg.Add(1)
		go m.run(p)
	}
	return errors.Join(errs...)
}

// sameTarget reports whether a and b describe the same check.
func sameTarget(a, b Target) bool {
	return reflect.DeepEqual(a, b)
}

// States returns the state of every target, sorted by service and backend.
func (m *Monitor) States() []State {
	m.mu.Lock()
	out := make([]State, 0, len(m.loops))
	for _, l := range m.loops {
		out = append(out, l.state)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b State) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Backend, b.Backend))
	})
	return out
}

// Checks returns how many distinct checks run (targets that check the
// same address the same way share one).
func (m *Monitor) Checks() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.probes)
}

// CheckNow checks one backend at once, outside its interval, and returns
// its state after that check (the check also counts toward rise and fall,
// for every target that shares it, and onChange runs as after any check).
// Actions on a database use it: a promote is judged by the role the
// backend reports right after it, not at the next interval.
func (m *Monitor) CheckNow(ctx context.Context, service, backend string) (State, error) {
	k := targetKey{service, backend}
	m.mu.Lock()
	l := m.loops[k]
	m.mu.Unlock()
	if l == nil {
		return State{}, fmt.Errorf("service %q backend %q: not checked", service, backend)
	}
	p := l.probe
	reply := make(chan struct{})
	select {
	case p.poke <- reply:
	case <-p.done:
		return State{}, fmt.Errorf("service %q backend %q: checks stopped", service, backend)
	case <-ctx.Done():
		return State{}, ctx.Err()
	}
	select {
	case <-reply:
	case <-p.done:
		return State{}, fmt.Errorf("service %q backend %q: checks stopped", service, backend)
	case <-ctx.Done():
		return State{}, ctx.Err()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loops[k] != l {
		return State{}, fmt.Errorf("service %q backend %q: its check changed meanwhile", service, backend)
	}
	return l.state, nil
}

// Expect says that backend of service is about to report role (a standby
// another proxy is promoting): it is checked at once, then at
// FastInterval until it reports role or within has passed, so that the
// proxy routes to a new primary a fast interval after its promotion, not
// up to an interval later.
func (m *Monitor) Expect(service, backend string, role Role, within time.Duration) {
	m.mu.Lock()
	l := m.loops[targetKey{service, backend}]
	if l == nil || l.state.Role == role {
		m.mu.Unlock()
		return
	}
	l.expect, l.expectUntil = role, time.Now().Add(within)
	p := l.probe
	m.mu.Unlock()
	select {
	case p.nudge <- struct{}{}:
	default:
	}
}

// Close stops every check, cancelling checks in flight, and waits for them. It is idempotent.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// run is the check loop of one probe: check at once, then after Interval, FastInterval while
// a streak of one of its targets is in progress, DownInterval while all are down.
func (m *Monitor) run(p *probe) {
	defer m.wg.Done()
	defer close(p.done)
	defer p.checker.Close()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		var reply chan struct{}
		select {
		case <-p.ctx.Done():
			return
		case <-timer.C:
		case reply = <-p.poke:
			timer.Stop()
		case <-p.nudge:
			timer.Stop()
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(p.ctx, p.spec.Timeout)
		res := p.checker.Check(ctx)
		cancel()
		if f := m.observe.Load(); f != nil {
			(*f)(p.address, p.spec.Kind, time.Since(start))
		}
		next, changed, nudge, ok := m.apply(p, res, start)
		if !ok {
			return
		}
		for _, q := range nudge {
			select {
			case q.nudge <- struct{}{}:
			default:
			}
		}
		if len(changed) > 0 {
			p.emit.Lock()
			for _, c := range changed {
				m.mu.Lock()
				current := m.loops[targetKey{c.Service, c.Backend}] == c.l
				m.mu.Unlock()
				if current {
					m.onChange(c.State)
				}
			}
			p.emit.Unlock()
		}
		if reply != nil {
			close(reply)
		}
		timer.Reset(max(0, next-time.Since(start)))
	}
}

// changedState is a target's state after a check that changed it.
type changedState struct {
	State
	l *loop
}

// apply records res, from a check started at start, in the state of every target of p. It
// returns the wait before the next check, the states that changed in a way onChange reports,
// the probes to nudge, and false if p was stopped. A primary's first failed check nudges the
// checks of its service's replicas, so that their positions are read again after it: by the
// time the primary is down (fall checks later) a failover can rank them.
func (m *Monitor) apply(p *probe, res Result, start time.Time) (time.Duration, []changedState, []*probe, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.ctx.Err() != nil {
		// Stopped while checking: the result is the cancellation's, not the backend's.
		return 0, nil, nil, false
	}
	var changed []changedState
	var ups, downs []*loop
	var nudge []*probe
	anyChanging, allDown := false, true
	now := time.Now()
	for _, l := range p.targets {
		was := l.state.Status
		if !res.Up && l.failSince.IsZero() && l.primaryOK {
			for _, o := range m.bySvc[l.target.Service] {
				if o != l && o.state.Role == RoleReplica && o.probe != p && !slices.Contains(nudge, o.probe) {
					nudge = append(nudge, o.probe)
				}
			}
		}
		st, ch := m.applyOne(l, res, now, start)
		if ch {
			changed = append(changed, changedState{st, l})
		}
		if st.Status != was {
			if st.Status == StatusUp {
				ups = append(ups, l)
			} else {
				downs = append(downs, l)
			}
		}
		if !l.expectUntil.IsZero() && (st.Role == l.expect || now.After(l.expectUntil)) {
			l.expect, l.expectUntil = RoleUnknown, time.Time{}
		}
		anyChanging = anyChanging || l.rf.changing() || !l.expectUntil.IsZero()
		allDown = allDown && st.Status == StatusDown
		// The read a failing primary waited for has come (fresh or not):
		// check that primary now, so its ReplicasUnread clears from its
		// own check (its changes are told in order by its own goroutine)
		// rather than at its next one, a down_interval away.
		for _, o := range m.bySvc[l.target.Service] {
			if o != l && o.probe != p && o.state.ReplicasUnread && !m.replicasUnreadLocked(o) && !slices.Contains(nudge, o.probe) {
				nudge = append(nudge, o.probe)
			}
		}
	}
	m.logTransitions(ups, "backend up", slog.LevelInfo)
	m.logTransitions(downs, "backend down", slog.LevelWarn)
	next := p.spec.Interval
	switch {
	case anyChanging:
		next = p.spec.FastInterval
	case allDown:
		next = p.spec.DownInterval
	}
	return next, changed, nudge, true
}

// summaryMax is how many targets one line about a shared check's change
// names; the rest are counted (and each has its own line at debug level).
const summaryMax = 5

// logTransitions logs that the targets of one check went up or down: one
// line per target for a few, one line for all beyond (a host that fails
// under 300 services is one line, not 300).
func (m *Monitor) logTransitions(ls []*loop, msg string, level slog.Level) {
	if len(ls) == 0 {
		return
	}
	one := func(l *loop, level slog.Level) {
		st := l.state
		attrs := []any{"service", st.Service, "backend", st.Backend, "address", st.Address, "reason", st.Reason}
		if st.Status == StatusUp {
			attrs = append(attrs, "role", st.Role.String())
		}
		m.logger.Log(context.Background(), level, msg, attrs...)
	}
	if len(ls) <= summaryMax {
		for _, l := range ls {
			one(l, level)
		}
		return
	}
	names := make([]string, 0, summaryMax)
	for _, l := range ls[:summaryMax] {
		names = append(names, l.target.Service+"/"+l.target.Backend)
	}
	st := ls[0].state
	attrs := []any{"services", len(ls), "address", st.Address, "reason", st.Reason,
		"targets", fmt.Sprintf("%s and %d more", strings.Join(names, ", "), len(ls)-summaryMax)}
	if st.Status == StatusUp {
		attrs = append(attrs, "role", st.Role.String())
	}
	m.logger.Log(context.Background(), level, msg, attrs...)
	for _, l := range ls {
		one(l, slog.LevelDebug)
	}
}

// applyOne records res in l's state and reports the state and whether it changed in a way
// onChange reports. Called with m.mu held.
func (m *Monitor) applyOne(l *loop, res Result, now, start time.Time) (State, bool) {
	st := &l.state
	prev := *st
	st.Checks++
	st.LastCheck = now
	l.lastStart = start
	st.Latency = res.Latency
	if res.Up {
		st.LastError = ""
		st.Role, st.Lag, st.Upstream = res.Role, res.Lag, res.Upstream
		l.position = res.Position
		l.primaryOK, l.failSince = res.Role == RolePrimary, time.Time{}
		st.LagBytes = res.LagBytes
		st.Position, st.PositionFresh = -1, false
		switch res.Role {
		case RolePrimary:
			if !slices.Equal(st.SyncStandbys, res.SyncStandbys) {
				st.SyncStandbys = slices.Clone(res.SyncStandbys)
			}
		default:
			st.SyncStandbys = nil
		}
		if res.Role == RoleReplica {
			st.LagBytes = m.replicaLagLocked(l)
			if res.Position >= 0 {
				st.Position = max(res.Position, res.Received)
				st.PositionFresh = m.primarySilentLocked(l.target.Service, start)
			}
		}
	} else {
		if l.failSince.IsZero() {
			l.failSince = start
		}
		st.Failures++
		st.LastError = "check failed"
		if res.Err != nil {
			st.LastError = res.Err.Error()
		}
	}
	if l.rf.observe(res.Up, l.spec.Rise, l.spec.Fall) {
		st.Status = l.rf.status
		st.LastChange = now
		st.Reason = reason(prev.Status, st.Status, l.spec, st.LastError)
		if st.Status != StatusUp {
			st.Role, st.LagBytes, st.Lag, l.position = RoleUnknown, -1, -1, -1
		}
	}
	// A failing streak is not part of changed: it moves no traffic (status
	// pages read it). A rising one's start and end are: a service with no
	// target waits for a better-ranked backend that is rising.
	st.Failing, st.Rising = l.rf.dns, l.rf.ups
	if st.Status != StatusUp {
		st.Position, st.PositionFresh, st.Upstream = -1, false, ""
	}
	st.ReplicasUnread = !res.Up && l.primaryOK && m.replicasUnreadLocked(l)
	changed := prev.ReplicasUnread != st.ReplicasUnread || prev.Status != st.Status || prev.Role != st.Role || prev.LagBytes != st.LagBytes ||
		prev.Lag != st.Lag || prev.LastError != st.LastError || prev.PositionFresh != st.PositionFresh ||
		(st.PositionFresh && prev.Position != st.Position) || !slices.Equal(prev.SyncStandbys, st.SyncStandbys) ||
		prev.Upstream != st.Upstream || (prev.Rising > 0) != (st.Rising > 0)
	return *st, changed
}

// replicasUnreadLocked reports whether a replica of primary l's service
// that is up has not completed a check begun after l's first failed check.
func (m *Monitor) replicasUnreadLocked(l *loop) bool {
	for _, o := range m.bySvc[l.target.Service] {
		if o != l && o.state.Status == StatusUp && o.state.Role == RoleReplica && !o.lastStart.After(l.failSince) {
			return true
		}
	}
	return false
}

// primarySilentLocked reports whether a check of service started at start began after the
// first failed check of a backend whose last success reported primary, with no backend of
// the service answering as primary since: then the primary has been silent since before that
// check, and what it read of a replica is frozen.
func (m *Monitor) primarySilentLocked(service string, start time.Time) bool {
	silent := false
	for _, o := range m.bySvc[service] {
		if !o.primaryOK {
			continue
		}
		if o.failSince.IsZero() || !start.After(o.failSince) {
			return false // a primary answers, or had not failed yet when this check began
		}
		silent = true
	}
	return silent
}

// replicaLagLocked returns how many bytes replica l is behind the one primary of its service
// that is up, or -1 when that is unknown.
func (m *Monitor) replicaLagLocked(l *loop) int64 {
	if l.position < 0 {
		return -1
	}
	primary := int64(-1)
	for _, o := range m.bySvc[l.target.Service] {
		if o == l || o.state.Status != StatusUp ||
			o.state.Role != RolePrimary || o.position < 0 {
			continue
		}
		if primary >= 0 {
			return -1 // two primaries: no single reference
		}
		primary = o.position
	}
	if primary < 0 {
		return -1
	}
	// The primary was sampled at its own last check, possibly before this replica's.
	return max(0, primary-l.position)
}

// reason says why a backend went from one status to another.
func reason(from, to Status, spec Spec, lastErr string) string {
	switch {
	case from == StatusUnknown && to == StatusUp:
		return "first check succeeded"
	case from == StatusUnknown:
		return "first check failed: " + lastErr
	case to == StatusUp:
		return fmt.Sprintf("%d consecutive checks succeeded", spec.Rise)
	default:
		return fmt.Sprintf("%d consecutive checks failed: %s", spec.Fall, lastErr)
	}
}
