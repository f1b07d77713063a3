package proxy

import (
	"strings"
	"testing"
	"time"
)

func TestChooseTarget(t *testing.T) {
	unknown := Health{LagBytes: -1, Lag: -1}
	rising := Health{Known: true, LagBytes: -1, Lag: -1, Rising: true}
	prim := upRole(RolePrimary, -1)
	rep := func(lag int64) Health { return upRole(RoleReplica, lag) }
	repT := func(lag time.Duration) Health {
		return Health{Known: true, Up: true, Role: RoleReplica, LagBytes: -1, Lag: lag}
	}
	three := func(a, b, c Health) []candidate {
		return []candidate{{"a", 3, 0, a, false, false, ""}, {"b", 2, 1, b, false, false, ""}, {"c", 1, 2, c, false, false, ""}}
	}
	any := ServiceConfig{}
	auto := ServiceConfig{FailbackAuto: true}
	primary := ServiceConfig{Want: RolePrimary}
	// A service whose checks report roles but that routes to any role
	// (kind postgres, role any) fails over as one with role primary does,
	// in a cluster and alone alike.
	rolesAny := ServiceConfig{RoleAware: true}
	bounded := ServiceConfig{Want: RolePrimary, MaxLagBytesOnFailover: 100}
	boundedT := ServiceConfig{Want: RolePrimary, MaxLagOnFailover: time.Second}
	cases := []struct {
		name        string
		cfg         ServiceConfig
		cands       []candidate
		cur, pend   string
		want, wantP string
		reason      string // substring
		dual        bool
	}{
		{"highest priority up", any, three(upAny, upAny, upAny), "", "", "a", "", "highest-priority", false},
		{"skip down", any, three(down, upAny, upAny), "", "", "b", "", "", false},
		{"unknown better blocks initial choice", any, three(unknown, upAny, upAny), "", "", "", "", "first health report of a", false},
		{"unknown worse does not block", any, three(upAny, upAny, unknown), "", "", "a", "", "", false},
		// Backends started with the proxy: b finished its rise a check
		// before a; with manual failback b would keep the traffic.
		{"rising better blocks initial choice", any, three(rising, upAny, upAny), "", "", "", "", "a, better ranked, to finish rising", false},
		{"rising worse does not block", any, three(upAny, rising, upAny), "", "", "a", "", "", false},
		{"rising better does not hold a failover", any, three(rising, down, upAny), "b", "", "c", "", "b down", false},
		{"rising fenced does not block", any, []candidate{{"a", 3, 0, rising, false, true, ""}, {"b", 2, 1, upAny, false, false, ""}}, "", "", "b", "", "", false},
		{"none up", any, three(down, down, down), "", "", "", "", "no eligible backend", false},
		{"manual failback keeps current", any, three(upAny, upAny, upAny), "b", "", "b", "", "b is up", false},
		{"auto failback moves back", auto, three(upAny, upAny, upAny), "b", "", "a", "", "failback", false},
		{"auto failback stays when best down", auto, three(down, upAny, upAny), "b", "", "b", "", "", false},
		{"current down fails over", any, three(upAny, down, upAny), "b", "", "a", "", "b down", false},

		{"primary: the one primary", primary, three(rep(0), prim, rep(0)), "", "", "b", "", "b is primary", false},
		{"primary: keep sticky primary", primary, three(rep(0), prim, rep(0)), "b", "", "b", "", "", false},
		{"primary: failover picks replica by priority", primary, three(rep(50), down, rep(0)), "b", "", "a", "a", "awaiting promotion", false},
		{"primary: pending stays while old primary returns", primary, three(rep(0), prim, rep(0)), "a", "a", "a", "a", "awaiting promotion", false},
		{"primary: another backend promoted elsewhere is followed", primary, three(rep(0), prim, rep(0)), "a", "a", "b", "", "promoted elsewhere", false},
		{"primary: dual keeps current", primary, three(prim, prim, rep(0)), "b", "", "b", "", "dual primary (a, b): keeping b", true},
		{"primary: dual never moves to the other", primary, three(prim, prim, rep(0)), "", "", "", "", "refusing to choose", true},
		{"primary: dual with pending target keeps it", primary, three(prim, prim, rep(0)), "a", "a", "a", "", "keeping a", true},
		{"primary: demoted current, one other primary", primary, three(rep(0), prim, rep(0)), "a", "", "b", "", "a reports replica; b is primary", false},
		{"primary: unknown blocks failover", primary, three(rep(0), unknown, rep(0)), "", "", "", "", "first health report of b", false},
		{"primary: lag bound excludes", bounded, three(rep(500), down, rep(50)), "b", "", "c", "c", "", false},
		{"primary: lag bound excludes unknown lag", bounded, three(rep(-1), down, rep(50)), "b", "", "c", "c", "", false},
		{"primary: no candidate within bound", bounded, three(rep(500), down, rep(101)), "b", "", "", "", "no eligible backend: lag beyond bound: a (lag 500B), c (lag 101B)", false},
		{"primary: time bound", boundedT, three(repT(2*time.Second), down, repT(time.Millisecond)), "b", "", "c", "c", "", false},
		{"primary: equal priority least lag", primary, []candidate{{"a", 1, 0, rep(90), false, false, ""}, {"b", 1, 1, rep(10), false, false, ""}, {"c", 0, 2, down, false, false, ""}}, "c", "", "b", "b", "", false},
		{"primary: equal priority and lag keeps order", primary, []candidate{{"a", 1, 0, rep(10), false, false, ""}, {"b", 1, 1, rep(10), false, false, ""}, {"c", 0, 2, down, false, false, ""}}, "c", "", "a", "a", "", false},
		{"primary: known lag beats unknown", primary, []candidate{{"a", 1, 0, rep(-1), false, false, ""}, {"b", 1, 1, rep(10), false, false, ""}, {"c", 0, 2, down, false, false, ""}}, "c", "", "b", "b", "", false},
		{"primary: promoted target clears pending", primary, three(prim, down, rep(0)), "a", "a", "a", "", "a is primary", false},
		{"fenced standby is no failover candidate", any, []candidate{{"a", 3, 0, down, false, false, ""}, {"b", 2, 1, upAny, false, true, ""}, {"c", 1, 2, upAny, false, false, ""}}, "a", "", "c", "", "", false},
		{"fenced target moves", any, []candidate{{"a", 3, 0, upAny, false, true, ""}, {"b", 2, 1, upAny, false, false, ""}}, "a", "", "b", "", "", false},
		{"primary: fenced primary is not targeted", primary, []candidate{{"a", 3, 0, prim, false, true, ""}, {"b", 2, 1, rep(0), false, false, ""}}, "a", "", "b", "b", "awaiting promotion", false},
		{"draining standby is no failover candidate", any, []candidate{{"a", 3, 0, down, false, false, ""}, {"b", 2, 1, upAny, true, false, ""}, {"c", 1, 2, upAny, false, false, ""}}, "a", "", "c", "", "", false},
		{"draining target stays while up", any, []candidate{{"a", 3, 0, upAny, true, false, ""}, {"b", 2, 1, upAny, false, false, ""}}, "a", "", "a", "", "a is up", false},
		{"roles, role any: failover picks a replica, not one of unknown role", rolesAny, three(upAny, down, rep(0)), "b", "", "c", "c", "awaiting promotion", false},
		{"roles, role any: the one other primary", rolesAny, three(prim, down, rep(0)), "b", "", "a", "", "a is primary", false},
		{"roles, role any: no replica, no candidate", rolesAny, three(down, down, upAny), "a", "", "", "", "no eligible", false},
		{"primary: draining replica is no candidate", primary, []candidate{{"a", 3, 0, down, false, false, ""}, {"b", 2, 1, rep(0), true, false, ""}}, "a", "", "", "", "no eligible", false},
	}
	// The target a pending promotion replaced (the table leaves it out).
	froms := map[string]string{
		"primary: pending stays while old primary returns":        "b",
		"primary: another backend promoted elsewhere is followed": "c",
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := chooseTarget(&tc.cfg, tc.cands, tc.cur, tc.pend, froms[tc.name])
			if d.target != tc.want || d.pending != tc.wantP {
				t.Fatalf("target %q pending %q (%s), want %q pending %q", d.target, d.pending, d.reason, tc.want, tc.wantP)
			}
			if !strings.Contains(d.reason, tc.reason) {
				t.Fatalf("reason %q lacks %q", d.reason, tc.reason)
			}
			if (len(d.primaries) >= 2) != tc.dual {
				t.Fatalf("dual %v, want %v", d.primaries, tc.dual)
			}
		})
	}
}

func TestBalancedEligible(t *testing.T) {
	rep := ServiceConfig{Want: RoleReplica, MaxLagBytes: 100, MaxLag: time.Second}
	cases := []struct {
		cfg  ServiceConfig
		h    Health
		want bool
	}{
		{ServiceConfig{}, upAny, true},
		{ServiceConfig{}, down, false},
		{ServiceConfig{}, Health{Up: true}, false}, // not known
		{ServiceConfig{Want: RolePrimary}, upRole(RolePrimary, -1), true},
		{ServiceConfig{Want: RolePrimary}, upRole(RoleReplica, 0), false},
		{rep, Health{Known: true, Up: true, Role: RoleReplica, LagBytes: 100, Lag: time.Second}, true},
		{rep, Health{Known: true, Up: true, Role: RoleReplica, LagBytes: 101, Lag: 0}, false},
		{rep, Health{Known: true, Up: true, Role: RoleReplica, LagBytes: 0, Lag: 2 * time.Second}, false},
		{rep, Health{Known: true, Up: true, Role: RoleReplica, LagBytes: 0, Lag: -1}, false},
		{rep, upRole(RolePrimary, 0), false},
	}
	for i, tc := range cases {
		if got := balancedEligible(&tc.cfg, tc.h); got != tc.want {
			t.Errorf("case %d: got %v want %v", i, got, tc.want)
		}
	}
}

// TestOrderBalanced checks the exact shares of smooth weighted round-robin
// and least-conn's preference.
func TestOrderBalanced(t *testing.T) {
	mk := func(ws ...int) []*backend {
		var bs []*backend
		for i, w := range ws {
			bs = append(bs, newBackend(Backend{Name: string(rune('a' + i)), Weight: w}))
		}
		return bs
	}
	bs := mk(1, 2, 0) // weight 0 counts as 1
	counts := map[string]int{}
	var seq []string
	for i := 0; i < 40; i++ {
		first := orderBalanced(RoundRobin, append([]*backend(nil), bs...))[0].cfg.Name
		counts[first]++
		seq = append(seq, first)
	}
	if counts["a"] != 10 || counts["b"] != 20 || counts["c"] != 10 {
		t.Fatalf("round-robin shares %v", counts)
	}
	for i := 1; i < len(seq); i++ {
		if seq[i] == seq[i-1] && seq[i] != "b" {
			t.Fatalf("smooth round-robin repeated %s: %v", seq[i], seq)
		}
	}

	lc := mk(1, 1, 2)
	lc[0].active.Store(3)
	lc[1].active.Store(1)
	lc[2].active.Store(4) // 4/2 = 2 per weight
	got := orderBalanced(LeastConn, append([]*backend(nil), lc...))
	if got[0].cfg.Name != "b" || got[1].cfg.Name != "c" || got[2].cfg.Name != "a" {
		t.Fatalf("least-conn order %s %s %s", got[0].cfg.Name, got[1].cfg.Name, got[2].cfg.Name)
	}
	// Ties rotate.
	tie := mk(1, 1)
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		seen[orderBalanced(LeastConn, append([]*backend(nil), tie...))[0].cfg.Name] = true
	}
	if !seen["a"] || !seen["b"] {
		t.Fatalf("least-conn ties did not rotate: %v", seen)
	}
}
