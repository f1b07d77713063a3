package cluster

// Proposing: what a proxy decides to propose at each tick, the two phases
// of its proposal, the commit, and records learned from peers.

import (
	"fmt"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/failover"
)

type proposal struct {
	epoch, base uint64
	value       Value
	from        string
	kind        kind
	sentAt      time.Duration
	lastSend    time.Duration
	promises    map[string]Ballot // voter -> what it had accepted before
	accepts     map[string]bool
	refused     map[string]bool // voters that can no longer grant this epoch
	// stopped: peers that answered (granting or not) with MaxVoted at this
	// epoch or above, saved before the answer left: they route and confirm
	// leases at no older epoch, whoever they voted for.
	stopped  map[string]bool
	phase2   bool
	commitAt time.Duration
}

// commitWait is how long a proposer waits after the Q-th vote so that a
// lease confirmed before any of those votes has expired in real time on
// any proxy whose clock runs within the margin.
func (m *Machine) commitWait() time.Duration {
	r := m.cfg.ClockMargin
	return time.Duration(float64(m.cfg.LeaseTimeout) * (1 + r) / (1 - r))
}

// learn takes what a peer told about its state: a higher record is
// adopted, an accepted value above our record is remembered as a hint of
// what phase 1 will force.
func (m *Machine) learn(name string, rec Record, accepted Ballot) {
	ss := m.svcState(name)
	if rec.Epoch > ss.Record.Epoch {
		m.adopt(name, rec, "")
		ss = m.svcState(name)
	}
	s := m.svcs[name]
	if accepted.Epoch > ss.Record.Epoch && accepted.Epoch > s.hint.Epoch {
		s.hint = accepted
	}
}

// adopt persists a higher record and announces it. relayExcept is the
// peer the commit came from ("" when it did not come as a commit).
func (m *Machine) adopt(name string, rec Record, relayExcept string) {
	s := m.svcs[name]
	ss := m.svcState(name)
	if rec.Epoch <= ss.Record.Epoch {
		m.counters.Stale++
		return
	}
	old := ss.Record
	ss.Record = rec
	if ss.Intent.Epoch < rec.Epoch {
		ss.Intent = HookIntent{}
	}
	m.save(name, ss)
	m.counters.Adoptions++
	s.lease = lease{}
	s.leaseAt = m.clock.Now()
	s.recordAt = s.leaseAt
	s.followTo = ""
	m.leaseSoon = true
	if s.hint.Epoch <= rec.Epoch {
		s.hint = Ballot{}
	}
	if s.prop != nil && s.prop.epoch <= rec.Epoch {
		s.prop = nil
	}
	if rec.Epoch > s.switchAt {
		// any decision that lands first ends the switchover request
		s.switchTo = ""
	}
	m.endRetry(s, rec)
	m.endFenceOp(s, rec)
	m.endPauseOp(s, rec)
	m.opDecided(s, rec, old)
	m.unverified(s, old, rec)
	s.decision = fmt.Sprintf("adopted epoch %d %s", rec.Epoch, rec.Value)
	if relayExcept != "" {
		b, err := encodeCommit(commitMsg{Service: name, Record: rec})
		m.sendAll(b, err, relayExcept)
	}
	m.recordChanged(name, old, rec)
}

func (m *Machine) onCommit(from string, x commitMsg) {
	if m.svcs[x.Service] == nil {
		m.counters.UnknownService++
		return
	}
	if m.recovering {
		// It is learned again through sync; adopting now could not be
		// relied on before the sync finishes anyway.
		return
	}
	m.adopt(x.Service, x.Record, from)
}

// endRetry forgets a failed promote at any later decision (checked here,
// at the decision, since two can land between two ticks): one that names
// another primary makes it moot, and one that keeps the same backend as
// primary makes the proxy that committed it act on it (intentFor), so
// moving away from it now could cross that proxy's promote.
func (m *Machine) endRetry(s *service, rec Record) {
	if s.retry != nil && rec.Epoch > s.retry.epoch {
		s.retry = nil
	}
}

func (m *Machine) tickService(name string, s *service, now time.Duration) {
	// The rank delay counts from when this proxy first saw the primary
	// down, or first ticked with no primary (a new cluster: every proxy
	// ends its recovery at about the same time, and without the delay all
	// proposed the first primary of every service at once and duelled),
	// even if a backoff or a vote holds its own proposal back.
	rec := m.svcState(name).Record
	down := rec.Primary != "" && m.objectivelyDown(s, rec.Primary)
	switch {
	case !down && rec.Primary != "":
		s.downSet = false
	case !s.downSet || s.downEpoch != rec.Epoch:
		s.downSet, s.downEpoch, s.downSince = true, rec.Epoch, now
	}
	if m.ownPrimary(s, rec.Primary) {
		s.primarySeen[rec.Primary] = max(s.primarySeen[rec.Primary], rec.Since)
	}
	if p := s.prop; p != nil {
		m.tickProposal(name, s, p, now)
		return
	}
	m.actuate(name, s, now)
	m.opCheck(s)
	if now < s.next {
		return
	}
	ss := m.svcState(name)
	// A vote we cast above our record belongs to a proposal that may still
	// commit: give its proposer the time to do so.
	if ss.MaxVoted > ss.Record.Epoch && now-s.votedAt < m.cfg.VoteTimeout+m.commitWait() {
		return
	}
	forced := s.hint
	if ss.Accepted.Epoch > forced.Epoch {
		forced = ss.Accepted
	}
	if forced.Epoch <= ss.Record.Epoch || m.cfg.knobs.noPhase1 {
		forced = Ballot{}
	}
	if s.retry != nil && m.ownPrimary(s, s.retry.backend) {
		// Its promote landed after all: there is nothing to move on from.
		m.log.Info("cluster: the backend whose promote failed reports primary: not moving on", "service", name, "backend", s.retry.backend)
		delete(s.failed, s.retry.backend)
		s.retry = nil
	}
	retryTo := ""
	if s.retry != nil && forced.Epoch == 0 && !down {
		retryTo = m.retryCandidate(name, s, rec)
		if r := s.retry; retryTo == "" && !s.hookFenced[r.backend] && r.epoch == rec.Epoch && now-r.at >= m.fenceRetry(s) &&
			ss.Intent.Epoch == rec.Epoch && !ss.Intent.Done && m.ownUp(s, r.backend) {
			// Nothing else can take over: try the promote again, as
			// carefully as the first time (a failure may be passing).
			m.log.Info("cluster: no other candidate: trying the promote again", "service", name, "backend", r.backend, "epoch", rec.Epoch)
			s.retry = nil
			delete(s.failed, r.backend)
			if s.act.epoch == rec.Epoch {
				s.act.promoted, s.act.failed = false, nil
			}
			m.actuate(name, s, now)
			return
		}
	}
	f := tickFacts{
		rec: rec, forced: forced, switchTo: s.switchTo, fenceOp: s.fenceOp, pauseOp: s.pauseOp, down: down,
		retry: s.retry, retryTo: retryTo, fenceOld: failover.FenceOldPrimary(s.policy()),
		switchWhy: func() string {
			to := s.switchTo
			switch err := m.switchCheck(s, rec, to); {
			case rec.Fenced.Has(to):
				return "it was fenced meanwhile"
			case !m.ownUp(s, to):
				return "it is not up here"
			case err != nil:
				return err.Error()
			}
			return ""
		},
		fenceValue: func() (Value, string) { return m.fenceValue(s, rec, s.fenceOp) },
		bootstrap: func() string {
			if best := m.bootstrapChoice(name, s); best != "" && m.healthy(s, best) {
				return best
			}
			return ""
		},
		rankWait:  func() bool { return m.rankWait(s, now) },
		candidate: func() (string, string) { return m.candidate(s, rec.Primary) },
		stalled:   func() bool { return m.promoteStalled(s, rec, ss, now) },
		follow:    func() string { return m.followTarget(name, s, rec, now) },
		liveness: func() bool {
			if m.leaseRemainingAt(name, s, ss, now) > 0 || now-s.leaseAt <= m.livenessAfter() || !m.reachesQuorum() {
				return false
			}
			// Every proxy that lost its lease with the others, or voted
			// with them, gets here at the same moment; in a bare quorum
			// their duels then repeat in step. The rank delay breaks the tie.
			since := max(s.leaseAt+m.livenessAfter(), s.votedAt+m.cfg.VoteTimeout+m.commitWait())
			return now-since >= m.rankDelay(now) || m.cfg.knobs.noRankDelay
		},
		rolesTo: func() string {
			if s.cfg.RoleAware && !m.ownPrimary(s, rec.Primary) {
				return m.onlyPrimary(s, rec.Fenced)
			}
			return ""
		},
		primaryUp: func() bool { return m.ownUp(s, rec.Primary) },
		quorum:    m.reachesQuorum,
	}
	if m.cfg.knobs.ignorePause {
		f.rec.Paused = false
	}
	m.apply(name, s, decide(f), now)
}

// apply carries out a tick's decision.
func (m *Machine) apply(name string, s *service, d tickDecision, now time.Duration) {
	switch d.what {
	case decidePropose:
		if d.note != "" {
			m.log.Warn("cluster: "+d.note, "service", name, "primary", d.value.Primary)
		}
		m.propose(name, s, d.value, d.kind, d.from, now)
	case decideSwitchDone:
		s.switchTo = ""
	case decideDropSwitch:
		s.switchTo = ""
		s.decision = d.why
		m.opEnd(s, OpFailed, d.why)
	case decideDropFence:
		s.fenceOp = nil
		s.decision = d.why
		m.opEnd(s, OpFailed, d.why)
	case decideFenceDone:
		s.fenceOp = nil
		m.opEnd(s, OpDone, d.why)
	case decidePauseDone:
		s.pauseOp = nil
		m.opEnd(s, OpDone, d.why)
	case decidePaused:
		m.say(name, s, "paused", d.why)
	case decideNoCandidate:
		if m.say(name, s, "candidate", d.why) {
			m.counters.NoCandidate++
		}
	}
}

// tickFacts is what a tick's decision reads about one service with no
// proposal in flight. The Machine fills it from its state (tickService),
// with the costlier facts as functions so that only the ones a decision
// needs are worked out; a table test fills it with literals.
type tickFacts struct {
	rec    Record
	forced Ballot // the value an earlier acceptance forces (zero: none)
	// An operator's switchover in flight, and why it cannot go ahead now
	// ("": it can).
	switchTo  string
	switchWhy func() string
	// An operator's fence or unfence in flight, and the value that carries
	// it out (or why there is none).
	fenceOp    *fenceOp
	fenceValue func() (Value, string)
	// An operator's pause or resume in flight.
	pauseOp *pauseOp
	// bootstrap is the first primary to propose ("" to wait).
	bootstrap func() string
	// down: a quorum sees the record's primary down; rankWait: the rank
	// delay still holds this proxy's failover or first-primary proposal
	// back.
	down      bool
	rankWait  func() bool
	candidate func() (string, string)
	// A failed promote this proxy moves on from, and to which backend.
	retry   *promoteFailure
	retryTo string
	// stalled: nobody carries out the promote of the record's primary;
	// follow: the backend that reports primary while the record's primary
	// does not ("" none).
	stalled func() bool
	follow  func() string
	// liveness: no lease for longer than a proposal's life, a quorum
	// reachable and the rank delay passed; rolesTo: with roles, the one
	// backend that reports primary when the record's does not; primaryUp:
	// the record's primary is up here; quorum: a quorum is reachable.
	liveness  func() bool
	rolesTo   func() string
	primaryUp func() bool
	quorum    func() bool
	// fenceOld: moving away from the primary fences it (no roles).
	fenceOld bool
}

// tickDecision is what a tick decided.
type tickDecision struct {
	what  decisionKind
	value Value // to propose
	kind  kind
	from  string
	why   string // why an operator's request was dropped, or no failover
	note  string // said at WARN when the proposal goes out
}

type decisionKind uint8

const (
	decideNothing     decisionKind = iota
	decidePropose                  // propose value
	decideSwitchDone               // the switchover's target already is the primary
	decideDropSwitch               // the switchover cannot go ahead
	decideDropFence                // the fence cannot go ahead
	decideFenceDone                // a decision that landed meanwhile carried the fence out
	decideNoCandidate              // the primary is down and nothing can take over
	decidePauseDone                // the pause or resume is already so
	decidePaused                   // paused: an automatic decision is not taken
)

// decide is the choice a tick makes for a service with no proposal in
// flight, in order: what an earlier acceptance forces, an operator's
// switchover, fence or unfence, a first primary, a failover, a move after
// a failed promote, a promote nobody carries out, the backend that
// reports primary, and a liveness re-affirmation. It reads only f.
func decide(f tickFacts) tickDecision {
	rec := f.rec
	keep := func(primary string) Value { return Value{Primary: primary, Fenced: rec.Fenced} }
	away := func(v Value) Value { // without roles the old primary stays fenced
		if f.fenceOld && rec.Primary != "" {
			v.Fenced = rec.Fenced.With(rec.Primary)
		}
		return v
	}
	propose := func(v Value, k kind, from string) tickDecision {
		return tickDecision{what: decidePropose, value: v, kind: k, from: from}
	}
	forced := f.forced.Epoch != 0
	switch {
	case (f.switchTo != "" || f.fenceOp != nil || f.pauseOp != nil) && forced:
		return propose(f.forced.Value, kindForced, rec.Primary)
	case f.switchTo != "" && f.switchTo == rec.Primary:
		return tickDecision{what: decideSwitchDone}
	case f.switchTo != "":
		if why := f.switchWhy(); why != "" {
			return tickDecision{what: decideDropSwitch, why: fmt.Sprintf("switchover to %q dropped: %s", f.switchTo, why)}
		}
		return propose(away(keep(f.switchTo)), kindSwitchover, rec.Primary)
	case f.fenceOp != nil:
		op := f.fenceOp
		v, why := f.fenceValue()
		switch {
		case why != "":
			return tickDecision{what: decideDropFence, why: fmt.Sprintf("fence of %q dropped: no backend can take over: %s", op.backend, why)}
		case v == rec.Value:
			return tickDecision{what: decideFenceDone, why: fmt.Sprintf("already so at epoch %d", rec.Epoch)}
		}
		return propose(v, map[bool]kind{true: kindFence, false: kindUnfence}[op.fence], op.backend)
	case f.pauseOp != nil:
		op := f.pauseOp
		if rec.Paused == op.on {
			return tickDecision{what: decidePauseDone, why: fmt.Sprintf("already so at epoch %d", rec.Epoch)}
		}
		v := rec.Value
		v.Paused = op.on
		return propose(v, map[bool]kind{true: kindPause, false: kindResume}[op.on], rec.Primary)
	case rec.Paused:
		// Paused: what an earlier vote forces is finished, and the record
		// is decided again for liveness; nothing moves by itself.
		switch {
		case forced && f.quorum():
			return propose(f.forced.Value, kindForced, rec.Primary)
		case f.down:
			return tickDecision{what: decidePaused, why: fmt.Sprintf("paused: %q is down, no automatic failover (quorumproxy resume, or a switchover)", rec.Primary)}
		case !forced && f.stalled():
			return propose(rec.Value, kindReaffirm, rec.Primary) // the same primary: nothing moves
		case f.liveness() && f.primaryUp():
			return propose(rec.Value, kindReaffirm, rec.Primary)
		}
	case rec.Primary == "":
		if forced {
			if f.quorum() {
				return propose(f.forced.Value, kindForced, "")
			}
			return tickDecision{}
		}
		if b := f.bootstrap(); b != "" {
			if f.rankWait() {
				return tickDecision{}
			}
			return propose(keep(b), kindBootstrap, "")
		}
	case f.down:
		if forced {
			return propose(f.forced.Value, kindForced, rec.Primary)
		}
		if f.rankWait() {
			return tickDecision{}
		}
		c, why := f.candidate()
		if c == "" && failover.Waiting(why) {
			return tickDecision{} // a replica's fresh position is on its way (the next view ticks again)
		}
		if c == "" {
			return tickDecision{what: decideNoCandidate, why: fmt.Sprintf("no failover from %q: %s", rec.Primary, why)}
		}
		return propose(away(keep(c)), kindFailover, rec.Primary)
	case f.retry != nil && forced:
		return propose(f.forced.Value, kindForced, rec.Primary)
	case f.retryTo != "":
		v := keep(f.retryTo)
		if f.retry.fenced {
			// fenced by a hook: it stays out until an operator unfences it
			v.Fenced = rec.Fenced.With(rec.Primary)
		}
		return propose(away(v), kindPromoteFailed, rec.Primary)
	case !forced && f.stalled():
		// Nobody carries out the promote of the record's primary (the
		// proxy that committed it failed, or lost its state): decide it
		// again, so that this proxy acts on it.
		d := propose(rec.Value, kindReaffirm, rec.Primary)
		d.note = "the primary of the record still reports replica and no proxy promotes it: deciding it again"
		return d
	case !forced && f.follow() != "":
		d := propose(keep(f.follow()), kindReaffirm, rec.Primary)
		d.note = "the primary of the record does not report primary and another backend does: routing there"
		return d
	case f.liveness():
		if forced {
			return propose(f.forced.Value, kindForced, rec.Primary)
		}
		if y := f.rolesTo(); y != "" {
			return propose(keep(y), kindReaffirm, rec.Primary) // roles are facts
		}
		if f.primaryUp() {
			return propose(rec.Value, kindReaffirm, rec.Primary)
		}
	}
	return tickDecision{}
}

// bootstrapChoice is the first primary of a new cluster ("" to wait): for
// a service with roles, the one backend that reports primary, once this
// proxy has heard from every backend (roles are facts; priorities only
// break ties between equals, and there are none: with no primary or two,
// nothing is chosen and the status says why); without roles, the
// highest-priority backend up.
func (m *Machine) bootstrapChoice(name string, s *service) string {
	if !s.cfg.RoleAware || m.cfg.knobs.bootstrapByPriority {
		best := m.bestUp(s)
		if best != "" && !m.cfg.knobs.bootstrapByPriority {
			if why := m.priorityChoiceWait(s, best); why != "" {
				m.say(name, s, "bootstrap", "no primary yet: "+why)
				return ""
			}
		}
		return best
	}
	for _, b := range s.cfg.Backends {
		if _, ok := s.local[b.Name]; !ok {
			m.say(name, s, "bootstrap", "no primary yet: waiting for the first health report of "+b.Name)
			return ""
		}
	}
	switch ps := m.reportedPrimaries(s); len(ps) {
	case 0:
		m.say(name, s, "bootstrap", "no primary yet: no backend reports primary; a new cluster promotes nothing by itself: "+
			"start the primary, or choose one with quorumproxy switchover")
	case 1:
		return ps[0]
	default:
		m.say(name, s, "bootstrap", fmt.Sprintf("no primary yet: dual primary: %s all report primary; routing none", strings.Join(ps, ", ")))
	}
	return ""
}

// rankDelay is how long this proxy lets a failover wait before it proposes
// one itself: a tick for each reachable peer with a higher name. The
// highest proposes at once and the others usually vote for it before their
// own turn, so one proposal gathers every vote and commits without the
// lease wait; when several propose at once, votes split between them, the
// winner lacks some and waits out the commit wait (or nobody reaches Q and
// all back off). A peer that does not propose costs at most this delay.
func (m *Machine) rankDelay(now time.Duration) time.Duration {
	rank := 0
	for _, p := range m.others {
		if t, ok := m.heard[p]; ok && p > m.cfg.Name && now-t < m.cfg.LeaseTimeout {
			rank++
		}
	}
	return time.Duration(rank) * m.cfg.LeaseTimeout / 8
}

// rankWait holds back a failover of s that this proxy sees: for the rank
// delay from when it first saw the primary down, and then, for at most a
// lease more, while a higher-named proxy is running rounds. A failure
// common to many services reaches a proxy in several steps (its checks'
// results and its peers' views arrive a batch at a time), so the highest
// proxy proposes them in several batches; without the second wait the
// next one, its rank delay over, proposed the services of the later
// batches too and hundreds of duels followed (5 proxies, 1,000 services:
// 241 proposals given up). Liveness only: the vote keeps every rule.
func (m *Machine) rankWait(s *service, now time.Duration) bool {
	if m.cfg.knobs.noRankDelay {
		return false
	}
	d := m.rankDelay(now)
	switch since := now - s.downSince; {
	case since < d:
		return true
	case d == 0 || since >= d+m.cfg.LeaseTimeout:
		return false
	}
	return m.higherAt > 0 && now-m.higherAt < m.higherWindow()
}

// higherWindow is how long after a higher-named proxy's last proposal or
// accept this proxy still counts it at work: the gap between its batches
// and its two phases is a round trip and a save on a loaded machine.
func (m *Machine) higherWindow() time.Duration { return m.cfg.LeaseTimeout / 4 }

// noteHigher records a round's message from a peer named higher than
// this proxy (rankWait).
func (m *Machine) noteHigher(from string) {
	if from > m.cfg.Name {
		m.higherAt = m.stepAt
	}
}

// retryCandidate is the backend to move to after the record's primary
// failed to promote, or "" (with a loud status) when there is none.
func (m *Machine) retryCandidate(name string, s *service, rec Record) string {
	c, why := m.candidate(s, rec.Primary)
	if c != "" {
		return c
	}
	if m.say(name, s, "candidate", fmt.Sprintf("promote of %q at epoch %d failed (%s); no other candidate: %s",
		s.retry.backend, s.retry.epoch, s.retry.reason, why)) {
		m.counters.NoCandidate++
	}
	return ""
}

// livenessAfter is how long a proxy goes without a lease before it
// re-proposes: longer than a proposal's whole life, so it does not cut in.
func (m *Machine) livenessAfter() time.Duration {
	return m.cfg.VoteTimeout + m.commitWait() + m.cfg.LeaseTimeout
}

func (m *Machine) backoff(s *service, now time.Duration) {
	cw := m.commitWait()
	s.next = now + cw + time.Duration(m.rng.Int64N(int64(cw+m.cfg.LeaseTimeout)))
}

// propose stops routing (our own vote is above the record), persists our
// vote, then asks every peer for theirs (phase 1).
func (m *Machine) propose(name string, s *service, value Value, k kind, from string, now time.Duration) {
	if m.storeErr != nil {
		return
	}
	ss := m.svcState(name)
	// Any epoch above our own promise is ours to propose; above what peers
	// promised, it can win.
	e := max(ss.Record.Epoch, ss.MaxVoted, s.peerMaxVoted) + 1
	if k != kindForced {
		// a forced value keeps the Since it was proposed with
		value.Since = ss.Record.Since
		if value.Primary != ss.Record.Primary {
			value.Since = e
		}
		if k != kindPause && k != kindResume {
			value.Paused = ss.Record.Paused // only a pause or resume changes it
		}
	}
	prev := ss.Accepted
	ss.MaxVoted, ss.VotedFor, ss.PrevAccepted = e, m.cfg.Name, prev
	if err := m.persistVote(name, ss); err != nil {
		m.log.Debug("cluster: saving own vote", "service", name, "epoch", e, "err", err)
		m.backoff(s, now)
		return
	}
	m.counters.Proposals++
	s.prop = &proposal{epoch: e, base: ss.Record.Epoch, value: value, from: from, kind: k, sentAt: now, lastSend: now,
		promises: map[string]Ballot{m.cfg.Name: prev}, accepts: map[string]bool{}, refused: map[string]bool{}, stopped: map[string]bool{}}
	s.decision = fmt.Sprintf("proposed epoch %d %s (%s)", e, value, k)
	m.log.Info("cluster: proposing", "service", name, "epoch", e, "primary", value.Primary, "fenced", string(value.Fenced), "kind", k.String())
	m.resend(name, s.prop)
	m.checkPromises(name, s, s.prop, now)
}

// resend sends the current phase's request to every peer that has not
// answered it yet.
func (m *Machine) resend(name string, p *proposal) {
	var b []byte
	var err error
	if p.phase2 {
		b, err = encodeAccept(acceptMsg{Service: name, Epoch: p.epoch, Value: p.value})
	} else {
		b, err = encodePropose(proposeMsg{Service: name, Epoch: p.epoch, Value: p.value, Kind: p.kind, From: p.from, Base: p.base})
	}
	for _, peer := range m.others {
		_, promised := p.promises[peer]
		if (p.phase2 && !p.accepts[peer]) || (!p.phase2 && !promised) {
			m.send(peer, b, err)
		}
	}
}

func (m *Machine) tickProposal(name string, s *service, p *proposal, now time.Duration) {
	if p.phase2 && m.q.reached(len(p.accepts)) && (now >= p.commitAt || m.allStopped(p)) {
		m.commit(name, s, p, now)
		return
	}
	if now-p.sentAt > m.cfg.VoteTimeout && !m.q.reached(len(p.accepts)) {
		m.abandon(name, s, now, "no quorum of votes in time")
		return
	}
	if now-p.lastSend >= m.cfg.LeaseTimeout/4 {
		p.lastSend = now
		m.resend(name, p)
	}
}

func (m *Machine) abandon(name string, s *service, now time.Duration, why string) {
	if p := s.prop; p != nil {
		switch p.kind {
		case kindSwitchover:
			// one attempt per request: the operator sees it failed
			s.switchTo = ""
			m.opEnd(s, OpFailed, fmt.Sprintf("gave up epoch %d: %s", p.epoch, why))
		case kindFence, kindUnfence:
			s.fenceOp = nil
			m.opEnd(s, OpFailed, fmt.Sprintf("gave up epoch %d: %s", p.epoch, why))
		case kindPause, kindResume:
			s.pauseOp = nil
			m.opEnd(s, OpFailed, fmt.Sprintf("gave up epoch %d: %s", p.epoch, why))
		}
		m.counters.GivenUp++
		s.decision = fmt.Sprintf("gave up epoch %d: %s", p.epoch, why)
		m.log.Info("cluster: proposal given up", "service", name, "epoch", p.epoch, "why", why)
	}
	s.prop = nil
	m.backoff(s, now)
}

func (m *Machine) onVote(from string, x voteMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	if m.recovering {
		return
	}
	m.learn(x.Service, x.Record, x.Accepted)
	// A refusal says how far the voter has promised: the next proposal
	// starts above it rather than climbing one refused epoch at a time.
	s.peerMaxVoted = max(s.peerMaxVoted, x.MaxVoted)
	p := s.prop
	if p == nil || x.Epoch != p.epoch {
		m.counters.Stale++
		return
	}
	if x.MaxVoted >= p.epoch && !x.Recovering {
		p.stopped[from] = true
	}
	if !x.Granted {
		if p.phase2 && m.allStopped(p) {
			m.maybeCommit(x.Service, s, p, m.clock.Now())
		}
		// A voter that promised this epoch or a later one elsewhere, or
		// holds a record at it, never grants it: once too many did, the
		// proposal cannot reach a quorum and stops now rather than at
		// VoteTimeout. (A refusal for a check that lags may turn into a
		// grant when the proposal is sent again: it does not count.)
		if !p.phase2 && (x.MaxVoted >= p.epoch || x.Record.Epoch >= p.epoch) {
			p.refused[from] = true
			if m.q.lost(len(p.refused)) {
				m.abandon(x.Service, s, m.clock.Now(), "refused by too many proxies to reach a quorum")
			}
		}
		return
	}
	if _, dup := p.promises[from]; dup {
		return
	}
	p.promises[from] = x.Prev
	m.checkPromises(x.Service, s, p, m.clock.Now())
}

// checkPromises moves to phase 2 once Q proxies voted for the epoch.
func (m *Machine) checkPromises(name string, s *service, p *proposal, now time.Duration) {
	if p.phase2 {
		if m.allStopped(p) {
			m.maybeCommit(name, s, p, now)
		}
		return
	}
	if !m.q.reached(len(p.promises)) {
		return
	}
	if now > p.sentAt+m.cfg.VoteTimeout {
		m.abandon(name, s, now, "quorum came too late")
		return
	}
	// Paxos phase 1: the highest value accepted above our base may have
	// been chosen already; it is the only value we may propose.
	// Ties are broken by value so that the choice never depends on map
	// order: in a correct run one epoch carries one value, but the
	// simulation must replay a seed exactly even when a rule is off.
	var high Ballot
	for _, b := range p.promises {
		if b.Epoch > p.base && (b.Epoch > high.Epoch || b.Epoch == high.Epoch && high.Value.less(b.Value)) {
			high = b
		}
	}
	if high.Epoch != 0 && high.Value != p.value && !m.cfg.knobs.noPhase1 {
		s.decision = fmt.Sprintf("epoch %d forced to %s by a vote at epoch %d", p.epoch, high.Value, high.Epoch)
		p.value, p.kind = high.Value, kindForced
	}
	ss := m.svcState(name)
	if ss.MaxVoted != p.epoch || ss.VotedFor != m.cfg.Name {
		// we voted for someone else's higher epoch meanwhile
		m.abandon(name, s, now, "superseded by a higher epoch")
		return
	}
	ss.Accepted = Ballot{Epoch: p.epoch, Value: p.value}
	if err := m.persistVote(name, ss); err != nil {
		m.log.Debug("cluster: saving own acceptance", "service", name, "epoch", p.epoch, "err", err)
		m.abandon(name, s, now, "could not persist")
		return
	}
	p.phase2 = true
	p.accepts[m.cfg.Name] = true
	// The lease wait starts now: every proxy that confirmed a lease at the
	// old epoch before it voted is among any quorum's reach.
	p.commitAt = now + m.commitWait()
	if m.cfg.knobs.noLeaseWait {
		p.commitAt = now
	}
	p.lastSend = now
	m.resend(name, p)
	m.maybeCommit(name, s, p, now)
}

func (m *Machine) onAccepted(from string, x acceptedMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	if m.recovering {
		return
	}
	m.learn(x.Service, x.Record, x.Accepted)
	p := s.prop
	if p != nil && p.phase2 && x.Epoch == p.epoch && !x.OK && x.MaxVoted >= p.epoch {
		// refused (it voted for another proposer at this epoch) but stopped
		p.stopped[from] = true
		m.maybeCommit(x.Service, s, p, m.clock.Now())
		return
	}
	if p == nil || !p.phase2 || x.Epoch != p.epoch || x.Value != p.value || !x.OK {
		m.counters.Stale++
		return
	}
	p.accepts[from] = true
	m.maybeCommit(x.Service, s, p, m.clock.Now())
}

// allStopped reports whether every proxy voted for the proposal, accepted
// its value, or answered with a vote at this epoch or above for another
// proposer (two proxies that proposed the same epoch at once): each saved
// MaxVoted >= E before answering, which stopped its routing and its lease
// confirmations at older epochs, so no lease at an older epoch is left to
// wait out. (A peer that refused the vote because its own check lagged
// accepts on a resent accept.)
func (m *Machine) allStopped(p *proposal) bool {
	n := len(p.promises)
	for peer := range p.accepts {
		if _, ok := p.promises[peer]; !ok {
			n++
		}
	}
	for peer := range p.stopped {
		if _, ok := p.promises[peer]; !ok && !p.accepts[peer] {
			n++
		}
	}
	return m.q.all(n)
}

func (m *Machine) maybeCommit(name string, s *service, p *proposal, now time.Duration) {
	if !m.q.reached(len(p.accepts)) || (now < p.commitAt && !m.allStopped(p)) {
		return
	}
	if now > p.sentAt+m.cfg.VoteTimeout+m.commitWait()+m.cfg.LeaseTimeout/2 {
		m.abandon(name, s, now, "commit came too late")
		return
	}
	m.commit(name, s, p, now)
}

func (m *Machine) commit(name string, s *service, p *proposal, now time.Duration) {
	ss := m.svcState(name)
	if p.epoch <= ss.Record.Epoch {
		s.prop = nil
		return
	}
	old := ss.Record
	rec := Record{Epoch: p.epoch, Value: p.value}
	ss.Record = rec
	ss.Intent = m.intentFor(s, p.kind, old, rec)
	m.save(name, ss)
	m.counters.Commits++
	s.prop = nil
	s.lease = lease{}
	s.leaseAt = now
	s.recordAt = now
	s.followTo = ""
	m.leaseSoon = true
	s.hint = Ballot{}
	if rec.Epoch > s.switchAt {
		s.switchTo = ""
	}
	m.endRetry(s, rec)
	m.endFenceOp(s, rec)
	m.endPauseOp(s, rec)
	m.opDecided(s, rec, old)
	if p.kind != kindPromoteFailed {
		// (moving on, this proxy already knows the old primary is not one)
		m.unverified(s, old, rec)
	}
	s.decision = fmt.Sprintf("committed epoch %d %s (%s, %d votes)", rec.Epoch, rec.Value, p.kind, len(p.accepts))
	m.log.Info("cluster: committed", "service", name, "epoch", rec.Epoch, "primary", rec.Primary, "fenced", string(rec.Fenced),
		"kind", p.kind.String(), "votes", len(p.accepts))
	b, err := encodeCommit(commitMsg{Service: name, Record: rec})
	m.sendAll(b, err, "")
	m.recordChanged(name, old, rec)
}

// newlyFenced is a backend in to that is not in from ("" if none).
func newlyFenced(from, to Fenced) string {
	for _, b := range to.List() {
		if !from.Has(b) {
			return b
		}
	}
	return ""
}

// intentFor is what the committing proxy must do to the databases for a
// decision of kind k from old to rec: fence the old primary and promote
// the new one on a failover or a switchover; only promote (nothing is to
// be fenced) when the first primary is an operator's choice or when the
// decision follows a backend that reports primary; fence a standby that
// an operator fenced; and finish a promote that an earlier decision's
// proxy did not carry out when a decision keeps a primary that reports
// replica.
func (m *Machine) intentFor(s *service, k kind, old, rec Record) HookIntent {
	in := HookIntent{Epoch: rec.Epoch}
	switch {
	case old.Primary == rec.Primary || old.Primary == "":
		in.Fence = newlyFenced(old.Fenced, rec.Fenced)
	case k == kindReaffirm:
		in.Promote = rec.Primary
	default:
		in.Fence, in.Promote = old.Primary, rec.Primary
	}
	if in.Promote == "" && s.cfg.RoleAware && m.ownReplica(s, rec.Primary) {
		// The decision that made it primary was not carried out (its
		// proxy failed, or its intent gave way to this record), or an
		// operator chose it as the first primary. (Without roles, a
		// first primary is never promoted: nothing tells whether another
		// backend is one already.)
		in.Promote = rec.Primary
	}
	if in.Fence == "" && in.Promote == "" {
		return HookIntent{}
	}
	return in
}
