package cluster

import (
	"fmt"
	"math"
	"time"
)

// Actions on databases. The agreement decides which backend a service
// routes to; the committing proxy also acts on the databases (fence the
// old primary, promote the new one), and those actions can make a second
// primary that no routing rule sees. So they follow rules of their own,
// checked where the promise matters, at the database (the simulation
// models backends with roles and promotes that fail, lie, hang or land
// late):
//
//   - A promote is idempotent and verified: the runner skips it when the
//     backend already reports primary and checks the backend at once
//     afterwards; reporting primary is success, whatever the exit status.
//   - No promote starts while another backend may be primary: one that
//     reports primary, one whose promote of ours may still land, or (for a
//     service without roles) the old primary or a fenced backend that is up.
//     Such a backend is fenced first by the fence hook; failing that the
//     promote is held and the status says why. A backend counts as not
//     primary once a fence hook on it succeeded, or while a quorum sees it
//     down (the agreement has fenced it from all traffic; one that is alive
//     but cut off from the proxies is what the fence hook is for).
//   - Never move on while the first candidate may be primary: after a
//     failed promote the proxy moves to the next candidate only once the
//     first is known not to be primary (a fence hook on it succeeded, or it
//     reported replica for the settle period, longer than the hook
//     timeout); a service without roles only after a fence hook.
//   - Roles are facts: when the promote is held because the old primary
//     (or another backend) reports primary and nothing was promoted yet,
//     the proxy proposes to route to that backend instead.

// actState is the progress of this run on the decision whose intent is
// at epoch (memory only: a restart acts on the persisted intent again).
type actState struct {
	epoch    uint64
	inFlight bool
	handedAt time.Duration // when the action in flight was handed out
	fenced   bool          // the decision's own fence was handed out
	promoted bool          // the promote was handed out
	failed   *failedPromote
	held     string // why the promote waits ("" when it does not)
}

// failedPromote is a promote of the record's primary that did not leave it
// reporting primary.
type failedPromote struct {
	backend, reason string
	at              time.Duration // when the hook ended
	exitOK          bool          // the hook said it worked: give it the settle period first
	notStarted      bool          // the hook never started: nothing of it can land
}

// forever marks a promote in flight: it may land at any time.
const forever = time.Duration(math.MaxInt64)

// settle is how long a promote that did not verify may still land after
// its hook ended, and so how long its backend must report replica before
// it counts as not promoted: longer than the hook timeout (twice it: a
// hook killed at its timeout may have asked the server for a promotion
// that takes a while yet).
func (m *Machine) settle(s *service, timeout time.Duration) time.Duration {
	if timeout <= 0 {
		timeout = s.hooks.Timeout
	}
	return max(2*timeout, timeout+m.cfg.LeaseTimeout)
}

// fenceRetry is how long a failed fence hook waits before it runs again.
func (m *Machine) fenceRetry(s *service) time.Duration {
	return max(s.hooks.Timeout, 3*m.cfg.LeaseTimeout)
}

// resumed notes that this proxy stood still for gap (a SIGSTOP, a long
// pause): a fence hook's success from before may have been undone by a
// restart it could not see, so it is forgotten.
func (m *Machine) resumed(now, gap time.Duration) {
	m.resumedAt = now
	for _, s := range m.svcs {
		if len(s.hookFenced) > 0 {
			m.log.Info("cluster: this proxy stood still: forgetting which backends fence hooks fenced", "service", s.cfg.Name, "pause", gap)
			clear(s.hookFenced)
		}
	}
}

// SetHooks tells the machine which hooks a service has now (after a
// reload).
func (m *Machine) SetHooks(svc string, h HookConfig) error {
	s := m.svcs[svc]
	if s == nil {
		return fmt.Errorf("cluster: set hooks: unknown service %q", svc)
	}
	s.hooks = h
	return nil
}

func (m *Machine) ownPrimary(s *service, b string) bool {
	o, ok := s.local[b]
	return ok && o.Up && o.Role == RolePrimary
}

func (m *Machine) ownReplica(s *service, b string) bool {
	o, ok := s.local[b]
	return ok && o.Up && o.Role == RoleReplica
}

// mayReportPrimary reports whether b reports primary: in this proxy's own
// view when it reaches b, else in any fresh view of a peer.
func (m *Machine) mayReportPrimary(s *service, b string) bool {
	if o, ok := s.local[b]; ok && o.Up {
		return o.Role == RolePrimary
	}
	now := m.clock.Now()
	for _, p := range m.others {
		if pv := s.remote[p]; pv != nil && now-pv.at < m.cfg.ObservationTTL {
			if o, ok := pv.view[b]; ok && o.Up && o.Role == RolePrimary {
				return true
			}
		}
	}
	return false
}

// freshReports counts the proxies, this one included, with a fresh view
// of backend b (whatever it says).
func (m *Machine) freshReports(s *service, b string) int {
	n := 0
	if _, ok := s.local[b]; ok {
		n++
	}
	now := m.clock.Now()
	for _, p := range m.others {
		if pv := s.remote[p]; pv != nil && now-pv.at < m.cfg.ObservationTTL {
			if _, ok := pv.view[b]; ok {
				n++
			}
		}
	}
	return n
}

// reportedPrimaries lists the backends this proxy's own checks see up and
// reporting primary, in config order.
func (m *Machine) reportedPrimaries(s *service) []string {
	var out []string
	for _, b := range s.cfg.Backends {
		if m.ownPrimary(s, b.Name) {
			out = append(out, b.Name)
		}
	}
	return out
}

// onlyPrimary is the one backend that this proxy sees reporting primary,
// which a quorum sees up and which is not fenced ("" if none or several).
func (m *Machine) onlyPrimary(s *service, fenced Fenced) string {
	ps := m.reportedPrimaries(s)
	if len(ps) != 1 || fenced.Has(ps[0]) || !m.healthy(s, ps[0]) {
		return ""
	}
	return ps[0]
}

// ActionDone takes the outcome of an action handed out through OnAction.
func (m *Machine) ActionDone(svc string, a Action, r ActionResult) error {
	defer m.endStep()
	s := m.svcs[svc]
	if s == nil {
		return fmt.Errorf("cluster: action done: unknown service %q", svc)
	}
	if _, ok := s.backends[a.Backend]; !ok {
		return fmt.Errorf("cluster: action done: service %q has no backend %q", svc, a.Backend)
	}
	now := m.clock.Now()
	m.wake(now)
	handed := s.act.handedAt
	if s.act.epoch == a.Epoch {
		s.act.inFlight = false
	}
	log := m.log.With("service", svc, "epoch", a.Epoch, "backend", a.Backend)
	switch a.Kind {
	case ActionFence:
		switch {
		case r.Ran && r.OK && m.resumedAt > handed:
			// This proxy stood still while the hook ran: the backend may
			// have come back meanwhile unseen. Fence it again.
			log.Info("cluster: fence hook succeeded during a pause of this proxy: not counted")
		case r.Ran && r.OK:
			s.hookFenced[a.Backend] = true
			delete(s.fenceFailed, a.Backend)
			delete(s.latePromote, a.Backend)
			log.Info("cluster: fence hook succeeded")
		case r.Ran:
			s.fenceFailed[a.Backend] = now
			log.Warn("cluster: fence hook failed", "detail", r.Detail)
		default:
			s.fenceFailed[a.Backend] = now
		}
		m.opFenceResult(s, a, r)
	case ActionPromote:
		verified := r.Up && r.Role == RolePrimary
		switch {
		case verified:
			delete(s.latePromote, a.Backend)
			if r.Ran && !r.OK {
				log.Warn("cluster: promote hook failed, but the backend reports primary: promoted", "detail", r.Detail)
			}
			m.promoteVerified(svc, s, a.Epoch, a.Backend)
		case !r.Ran && !r.Skipped:
			// No promote hook: nothing acted on the database.
			delete(s.latePromote, a.Backend)
			m.promoteVerified(svc, s, a.Epoch, a.Backend)
		case !s.cfg.RoleAware && r.OK:
			// Nothing reports a role: the exit status is all there is.
			delete(s.latePromote, a.Backend)
			m.promoteVerified(svc, s, a.Epoch, a.Backend)
		default:
			s.latePromote[a.Backend] = now + m.settle(s, r.Timeout)
			if m.cfg.knobs.moveOnAtOnce || r.NotStarted {
				// a hook that never started cannot land (the knob: as if
				// no failed promote could)
				delete(s.latePromote, a.Backend)
			}
			reason := r.Detail
			if reason == "" {
				reason = "exited 0"
			}
			if r.Up {
				reason += fmt.Sprintf("; reports %s", r.Role)
			} else {
				reason += "; not up"
			}
			ss := m.svcState(svc)
			if in := ss.Intent; in.Epoch == a.Epoch && in.Promote == a.Backend && !in.Done && ss.Record.Epoch == a.Epoch {
				s.act.failed = &failedPromote{backend: a.Backend, reason: reason, at: now, exitOK: r.Ran && r.OK, notStarted: r.NotStarted}
				s.decision = fmt.Sprintf("promote of %q at epoch %d not verified (%s)", a.Backend, a.Epoch, reason)
			}
			log.Warn("cluster: promote not verified: the backend does not report primary", "detail", reason)
		}
	}
	m.actuate(svc, s, now)
	m.flushLeaseSoon()
	return nil
}

// promoteVerified ends the decision's actions once its promote is verified.
func (m *Machine) promoteVerified(name string, s *service, epoch uint64, backend string) {
	ss := m.svcState(name)
	if in := ss.Intent; in.Epoch == epoch && in.Promote == backend && !in.Done {
		s.act.failed, s.act.held = nil, ""
		s.decision = fmt.Sprintf("epoch %d: %q reports primary (promote verified)", epoch, backend)
		m.finishIntent(name, s)
	}
	m.opPromoted(s, epoch, backend)
}

// finishIntent marks the decision's actions done.
func (m *Machine) finishIntent(name string, s *service) {
	ss := m.svcState(name)
	if ss.Intent.Done {
		return
	}
	ss.Intent.Done = true
	m.save(name, ss)
}

// hand gives one action to the runner.
func (m *Machine) hand(name string, s *service, a Action) {
	s.act.inFlight, s.act.handedAt = true, m.clock.Now()
	m.log.Info("cluster: acting on a database", "service", name, "epoch", a.Epoch, "action", a.Kind.String(), "backend", a.Backend)
	if m.cfg.OnAction != nil {
		m.out.actions = append(m.out.actions, pendingAction{service: name, a: a})
	} else {
		s.act.inFlight = false
	}
}

// actuate carries out the persisted intent of the decision this proxy
// committed, one action at a time, only while it holds a lease at its
// epoch.
func (m *Machine) actuate(name string, s *service, now time.Duration) {
	ss := m.svcState(name)
	in := ss.Intent
	if in.Epoch == 0 || in.Done || in.Epoch != ss.Record.Epoch || m.storeErr != nil {
		return
	}
	if m.leaseRemaining(name, s, ss) <= 0 {
		return
	}
	a := &s.act
	if a.epoch != in.Epoch {
		*a = actState{epoch: in.Epoch}
	}
	if a.inFlight {
		return
	}
	// The decision's own fence first: the old primary, or a standby an
	// operator fenced. A failed fence of a primary that a quorum sees down
	// does not hold the promote; one that may still be primary does, below.
	if in.Fence != "" && !a.fenced {
		if in.Promote != "" && !m.ownUp(s, in.Promote) {
			// Fencing the old primary before a new one can take over
			// would only take the last good backend away; the cluster
			// fails over from the new one instead.
			m.hold(name, s, fmt.Sprintf("decision of epoch %d held: %q is not up here, so %q is not fenced", in.Epoch, in.Promote, in.Fence))
			return
		}
		a.fenced = true
		// An old primary that reports replica has nothing left to fence.
		demoted := in.Promote != "" && s.cfg.RoleAware && m.ownReplica(s, in.Fence)
		if s.hooks.Fence && !s.hookFenced[in.Fence] && !demoted {
			m.hand(name, s, Action{Kind: ActionFence, Epoch: in.Epoch, Backend: in.Fence, Old: in.Fence, New: in.Promote})
			return
		}
	}
	switch {
	case in.Promote == "" || !s.hooks.Promote:
		// Nothing to promote, or nothing here promotes (the database's own
		// tooling does): the decision's actions are done.
		m.finishIntent(name, s)
		m.opPromoted(s, in.Epoch, in.Promote)
		return
	case a.failed != nil:
		m.verifyFailed(name, s, in, now)
		return
	case a.promoted:
		return
	}
	if m.resumedAt != 0 && now-m.resumedAt < m.cfg.ObservationTTL && !m.cfg.knobs.promoteAfterPause {
		// After standing still, this proxy's views are from before the
		// pause: its own checks report a change only once they ran again,
		// and peers' views heard before it still count. A backend may have
		// come back as primary meanwhile. Once ObservationTTL passed, only
		// views taken since count.
		m.hold(name, s, fmt.Sprintf("promote of %q held at epoch %d: this proxy stood still; its views of the backends are not fresh yet", in.Promote, in.Epoch))
		return
	}
	if y, why := m.promoteBlocker(name, s, in, now); y != "" && !m.cfg.knobs.promoteBlind {
		if s.hooks.Fence && m.fenceDue(s, y, now) {
			m.hand(name, s, Action{Kind: ActionFence, Epoch: in.Epoch, Backend: y, Old: y, New: in.Promote})
			return
		}
		m.hold(name, s, fmt.Sprintf("promote of %q held at epoch %d: %s", in.Promote, in.Epoch, why))
		if s.cfg.RoleAware && m.onlyPrimary(s, ss.Record.Fenced) == y {
			// Nothing was promoted and y is the one primary: route there.
			s.followTo = y
		}
		return
	}
	a.held = ""
	a.promoted = true
	s.latePromote[in.Promote] = forever
	// A promote undoes an earlier fence of the same backend: once it is
	// primary again, moving away from it must fence it again.
	delete(s.hookFenced, in.Promote)
	m.hand(name, s, Action{Kind: ActionPromote, Epoch: in.Epoch, Backend: in.Promote, Old: in.Fence, New: in.Promote})
}

// promoteBlocker names a backend other than the one to promote that may be
// primary, and why; "" when there is none.
func (m *Machine) promoteBlocker(name string, s *service, in HookIntent, now time.Duration) (string, string) {
	fenced := m.svcState(name).Record.Fenced
	for _, b := range s.cfg.Backends {
		y := b.Name
		if y == in.Promote || m.objectivelyDown(s, y) {
			continue
		}
		if s.cfg.RoleAware {
			if m.mayReportPrimary(s, y) {
				// whatever a fence hook did, it does not hold (or was undone)
				return y, fmt.Sprintf("%q reports primary and no fence hook fenced it", y)
			}
			if !m.ownUp(s, y) && !s.hookFenced[y] && !m.q.reached(m.freshReports(s, y)) {
				// Not seen from here, and too few fresh views of it (a
				// proxy that just started) to know it is not a primary.
				return y, fmt.Sprintf("%q is not seen from here and too few proxies report on it to know its role", y)
			}
		}
		if s.hookFenced[y] {
			continue
		}
		if until, ok := s.latePromote[y]; ok && now < until {
			if until == forever {
				return y, fmt.Sprintf("a promote of %q is still running", y)
			}
			return y, fmt.Sprintf("a promote of %q that failed may still land (within %v of its end)", y, m.settle(s, 0))
		}
		if s.cfg.RoleAware {
			if m.mayReportPrimary(s, y) {
				return y, fmt.Sprintf("%q reports primary and no fence hook fenced it", y)
			}
			continue
		}
		if y == in.Fence || fenced.Has(y) {
			return y, fmt.Sprintf("%q is up and, without roles to check, may still be primary; no fence hook fenced it", y)
		}
	}
	return "", ""
}

// fenceDue reports whether the fence hook may run on b now.
func (m *Machine) fenceDue(s *service, b string, now time.Duration) bool {
	if s.hookFenced[b] {
		return false
	}
	at, failed := s.fenceFailed[b]
	return !failed || now-at >= m.fenceRetry(s)
}

// hold says, once, why the decision's promote waits.
func (m *Machine) hold(name string, s *service, why string) {
	s.act.held = why
	m.say(name, s, "hold", why)
}

// verifyFailed decides what follows a promote that was not verified: done
// if the backend reports primary after all; the next candidate once it is
// known not to be primary; else hold.
func (m *Machine) verifyFailed(name string, s *service, in HookIntent, now time.Duration) {
	f := s.act.failed
	x := f.backend
	if m.ownPrimary(s, x) {
		m.log.Info("cluster: the backend whose promote failed reports primary: promoted", "service", name, "backend", x)
		delete(s.latePromote, x)
		m.promoteVerified(name, s, in.Epoch, x)
		return
	}
	until := s.latePromote[x]
	settled := now >= until
	switch {
	case s.hookFenced[x]:
		m.promoteFailed(name, s, in, true)
	case m.cfg.knobs.moveOnAtOnce:
		m.promoteFailed(name, s, in, false)
	case f.notStarted && !m.mayReportPrimary(s, x):
		// Nothing ran, so nothing was promoted: no settle period and no
		// fence needed (the status says what failed to start).
		m.promoteFailed(name, s, in, false)
	case s.hooks.Fence && (!f.exitOK || settled) && m.fenceDue(s, x, now):
		m.hand(name, s, Action{Kind: ActionFence, Epoch: in.Epoch, Backend: x, Old: x})
	case s.cfg.RoleAware && settled && m.ownReplica(s, x) && now-max(s.obsAt[x], f.at) >= m.settle(s, 0):
		m.promoteFailed(name, s, in, false)
	default:
		why := fmt.Sprintf("promote of %q at epoch %d failed (%s); it may still be primary: ", x, in.Epoch, f.reason)
		switch {
		case !s.cfg.RoleAware:
			why += "without roles to check, the next candidate waits for a fence hook to fence it"
		case !settled:
			why += fmt.Sprintf("waiting up to %v (the settle period) for it to report primary or stay a replica", m.settle(s, 0))
		default:
			why += "not moving on until a fence hook fences it or it reports replica; check it, then fence or switch over"
		}
		m.hold(name, s, why)
	}
}

// promoteFailed moves on from a promote that failed, now that its backend
// is known not to be primary: the next epoch goes to the next candidate
// through the vote (tickService), and the backend is no candidate here
// for FailedPromoteHold. The intent stays not done, so a restart of this
// proxy acts on it again (and skips the promote if it reports primary).
func (m *Machine) promoteFailed(name string, s *service, in HookIntent, fenced bool) {
	f := s.act.failed
	s.act.failed = nil
	s.act.held = ""
	now := m.clock.Now()
	s.failed[f.backend] = now + m.cfg.FailedPromoteHold
	s.retry = &promoteFailure{epoch: in.Epoch, backend: f.backend, reason: f.reason, fenced: fenced, at: now}
	s.next = now
	how := "it reports replica"
	if fenced {
		how = "a fence hook fenced it"
	}
	s.decision = fmt.Sprintf("promote of %q at epoch %d failed (%s); %s: moving on", f.backend, in.Epoch, f.reason, how)
	m.log.Warn("cluster: promote failed and the backend is known not to be primary: moving on to the next candidate",
		"service", name, "epoch", in.Epoch, "backend", f.backend, "reason", f.reason, "known_by", how)
	m.opFailed(s, in.Epoch, s.decision)
}

// followTarget is a backend to move the record to because it is the one
// that reports primary ("" if none): when this proxy's promote is held by
// it, or when the record's primary has reported replica for the settle
// period while it reports primary.
func (m *Machine) followTarget(name string, s *service, rec Record, now time.Duration) string {
	if !s.cfg.RoleAware || rec.Primary == "" {
		return ""
	}
	y := m.onlyPrimary(s, rec.Fenced)
	if y == "" || y == rec.Primary {
		s.followTo = ""
		return ""
	}
	if s.followTo == y {
		return y
	}
	p := rec.Primary
	if until, ok := s.latePromote[p]; (ok && now < until) || !m.ownReplica(s, p) {
		return ""
	}
	if now-max(s.obsAt[p], s.recordAt) < m.settle(s, 0) {
		return ""
	}
	return y
}

// unverified notes, when a record moves the primary away from a backend
// that this proxy never saw report primary under the decision that made it
// primary, that the promote of that decision may still be under way on the
// proxy that committed it (it started before this record committed, while
// that proxy held its lease): for the settle period it counts as maybe
// primary here, as a promote of our own would.
func (m *Machine) unverified(s *service, old, rec Record) {
	x := old.Primary
	if x == "" || x == rec.Primary || !s.hooks.Promote || old.Since == 0 || s.primarySeen[x] >= old.Since {
		return
	}
	if until := m.clock.Now() + m.settle(s, 0); until > s.latePromote[x] {
		s.latePromote[x] = until
	}
}

// promoteStalled reports whether the record's primary has reported replica
// for so long that the promote of the decision that made it primary cannot
// be under way any more on the proxy that committed it, and this proxy is
// not that one.
func (m *Machine) promoteStalled(s *service, rec Record, ss ServiceState, now time.Duration) bool {
	p := rec.Primary
	if !s.cfg.RoleAware || !s.hooks.Promote || p == "" || !m.ownReplica(s, p) || !m.reachesQuorum() {
		return false
	}
	if ss.Intent.Epoch == rec.Epoch && !ss.Intent.Done {
		return false // this proxy is in charge of it
	}
	if until, ok := s.latePromote[p]; ok && now < until {
		return false
	}
	if m.onlyPrimary(s, rec.Fenced) != "" {
		return false // another backend reports primary: followTarget
	}
	since := max(s.obsAt[p], s.recordAt) + m.settle(s, 0) + m.livenessAfter()
	return now-since >= m.rankDelay(now) || (now >= since && m.cfg.knobs.noRankDelay)
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

// excluded reports whether backend's promote failed too recently for it to
// be a candidate. (s.failed holds at most one entry per backend.)
func (m *Machine) excluded(s *service, backend string, now time.Duration) bool {
	until, ok := s.failed[backend]
	return ok && now < until
}
