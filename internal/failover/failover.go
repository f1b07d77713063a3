// Package failover is the one failover policy of quorumproxy: which
// backend takes over an active-passive service from its primary, and
// whether the old primary must be fenced. A proxy alone (package proxy)
// and a cluster (package cluster) both ask it, so that they behave the
// same for the same configuration; each supplies what it knows of the
// backends (its own checks, or a quorum's) and keeps its own rules about
// when to move.
//
//	next, why := failover.Successor(failover.Policy{RoleAware: true, MaxLagBytes: 1 << 20}, cands, "pg1")
//	if next == "" {
//		log.Printf("no failover: %s", why)
//	}
package failover

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Role is what a backend reports itself to be.
type Role uint8

// Roles a check can report.
const (
	RoleUnknown Role = iota
	RolePrimary
	RoleReplica
)

// PosState says what a candidate's replication position is worth.
type PosState uint8

// Position states. A position ranks candidates only when it was read after
// the old primary's last sign of life: before that every replica was still
// receiving, each read at its own moment, and the figures do not compare.
const (
	NoPosition    PosState = iota // its checks report no replication position
	StalePosition                 // they do, but none read since the primary's last sign of life
	FreshPosition                 // Position was read after it
)

// Policy is what a service's configuration says about failover.
type Policy struct {
	// RoleAware: the service's checks report roles. A successor must then
	// report replica (or, the one other backend that reports primary, is
	// one already), and the old primary needs no fence.
	RoleAware bool
	// MaxLag and MaxLagBytes bound a successor's replication lag; zero or
	// negative means no bound. A bound excludes a backend whose lag of
	// that kind is unknown.
	MaxLag      time.Duration
	MaxLagBytes int64
	// RPOZero: when the primary is down, only a candidate it reported
	// synchronous at its last good check (Candidate.Sync) may take over;
	// else there is none.
	RPOZero bool
	// RegionOrder ranks the regions a successor may be in, after the old
	// primary's own: a candidate in the primary's region first, then in
	// the order given, then the rest.
	RegionOrder []string
}

// Candidate is one backend as the caller sees it.
type Candidate struct {
	Name     string
	Priority int // higher is preferred
	Order    int // position in the configuration, the last tie-break
	// Up: healthy in the caller's view (its own check, or a quorum's).
	Up   bool
	Role Role
	// Lag behind the primary; negative: unknown.
	LagBytes int64
	Lag      time.Duration
	// Position is how far the replica holds the old primary's log
	// (PostgreSQL's received LSN, Redis's replica offset), worth what Pos
	// says.
	Position int64
	Pos      PosState
	// Sync: the old primary reported it a synchronous standby at its last
	// good check (RPOZero).
	Sync bool
	// Upstream is the backend it replicates from ("" when unknown or not
	// one of the service's): a replica of another replica (a cascade)
	// takes over only when no direct replica of the old primary can.
	Upstream string
	// Region is the candidate's region label ("" for none).
	Region string
	// ReplicasUnread, on the primary being replaced: some replica has not
	// been read since it began to fail, so stale positions are about to
	// turn fresh and the ranking waits for them.
	ReplicasUnread bool
	// Fenced, Draining and Held are kept out: fenced by an operator or by
	// a failover, drained by an operator, held out by the caller (a
	// failed promote, for a while).
	Fenced, Draining, Held bool
	// Unreported: the caller has had no health report of it yet. Rising:
	// not up, but its last checks succeeded (up after rise of them). Only
	// ChoiceWait reads them.
	Unreported, Rising bool
}

// ChoiceWait says why a choice by priority must not settle on best yet
// ("" when it may): a candidate ranked above it (priority, then order)
// that the caller has no report of, or, for a first choice (no target
// yet), one that is rising. Backends started together come up a check
// apart, and under manual failback the first choice sticks (seen: b up
// 10 ms before a kept the traffic). Fenced and draining candidates are
// never chosen, so they hold nothing back. A proxy alone and a new
// cluster's first primary ask the same.
func ChoiceWait(cands []Candidate, best string, first bool) string {
	i := slices.IndexFunc(cands, func(c Candidate) bool { return c.Name == best })
	if i < 0 {
		return ""
	}
	b := cands[i]
	for _, c := range cands {
		if c.Name == best || c.Fenced || c.Draining || c.Priority < b.Priority || (c.Priority == b.Priority && c.Order > b.Order) {
			continue
		}
		switch {
		case c.Unreported:
			return "waiting for the first health report of " + c.Name
		case first && c.Rising && !c.Up:
			return "waiting for " + c.Name + ", better ranked, to finish rising"
		}
	}
	return ""
}

// FenceOldPrimary reports whether a failover must fence the primary it
// moves away from: without roles, nothing else would keep it out of a
// later failover once it is up again (it may hold writes the new primary
// never saw); with roles it must report replica to be picked again.
func FenceOldPrimary(p Policy) bool { return !p.RoleAware }

// Successor picks the backend that takes over from primary ("" for none,
// with why). With roles, the one other healthy backend that already
// reports primary is the successor whatever its priority (promoting a
// replica would make a second primary), and with two there is none.
// Otherwise: healthy, not fenced, drained or held, a replica when the
// checks know roles, lag within the bounds; then the furthest replication
// position read since the old primary's last sign of life (the one that
// holds the most of its acknowledged writes), then the old primary's region
// and Policy.RegionOrder, then the highest priority,
// then the least lag (bytes first, then time; unknown last), then the
// configuration's order. A replica of another replica comes after every
// direct replica of the old primary (or of unknown upstream). With RPOZero and the old primary down, only a
// standby it reported synchronous may take over. When the old primary is down and an eligible
// candidate's position is not yet fresh while another's is, there is none
// yet: the ranking waits for that read (its check was asked for when the
// primary's first check failed) rather than guess.
func Successor(p Policy, cands []Candidate, primary string) (string, string) {
	if p.RoleAware {
		var ps []string
		for _, c := range cands {
			if c.Name != primary && c.Up && c.Role == RolePrimary && !c.Fenced && !c.Held {
				ps = append(ps, c.Name)
			}
		}
		switch {
		case len(ps) >= 2:
			return "", fmt.Sprintf("dual primary: %s all report primary", strings.Join(ps, ", "))
		case len(ps) == 1:
			return ps[0], ""
		}
	}
	why := "no other backend"
	var best, cascaded *Candidate
	var lagging []string
	zero := p.RPOZero && primaryDown(cands, primary)
	rk := ranker{order: p.RegionOrder}
	for i := range cands {
		if cands[i].Name == primary {
			rk.home = cands[i].Region
		}
	}
	notSync := false
	for i := range cands {
		c := &cands[i]
		switch {
		case c.Name == primary:
			continue
		case c.Fenced:
			why = "every other backend is fenced (quorumproxy unfence)"
			continue
		case c.Draining:
			why = "every other backend is draining"
			continue
		case c.Held:
			why = "held out after a failed promote"
			continue
		case !c.Up:
			why = "no other backend is up"
			continue
		case p.RoleAware && c.Role != RoleReplica:
			why = "no healthy backend reports itself a replica"
			continue
		case zero && !c.Sync:
			notSync = true
			continue
		case !LagWithin(p, c.LagBytes, c.Lag):
			lagging = append(lagging, fmt.Sprintf("%s (%s)", c.Name, lagString(c.LagBytes, c.Lag)))
			continue
		}
		if c.Upstream != "" && c.Upstream != primary {
			if cascaded == nil || rk.better(c, cascaded) {
				cascaded = c
			}
			continue
		}
		if best == nil || rk.better(c, best) {
			best = c
		}
	}
	if best == nil {
		best = cascaded
	}
	if best != nil {
		if w := waitingFor(cands, primary, best); w != "" {
			return "", waitingPrefix + w + " read after the primary's last check"
		}
		return best.Name, ""
	}
	if len(lagging) > 0 {
		sort.Strings(lagging)
		return "", "lag beyond bound: " + strings.Join(lagging, ", ")
	}
	if zero {
		// The one reason an operator must read: the others follow from it.
		if notSync || why == "no other backend is up" {
			return "", fmt.Sprintf("rpo = zero: no standby that %s reported synchronous at its last good check is up", primary)
		}
	}
	return "", why
}

const waitingPrefix = "waiting for the replication position of "

// Waiting reports whether why, from Successor, says that a successor will
// be known in a moment (a replica's check is under way): the caller keeps
// things as they are rather than acting on "no successor".
func Waiting(why string) bool { return strings.HasPrefix(why, waitingPrefix) }

// waitingFor names an eligible candidate whose position is not fresh yet
// while best's is, or best itself while none is fresh and the replicas'
// reads since the old primary failed are under way, the old primary being
// down ("" when the ranking may go on). eligible is judged as Successor does: best's own filters passed, so
// only the others need checking.
func waitingFor(cands []Candidate, primary string, best *Candidate) string {
	if !primaryDown(cands, primary) {
		return "" // a switchover or failback: nothing is frozen
	}
	if best.Pos != FreshPosition {
		// None is fresh: wait only while the reads that would make them so
		// are under way (a primary marked down within a fast interval or
		// two of its first failure, before the replicas' checks came back).
		if best.Pos == StalePosition && replicasUnread(cands, primary) {
			return best.Name
		}
		return ""
	}
	for i := range cands {
		c := &cands[i]
		if c.Name != primary && c.Pos == StalePosition && c.Up && !c.Fenced && !c.Draining && !c.Held &&
			c.Role == best.Role {
			return c.Name
		}
	}
	return ""
}

func replicasUnread(cands []Candidate, primary string) bool {
	for i := range cands {
		if cands[i].Name == primary {
			return cands[i].ReplicasUnread
		}
	}
	return false
}

// primaryDown reports whether the primary being replaced is not up (or
// not among the candidates): a failover, not a switchover or failback.
func primaryDown(cands []Candidate, primary string) bool {
	for i := range cands {
		if c := &cands[i]; c.Name == primary && c.Up {
			return false
		}
	}
	return true
}

// LagWithin reports whether a lag is within the policy's bounds; a bound
// that is set excludes an unknown lag of its kind.
func LagWithin(p Policy, bytes int64, lag time.Duration) bool {
	if p.MaxLag > 0 && (lag < 0 || lag > p.MaxLag) {
		return false
	}
	if p.MaxLagBytes > 0 && (bytes < 0 || bytes > p.MaxLagBytes) {
		return false
	}
	return true
}

// ranker orders candidates for a failover from a primary in region home.
type ranker struct {
	home  string
	order []string
}

// region ranks a candidate's region: the old primary's first, then the
// configured order, then any other.
func (r ranker) region(c *Candidate) int {
	if r.home != "" && c.Region == r.home {
		return 0
	}
	if i := slices.Index(r.order, c.Region); i >= 0 && c.Region != "" {
		return 1 + i
	}
	return 1 + len(r.order)
}

// better ranks candidates: the furthest fresh position (what it holds of
// the old primary's writes comes first), then region, then priority, then
// least lag, then order.
func (r ranker) better(a, b *Candidate) bool {
	if a.Pos == FreshPosition && b.Pos == FreshPosition && a.Position != b.Position {
		return a.Position > b.Position
	}
	if a.Pos == FreshPosition && b.Pos == StalePosition {
		return true
	}
	if b.Pos == FreshPosition && a.Pos == StalePosition {
		return false
	}
	if ra, rb := r.region(a), r.region(b); ra != rb {
		return ra < rb
	}
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if c := cmpLag(a, b); c != 0 {
		return c < 0
	}
	return a.Order < b.Order
}

// cmpLag orders by known lag, bytes first, then time; unknown last.
func cmpLag(a, b *Candidate) int {
	if (a.LagBytes >= 0) != (b.LagBytes >= 0) {
		if a.LagBytes >= 0 {
			return -1
		}
		return 1
	}
	if a.LagBytes != b.LagBytes {
		if a.LagBytes < b.LagBytes {
			return -1
		}
		return 1
	}
	if (a.Lag >= 0) != (b.Lag >= 0) {
		if a.Lag >= 0 {
			return -1
		}
		return 1
	}
	switch {
	case a.Lag < b.Lag:
		return -1
	case a.Lag > b.Lag:
		return 1
	}
	return 0
}

func lagString(bytes int64, lag time.Duration) string {
	var parts []string
	if bytes >= 0 {
		parts = append(parts, fmt.Sprintf("%dB", bytes))
	}
	if lag >= 0 {
		parts = append(parts, lag.String())
	}
	if len(parts) == 0 {
		return "lag unknown"
	}
	return "lag " + strings.Join(parts, "/")
}
