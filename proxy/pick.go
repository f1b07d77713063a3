package proxy

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/failover"
)

// candidate is what the pure target picker knows about one backend.
type candidate struct {
	name     string
	priority int
	order    int // position in ServiceConfig.Backends
	h        Health
	draining bool // no failover to it; it may stay the target
	fenced   bool // no failover to it, and not the target either
	region   string
}

// decision is the pure picker's verdict for an active-passive service.
type decision struct {
	target string
	// pending is set when target was chosen as a standby that must still be
	// promoted: it keeps the target sticky even if another backend starts
	// reporting primary meanwhile (a restarted old primary).
	pending   string
	from      string // with pending: the target it replaces
	reason    string
	primaries []string // set only when two or more report primary
}

func (c *candidate) up() bool { return c.h.Known && c.h.Up }

// lagWithin reports whether h's lag is within both bounds; a bound that is
// set excludes an unknown lag of its kind.
func lagWithin(h Health, maxLag time.Duration, maxBytes int64) bool {
	if maxLag > 0 && (h.Lag < 0 || h.Lag > maxLag) {
		return false
	}
	if maxBytes > 0 && (h.LagBytes < 0 || h.LagBytes > maxBytes) {
		return false
	}
	return true
}

func lagString(h Health) string {
	var parts []string
	if h.LagBytes >= 0 {
		parts = append(parts, fmt.Sprintf("%dB", h.LagBytes))
	}
	if h.Lag >= 0 {
		parts = append(parts, h.Lag.String())
	}
	if len(parts) == 0 {
		return "lag unknown"
	}
	return "lag " + strings.Join(parts, "/")
}

// chooseTarget is the local active-passive decision (not used for External
// services). cur is the current target ("" for none), pending the standby
// awaiting promotion, if any, and from the target it replaced.
func chooseTarget(cfg *ServiceConfig, cands []candidate, cur, pending, from string) decision {
	var primaries []string
	var curC *candidate
	onePrimary := "" // the only backend that reports primary, unless fenced
	for i := range cands {
		c := &cands[i]
		if c.up() && c.h.Role == RolePrimary {
			primaries = append(primaries, c.name)
			if !c.fenced {
				onePrimary = c.name
			}
		}
		if c.name == cur {
			curC = c
		}
	}
	roleAware := cfg.roleAware()
	curUp := curC != nil && curC.up() && !curC.fenced

	if len(primaries) >= 2 {
		list := strings.Join(primaries, ", ")
		if curUp && (!roleAware || curC.h.Role == RolePrimary) {
			return decision{target: cur, primaries: primaries,
				reason: fmt.Sprintf("dual primary (%s): keeping %s, not moving writes", list, cur)}
		}
		return decision{primaries: primaries,
			reason: fmt.Sprintf("dual primary (%s): refusing to choose", list)}
	}

	// The successor of the current target: the one policy a cluster asks too.
	best, noBest := successor(cfg, cands, cur)

	if roleAware {
		if curUp {
			switch {
			case curC.h.Role == RolePrimary:
				if cfg.FailbackAuto && best != nil && best.name != cur && best.priority > curC.priority {
					return decision{target: best.name, pending: best.name, from: cur,
						reason: fmt.Sprintf("failback to %s (priority %d > %d)", best.name, best.priority, curC.priority)}
				}
				return decision{target: cur, reason: cur + " is primary"}
			case pending == cur && len(primaries) == 1 && onePrimary != "" && onePrimary != from:
				// Another backend than the one replaced was promoted
				// (Patroni, an operator): follow it. Only the replaced
				// one, back as primary after a restart, is kept away.
				return decision{target: onePrimary,
					reason: fmt.Sprintf("%s reports primary (promoted elsewhere) while %s awaited promotion", onePrimary, cur)}
			case pending == cur:
				return decision{target: cur, pending: cur, from: from, reason: cur + " chosen, awaiting promotion"}
			case len(primaries) == 1 && onePrimary != "":
				return decision{target: onePrimary,
					reason: fmt.Sprintf("%s reports %s; %s is primary", cur, curC.h.Role, onePrimary)}
			}
		} else if len(primaries) == 1 && onePrimary != "" {
			return decision{target: onePrimary, reason: onePrimary + " is primary"}
		}
		// No usable primary: a standby may be chosen only once every backend
		// has reported, since an unknown one may be the primary.
		for i := range cands {
			if !cands[i].h.Known {
				return decision{reason: "waiting for the first health report of " + cands[i].name}
			}
		}
		if best == nil {
			if failover.Waiting(noBest) && cur != "" {
				return decision{target: cur, reason: noBest} // for a moment, not a move
			}
			return decision{reason: noEligible(noBest)}
		}
		return decision{target: best.name, pending: best.name, from: cur,
			reason: fmt.Sprintf("failover to %s (priority %d, %s), awaiting promotion", best.name, best.priority, lagString(best.h))}
	}

	if curUp && !(cfg.FailbackAuto && best != nil && best.priority > curC.priority) {
		return decision{target: cur, reason: cur + " is up"}
	}
	if best == nil {
		for i := range cands {
			if !cands[i].h.Known {
				return decision{reason: "waiting for the first health report of " + cands[i].name}
			}
		}
		return decision{reason: noEligible(noBest)}
	}
	// Not on a lower-ranked backend while a better-ranked one has not
	// reported, or, with no target, is rising: the choice would stick.
	if why := failover.ChoiceWait(failoverCandidates(cands), best.name, cur == ""); why != "" {
		return decision{reason: why}
	}
	why := "highest-priority healthy backend"
	if cur != "" && curUp {
		why = fmt.Sprintf("failback (priority %d > %d)", best.priority, curC.priority)
	} else if cur != "" {
		why = cur + " down"
	}
	return decision{target: best.name, reason: fmt.Sprintf("%s: %s", best.name, why)}
}

func noEligible(why string) string { return "no eligible backend: " + why }

func failoverRole(r Role) failover.Role {
	switch r {
	case RolePrimary:
		return failover.RolePrimary
	case RoleReplica:
		return failover.RoleReplica
	}
	return failover.RoleUnknown
}

// failoverCandidates is what the failover policy is told of cands (Sync
// aside: it depends on the primary being replaced).
func failoverCandidates(cands []candidate) []failover.Candidate {
	fc := make([]failover.Candidate, len(cands))
	for i, c := range cands {
		fc[i] = failover.Candidate{Name: c.name, Priority: c.priority, Order: c.order, Up: c.up(), Role: failoverRole(c.h.Role),
			LagBytes: c.h.LagBytes, Lag: c.h.Lag, Fenced: c.fenced, Draining: c.draining,
			Unreported: !c.h.Known, Rising: c.h.Rising}
		fc[i].Position, fc[i].Pos, fc[i].Upstream, fc[i].Region = c.h.Position, posState(c.h), c.h.Upstream, c.region
		fc[i].ReplicasUnread = c.h.ReplicasUnread
	}
	return fc
}

// successor asks the failover policy for the backend that takes over from
// cur ("" and why when none).
func successor(cfg *ServiceConfig, cands []candidate, cur string) (*candidate, string) {
	fc := failoverCandidates(cands)
	for _, p := range cands {
		if p.name == cur {
			for i, c := range cands {
				fc[i].Sync = c.order < 64 && p.h.SyncMask&(1<<c.order) != 0
			}
		}
	}
	pol := failover.Policy{RoleAware: cfg.roleAware(), MaxLag: cfg.MaxLagOnFailover, MaxLagBytes: cfg.MaxLagBytesOnFailover, RPOZero: cfg.RPOZero,
		RegionOrder: cfg.RegionOrder}
	name, why := failover.Successor(pol, fc, cur)
	for i := range cands {
		if cands[i].name == name {
			return &cands[i], ""
		}
	}
	return nil, why
}

func posState(h Health) failover.PosState {
	switch {
	case h.Position < 0:
		return failover.NoPosition
	case h.PositionFresh:
		return failover.FreshPosition
	}
	return failover.StalePosition
}

// balancedEligible says whether a balanced service may use a backend.
func balancedEligible(cfg *ServiceConfig, h Health) bool {
	if !h.Known || !h.Up {
		return false
	}
	switch cfg.Want {
	case RolePrimary:
		return h.Role == RolePrimary
	case RoleReplica:
		return h.Role == RoleReplica && lagWithin(h, cfg.MaxLag, cfg.MaxLagBytes)
	}
	return true
}

// balancer state of one backend, guarded by the service's lock.
type wrrState struct {
	current int // smooth weighted round-robin accumulator
}

func weightOf(b *Backend) int {
	if b.Weight <= 0 {
		return 1
	}
	return b.Weight
}

// orderBalanced returns bs (eligible backends, in config order) reordered so
// that the first is the balancer's choice and the rest are fallbacks for a
// failed dial. It updates the round-robin state.
func orderBalanced(bal Balance, bs []*backend) []*backend {
	if len(bs) <= 1 {
		return bs
	}
	switch bal {
	case LeastConn:
		// Compare active/weight by cross-multiplying, on a snapshot so the
		// sort sees consistent values; ties rotate via round-robin state.
		type lc struct {
			b      *backend
			active int64
			weight int64
		}
		snap := make([]lc, len(bs))
		for i, b := range bs {
			snap[i] = lc{b, b.active.Load(), int64(weightOf(&b.cfg))}
		}
		less := func(x, y lc) bool { return x.active*y.weight < y.active*x.weight }
		sort.SliceStable(snap, func(i, j int) bool { return less(snap[i], snap[j]) })
		n := 1
		for n < len(snap) && !less(snap[0], snap[n]) {
			n++
		}
		for i := range snap {
			bs[i] = snap[i].b
		}
		if n > 1 {
			lead := swrr(bs[:n])
			bs[0], bs[lead] = bs[lead], bs[0]
		}
	default:
		i := swrr(bs)
		bs[0], bs[i] = bs[i], bs[0]
	}
	return bs
}

// swrr is nginx's smooth weighted round-robin: returns the index chosen.
func swrr(bs []*backend) int {
	total, best := 0, 0
	for i, b := range bs {
		w := weightOf(&b.cfg)
		b.wrr.current += w
		total += w
		if b.wrr.current > bs[best].wrr.current {
			best = i
		}
	}
	bs[best].wrr.current -= total
	return best
}
