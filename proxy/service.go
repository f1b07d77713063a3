package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// backend is one backend of a service.
type backend struct {
	cfg Backend  // guarded by service.mu
	h   Health   // guarded by service.mu
	wrr wrrState // guarded by service.mu
	// draining: an operator took it out of new connections; its sessions
	// run on. Guarded by service.mu; kept across reloads, not restarts.
	draining bool
	// fenced: no failover picks it and it is not the target (an active-
	// passive service without roles fences the primary it failed over
	// from; an operator fences and unfences). Guarded by service.mu; kept
	// across reloads, not restarts.
	fenced bool

	max      atomic.Int64                 // MaxConns; <= 0 no limit
	resolved atomic.Pointer[resolvedAddr] // the data plane's cached dial address

	active                               atomic.Int64
	sessions                             atomic.Uint64
	bytesIn, bytesOut, dialFail, refused atomic.Uint64
	// leaseLost counts sessions the data plane closed itself because the
	// route's lease ran out (the route change that follows finds them gone).
	leaseLost atomic.Uint64

	smu    sync.Mutex
	gen    uint64 // bumped by every close-all; a dial begun before it is void
	closed bool   // removed from its service
	live   map[*session]struct{}
}

func newBackend(cfg Backend) *backend {
	b := &backend{cfg: cfg, h: Health{LagBytes: -1, Lag: -1, Position: -1}, live: map[*session]struct{}{}}
	b.max.Store(int64(cfg.MaxConns))
	return b
}

// reserve takes a connection slot below MaxConns.
func (b *backend) reserve() bool {
	max := b.max.Load()
	if b.active.Add(1) > max && max > 0 {
		b.active.Add(-1)
		return false
	}
	return true
}

func (b *backend) generation() uint64 {
	b.smu.Lock()
	defer b.smu.Unlock()
	return b.gen
}

// addSession registers s unless the backend was closed or fenced since gen.
func (b *backend) addSession(s *session, gen uint64, closing *atomic.Bool) bool {
	b.smu.Lock()
	defer b.smu.Unlock()
	if b.closed || b.gen != gen || closing.Load() {
		return false
	}
	b.live[s] = struct{}{}
	return true
}

func (b *backend) removeSession(s *session) {
	b.smu.Lock()
	delete(b.live, s)
	b.smu.Unlock()
	b.active.Add(-1)
}

// closeSessions closes every session to b; remove also bars new ones.
func (b *backend) closeSessions(remove, reset bool, why string) int {
	b.smu.Lock()
	b.gen++
	if remove {
		b.closed = true
	}
	ss := make([]*session, 0, len(b.live))
	for s := range b.live {
		ss = append(ss, s)
	}
	b.smu.Unlock()
	for _, s := range ss {
		s.abort(reset, why)
	}
	return len(ss)
}

// service is one listener and its backends.
type service struct {
	p    *Proxy
	name string

	mu        sync.Mutex
	cfg       ServiceConfig // Backends not kept here; see list
	list      []*backend    // config order
	byName    map[string]*backend
	target    *backend
	pending   string
	from      string // with pending: the target it replaced
	hadTarget bool   // a target was chosen since start
	reason    string
	since     time.Time
	primaries []string
	route     string // External: target set by SetRoute
	lease     Lease
	changed   chan struct{} // closed and replaced on every state change
	ln        *listener
	lnErr     error

	ctx      context.Context // cancelled when the service is removed or the proxy closes
	cancel   context.CancelFunc
	maxConns atomic.Int64
	// acceptProxy: networks whose connections start with a PROXY header.
	acceptProxy atomic.Pointer[[]netip.Prefix]
	version     atomic.Uint64 // bumped on every state change (held connections look again)
	socketErrs  logEvery      // failed backend sockets (EMFILE), logged once a second
	conns       atomic.Int64  // open client connections, held ones included
	held        atomic.Int64
	accepted    atomic.Uint64
	refused     atomic.Uint64
}

func (s *service) release() {
	s.conns.Add(-1)
	s.p.active.Add(-1)
}

// bump wakes held connections; call with s.mu held.
func (s *service) bump() {
	close(s.changed)
	s.changed = make(chan struct{})
	s.wakeHeld()
}

// dialTarget is a backend with its address as planned.
type dialTarget struct {
	b     *backend
	name  string
	addr  string
	proxy ProxyVersion
}

// plan is what a new connection needs, read under the service lock.
type plan struct {
	try     []dialTarget
	lease   Lease
	idle    time.Duration
	connect time.Duration
	hold    time.Duration
	poll    bool // External: the lease's renewal is not signalled, look again
}

// plan returns the backends to dial, in order; none means "hold".
func (s *service) plan() (plan, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &s.cfg
	pl := plan{idle: c.IdleTimeout, connect: c.connectTimeout(), hold: c.switchHold(), poll: c.External}
	if c.balanced() {
		var el []*backend
		for _, b := range s.list {
			if balancedEligible(c, b.h) && !b.draining {
				el = append(el, b)
			}
		}
		for _, b := range orderBalanced(c.Balance, el) {
			pl.try = append(pl.try, dialTarget{b: b, name: b.cfg.Name, addr: b.cfg.Address, proxy: b.cfg.SendProxy})
		}
		return pl, s.changed
	}
	if !s.usable() {
		return pl, s.changed
	}
	pl.try = []dialTarget{{b: s.target, name: s.target.cfg.Name, addr: s.target.cfg.Address, proxy: s.target.cfg.SendProxy}}
	if c.External {
		pl.lease = s.lease
	}
	return pl, s.changed
}

// usable reports whether the active-passive target may take a new
// connection now; call with s.mu held.
func (s *service) usable() bool {
	return s.usableWith(s.leaseHeld())
}

// usableWith is usable with the lease already looked at (a lease read is
// a clock system call in a cluster).
func (s *service) usableWith(leaseHeld bool) bool {
	t := s.target
	if t == nil || !t.h.Known || !t.h.Up {
		return false
	}
	if s.cfg.Want == RolePrimary && t.h.Role != RolePrimary {
		return false
	}
	return !s.cfg.External || leaseHeld
}

// leaseHeld reports whether an External service holds its lease now.
func (s *service) leaseHeld() bool {
	return s.lease != nil && s.lease.Remaining() > 0
}

// candidates snapshots the backends for the pure picker; call with s.mu held.
func (s *service) candidates() []candidate {
	cs := make([]candidate, len(s.list))
	for i, b := range s.list {
		cs[i] = candidate{name: b.cfg.Name, priority: b.cfg.Priority, order: i, h: b.h, draining: b.draining, fenced: b.fenced, region: b.cfg.Region}
	}
	return cs
}

// recompute re-decides the active-passive target after any change; call
// with s.mu held. It returns the event to report (if any) and the backend
// whose sessions must be closed (if any).
func (s *service) recompute(why string) (ev *TargetChange, closeOld *backend) {
	defer s.bump()
	if s.cfg.balanced() {
		s.target, s.pending, s.from, s.primaries = nil, "", "", nil
		s.reason = "balanced"
		return nil, nil
	}
	old := s.target
	oldName := ""
	if old != nil {
		oldName = old.cfg.Name
	}
	var d decision
	if s.cfg.External {
		d = s.externalDecision()
	} else {
		d = chooseTarget(&s.cfg, s.candidates(), oldName, s.pending, s.from)
		if !s.hadTarget && d.pending != "" {
			// Nothing promotes the first choice after a start (a backend
			// that failed its first check may only be slow), so a standby
			// chosen now would wait for a promotion that never comes while
			// the real primary answers a moment later.
			d = decision{primaries: d.primaries, reason: "no backend reports primary yet: a proxy does not pick a standby to promote at start; promote one by hand and it is followed"}
		}
	}
	if d.target != "" {
		s.hadTarget = true
	}
	if (len(d.primaries) >= 2) != (len(s.primaries) >= 2) {
		if len(d.primaries) >= 2 {
			s.p.log.Error("dual primary: more than one backend reports primary; not moving writes",
				"service", s.name, "primaries", d.primaries, "target", d.target)
		} else {
			s.p.log.Info("dual primary cleared", "service", s.name)
		}
	}
	s.primaries = d.primaries
	s.pending, s.from = d.pending, d.from
	s.reason = d.reason
	nt := s.byName[d.target]
	s.target = nt
	if nt == old {
		return nil, nil
	}
	s.since = time.Now()
	newName := ""
	if nt != nil {
		newName = nt.cfg.Name
	}
	if old != nil && nt != nil && !s.cfg.External && !s.cfg.roleAware() && !s.cfg.FailbackAuto && !(old.h.Known && old.h.Up) {
		// Without a role to report, nothing else would keep the old
		// primary out of a later failover once it is up again: it stays
		// fenced until an operator unfences it.
		old.fenced = true
	}
	s.p.log.Info("target changed", "service", s.name, "old", oldName, "new", newName, "reason", d.reason, "cause", why)
	if old != nil && s.cfg.CloseOnDown {
		closeOld = old
	}
	if s.cfg.External {
		return nil, closeOld
	}
	ev = &TargetChange{Service: s.name, Reason: d.reason}
	if old != nil {
		ev.Old = old.cfg
	}
	if nt != nil {
		ev.New = nt.cfg
	}
	return ev, closeOld
}

// externalDecision follows the route set by the cluster; the local view can
// only hold traffic back (quarantine), never pick another backend.
func (s *service) externalDecision() decision {
	var d decision
	for _, b := range s.list {
		if b.h.Known && b.h.Up && b.h.Role == RolePrimary {
			d.primaries = append(d.primaries, b.cfg.Name)
		}
	}
	if len(d.primaries) < 2 {
		d.primaries = nil
	}
	b := s.byName[s.route]
	switch {
	case s.route == "":
		d.reason = "no route from the cluster"
	case b == nil:
		d.reason = fmt.Sprintf("route %q is not a backend of this service", s.route)
	default:
		d.target = s.route
		switch {
		case !b.h.Known:
			d.reason = "route " + s.route + ": waiting for its first health report"
		case !b.h.Up:
			d.reason = "route " + s.route + ": quarantined, down locally"
		case s.cfg.Want == RolePrimary && b.h.Role != RolePrimary:
			d.reason = "route " + s.route + ": awaiting promotion (reports " + b.h.Role.String() + ")"
		default:
			d.reason = "route " + s.route + " from the cluster"
		}
	}
	return d
}

// status snapshots the service.
func (s *service) status() ServiceStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := ServiceStatus{
		Name: s.name, Listen: s.cfg.Listen, Mode: s.cfg.Mode, Want: s.cfg.Want,
		Reason: s.reason, TargetSince: s.since, DualPrimary: len(s.primaries) >= 2,
		Primaries: append([]string(nil), s.primaries...),
		Accepted:  s.accepted.Load(), Refused: s.refused.Load(),
		Active: s.conns.Load(), Held: s.held.Load(),
	}
	if s.ln != nil {
		st.Addr = s.ln.addr
	}
	if s.lnErr != nil {
		st.ListenError = s.lnErr.Error()
	}
	held := s.cfg.External && s.leaseHeld()
	usable := !s.cfg.balanced() && s.usableWith(held)
	if s.target != nil {
		st.Target = s.target.cfg.Name
	}
	if s.cfg.External && s.target != nil && !held {
		st.Reason = "route " + s.target.cfg.Name + ": lease expired"
	}
	for _, b := range s.list {
		bs := BackendStatus{
			Backend: b.cfg, Health: b.h, Active: b.active.Load(), Sessions: b.sessions.Load(),
			BytesIn: b.bytesIn.Load(), BytesOut: b.bytesOut.Load(),
			DialFailures: b.dialFail.Load(), Refused: b.refused.Load(), Draining: b.draining, Fenced: b.fenced,
		}
		if s.cfg.balanced() {
			bs.Eligible = balancedEligible(&s.cfg, b.h) && !b.draining
		} else {
			bs.Eligible = usable && b == s.target
		}
		st.Backends = append(st.Backends, bs)
	}
	return st
}
