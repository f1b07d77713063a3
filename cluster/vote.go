package cluster

// Voting: the answers to proposals (phase 1) and accepts (phase 2), each
// saved before it leaves.

import (
	"errors"
	"fmt"
)

// persistVote saves a vote (promise or acceptance) unless a test knob says
// not to; a vote that cannot be saved is not sent.
func (m *Machine) persistVote(name string, ss ServiceState) error {
	if m.cfg.knobs.noVotePersist {
		m.st.Services[name] = ss
		return nil
	}
	if m.cfg.knobs.answerUnpersisted {
		// The rule this knob breaks: an unsaved vote stays in memory,
		// where a duplicate finds it and is answered from it.
		m.st.Services[name] = ss
		if err := m.store.Save(m.st.clone()); err != nil {
			m.counters.PersistErrors++
			return err
		}
		return nil
	}
	m.save(name, ss)
	return nil
}

var (
	errRecovering = errors.New("recovering")
	errDuplicate  = errors.New("duplicate of the proposal voted for")
	errStore      = errors.New("this proxy cannot save its state")
)

// onPropose is phase 1 at a voter: the vote for an epoch.
func (m *Machine) onPropose(from string, x proposeMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	ss := m.svcState(x.Service)
	reply := voteMsg{Service: x.Service, Epoch: x.Epoch, Value: x.Value, Recovering: m.recovering}
	if _, known := s.backends[x.From]; x.Kind == kindPromoteFailed && known && !m.recovering && x.Base >= ss.Record.Epoch {
		// the proposer's promote of From failed: not a candidate here either
		s.failed[x.From] = m.clock.Now() + m.cfg.FailedPromoteHold
	}
	err := m.voteCheck(s, ss, from, x)
	switch {
	case err == nil:
		prev := ss.Accepted
		ss.MaxVoted, ss.VotedFor, ss.PrevAccepted = x.Epoch, from, prev
		if err := m.persistVote(x.Service, ss); err != nil {
			m.log.Debug("cluster: saving vote", "service", x.Service, "epoch", x.Epoch, "err", err)
			return
		}
		s.votedAt = m.clock.Now()
		m.counters.VotesGranted++
		reply.Granted, reply.Prev = true, prev
		if p := s.prop; p != nil && p.epoch == x.Epoch {
			// our own proposal at this epoch lost the duel
			m.abandon(x.Service, s, s.votedAt, fmt.Sprintf("yielded to %s at the same epoch", from))
		}
		s.decision = fmt.Sprintf("voted epoch %d for %s (%s, %s)", x.Epoch, from, x.Kind, x.Value)
	case errors.Is(err, errDuplicate):
		reply.Granted, reply.Prev = true, ss.PrevAccepted
	default:
		m.counters.VotesRefused++
		m.log.Debug("cluster: vote refused", "service", x.Service, "epoch", x.Epoch, "peer", from, "why", err)
	}
	reply.MaxVoted, reply.Accepted, reply.Record = ss.MaxVoted, ss.Accepted, ss.Record
	b, e := encodeVote(reply)
	m.send(from, b, e)
}

// voteCheck applies the vote rules; nil means vote.
func (m *Machine) voteCheck(s *service, ss ServiceState, from string, x proposeMsg) error {
	if m.recovering {
		return errRecovering
	}
	if m.storeErr != nil {
		// Not even a duplicate: its answer is on disk, but a proxy whose
		// disk fails takes no part until it works again.
		return errStore
	}
	if x.Epoch == ss.MaxVoted && from == ss.VotedFor {
		return errDuplicate
	}
	if x.Epoch < ss.MaxVoted || (x.Epoch == ss.MaxVoted && !m.outranks(from, ss)) {
		return fmt.Errorf("already voted at epoch %d", ss.MaxVoted)
	}
	if x.Epoch <= ss.Record.Epoch || x.Base < ss.Record.Epoch {
		return fmt.Errorf("record is at epoch %d", ss.Record.Epoch)
	}
	v := x.Value
	if _, ok := s.backends[v.Primary]; !ok {
		return fmt.Errorf("unknown backend %q", v.Primary)
	}
	if v.Fenced.Has(v.Primary) && !m.cfg.knobs.ignoreFenced {
		return fmt.Errorf("primary %q is in its own fenced set", v.Primary)
	}
	// A fenced backend is never made primary, except by a forced value (an
	// earlier vote may have chosen it, and phase 1 must finish that) and
	// by an unfence, which keeps the primary as it is.
	fenced := ss.Record.Fenced
	switch x.Kind {
	case kindForced:
		return nil
	case kindPause, kindResume:
		if v.Primary != ss.Record.Primary || v.Fenced != fenced || v.Paused != (x.Kind == kindPause) {
			return fmt.Errorf("%s changes more than the paused flag", x.Kind)
		}
		return nil
	}
	if v.Paused != ss.Record.Paused && !m.cfg.knobs.ignorePause {
		return fmt.Errorf("a %s proposal %s the service", x.Kind, map[bool]string{true: "pauses", false: "resumes"}[v.Paused])
	}
	if ss.Record.Paused && !m.cfg.knobs.ignorePause {
		switch {
		case x.Kind == kindFailover || x.Kind == kindBootstrap || x.Kind == kindPromoteFailed:
			return fmt.Errorf("the service is paused: no %s", x.Kind)
		case x.Kind == kindReaffirm && v.Primary != ss.Record.Primary:
			return fmt.Errorf("the service is paused: a re-affirmation may not move the primary")
		}
	}
	switch x.Kind {
	case kindUnfence:
		if v.Primary != ss.Record.Primary && x.Base == ss.Record.Epoch {
			return fmt.Errorf("unfence of %q moves the primary", x.From)
		}
		return nil
	}
	if fenced.Has(v.Primary) && !m.cfg.knobs.ignoreFenced {
		return fmt.Errorf("backend %q is fenced", v.Primary)
	}
	switch x.Kind {
	case kindFailover:
		if !m.ownDown(s, x.From) {
			return fmt.Errorf("own check does not see %q down", x.From)
		}
		if mask := s.local[x.From].SyncMask; s.cfg.RPOZero && mask != 0 && !m.cfg.knobs.ignoreRPO {
			if i := s.index(v.Primary); i < 0 || i >= 64 || mask&(1<<i) == 0 {
				return fmt.Errorf("rpo = zero: own check saw %q without %q among its synchronous standbys", x.From, v.Primary)
			}
		}
		if w := m.behind(s, v.Primary); w != "" && !m.cfg.knobs.ignorePositions {
			return fmt.Errorf("own check sees %q behind another replica since %q fell silent (%s)", v.Primary, x.From, w)
		}
	case kindBootstrap:
		if s.cfg.RoleAware && !m.cfg.knobs.bootstrapByPriority {
			if ps := m.reportedPrimaries(s); len(ps) != 1 || ps[0] != v.Primary {
				return fmt.Errorf("own check does not see %q as the one backend reporting primary (primaries: %v)", v.Primary, ps)
			}
		} else if !m.ownUp(s, v.Primary) || m.bestUp(s) != v.Primary {
			return fmt.Errorf("own check does not see %q as the best backend up", v.Primary)
		}
	case kindFence:
		if !v.Fenced.Has(x.From) {
			return fmt.Errorf("fence of %q leaves it out of the fenced set", x.From)
		}
		if v.Primary != ss.Record.Primary && !m.ownUp(s, v.Primary) {
			return fmt.Errorf("own check does not see %q up", v.Primary)
		}
	case kindSwitchover, kindReaffirm, kindPromoteFailed:
		if !m.ownUp(s, v.Primary) {
			return fmt.Errorf("own check does not see %q up", v.Primary)
		}
		if x.Kind == kindPromoteFailed && v.Primary == x.From {
			return fmt.Errorf("move away from %q proposes %q again", x.From, v.Primary)
		}
		if x.Kind == kindPromoteFailed && s.cfg.RoleAware && m.ownPrimary(s, x.From) {
			return fmt.Errorf("move away from %q, whose promote failed, but it reports primary here", x.From)
		}
		if x.Kind == kindReaffirm && s.cfg.RoleAware && v.Primary != ss.Record.Primary {
			// Roles are facts: a re-affirmation moves the primary only to
			// the backend that reports primary, from one that does not.
			if !m.ownPrimary(s, v.Primary) {
				return fmt.Errorf("own check does not see %q reporting primary", v.Primary)
			}
			if m.ownPrimary(s, ss.Record.Primary) {
				return fmt.Errorf("the record's primary %q still reports primary here", ss.Record.Primary)
			}
		}
	}
	return nil
}

// outranks reports whether a proposal from `from` at our MaxVoted epoch
// may take the vote we gave ourselves at that epoch. When two proxies
// propose one epoch at once each has voted for itself, and in a bare quorum
// both are refused until their random backoffs part them, round after
// round. Instead the lower name yields: it gives its vote to the higher one
// and drops its own proposal, which settles the duel in one round trip.
// Only a proposer's vote for itself moves, and only before it accepted its
// own value (phase 2 starts with that acceptance), so the proposal it drops
// never sent an accept and every vote at an epoch still counts toward at
// most one proposal that reaches phase 2. Votes given to other proxies never
// move: with two values accepted at one epoch, a later phase 1 could not
// tell which one may have been chosen.
func (m *Machine) outranks(from string, ss ServiceState) bool {
	if m.cfg.knobs.anyVoteYields && ss.VotedFor != "" {
		return from > ss.VotedFor && ss.Accepted.Epoch < ss.MaxVoted
	}
	return ss.VotedFor == m.cfg.Name && from > m.cfg.Name && ss.Accepted.Epoch < ss.MaxVoted
}

// onAccept is phase 2 at a voter: only the proxy it voted for at this
// epoch (or an epoch above any vote) gets its value accepted.
func (m *Machine) onAccept(from string, x acceptMsg) {
	s := m.svcs[x.Service]
	if s == nil {
		m.counters.UnknownService++
		return
	}
	ss := m.svcState(x.Service)
	reply := acceptedMsg{Service: x.Service, Epoch: x.Epoch, Value: x.Value}
	_, known := s.backends[x.Value.Primary]
	switch {
	case m.recovering || !known || m.storeErr != nil:
	case ss.Accepted.Epoch == x.Epoch && ss.Accepted.Value == x.Value:
		reply.OK = true
	case x.Epoch > ss.Accepted.Epoch && x.Epoch > ss.Record.Epoch &&
		((x.Epoch == ss.MaxVoted && from == ss.VotedFor) || x.Epoch > ss.MaxVoted):
		if x.Epoch > ss.MaxVoted {
			ss.MaxVoted, ss.VotedFor, ss.PrevAccepted = x.Epoch, from, ss.Accepted
			s.votedAt = m.clock.Now()
		}
		ss.Accepted = Ballot{Epoch: x.Epoch, Value: x.Value}
		if err := m.persistVote(x.Service, ss); err != nil {
			m.log.Debug("cluster: saving acceptance", "service", x.Service, "epoch", x.Epoch, "err", err)
			return
		}
		reply.OK = true
	}
	reply.MaxVoted, reply.Accepted, reply.Record = ss.MaxVoted, ss.Accepted, ss.Record
	b, e := encodeAccepted(reply)
	m.send(from, b, e)
}
