package cluster

import "fmt"

// Group commit. A step (one input, or a batch of inputs a Node drains at
// once) may change many services: a mass failover commits hundreds. Their
// saves reach the disk in one Save at the end of the step, and what the
// step sends and calls back waits in an outbox until that Save returned:
// nothing leaves that is not on disk, as before, but with one fsync per
// step instead of one per service. The messages for one peer leave as one
// batch payload (split only where a payload must fit the transport), so
// a step that touches N services sends one payload per peer, not N.

// dirtyState is what a service's persisted state was before the step's
// first save of it, to put back if the step's Save fails.
type dirtyState struct {
	old ServiceState
	had bool
}

// pendingOut is one payload the step produced.
type pendingOut struct {
	to    string // peer ("" for a broadcast)
	key   string // broadcast key
	b     []byte
	lossy bool
}

// pendingAction is an OnAction call the step produced.
type pendingAction struct {
	service string
	a       Action
}

// outbox is what a step holds until its state is on disk.
type outbox struct {
	inBatch bool
	dirty   map[string]dirtyState
	// counted is the Machine's counters before the step's first save: a
	// failed save takes back what the step counted as done.
	counted Counters
	msgs    []pendingOut
	records []func()
	actions []pendingAction
}

// Batch runs f as one step: every save f makes reaches the disk in one
// Save when f returns, and what f sends or hands out leaves only then.
func (m *Machine) Batch(f func()) {
	m.out.inBatch = true
	f()
	m.out.inBatch = false
	m.flush()
}

// endStep ends an input outside a batch.
func (m *Machine) endStep() {
	if !m.out.inBatch {
		m.flush()
	}
}

// flush saves what the step changed, then sends and calls back what it
// produced. If the save fails, memory goes back to what is on disk and
// the step's output is dropped, as if this proxy had crashed before it:
// its actions are handed out again from the persisted intent once the
// store works (storeFailed stops everything meanwhile).
func (m *Machine) flush() {
	m.flushLeaseSoon()
	o := &m.out
	if len(o.dirty) > 0 {
		m.counters.Saves++
		err := m.store.Save(m.st.clone())
		if err != nil {
			m.version++
			for name, d := range o.dirty {
				if d.had {
					m.st.Services[name] = d.old
				} else {
					delete(m.st.Services, name)
				}
			}
			for _, pa := range o.actions {
				if s := m.svcs[pa.service]; s != nil {
					s.act = actState{}
				}
			}
			clear(o.dirty)
			o.msgs, o.records, o.actions = o.msgs[:0], o.records[:0], o.actions[:0]
			c := &m.counters
			c.VotesGranted, c.VotesRefused, c.Proposals, c.Commits, c.Adoptions =
				o.counted.VotesGranted, o.counted.VotesRefused, o.counted.Proposals, o.counted.Commits, o.counted.Adoptions
			m.storeFailed(err)
			return
		}
		clear(o.dirty)
	}
	m.release()
}

// release hands the step's output on: payloads batched per peer, then
// the callbacks.
func (m *Machine) release() {
	o := &m.out
	if len(o.msgs) > 0 {
		m.sendBatched(o.msgs)
		for i := range o.msgs {
			o.msgs[i] = pendingOut{}
		}
		o.msgs = o.msgs[:0]
	}
	for i, f := range o.records {
		f()
		o.records[i] = nil
	}
	o.records = o.records[:0]
	for i, pa := range o.actions {
		o.actions[i] = pendingAction{}
		s := m.svcs[pa.service]
		if s == nil {
			continue
		}
		// Handed out only under a lease at its epoch (the fencing
		// token): a later input of the same step (our own vote for a new
		// epoch) may have ended it. Then it is handed out again, from the
		// persisted intent, once a lease holds.
		if ss := m.svcState(pa.service); ss.Record.Epoch != pa.a.Epoch || m.leaseRemaining(pa.service, s, ss) <= 0 {
			s.act = actState{}
			continue
		}
		m.cfg.OnAction(pa.service, pa.a)
	}
	o.actions = o.actions[:0]
}

// sendBatched sends msgs, in order per peer, one payload per peer and
// kind (reliable or lossy) as far as the size limits allow, each peer's
// in the wire format it is sent (wire.go); a broadcast goes once per
// format some peer is sent in.
func (m *Machine) sendBatched(msgs []pendingOut) {
	_, hi := m.wireRange()
	var groups []uint8
	for _, p := range msgs {
		if p.to != "" {
			continue
		}
		if groups == nil {
			groups = m.wireGroups()
		}
		for _, v := range groups {
			b, err := transcode(p.b, v)
			if err != nil {
				m.log.Error("cluster: writing a broadcast in an older wire format", "key", p.key, "format", v, "err", err)
				continue
			}
			key := p.key
			if v != hi {
				// Its own key, so that it does not replace the other
				// formats' copy in the gossip queue.
				key = fmt.Sprintf("%s@%d", p.key, v)
			}
			if err := m.tr.Broadcast(key, b); err != nil {
				m.log.Debug("cluster: gossip failed", "key", key, "err", err)
			}
		}
	}
	for _, peer := range m.others {
		v := m.sendVersion(peer)
		if v == 0 {
			continue // it speaks no format of ours: sayWire warned
		}
		for _, lossy := range []bool{false, true} {
			limit := MaxBatchSize
			if lossy {
				limit = MaxMessageSize
			}
			var parts [][]byte
			size := batchHeader
			emit := func() {
				switch len(parts) {
				case 0:
				case 1:
					m.transmit(peer, parts[0], lossy)
				default:
					m.transmit(peer, encodeBatch(parts, v), lossy)
				}
				parts, size = parts[:0], batchHeader
			}
			for _, p := range msgs {
				if p.to != peer || p.lossy != lossy {
					continue
				}
				b := m.forPeer(peer, p.b)
				if b == nil {
					continue
				}
				n := batchEntrySize(b)
				if size+n > limit {
					emit()
				}
				parts = append(parts, b)
				size += n
			}
			emit()
		}
	}
}

// transmit hands one payload to the transport.
func (m *Machine) transmit(to string, b []byte, lossy bool) {
	if lossy {
		switch t := m.tr.(type) {
		case bestEffortSender:
			_ = t.SendBestEffort(to, b)
			return
		case bestEffortSenderNoErr:
			t.SendBestEffort(to, b)
			return
		}
	}
	if e := m.tr.Send(to, b); e != nil {
		m.log.Debug("cluster: send failed", "peer", to, "err", e)
	}
}

// recordChanged tells OnRecord of a new record once it is on disk.
func (m *Machine) recordChanged(name string, old, rec Record) {
	if m.cfg.OnRecord != nil {
		m.out.records = append(m.out.records, func() { m.cfg.OnRecord(name, old, rec) })
	}
}
