package cluster

import "fmt"

// OpState is where an operator's request stands.
type OpState string

// The states of an Operation. Done and Failed are final.
const (
	OpPending   OpState = "pending"   // asked for, not decided yet
	OpCommitted OpState = "committed" // decided; its actions on the databases are under way
	OpDone      OpState = "done"      // decided, acted on and verified
	OpFailed    OpState = "failed"    // dropped, refused or not carried out; Detail says why
)

// Operation is an operator's switchover, fence or unfence and how it
// ended, so that the command that asked can wait for the outcome.
type Operation struct {
	ID      uint64
	Kind    string // "switchover", "fence", "unfence", "pause", "resume"
	Backend string // the switchover's target, or the backend fenced or unfenced
	State   OpState
	Epoch   uint64 // the epoch that decided it (0 before)
	Detail  string

	primary   string // the primary the decision made, to verify
	fenceSeen bool   // the fence hook on Backend ran (or there is none)
}

// Final reports whether the operation's outcome is known.
func (o Operation) Final() bool { return o.State == OpDone || o.State == OpFailed }

func (m *Machine) newOp(s *service, kind, backend string) uint64 {
	m.opSeq++
	s.op = &Operation{ID: m.opSeq, Kind: kind, Backend: backend, State: OpPending, Detail: "waiting for the vote"}
	return m.opSeq
}

// opEnd finishes the pending or committed operation.
func (m *Machine) opEnd(s *service, st OpState, detail string) {
	if op := s.op; op != nil && !op.Final() {
		op.State, op.Detail = st, detail
	}
}

// opDecided moves a pending operation on when a record lands: committed
// if the record carries it out, failed if another decision came first.
func (m *Machine) opDecided(s *service, rec Record, old Record) {
	op := s.op
	if op == nil || op.State != OpPending {
		return
	}
	ok := false
	switch op.Kind {
	case "switchover":
		ok = rec.Primary == op.Backend
	case "fence":
		ok = rec.Fenced.Has(op.Backend)
	case "unfence":
		ok = !rec.Fenced.Has(op.Backend)
	case "pause":
		ok = rec.Paused
	case "resume":
		ok = !rec.Paused
	}
	if !ok {
		m.opEnd(s, OpFailed, fmt.Sprintf("epoch %d was decided first: %s", rec.Epoch, rec.Value))
		return
	}
	op.State, op.Epoch, op.Detail = OpCommitted, rec.Epoch, fmt.Sprintf("committed at epoch %d", rec.Epoch)
	if rec.Primary != old.Primary {
		op.primary = rec.Primary
	}
	if op.Kind != "fence" || !s.hooks.Fence {
		op.fenceSeen = true
	}
	m.opCheck(s)
}

// opFenceResult records the fence hook's outcome on a fenced backend.
func (m *Machine) opFenceResult(s *service, a Action, r ActionResult) {
	op := s.op
	if op == nil || op.Final() || op.Kind != "fence" || op.Backend != a.Backend || op.Epoch != a.Epoch {
		return
	}
	if r.Ran && !r.OK {
		m.opEnd(s, OpFailed, fmt.Sprintf("committed at epoch %d, but the fence hook on %q failed: %s", a.Epoch, a.Backend, r.Detail))
		return
	}
	op.fenceSeen = true
	m.opCheck(s)
}

// opPromoted notes that the promote of epoch verified (or had nothing to do).
func (m *Machine) opPromoted(s *service, epoch uint64, backend string) {
	if op := s.op; op != nil && op.State == OpCommitted && op.Epoch == epoch && op.primary == backend {
		op.primary = ""
		m.opCheck(s)
	}
}

// opFailed fails a committed operation whose promote could not be done.
func (m *Machine) opFailed(s *service, epoch uint64, why string) {
	if op := s.op; op != nil && op.State == OpCommitted && op.Epoch == epoch {
		m.opEnd(s, OpFailed, why)
	}
}

// opCheck finishes a committed operation whose actions are verified, and
// fails one that a later decision undid.
func (m *Machine) opCheck(s *service) {
	op := s.op
	if op == nil || op.State != OpCommitted {
		return
	}
	ss := m.svcState(s.cfg.Name)
	if op.primary != "" && ss.Record.Primary != op.primary {
		m.opEnd(s, OpFailed, fmt.Sprintf("epoch %d moved the service to %q before %q was verified primary", ss.Record.Epoch, ss.Record.Primary, op.primary))
		return
	}
	if !op.fenceSeen {
		return
	}
	if op.primary != "" {
		// Verified by this proxy's own promote, or, when another proxy
		// committed, by the role the new primary reports here.
		mine := ss.Intent.Epoch == op.Epoch
		switch {
		case mine && s.act.held != "":
			op.Detail = s.act.held
			return
		case mine && !ss.Intent.Done:
			return
		case !mine && s.cfg.RoleAware && !m.ownPrimary(s, op.primary):
			return
		}
	}
	if s.act.held == "" {
		m.opEnd(s, OpDone, fmt.Sprintf("done at epoch %d", op.Epoch))
	}
}
