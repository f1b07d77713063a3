package chaos

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// Five proxies (N=5, Q=3): scenarios 6 and 7 where a quorum is more than
// "two of three". Failover with all five connected; a minority of two cut
// off from the majority (each still reaching the other); and a majorities
// ring, where every proxy reaches only its two neighbours, so every proxy
// has a quorum of its own but no two quorums are the same.
func TestFiveProxies(t *testing.T) {
	o := defaultOpts()
	o.proxies = 5
	c := newCluster(t, o)
	ps := c.proxies
	n := trials(2)
	var all, twoCut, fence, ring []time.Duration
	for i := 0; i < n; i++ {
		// All five connected.
		m := c.startMonitor()
		d := c.failover(ps)
		all = append(all, d)
		m.finish(t, fmt.Sprintf("N=5 failover trial %d (%s)", i, d.Round(time.Millisecond)))
		c.restorePrimary(ps)

		// p4 and p5 cut off from p1..p3: the two fence themselves, the
		// three fail over alone.
		m = c.startMonitor()
		t0 := time.Now()
		for _, a := range ps[:3] {
			for _, b := range ps[3:] {
				cut(a, b)
			}
		}
		testwait.For(t, "p4 and p5 stop routing", 20*time.Second, func() bool {
			for _, p := range ps[3:] {
				if v := p.view(); !v.ok || v.routing != "" {
					return false
				}
			}
			return true
		})
		fence = append(fence, time.Since(t0))
		d = c.failover(ps[:3])
		twoCut = append(twoCut, d)
		for _, p := range ps[3:] {
			if v := p.view(); v.routing != "" {
				t.Fatalf("cut-off %s routes %q", p.name, v.routing)
			}
		}
		c.healAll()
		c.waitAllRoute("b", ps, 30*time.Second)
		m.finish(t, fmt.Sprintf("N=5 two cut off, trial %d (%s)", i, d.Round(time.Millisecond)))
		c.restorePrimary(ps)

		// Majorities ring: a healthy primary keeps its epoch, then a dead
		// one is failed over once, by whichever neighbourhood wins.
		m = c.startMonitor()
		e0 := ps[0].view().epoch
		c.ring()
		holdFor(t, "majorities ring with a healthy primary", 4*time.Second, func() error {
			for _, p := range ps {
				if v := p.view(); v.ok && v.epoch != e0 {
					return fmt.Errorf("%s moved from epoch %d to %d (decision %q) with a healthy primary", p.name, e0, v.epoch, v.decision)
				}
			}
			return nil
		})
		routing := 0
		for _, p := range ps {
			if v := p.view(); v.routing == "a" {
				routing++
			}
		}
		t.Logf("ring with a healthy primary: %d of 5 proxies route to a", routing)
		d = c.failover(ps)
		ring = append(ring, d)
		c.healAll()
		c.waitAllRoute("b", ps, 30*time.Second)
		m.finish(t, fmt.Sprintf("N=5 ring, trial %d (%s)", i, d.Round(time.Millisecond)))
		if ch := m.changes(); ch != 1 {
			t.Errorf("ring: want one primary change, saw %d over %d epochs", ch, m.epochs())
		}
		c.restorePrimary(ps)
	}
	t.Logf("FIGURE N=5 failover (kill primary -> all 5 proxies route and forward to b): %s", summary(all))
	t.Logf("FIGURE N=5 failover with p4,p5 cut off (kill primary -> p1..p3 route and forward to b): %s", summary(twoCut))
	t.Logf("FIGURE N=5 cut-off pair fences itself (cut -> both route \"\"), lease 1s: %s", summary(fence))
	t.Logf("FIGURE N=5 failover under a majorities ring (kill primary -> all 5 route and forward to b): %s", summary(ring))
}

// failover kills the primary "a", waits until who route and forward to
// "b", checks that the promote hook ran once, for the new epoch, and
// returns the time from the kill.
func (c *cluster) failover(who []*proxyNode) time.Duration {
	c.t.Helper()
	before := len(c.promotions())
	e0 := who[0].view().epoch
	t0 := time.Now()
	c.backends["a"].kill()
	c.waitAllRoute("b", who, 30*time.Second)
	d := time.Since(t0)
	e1 := who[0].view().epoch
	if e1 <= e0 {
		c.t.Fatalf("epoch did not grow: %d then %d", e0, e1)
	}
	want := fmt.Sprintf("%d b", e1)
	testwait.For(c.t, "promote hook for "+want, 20*time.Second, func() bool {
		p := c.promotions()
		return len(p) == before+1 && slices.Contains(p, want)
	})
	return d
}

// ring cuts every pair of proxies that are not neighbours on a ring: each
// reaches exactly the two next to it.
func (c *cluster) ring() {
	n := len(c.proxies)
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			if d := j - i; d != 1 && d != n-1 {
				cut(c.proxies[i], c.proxies[j])
			}
		}
	}
}
