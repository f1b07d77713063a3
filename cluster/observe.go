package cluster

// Observations: this proxy's own view of the backends and its peers' views,
// what a quorum sees (objectively down, healthy), and the successor they
// point to.

import (
	"fmt"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/failover"
)

type peerView struct {
	boot, seq uint64
	v         uint8 // the wire format of the copy taken
	at        time.Duration
	view      map[string]Observation
}

// Observe records this proxy's own view of a backend and gossips it when it
// changed.
func (m *Machine) Observe(svc, backend string, o Observation) error {
	defer m.endStep()
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
	localOnly := old
	localOnly.ReplicasUnread, localOnly.Rising = o.ReplicasUnread, o.Rising
	if had && localOnly == o {
		// Only what is local changed: nothing to tell the peers, but a
		// failover may have waited for it.
		s.local[backend] = o
		m.due[svc] = true
		return nil
	}
	if !had || old.Up != o.Up || old.Role != o.Role {
		s.obsAt[backend] = m.clock.Now()
		m.due[svc] = true
	}
	if had && rankChanged(old, o) {
		m.due[svc] = true // a failover may have waited for this position
	}
	if had && ((!old.Up && o.Up) || (old.Role != RolePrimary && o.Role == RolePrimary)) {
		// Back up, or primary again, after a fence: whatever the hook did
		// (a stop, a demotion) is undone.
		delete(s.hookFenced, backend)
	}
	s.local[backend] = o
	m.broadcastObs(svc, s, true)
	return nil
}

// broadcastObs sends this proxy's view of a service straight to every
// peer, best effort (batched with the step's other payloads), and, for a
// change, also by gossip, which relays it around a cut link. The periodic
// refresh of every service goes direct only: re-queued on the gossip
// queue at every refresh, the views of hundreds of services starved the
// ones queued first (memberlist sends the newest first), and those
// services never bootstrapped.
func (m *Machine) broadcastObs(name string, s *service, change bool) {
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
	if change {
		m.broadcast("obs/"+name, b)
	}
	for _, p := range m.others {
		m.sendLossy(p, b, nil)
	}
}

func (m *Machine) onObs(from string, x obsMsg, v uint8) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	pv := s.remote[from]
	now := m.stepAt // when the payload came in; a batch carries many views
	// A lower boot id is a replay, unless the peer has been silent for a
	// whole TTL (its wall clock may have been set back across a restart).
	// A peer with an older one among its peers gossips each view twice,
	// in its format and in the older one, with one sequence number: the
	// copy in a higher format replaces the other (it carries positions,
	// the synchronous set and the upstream), in whichever order they came.
	if pv != nil && ((x.Boot < pv.boot && now-pv.at < m.cfg.ObservationTTL) || (x.Boot == pv.boot && (x.Seq < pv.seq || (x.Seq == pv.seq && v <= pv.v)))) {
		m.counters.Replay++
		return
	}
	if pv == nil {
		pv = &peerView{}
		s.remote[from] = pv
	}
	pv.boot, pv.seq, pv.v, pv.at = x.Boot, x.Seq, v, now
	if pv.view == nil {
		pv.view = make(map[string]Observation, len(x.Entries))
	}
	changed := len(pv.view) != len(x.Entries)
	for _, e := range x.Entries {
		if o, ok := pv.view[e.Backend]; !ok || o.Up != e.Obs.Up || o.Role != e.Obs.Role || rankChanged(o, e.Obs) {
			changed = true
		}
	}
	if changed {
		m.due[x.Service] = true
	}
	clear(pv.view)
	for _, e := range x.Entries {
		if _, ok := s.backends[e.Backend]; ok {
			pv.view[e.Backend] = e.Obs
		}
	}
}

// rankChanged reports whether a failover's ranking may see a difference:
// a position turned fresh or stale, or a fresh one moved.
func rankChanged(a, b Observation) bool {
	return a.PositionFresh != b.PositionFresh || (b.PositionFresh && a.Position != b.Position)
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

func isUp(o Observation) bool { return o.Up }

func (m *Machine) objectivelyDown(s *service, b string) bool {
	return m.q.reached(m.reports(s, b, isDown))
}

func (m *Machine) healthy(s *service, b string) bool { return m.q.reached(m.reports(s, b, isUp)) }

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

// position is what the cluster knows of how far backend holds the old
// primary's log: the furthest fresh position any fresh view up gives (a
// replica's position only grows while its primary is silent, so the
// furthest is the latest read), else stale when this proxy's check reports
// positions, else none. A proxy whose own view is stale still ranks by the
// quorum's reads.
func (m *Machine) position(s *service, b string) (int64, failover.PosState) {
	pos, st := int64(-1), failover.NoPosition
	take := func(o Observation) {
		switch {
		case !o.Up || o.Position < 0:
		case o.PositionFresh && (st != failover.FreshPosition || o.Position > pos):
			pos, st = o.Position, failover.FreshPosition
		case !o.PositionFresh && st == failover.NoPosition:
			st = failover.StalePosition
		}
	}
	take(s.local[b])
	now := m.clock.Now()
	for _, p := range m.others {
		if pv := s.remote[p]; pv != nil && now-pv.at < m.cfg.ObservationTTL {
			if o, ok := pv.view[b]; ok {
				take(o)
			}
		}
	}
	return pos, st
}

// syncStandbys is what the fresh views that know agree primary reported
// synchronous at its last good check: the intersection of their non-empty
// masks (a standby that stopped being synchronous in one proxy's later
// read may lack commits acknowledged since). A view that knows nothing (a
// proxy started since) does not count.
func (m *Machine) syncStandbys(s *service, primary string) uint64 {
	all, known := ^uint64(0), false
	take := func(o Observation) {
		if o.SyncMask != 0 {
			all &= o.SyncMask
			known = true
		}
	}
	if o, ok := s.local[primary]; ok {
		take(o)
	}
	now := m.clock.Now()
	for _, p := range m.others {
		if pv := s.remote[p]; pv != nil && now-pv.at < m.cfg.ObservationTTL {
			if o, ok := pv.view[primary]; ok {
				take(o)
			}
		}
	}
	if !known {
		return 0
	}
	return all
}

// behind names an eligible replica that this proxy's own fresh view shows
// further than candidate c ("" when none): a voter refuses a failover to a
// replica it sees holding less of the old primary's log.
func (m *Machine) behind(s *service, c string) string {
	oc, ok := s.local[c]
	if !ok || !oc.PositionFresh || oc.Position < 0 {
		return ""
	}
	fenced := m.svcState(s.cfg.Name).Record.Fenced
	now := m.clock.Now()
	for _, b := range s.cfg.Backends {
		o, ok := s.local[b.Name]
		if b.Name == c || !ok || !o.Up || o.Role != RoleReplica || !o.PositionFresh || o.Position <= oc.Position ||
			fenced.Has(b.Name) || m.excluded(s, b.Name, now) {
			continue
		}
		if !failover.LagWithin(s.policy(), o.LagBytes, o.Lag) {
			continue
		}
		return fmt.Sprintf("%s at %d, %s at %d", b.Name, o.Position, c, oc.Position)
	}
	return ""
}

// policy is the service's failover policy (package failover, shared with
// a proxy alone).
func (s *service) policy() failover.Policy {
	return failover.Policy{RoleAware: s.cfg.RoleAware, MaxLag: s.cfg.MaxLagOnFailover, MaxLagBytes: s.cfg.MaxLagBytesOnFailover, RPOZero: s.cfg.RPOZero,
		RegionOrder: s.cfg.RegionOrder}
}

// candidate picks the successor of primary by the one failover policy,
// from what this cluster knows: healthy in a quorum's view, the role this
// proxy's own check reports, the largest lag any fresh report gives, the
// furthest position read since the primary fell silent, not
// fenced by the record and not held out after a failed promote here.
func (m *Machine) candidate(s *service, primary string) (string, string) {
	now := m.clock.Now()
	fenced := m.svcState(s.cfg.Name).Record.Fenced
	sync := m.syncStandbys(s, primary)
	cs := make([]failover.Candidate, 0, len(s.cfg.Backends))
	for i, b := range s.cfg.Backends {
		bytes, lag := m.maxLag(s, b.Name)
		pos, ps := m.position(s, b.Name)
		cs = append(cs, failover.Candidate{Name: b.Name, Priority: b.Priority, Order: i,
			Up: m.healthy(s, b.Name), Role: failoverRole(s.local[b.Name].Role), LagBytes: bytes, Lag: lag,
			Position: pos, Pos: ps, Sync: i < 64 && sync&(1<<i) != 0, Upstream: s.local[b.Name].Upstream, Region: b.Region,
			Fenced: fenced.Has(b.Name) && !m.cfg.knobs.ignoreFenced, Held: m.excluded(s, b.Name, now),
			ReplicasUnread: s.local[b.Name].ReplicasUnread})
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

// priorityChoiceWait says why a first primary chosen by priority must
// not be best yet, from this proxy's own view (failover.ChoiceWait).
func (m *Machine) priorityChoiceWait(s *service, best string) string {
	fenced := m.svcState(s.cfg.Name).Record.Fenced
	cs := make([]failover.Candidate, 0, len(s.cfg.Backends))
	for i, b := range s.cfg.Backends {
		o, ok := s.local[b.Name]
		cs = append(cs, failover.Candidate{Name: b.Name, Priority: b.Priority, Order: i, Up: o.Up,
			Fenced: fenced.Has(b.Name), Unreported: !ok, Rising: o.Rising})
	}
	return failover.ChoiceWait(cs, best, true)
}

// reachesQuorum reports whether this proxy heard from Q-1 peers lately.
func (m *Machine) reachesQuorum() bool {
	return m.q.reached(m.reachable(m.clock.Now()))
}

// reachable counts the proxies, this one included, heard from within a
// lease.
func (m *Machine) reachable(now time.Duration) int {
	n := 1
	for _, p := range m.others {
		if t, ok := m.heard[p]; ok && now-t < m.cfg.LeaseTimeout {
			n++
		}
	}
	return n
}

// sayQuorum logs, in words, when this proxy loses or regains a quorum:
// what pages on-call should say what happened, not a counter.
func (m *Machine) sayQuorum(now time.Duration) {
	n := m.reachable(now)
	has := m.q.reached(n)
	switch {
	case has == m.hadQuorum:
	case has:
		m.log.Info(fmt.Sprintf("cluster: quorum: %d of %d proxies reachable (itself included)", n, m.q.n))
	default:
		m.log.Warn(fmt.Sprintf("cluster: lost quorum: %d of %d proxies reachable (itself included), %d needed; every service stops routing when its lease ends", n, m.q.n, m.q.size()),
			"services", len(m.order))
	}
	m.hadQuorum = has
}

// index is backend's position in the service's configuration, -1 if none.
func (s *service) index(backend string) int {
	for i, b := range s.cfg.Backends {
		if b.Name == backend {
			return i
		}
	}
	return -1
}
