package cluster

// Status: what /status and the logs say about each service.

import (
	"fmt"
	"strings"
	"time"
)

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

// ServiceStatus is one service's agreement state for /status.
type ServiceStatus struct {
	Service  string
	Record   Record
	MaxVoted uint64 // highest epoch voted in (max_voted)
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

// alerts say what about a service needs an operator.
func (m *Machine) alerts(s *service, ss ServiceState, now time.Duration) []string {
	var out []string
	if ps := m.reportedPrimaries(s); s.cfg.RoleAware && len(ps) >= 2 {
		out = append(out, fmt.Sprintf("dual_primary: %s all report primary", strings.Join(ps, ", ")))
	}
	if ss.Record.Primary == "" && !m.recovering && strings.HasPrefix(s.decision, "no primary yet: no backend reports primary") {
		out = append(out, "no_primary: "+strings.TrimPrefix(s.decision, "no primary yet: "))
	}
	if p := ss.Record.Primary; s.cfg.RoleAware && m.ownReplica(s, p) && now-max(s.obsAt[p], s.recordAt) > m.cfg.LeaseTimeout {
		// Seen on every proxy, not only on the one that acts: the record's
		// primary is not promoted (yet), and writes wait for it.
		out = append(out, fmt.Sprintf("awaiting_promotion: %q, the primary since epoch %d, reports replica; the proxy that committed it promotes it (see its status)", p, ss.Record.Since))
	}
	if strings.HasPrefix(s.decision, "no failover from") && m.objectivelyDown(s, ss.Record.Primary) {
		out = append(out, "no_failover: "+s.decision)
	}
	if ss.Intent.Epoch == ss.Record.Epoch && !ss.Intent.Done && s.act.epoch == ss.Intent.Epoch && s.act.held != "" {
		out = append(out, "promote_held: "+s.act.held)
	}
	return out
}

// Status returns a snapshot of the machine's state.
func (m *Machine) Status() Status {
	now := m.clock.Now()
	st := Status{Node: m.cfg.Name, Peers: m.q.n, Quorum: m.q.size(), Recovering: m.recovering, Counters: m.counters}
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
		b, rem := m.routeAt(name, now)
		x := ServiceStatus{Service: name, Record: ss.Record, MaxVoted: ss.MaxVoted, Accepted: ss.Accepted,
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
		x.Alerts = m.alerts(s, ss, now)
		if s.op != nil {
			op := *s.op
			x.Operation = &op
		}
		st.Services = append(st.Services, x)
	}
	return st
}
