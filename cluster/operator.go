package cluster

// Operator requests: switchover, fence and unfence, checked up front and
// carried out by proposals.

import "fmt"

// fenceOp is an operator's fence (or unfence) of a backend, asked for
// when the record was at epoch at.
type fenceOp struct {
	backend string
	fence   bool
	at      uint64
}

// pauseOp is an operator's pause (or resume) of a service's automatic
// decisions, asked for when the record was at epoch at.
type pauseOp struct {
	on bool
	at uint64
}

func (op *pauseOp) verb() string { return map[bool]string{true: "pause", false: "resume"}[op.on] }

// Pause asks the cluster to pause the service's automatic decisions (on)
// or to resume them: a voted epoch whose value is the record's, paused or
// not. While paused no proxy proposes a failover or a move after a failed
// promote, and no voter grants one; operators' switchovers, fences and
// unfences still go through. It returns the operation's id.
func (m *Machine) Pause(svc string, on bool) (uint64, error) {
	defer m.endStep()
	op := &pauseOp{on: on}
	s := m.svcs[svc]
	if s == nil {
		return 0, fmt.Errorf("cluster: %s: unknown service %q", op.verb(), svc)
	}
	if err := m.operable(svc, op.verb()); err != nil {
		return 0, err
	}
	rec := m.svcState(svc).Record
	switch {
	case rec.Primary == "":
		return 0, fmt.Errorf("cluster: %s of service %q: the cluster has not chosen a first primary yet", op.verb(), svc)
	case rec.Paused == on:
		return 0, fmt.Errorf("cluster: %s of service %q: it is already %s at epoch %d", op.verb(), svc,
			map[bool]string{true: "paused", false: "not paused"}[on], rec.Epoch)
	}
	op.at = max(rec.Epoch, m.svcState(svc).MaxVoted)
	s.pauseOp = op
	s.next = m.clock.Now()
	return m.newOp(s, op.verb(), ""), nil
}

// endPauseOp ends an operator's pause or resume at the first decision
// that lands after it was asked for, as endFenceOp does.
func (m *Machine) endPauseOp(s *service, rec Record) {
	if op := s.pauseOp; op != nil && rec.Epoch > op.at {
		if rec.Paused != op.on {
			s.decision = fmt.Sprintf("%s dropped: epoch %d was decided first", op.verb(), rec.Epoch)
		}
		s.pauseOp = nil
	}
}

// Switchover asks the cluster to move the service to backend to. It
// returns the id of the operation, whose outcome Status reports.
func (m *Machine) Switchover(svc, to string) (uint64, error) {
	defer m.endStep()
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
	s.switchTo, s.switchAt = to, max(rec.Epoch, m.svcState(svc).MaxVoted)
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
	defer m.endStep()
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
	s.fenceOp = &fenceOp{backend: backend, fence: fence, at: max(rec.Epoch, m.svcState(svc).MaxVoted)}
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
