package cluster

// Leases: a proxy routes a service only while a quorum confirms its
// record; the route the data path reads comes from here.

import (
	"slices"
	"time"
)

type lease struct {
	epoch  uint64
	expiry time.Duration
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

// Route returns the backend this proxy may forward the service to now and
// how long that stays true. An empty backend means: do not forward. With
// OnQuorumLoss keep, the last primary comes back without a lease and a
// non-positive remaining time.
func (m *Machine) Route(svc string) (string, time.Duration) {
	return m.routeAt(svc, m.clock.Now())
}

// routeAt is Route with the clock read by the caller, once for many
// services (the clock is a system call).
func (m *Machine) routeAt(svc string, now time.Duration) (string, time.Duration) {
	s := m.svcs[svc]
	if s == nil {
		return "", 0
	}
	ss := m.svcState(svc)
	if ss.Record.Primary == "" || m.storeErr != nil {
		return "", 0
	}
	if rem := m.leaseRemainingAt(svc, s, ss, now); rem > 0 {
		return ss.Record.Primary, rem
	}
	if m.cfg.OnQuorumLoss == QuorumLossKeep && !m.recovering {
		return ss.Record.Primary, 0
	}
	return "", 0
}

func (m *Machine) leaseRemaining(svc string, s *service, ss ServiceState) time.Duration {
	return m.leaseRemainingAt(svc, s, ss, m.clock.Now())
}

// leaseRemainingAt is leaseRemaining at now, a clock reading taken no
// earlier than the caller's decision (a stale one would overstate it).
func (m *Machine) leaseRemainingAt(svc string, s *service, ss ServiceState, now time.Duration) time.Duration {
	if m.recovering || s.lease.epoch != ss.Record.Epoch || ss.Record.Epoch == 0 {
		return 0
	}
	if ss.MaxVoted > ss.Record.Epoch && !m.cfg.knobs.voterKeepsRouting {
		return 0
	}
	return s.lease.expiry - now
}

// flushLeaseSoon sends the lease requests a new record asked for.
func (m *Machine) flushLeaseSoon() {
	if !m.leaseSoon || m.recovering || m.storeErr != nil {
		return
	}
	m.leaseSoon = false
	now := m.clock.Now()
	m.lastReq = now
	m.requestLeases(now)
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
		if m.q.leaseAcks() == 0 {
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
		ok := !m.recovering && m.storeErr == nil && ss.Record.Epoch == e.Record.Epoch && ss.MaxVoted <= e.Record.Epoch
		ae := leaseAckEntry{Service: e.Service, Epoch: e.Record.Epoch, OK: ok, Record: ss.Record,
			MaxVoted: ss.MaxVoted, Accepted: ss.Accepted}
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
	now := m.clock.Now() // once: an ack carries many services
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
		m.maybeLease(sl, req.sentAt, now)
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
	if e != ss.Record.Epoch || len(sl.acks) < m.q.leaseAcks() {
		return
	}
	exp := sentAt + m.cfg.LeaseTimeout
	if s.lease.epoch != e {
		s.lease = lease{epoch: e, expiry: exp}
	} else if exp > s.lease.expiry {
		s.lease.expiry = exp
	}
	if m.leaseRemainingAt(name, s, ss, now) > 0 {
		s.leaseAt = now
	}
	m.actuate(name, s, now)
}
