package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sync"
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

// loop checks one target until its context is cancelled.
type loop struct {
	target  Target
	spec    Spec // target.Spec with defaults
	checker Checker
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	poke    chan chan State // CheckNow: check at once and answer here

	// Guarded by Monitor.mu.
	state    State
	rf       riseFall
	position int64
}

// Monitor runs one check loop per target and keeps each target's State.
type Monitor struct {
	logger   *slog.Logger
	onChange func(State)
	ctx      context.Context
	cancel   context.CancelFunc
	setMu    sync.Mutex // serialises Set
	wg       sync.WaitGroup

	mu     sync.Mutex
	loops  map[targetKey]*loop
	closed bool
}

// NewMonitor returns a Monitor with no targets. onChange, if not nil, is called after a check
// that changed a target's Status, Role, LagBytes, Lag or LastError: at most once per check,
// from that target's loop goroutine (so calls for different targets may run concurrently),
// without any Monitor lock held. It must not block long, nor call Set or Close.
func NewMonitor(logger *slog.Logger, onChange func(State)) *Monitor {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if onChange == nil {
		onChange = func(State) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Monitor{logger: logger, onChange: onChange, ctx: ctx, cancel: cancel,
		loops: map[targetKey]*loop{}}
}

// Set makes targets the set of watched backends, as on a config reload. A target whose
// service, backend, address and spec are unchanged keeps its loop and state. A target whose
// spec changed but whose address and kind did not is restarted and keeps its Status (its
// streak restarts). Others start as StatusUnknown. Loops of removed or changed targets are
// stopped and waited for before Set returns. A target whose checker cannot be built is
// skipped and reported in the returned error; the others are still applied.
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
	var fresh []*loop
	for _, t := range targets {
		k := targetKey{t.Service, t.Backend}
		if _, dup := next[k]; dup {
			errs = append(errs, fmt.Errorf("service %q backend %q: listed twice", t.Service, t.Backend))
			continue
		}
		old := m.loops[k]
		if old != nil && sameTarget(old.target, t) {
			next[k] = old
			continue
		}
		checker, err := NewChecker(t.Spec, t.Address)
		if err != nil {
			errs = append(errs, fmt.Errorf("service %q backend %q: %w", t.Service, t.Backend, err))
			continue
		}
		l := &loop{target: t, spec: t.Spec.withDefaults(), checker: checker, done: make(chan struct{}),
			poke: make(chan chan State), position: -1}
		l.ctx, l.cancel = context.WithCancel(m.ctx)
		l.state = State{Service: t.Service, Backend: t.Backend, Address: t.Address,
			LagBytes: -1, Lag: -1}
		if old != nil && old.target.Address == t.Address && old.spec.Kind == l.spec.Kind {
			// Cancelled below under the same lock, so old.state is final.
			l.state = old.state
			l.rf = riseFall{status: old.rf.status}
			l.position = old.position
		}
		next[k] = l
		fresh = append(fresh, l)
	}
	var stopped []*loop
	for k, old := range m.loops {
		if next[k] != old {
			old.cancel()
			stopped = append(stopped, old)
		}
	}
	m.loops = next
	m.mu.Unlock()

	// Wait for replaced loops first, so their last onChange cannot follow the new loop's first.
	for _, l := range stopped {
		<-l.done
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range fresh {
		if m.closed {
			l.cancel()
			l.checker.Close()
			continue
		}
		m.wg.Add(1)
		go m.run(l)
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

// CheckNow checks one backend at once, outside its interval, and returns
// its state after that check (the check also counts toward rise and fall,
// and onChange runs as after any check). Actions on a database use it: a
// promote is judged by the role the backend reports right after it, not
// at the next interval.
func (m *Monitor) CheckNow(ctx context.Context, service, backend string) (State, error) {
	m.mu.Lock()
	l := m.loops[targetKey{service, backend}]
	m.mu.Unlock()
	if l == nil {
		return State{}, fmt.Errorf("service %q backend %q: not checked", service, backend)
	}
	reply := make(chan State, 1)
	select {
	case l.poke <- reply:
	case <-l.done:
		return State{}, fmt.Errorf("service %q backend %q: checks stopped", service, backend)
	case <-ctx.Done():
		return State{}, ctx.Err()
	}
	select {
	case st := <-reply:
		return st, nil
	case <-l.done:
		return State{}, fmt.Errorf("service %q backend %q: checks stopped", service, backend)
	case <-ctx.Done():
		return State{}, ctx.Err()
	}
}

// Close stops every loop, cancelling checks in flight, and waits for them. It is idempotent.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// run is the check loop of one target: check at once, then after Interval, FastInterval while
// a streak is in progress, DownInterval while down.
func (m *Monitor) run(l *loop) {
	defer m.wg.Done()
	defer close(l.done)
	defer l.checker.Close()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		var reply chan State
		select {
		case <-l.ctx.Done():
			return
		case <-timer.C:
		case reply = <-l.poke:
			timer.Stop()
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(l.ctx, l.spec.Timeout)
		res := l.checker.Check(ctx)
		cancel()
		next, st, changed, ok := m.apply(l, res)
		if !ok {
			return
		}
		if changed {
			m.onChange(st)
		}
		if reply != nil {
			reply <- st
		}
		timer.Reset(max(0, next-time.Since(start)))
	}
}

// apply records res in l's state. It returns the wait before the next check, a copy of the
// state, whether it changed in a way onChange reports, and false if the loop was stopped.
func (m *Monitor) apply(l *loop, res Result) (time.Duration, State, bool, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l.ctx.Err() != nil {
		// Stopped while checking: the result is the cancellation's, not the backend's.
		return 0, State{}, false, false
	}
	st := &l.state
	prev := *st
	now := time.Now()
	st.Checks++
	st.LastCheck = now
	st.Latency = res.Latency
	if res.Up {
		st.LastError = ""
		st.Role, st.Lag = res.Role, res.Lag
		l.position = res.Position
		st.LagBytes = res.LagBytes
		if res.Role == RoleReplica {
			st.LagBytes = m.replicaLagLocked(l)
		}
	} else {
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
		attrs := []any{"service", st.Service, "backend", st.Backend, "address", st.Address,
			"reason", st.Reason}
		if st.Status == StatusUp {
			m.logger.Info("backend up", append(attrs, "role", st.Role.String())...)
		} else {
			st.Role, st.LagBytes, st.Lag, l.position = RoleUnknown, -1, -1, -1
			m.logger.Warn("backend down", attrs...)
		}
	}
	changed := prev.Status != st.Status || prev.Role != st.Role || prev.LagBytes != st.LagBytes ||
		prev.Lag != st.Lag || prev.LastError != st.LastError
	next := l.spec.Interval
	switch {
	case l.rf.changing():
		next = l.spec.FastInterval
	case st.Status == StatusDown:
		next = l.spec.DownInterval
	}
	return next, *st, changed, true
}

// replicaLagLocked returns how many bytes replica l is behind the one primary of its service
// that is up, or -1 when that is unknown.
func (m *Monitor) replicaLagLocked(l *loop) int64 {
	if l.position < 0 {
		return -1
	}
	primary := int64(-1)
	for _, o := range m.loops {
		if o == l || o.target.Service != l.target.Service || o.state.Status != StatusUp ||
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
