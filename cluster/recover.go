package cluster

// Recovery: a proxy whose state_dir was empty learns the records and the
// votes from enough peers before it takes part.

import "time"

// recoverWait is how long a proxy with an empty store waits before it
// syncs: by then any proposal that counted a vote it forgot has committed
// or been given up, so what it learns from N-Q+1 peers covers that vote.
func (m *Machine) recoverWait() time.Duration {
	r := m.cfg.ClockMargin
	span := m.cfg.VoteTimeout + m.commitWait() + m.cfg.LeaseTimeout
	return time.Duration(float64(span) * (1 + r) / (1 - r))
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
		e := syncEntry{Service: name, Record: ss.Record, MaxVoted: ss.MaxVoted, Accepted: ss.Accepted}
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
		ss.MaxVoted = max(ss.MaxVoted, e.MaxVoted)
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
	return good >= m.q.syncFrom() || len(m.sync) == m.q.n-1
}

func (m *Machine) finishRecovery() {
	st := m.st.clone()
	for name, learned := range m.syncState.Services {
		ss := st.Services[name]
		if learned.Record.Epoch > ss.Record.Epoch {
			ss.Record = learned.Record
		}
		ss.MaxVoted = max(ss.MaxVoted, learned.MaxVoted, learned.Accepted.Epoch)
		ss.VotedFor = ""
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
	m.version++
	m.recovering = false
	m.sync = nil
	now := m.clock.Now()
	for _, name := range m.order {
		s := m.svcs[name]
		s.leaseAt = now
		s.switchTo, s.fenceOp, s.pauseOp = "", nil, nil
		m.log.Info("cluster: recovered state from peers", "service", name, "epoch", st.Services[name].Record.Epoch)
	}
}
