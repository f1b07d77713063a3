package failover

import (
	"strings"
	"testing"
	"time"
)

// TestSuccessor is the one table of the failover ranking that a proxy
// alone and a cluster share.
func TestSuccessor(t *testing.T) {
	rep := func(name string, prio int, bytes int64, lag time.Duration) Candidate {
		return Candidate{Name: name, Priority: prio, Up: true, Role: RoleReplica, LagBytes: bytes, Lag: lag}
	}
	any := func(name string, prio int) Candidate {
		return Candidate{Name: name, Priority: prio, Up: true, LagBytes: -1, Lag: -1}
	}
	down := func(name string, prio int) Candidate {
		return Candidate{Name: name, Priority: prio, LagBytes: -1, Lag: -1}
	}
	prim := func(name string, prio int) Candidate {
		return Candidate{Name: name, Priority: prio, Up: true, Role: RolePrimary, LagBytes: 0, Lag: 0}
	}
	with := func(c Candidate, f func(*Candidate)) Candidate { f(&c); return c }
	pos := func(c Candidate, at int64, st PosState) Candidate { c.Position, c.Pos = at, st; return c }
	roles := Policy{RoleAware: true}
	zero := Policy{RoleAware: true, RPOZero: true}
	sync := func(c Candidate) Candidate { c.Sync = true; return c }
	up := func(c Candidate, upstream string) Candidate { c.Upstream = upstream; return c }
	in := func(c Candidate, region string) Candidate { c.Region = region; return c }
	cases := []struct {
		name  string
		p     Policy
		cands []Candidate
		want  string
		why   string // substring when want is ""
	}{
		{"highest priority up", Policy{}, []Candidate{down("a", 9), any("b", 5), any("c", 7)}, "c", ""},
		{"the primary is never its own successor", Policy{}, []Candidate{any("a", 9), any("b", 5)}, "b", ""},
		{"nothing up", Policy{}, []Candidate{down("a", 9), down("b", 5)}, "", "no other backend is up"},
		{"only the primary", Policy{}, []Candidate{any("a", 9)}, "", "no other backend"},
		{"fenced, drained and held are out", Policy{},
			[]Candidate{down("a", 9), with(any("b", 8), func(c *Candidate) { c.Fenced = true }),
				with(any("c", 7), func(c *Candidate) { c.Draining = true }), with(any("d", 6), func(c *Candidate) { c.Held = true }), any("e", 1)},
			"e", ""},
		{"every other fenced", Policy{}, []Candidate{down("a", 9), with(any("b", 8), func(c *Candidate) { c.Fenced = true })}, "", "fenced"},
		{"roles: a replica, not one of unknown role", roles, []Candidate{down("a", 9), any("b", 8), rep("c", 1, 0, 0)}, "c", ""},
		{"roles: the one other primary whatever its priority", roles, []Candidate{down("a", 9), rep("b", 8, 0, 0), prim("c", 1)}, "c", ""},
		{"roles: two other primaries, none", roles, []Candidate{down("a", 9), prim("b", 8), prim("c", 1)}, "", "dual primary: b, c"},
		{"roles: a fenced primary does not count", roles, []Candidate{down("a", 9), rep("b", 8, 0, 0), with(prim("c", 1), func(c *Candidate) { c.Fenced = true })}, "b", ""},
		{"roles: no replica", roles, []Candidate{down("a", 9), any("b", 8)}, "", "reports itself a replica"},
		{"equal priority: least lag in bytes", roles, []Candidate{down("a", 9), rep("b", 5, 90, 0), rep("c", 5, 10, 0)}, "c", ""},
		{"equal priority: known lag beats unknown", roles, []Candidate{down("a", 9), rep("b", 5, -1, -1), rep("c", 5, 10, 0)}, "c", ""},
		{"equal priority: then time", roles, []Candidate{down("a", 9), rep("b", 5, -1, 2*time.Second), rep("c", 5, -1, time.Second)}, "c", ""},
		{"equal everything: configuration order", roles, []Candidate{down("a", 9), with(rep("b", 5, 10, 0), func(c *Candidate) { c.Order = 2 }), with(rep("c", 5, 10, 0), func(c *Candidate) { c.Order = 1 })}, "c", ""},
		{"priority beats lag", roles, []Candidate{down("a", 9), rep("b", 6, 1000, 0), rep("c", 5, 0, 0)}, "b", ""},
		{"byte bound", Policy{RoleAware: true, MaxLagBytes: 100}, []Candidate{down("a", 9), rep("b", 6, 500, 0), rep("c", 5, 50, 0)}, "c", ""},
		{"byte bound excludes unknown", Policy{RoleAware: true, MaxLagBytes: 100}, []Candidate{down("a", 9), rep("b", 6, -1, 0), rep("c", 5, 50, 0)}, "c", ""},
		{"time bound", Policy{RoleAware: true, MaxLag: time.Second}, []Candidate{down("a", 9), rep("b", 6, 0, 2*time.Second), rep("c", 5, 0, time.Millisecond)}, "c", ""},
		{"time bound excludes unknown", Policy{RoleAware: true, MaxLag: time.Second}, []Candidate{down("a", 9), rep("b", 6, 0, -1)}, "", "lag beyond bound: b (lag 0B)"},
		{"nothing within the bound", Policy{RoleAware: true, MaxLagBytes: 100}, []Candidate{down("a", 9), rep("b", 6, 500, -1), rep("c", 5, 101, -1)}, "", "lag beyond bound: b (lag 500B), c (lag 101B)"},
		{"fresh position beats priority", roles, []Candidate{down("a", 9), pos(rep("b", 9, -1, -1), 100, FreshPosition), pos(rep("c", 1, -1, -1), 200, FreshPosition)}, "c", ""},
		{"equal fresh positions: priority", roles, []Candidate{down("a", 9), pos(rep("b", 9, -1, -1), 200, FreshPosition), pos(rep("c", 1, -1, -1), 200, FreshPosition)}, "b", ""},
		{"stale positions do not rank", roles, []Candidate{down("a", 9), pos(rep("b", 9, -1, -1), 100, StalePosition), pos(rep("c", 1, -1, -1), 200, StalePosition)}, "b", ""},
		{"waits for a stale position while another is fresh", roles, []Candidate{down("a", 9), pos(rep("b", 9, -1, -1), 100, StalePosition), pos(rep("c", 1, -1, -1), 200, FreshPosition)}, "", "waiting for the replication position of b"},
		{"a stale one that is down is not waited for", roles, []Candidate{down("a", 9), pos(with(rep("b", 9, -1, -1), func(c *Candidate) { c.Up = false }), 100, StalePosition), pos(rep("c", 1, -1, -1), 200, FreshPosition)}, "c", ""},
		{"none fresh while the replicas' reads are under way: wait", roles, []Candidate{with(down("a", 9), func(c *Candidate) { c.ReplicasUnread = true }), pos(rep("b", 9, -1, -1), 100, StalePosition), pos(rep("c", 1, -1, -1), 200, StalePosition)}, "", "waiting for the replication position of b"},
		{"none fresh, no read under way: priority", roles, []Candidate{down("a", 9), pos(rep("b", 9, -1, -1), 100, StalePosition), pos(rep("c", 1, -1, -1), 200, StalePosition)}, "b", ""},
		{"no positions at all: no wait", roles, []Candidate{with(down("a", 9), func(c *Candidate) { c.ReplicasUnread = true }), rep("b", 9, -1, -1), rep("c", 1, -1, -1)}, "b", ""},
		{"the primary up: no wait", roles, []Candidate{prim("a", 9), pos(rep("b", 9, -1, -1), 100, StalePosition), pos(rep("c", 1, -1, -1), 200, FreshPosition)}, "c", ""},
		{"rpo zero: only a synchronous standby", zero, []Candidate{down("a", 9), rep("b", 9, 0, 0), sync(rep("c", 1, 500, 0))}, "c", ""},
		{"rpo zero: none synchronous and up", zero, []Candidate{down("a", 9), rep("b", 9, 0, 0), sync(with(rep("c", 1, 0, 0), func(c *Candidate) { c.Up = false }))}, "", "rpo = zero: no standby that a reported synchronous"},
		{"rpo zero: the primary up (a failback) is not bound", zero, []Candidate{prim("a", 9), rep("b", 9, 0, 0)}, "b", ""},
		{"a cascaded replica only when no direct one", roles, []Candidate{down("a", 9), up(rep("b", 9, 0, 0), "c"), up(rep("c", 1, 0, 0), "a")}, "c", ""},
		{"a cascaded replica when it is the only one", roles, []Candidate{down("a", 9), up(rep("b", 9, 0, 0), "c"), up(with(rep("c", 1, 0, 0), func(c *Candidate) { c.Up = false }), "a")}, "b", ""},
		{"unknown upstreams are not cascades", roles, []Candidate{down("a", 9), rep("b", 9, 0, 0), up(rep("c", 1, 0, 0), "a")}, "b", ""},
		{"the primary's region before priority", Policy{RoleAware: true, RegionOrder: []string{"us"}},
			[]Candidate{in(down("a", 9), "eu"), in(rep("b", 9, 0, 0), "us"), in(rep("c", 1, 0, 0), "eu")}, "c", ""},
		{"then the region order", Policy{RoleAware: true, RegionOrder: []string{"ap", "us"}},
			[]Candidate{in(down("a", 9), "eu"), in(rep("b", 9, 0, 0), "us"), in(rep("c", 1, 0, 0), "ap")}, "c", ""},
		{"a fresh position before the region", Policy{RoleAware: true},
			[]Candidate{in(down("a", 9), "eu"), in(pos(rep("b", 1, -1, -1), 900, FreshPosition), "us"), in(pos(rep("c", 9, -1, -1), 800, FreshPosition), "eu")}, "b", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.cands {
				if tc.cands[i].Order == 0 {
					tc.cands[i].Order = i
				}
			}
			got, why := Successor(tc.p, tc.cands, "a")
			if got != tc.want {
				t.Fatalf("successor %q (%s), want %q", got, why, tc.want)
			}
			if got == "" && !strings.Contains(why, tc.why) {
				t.Fatalf("why %q lacks %q", why, tc.why)
			}
		})
	}
	if FenceOldPrimary(roles) || !FenceOldPrimary(Policy{}) {
		t.Error("FenceOldPrimary: want a fence exactly when no role is known")
	}
}

func TestChoiceWait(t *testing.T) {
	c := func(name string, prio, order int, mod func(*Candidate)) Candidate {
		x := Candidate{Name: name, Priority: prio, Order: order, Up: true}
		if mod != nil {
			mod(&x)
		}
		return x
	}
	unreported := func(x *Candidate) { x.Up, x.Unreported = false, true }
	rising := func(x *Candidate) { x.Up, x.Rising = false, true }
	for _, tc := range []struct {
		name  string
		cands []Candidate
		best  string
		first bool
		want  string // substring; "" for no wait
	}{
		{"nothing better", []Candidate{c("a", 2, 0, nil), c("b", 1, 1, rising)}, "a", true, ""},
		{"better unreported", []Candidate{c("a", 2, 0, unreported), c("b", 1, 1, nil)}, "b", false, "first health report of a"},
		{"better rising, first choice", []Candidate{c("a", 2, 0, rising), c("b", 1, 1, nil)}, "b", true, "a, better ranked, to finish rising"},
		{"better rising, not a first choice", []Candidate{c("a", 2, 0, rising), c("b", 1, 1, nil)}, "b", false, ""},
		{"same priority, earlier in order", []Candidate{c("a", 1, 0, rising), c("b", 1, 1, nil)}, "b", true, "a, better ranked"},
		{"same priority, later in order", []Candidate{c("b", 1, 1, nil), c("c", 1, 2, rising)}, "b", true, ""},
		{"fenced holds nothing back", []Candidate{c("a", 2, 0, func(x *Candidate) { unreported(x); x.Fenced = true }), c("b", 1, 1, nil)}, "b", true, ""},
		{"draining holds nothing back", []Candidate{c("a", 2, 0, func(x *Candidate) { rising(x); x.Draining = true }), c("b", 1, 1, nil)}, "b", true, ""},
	} {
		got := ChoiceWait(tc.cands, tc.best, tc.first)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
