package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/netem"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// holdFor checks cond every few milliseconds for d and fails at the first
// miss: how these tests assert that something does NOT happen, after a
// positive precondition has been observed.
func holdFor(t *testing.T, what string, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := cond(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sees waits until every proxy in who reports backend b with health h.
func (c *cluster) sees(who []*proxyNode, b, h string, timeout time.Duration) {
	c.t.Helper()
	testwait.For(c.t, fmt.Sprintf("%s see %s %s", names(who), b, h), timeout, func() bool {
		for _, p := range who {
			if v := p.view(); !v.ok || v.health[b] != h {
				return false
			}
		}
		return true
	})
}

// restorePrimary brings "a" back and checks scenario 10 on the way: the
// returning old primary is not routed to until an operator switches over.
func (c *cluster) restorePrimary(who []*proxyNode) {
	c.t.Helper()
	c.backends["a"].start()
	c.sees(who, "a", "up", 30*time.Second)
	holdFor(c.t, "old primary returned", 2*time.Second, func() error {
		for _, p := range who {
			if v := p.view(); v.ok && v.routing == "a" {
				return fmt.Errorf("%s routes to the returned old primary at epoch %d without a switchover", p.name, v.epoch)
			}
			if got, err := p.ask(); err == nil && got == "a" {
				return fmt.Errorf("a client through %s reached the returned old primary", p.name)
			}
		}
		return nil
	})
	c.switchTo("a", who)
}

// Scenario 10, the fenced half: the echo service is checked without roles,
// so its failover fences the old primary. Back up and healthy, it is not
// chosen when the new primary dies too: the service stays unrouted, and
// says why, until an operator unfences it; then it is chosen by the vote.
func TestFencedOldPrimary(t *testing.T) {
	c := newCluster(t, defaultOpts())
	m := c.startMonitor()
	c.backends["a"].kill()
	c.waitAllRoute("b", c.proxies, 30*time.Second)
	c.backends["a"].start()
	c.sees(c.proxies, "a", "up", 30*time.Second)
	for _, p := range c.proxies {
		if v := p.view(); !slices.Equal(v.fenced, []string{"a"}) {
			t.Fatalf("%s: fenced %v after the failover, want [a]", p.name, v.fenced)
		}
	}
	before := len(c.promotions())
	c.backends["b"].kill()
	c.sees(c.proxies, "b", "down", 30*time.Second)
	holdFor(t, "fenced old primary after the new one died", 3*time.Second, func() error {
		for _, p := range c.proxies {
			if v := p.view(); v.ok && v.routing != "" {
				return fmt.Errorf("%s routes to %q at epoch %d (fenced %v)", p.name, v.routing, v.epoch, v.fenced)
			}
			if got, err := p.ask(); err == nil {
				return fmt.Errorf("a client through %s reached %s", p.name, got)
			}
		}
		return nil
	})
	held := c.proxies[0].view().decision
	if !strings.Contains(held, "fenced") {
		t.Errorf("decision %q does not say that the only candidate is fenced", held)
	}
	if p := c.promotions(); len(p) != before {
		t.Fatalf("promote hook ran for a fenced backend: %v", p[before:])
	}
	t0 := time.Now()
	testwait.For(t, "unfence of a", 30*time.Second, func() bool {
		// once a is unfenced the failover from b follows and fences b
		if v := c.proxies[0].view(); v.ok && !slices.Contains(v.fenced, "a") {
			return true
		}
		if err := c.proxies[0].control("unfence", url.Values{"service": {"echo"}, "backend": {"a"}}); err != nil {
			t.Logf("%v", err)
		}
		time.Sleep(time.Second)
		return false
	})
	c.waitAllRoute("a", c.proxies, 30*time.Second)
	if v := c.proxies[0].view(); !slices.Equal(v.fenced, []string{"b"}) {
		t.Errorf("fenced %v after the failover from b to a, want [b]", v.fenced)
	}
	m.finish(t, "scenario 10 (fenced)")
	t.Logf("FIGURE scenario 10: a returned, fenced old primary chosen when the new primary died: 0 (service unrouted for 3s: %q); after the operator's unfence, all 3 route to it in %s",
		held, time.Since(t0).Round(time.Millisecond))
}

// Failover time with all three proxies connected, and with one proxy cut
// off from the other two (scenario 6's majority side); scenario 10 between
// trials.
func TestFailoverTime(t *testing.T) {
	c := newCluster(t, defaultOpts())
	n := trials(2)
	var all, oneCut, fence []time.Duration
	returned := 0
	for i := 0; i < n; i++ {
		for _, cutOne := range []bool{false, true} {
			live := c.proxies
			before := len(c.promotions())
			e0 := c.proxies[0].view().epoch
			if cutOne {
				p3 := c.proxies[2]
				t0 := time.Now()
				cut(c.proxies[0], p3)
				cut(c.proxies[1], p3)
				testwait.For(t, "p3 stops routing", 20*time.Second, func() bool { v := p3.view(); return v.ok && v.routing == "" })
				fence = append(fence, time.Since(t0))
				live = c.proxies[:2]
			}
			m := c.startMonitor()
			t0 := time.Now()
			c.backends["a"].kill()
			c.waitAllRoute("b", live, 30*time.Second)
			d := time.Since(t0)
			if cutOne {
				oneCut = append(oneCut, d)
				if v := c.proxies[2].view(); v.routing != "" {
					t.Fatalf("cut-off p3 routes %q", v.routing)
				}
				c.healAll()
				c.waitAllRoute("b", c.proxies, 30*time.Second)
			} else {
				all = append(all, d)
			}
			m.finish(t, fmt.Sprintf("failover trial %d (one cut: %v, %s, decision %q)", i, cutOne, d.Round(time.Millisecond), c.proxies[0].view().decision))
			e1 := c.proxies[0].view().epoch
			if e1 <= e0 {
				t.Fatalf("epoch did not grow: %d then %d", e0, e1)
			}
			// The promote hook ran once, for the new epoch, on one proxy.
			want := fmt.Sprintf("%d b", e1)
			testwait.For(t, "promote hook for "+want, 20*time.Second, func() bool {
				p := c.promotions()
				return len(p) == before+1 && slices.Contains(p, want)
			})
			c.restorePrimary(c.proxies)
			returned++
		}
	}
	t.Logf("FIGURE failover (kill primary -> all 3 proxies route and forward to b): %s", summary(all))
	t.Logf("FIGURE failover with p3 cut off (kill primary -> p1,p2 route and forward to b): %s", summary(oneCut))
	t.Logf("FIGURE cut-off proxy fences itself (cut -> its routing \"\"), lease 1s: %s", summary(fence))
	t.Logf("FIGURE scenario 10: returned old primary routed to before a switchover: 0 in %d returns", returned)
}

// Scenario 4: with fewer than a quorum of proxies alive, a dead primary is
// not failed over: the record's epoch stays, no promote hook runs.
func TestNoQuorumNoFailover(t *testing.T) {
	c := newCluster(t, defaultOpts())
	p1 := c.proxies[0]
	n := trials(2)
	failovers := 0
	for i := 0; i < n; i++ {
		e0 := p1.view().epoch
		before := len(c.promotions())
		c.proxies[1].proc.kill()
		c.proxies[2].proc.kill()
		testwait.For(t, "lone p1 stops routing", 20*time.Second, func() bool { v := p1.view(); return v.ok && v.routing == "" })
		c.backends["a"].kill()
		c.sees(c.proxies[:1], "a", "down", 20*time.Second)
		// Several leases and health periods pass with the primary down.
		holdFor(t, "no quorum", 3*time.Second, func() error {
			v := p1.view()
			if v.ok && (v.epoch != e0 || v.routing != "") {
				failovers++
				return fmt.Errorf("p1 moved without a quorum: epoch %d -> %d, routing %q", e0, v.epoch, v.routing)
			}
			if got := len(c.promotions()); got != before {
				failovers++
				return fmt.Errorf("promote hook ran without a quorum: %v", c.promotions())
			}
			return nil
		})
		if v := p1.view(); v.ok {
			t.Logf("trial %d: lone p1 with the primary down: epoch %d, decision %q, why %q", i, v.epoch, v.decision, v.why)
		}
		c.backends["a"].start()
		c.proxies[1].start()
		c.proxies[2].start()
		c.waitAllRoute("a", c.proxies, 60*time.Second)
	}
	t.Logf("FIGURE scenario 4: failovers with 1 of 3 proxies alive and the primary dead: %d in %d trials", failovers, n)
}

// Scenario 5: one proxy alone cannot reach the primary: no failover, that
// proxy stops forwarding to it and says why, the others keep routing to it.
func TestOneProxyLosesPrimary(t *testing.T) {
	c := newCluster(t, defaultOpts())
	p3 := c.proxies[2]
	e0 := p3.view().epoch
	m := c.startMonitor()
	p3.dropFrom(c.backends["a"].ip)
	c.sees([]*proxyNode{p3}, "a", "down", 20*time.Second)
	holdFor(t, "one proxy cut from the primary", 3*time.Second, func() error {
		for _, p := range c.proxies[:2] {
			if err := p.notRouting("a"); err != nil {
				return err
			}
		}
		v := p3.view()
		if !v.ok {
			return fmt.Errorf("p3 status unavailable")
		}
		if v.epoch != e0 {
			return fmt.Errorf("failover on one proxy's view: epoch %d -> %d", e0, v.epoch)
		}
		if v.why == "" || v.held == "" || v.routing != "" {
			return fmt.Errorf("p3 does not say that it holds its clients back, and why: %+v", v)
		}
		if got, err := p3.ask(); err == nil {
			return fmt.Errorf("p3 forwarded a client to %s while it cannot reach the primary", got)
		}
		return nil
	})
	v := p3.view()
	t.Logf("p3 quarantine: routing %q, held %q, decision %q", v.routing, v.held, v.decision)
	p3.heal()
	c.waitAllRoute("a", c.proxies, 30*time.Second)
	m.finish(t, "scenario 5")
	if len(c.promotions()) != 0 {
		t.Fatalf("promote hook ran: %v", c.promotions())
	}
}

// Scenario 6: a proxy cut off from the other two (its clients still reach
// it) stops routing within its lease; the majority fails over when the
// primary is unreachable for them too, while the minority still reaches it;
// no two proxies route to different backends at any sampled instant.
func TestMinorityPartition(t *testing.T) {
	c := newCluster(t, defaultOpts())
	p1, p2, p3 := c.proxies[0], c.proxies[1], c.proxies[2]
	n := trials(3)
	var toNoRoute, toRefused, toUnready []time.Duration
	m := c.startMonitor()
	var toClosed []time.Duration
	var mu sync.Mutex
	lateReplies, lateWrites := 0, 0
	for i := 0; i < n; i++ {
		// A client session through p3, open across the cut.
		sess, err := net.DialTimeout("tcp", p3.listen(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		sessReader := bufio.NewReader(sess)
		sess.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(sess, "x\n"); err != nil {
			t.Fatal(err)
		}
		if reply, err := sessReader.ReadString('\n'); err != nil || reply != "a:x\n" {
			t.Fatalf("session through p3 before the cut: %q, %v", reply, err)
		}
		for _, p := range c.proxies {
			if !p.ready("a") {
				rd, code := p.health("echo")
				t.Fatalf("%s before the cut: readiness %d %+v, want 200 on a", p.name, code, rd)
			}
		}
		t0 := time.Now()
		if i%2 == 0 {
			cut(p1, p3)
			cut(p2, p3)
		} else {
			// Gossip-only: only the cluster port is cut; clients and
			// backends still reach p3.
			for _, p := range []*proxyNode{p1, p2} {
				ipt(t, p.ns, "-A", "INPUT", "-s", p3.ip, "-p", "tcp", "--dport", fmt.Sprint(gossipPort), "-j", "DROP")
				ipt(t, p.ns, "-A", "INPUT", "-s", p3.ip, "-p", "udp", "--dport", fmt.Sprint(gossipPort), "-j", "DROP")
				ipt(t, p3.ns, "-A", "INPUT", "-s", p.ip, "-p", "tcp", "--dport", fmt.Sprint(gossipPort), "-j", "DROP")
				ipt(t, p3.ns, "-A", "INPUT", "-s", p.ip, "-p", "udp", "--dport", fmt.Sprint(gossipPort), "-j", "DROP")
			}
		}
		// Three probes run side by side so each time is measured at its
		// own pace; fenced is set once p3's status shows no route.
		var (
			noRoute, refused, closed, unready time.Duration
			fenced                            atomic.Bool
			wg                                sync.WaitGroup
		)
		probe := func(what string, d *time.Duration, done func() bool) {
			defer wg.Done()
			deadline := time.Now().Add(20 * time.Second)
			for !done() {
				if time.Now().After(deadline) {
					t.Errorf("timed out waiting for cut-off p3 to %s", what)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
			*d = time.Since(t0)
		}
		wg.Add(4)
		go probe("fail its readiness (lost quorum)", &unready, func() bool {
			whole, wcode := p3.health("")
			rd, code := p3.health("echo")
			return wcode == http.StatusServiceUnavailable && strings.Contains(whole.Reason, "lost quorum") &&
				code == http.StatusServiceUnavailable && !rd.Ready
		})
		go probe("stop routing", &noRoute, func() bool {
			v := p3.view()
			if v.ok && v.routing == "" {
				fenced.Store(true)
				return true
			}
			return false
		})
		go probe("refuse clients", &refused, func() bool {
			_, err := p3.ask()
			return err != nil
		})
		go probe("end its session", &closed, func() bool {
			// A line written once p3 said it has no route must not reach
			// the old primary: the lease bounds the writes.
			afterFence := fenced.Load()
			sess.SetDeadline(time.Now().Add(100 * time.Millisecond))
			_, werr := io.WriteString(sess, "y\n")
			reply, rerr := sessReader.ReadString('\n')
			switch {
			case werr == nil && rerr == nil:
				if afterFence {
					mu.Lock()
					lateReplies++
					mu.Unlock()
					t.Errorf("session through cut-off p3 got %q after p3 reported no route", reply)
				}
				return false
			case werr == nil && isTimeout(rerr):
				if afterFence {
					mu.Lock()
					lateWrites++ // open but silent: p3 holds the bytes
					mu.Unlock()
				}
				return false
			}
			return true
		})
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		sess.Close()
		toNoRoute, toRefused, toClosed = append(toNoRoute, noRoute), append(toRefused, refused), append(toClosed, closed)
		toUnready = append(toUnready, unready)
		for _, p := range c.proxies[:2] {
			// Polled: on a loaded machine one request can time out (code 0).
			testwait.For(t, p.name+" of the majority ready (200) during the cut", 5*time.Second, func() bool {
				_, code := p.health("")
				return code == http.StatusOK
			})
		}
		c.waitAllRoute("a", c.proxies[:2], 10*time.Second)
		c.healAll()
		c.waitAllRoute("a", c.proxies, 30*time.Second)
	}
	// The minority holds the old primary: the majority loses it and moves.
	cut(p1, p3)
	cut(p2, p3)
	testwait.For(t, "cut-off p3 stops routing", 20*time.Second, func() bool { v := p3.view(); return v.ok && v.routing == "" })
	p1.dropFrom(c.backends["a"].ip)
	p2.dropFrom(c.backends["a"].ip)
	asks, stale := 0, 0
	testwait.For(t, "majority routes to b", 30*time.Second, func() bool {
		asks++
		if got, err := p3.ask(); err == nil && got == "a" {
			stale++
		}
		return p1.routesTo("b") && p2.routesTo("b")
	})
	if stale > 0 {
		t.Errorf("cut-off p3 forwarded %d of %d clients to the old primary during the majority's failover", stale, asks)
	}
	if rd, code := p3.health("echo"); code != http.StatusServiceUnavailable {
		t.Errorf("cut-off p3 during the majority's failover: readiness %d %+v, want 503", code, rd)
	}
	c.healAll()
	c.waitAllRoute("b", c.proxies, 30*time.Second)
	testwait.For(t, "every proxy ready on b after the heal", 30*time.Second, func() bool {
		return p1.ready("b") && p2.ready("b") && p3.ready("b")
	})
	m.finish(t, "scenario 6")
	t.Logf("FIGURE scenario 6: cut -> minority's GET /health and /health/echo answer 503 (lost quorum): %s", summary(toUnready))
	t.Logf("FIGURE scenario 6: cut -> minority routing \"\" (lease 1s): %s", summary(toNoRoute))
	t.Logf("FIGURE scenario 6: cut -> minority refuses a new client: %s", summary(toRefused))
	t.Logf("FIGURE scenario 6: cut -> minority ends an open client session: %s; replies through it after its route was gone: %d (writes held unanswered: %d)", summary(toClosed), lateReplies, lateWrites)
	t.Logf("FIGURE scenario 6: clients of the minority reaching the old primary during the majority failover: %d of %d", stale, asks)
}

// Scenario 7: a non-transitive partition (p1-p3 cut, p2 sees both), then
// flapping random partitions, with a healthy primary: epochs only grow, one
// primary per epoch, and no failover at all.
func TestFlappingPartitions(t *testing.T) {
	c := newCluster(t, defaultOpts())
	p1, p2, p3 := c.proxies[0], c.proxies[1], c.proxies[2]
	m := c.startMonitor()
	cut(p1, p3)
	holdFor(t, "non-transitive partition", 3*time.Second, func() error {
		return p2.notRouting("a") // p2 sees both sides
	})
	c.healAll()
	d := soakDuration(20 * time.Second)
	end := time.Now().Add(d)
	changes := 0
	for time.Now().Before(end) {
		c.healAll()
		i, j := rand.IntN(3), rand.IntN(2)
		if j >= i {
			j++
		}
		switch rand.IntN(3) {
		case 0: // one proxy cut from both others
			for k, p := range c.proxies {
				if k != i {
					cut(c.proxies[i], p)
				}
			}
		case 1: // non-transitive
			cut(c.proxies[i], c.proxies[j])
		default: // asymmetric: i hears nothing from j, j still hears i
			c.proxies[i].dropFrom(c.proxies[j].ip)
		}
		changes++
		time.Sleep(time.Duration(500+rand.IntN(2000)) * time.Millisecond)
	}
	c.healAll()
	c.waitAllRoute("a", c.proxies, 30*time.Second)
	m.finish(t, "scenario 7")
	// A proxy kept from its lease longer than a proposal's life re-affirms
	// the primary at a new epoch (the liveness rule): more epochs, but the
	// primary must never change.
	if ch := m.changes(); ch != 0 {
		t.Errorf("a healthy primary changed %d times under partitions (%d epochs)", ch, m.epochs())
	}
	if p := c.promotions(); len(p) != 0 {
		t.Errorf("promote hook ran with a healthy primary: %v", p)
	}
	t.Logf("FIGURE scenario 7: %d random partitions over %s with a healthy primary: failovers %d, epochs %d (re-affirmations of the same primary: %d)", changes, d, len(c.promotions()), m.epochs(), m.epochs()-1)
}

// Scenario 8: a degraded network with a healthy primary causes no false
// failover; then a real failure is detected under the same conditions.
func TestDegradedNetwork(t *testing.T) {
	o := defaultOpts()
	o.lease, o.interval, o.timeout, o.fall = "2s", "1s", "900ms", 3
	loss := os.Getenv("QP_CHAOS_LOSS") // percent; make soak may ask for 20
	if loss == "" {
		loss = "5"
	}
	lossP, err := strconv.ParseFloat(loss, 64)
	if err != nil || lossP <= 0 || lossP >= 100 {
		t.Fatalf("QP_CHAOS_LOSS=%q: want a percentage", loss)
	}
	c := newCluster(t, o)
	// netem on the host side of every proxy veth when the kernel has it;
	// otherwise loss alone, by iptables in each proxy namespace.
	how, qdisc := "netem delay 50ms 10ms loss "+loss+"% on the host side of each proxy veth", true
	for _, p := range c.proxies {
		if err := exec.Command("tc", "qdisc", "add", "dev", p.veth, "root", "netem", "delay", "50ms", "10ms", "loss", loss+"%").Run(); err != nil {
			qdisc = false
			break
		}
	}
	if !qdisc {
		for _, p := range c.proxies {
			exec.Command("tc", "qdisc", "del", "dev", p.veth, "root").Run()
		}
		if _, err := os.Stat("/proc/net/netfilter/nfnetlink_queue"); err == nil {
			// The same link in user space: every packet into a proxy
			// namespace goes through an NFQUEUE that internal/netem holds.
			how = fmt.Sprintf("no netem qdisc in this kernel: delay 50ms±10ms and %s%% loss on every packet into each proxy namespace, by NFQUEUE and internal/netem", loss)
			for i, p := range c.proxies {
				emulateLink(t, p.ns, netem.Config{Queue: 7, Delay: 50 * time.Millisecond, Jitter: 10 * time.Millisecond,
					Loss: lossP / 100, Seed: uint64(i + 1)})
			}
		} else {
			how = fmt.Sprintf("no netem qdisc and no nfnetlink_queue in this kernel: %s%% random loss by iptables statistic on every proxy's INPUT, no added delay", loss)
			for _, p := range c.proxies {
				ipt(t, p.ns, "-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(lossP/100, 'f', -1, 64), "-j", "DROP")
			}
		}
	}
	t.Logf("degradation: %s", how)
	m := c.startMonitor()
	d := soakDuration(30 * time.Second)
	holdFor(t, "healthy primary on a degraded network", d, func() error {
		if p := c.promotions(); len(p) != 0 {
			return fmt.Errorf("false failover: %v", p)
		}
		return nil
	})
	m.mu.Lock()
	epochs, rounds, unrouted, answered := len(m.records), m.rounds, m.unrouted, m.answered
	m.mu.Unlock()
	t.Logf("FIGURE scenario 8: proxy status samples without a route (lease renewal lost to loss): %d of %d", unrouted, answered)
	if epochs != 1 {
		t.Errorf("false failover: %d epoch records seen", epochs)
	}
	t0 := time.Now()
	c.backends["a"].kill()
	c.waitAllRoute("b", c.proxies, 60*time.Second)
	detect := time.Since(t0)
	m.finish(t, "scenario 8")
	t.Logf("FIGURE scenario 8: false failovers over %s (%d status rounds): %d; degraded (%s)", d, rounds, epochs-1, how)
	t.Logf("FIGURE scenario 8: kill primary -> all 3 route and forward to b on the degraded network: %s (N=1; health interval 1s, timeout 900ms, fall 3, lease 2s)", detect.Round(time.Millisecond))
}

// emulateLink sends every packet into namespace ns (but its loopback), or
// only those from the addresses in from, through NFQUEUE rules to
// netem.Run, which delays and drops them as cfg says, until the test ends.
func emulateLink(t *testing.T, ns string, cfg netem.Config, from ...string) {
	t.Helper()
	cfg.NetNS = "/run/netns/" + ns
	ready := make(chan struct{})
	cfg.Ready = func() { close(ready) }
	type result struct {
		st  netem.Stats
		err error
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		st, err := netem.Run(ctx, cfg)
		done <- result{st, err}
	}()
	t.Cleanup(func() {
		cancel()
		r := <-done
		if r.err != nil {
			t.Errorf("netem in %s: %v", ns, r.err)
		}
		t.Logf("netem in %s: %d packets, %d dropped, %d let through", ns, r.st.Seen, r.st.Dropped, r.st.Accepted)
	})
	select {
	case <-ready:
	case r := <-done:
		t.Fatalf("netem in %s: %v", ns, r.err)
	case <-time.After(10 * time.Second):
		t.Fatalf("netem in %s: queue not bound after 10s", ns)
	}
	// Bound first, then the rule: no packet meets an unbound queue.
	q := strconv.Itoa(int(cfg.Queue))
	if len(from) == 0 {
		ipt(t, ns, "-A", "INPUT", "!", "-i", "lo", "-j", "NFQUEUE", "--queue-num", q, "--queue-bypass")
	}
	for _, ip := range from {
		ipt(t, ns, "-A", "INPUT", "-s", ip, "-j", "NFQUEUE", "--queue-num", q, "--queue-bypass")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Scenario 9: a proxy paused past its lease while the others fail over
// never routes on its stale epoch when resumed; a proxy restarted with its
// state_dir kept, or wiped, syncs before it serves.
func TestPausedAndRestartedProxy(t *testing.T) {
	c := newCluster(t, defaultOpts())
	p1, p2, p3 := c.proxies[0], c.proxies[1], c.proxies[2]
	m := c.startMonitor()
	e0 := p3.view().epoch
	p3.proc.signal(syscall.SIGSTOP)
	paused := time.Now()
	// The primary stays alive and reachable for p3 only: a stale p3 would
	// forward clients to it.
	p1.dropFrom(c.backends["a"].ip)
	p2.dropFrom(c.backends["a"].ip)
	c.waitAllRoute("b", c.proxies[:2], 30*time.Second)
	testwait.For(t, "pause past the lease", 10*time.Second, func() bool { return time.Since(paused) > 3*time.Second })
	// The pollers start before SIGCONT: a status request and a client wait in
	// p3's backlog, so the first things it serves on waking are checked.
	checkFresh := func(what, stale, want string, wake func()) (polls int, serve time.Duration) {
		var (
			mu                  sync.Mutex
			stales              []string
			routesWant, askWant bool
			stop                = make(chan struct{})
			wg                  sync.WaitGroup
		)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				v := p3.view()
				mu.Lock()
				polls++
				if v.ok && v.routing == stale {
					stales = append(stales, fmt.Sprintf("routing %s at epoch %d", stale, v.epoch))
				}
				routesWant = routesWant || (v.ok && v.routing == want)
				mu.Unlock()
			}
		}()
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := p3.ask()
				mu.Lock()
				if err == nil && got == stale {
					stales = append(stales, "a client reached "+stale)
				}
				askWant = askWant || (err == nil && got == want)
				mu.Unlock()
				if err != nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
		time.Sleep(50 * time.Millisecond) // let both requests reach p3's backlog
		mu.Lock()
		polls = 0 // count only what p3 answers once woken
		mu.Unlock()
		start := time.Now()
		wake()
		defer func() {
			close(stop)
			wg.Wait()
		}()
		testwait.For(t, what+": p3 routes and forwards to "+want, 30*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			if len(stales) > 0 {
				t.Fatalf("%s: p3 acted on its stale record: %v", what, stales)
			}
			return routesWant && askWant
		})
		mu.Lock()
		defer mu.Unlock()
		if len(stales) > 0 {
			t.Fatalf("%s: p3 acted on its stale record: %v", what, stales)
		}
		return polls, time.Since(start)
	}
	resumed := time.Now()
	polls, d := checkFresh("after SIGCONT", "a", "b", func() { p3.proc.signal(syscall.SIGCONT) })
	t.Logf("FIGURE scenario 9: resumed p3 (paused %s, old epoch %d): %d polls, stale routes 0, serving b %s after SIGCONT", resumed.Sub(paused).Round(time.Millisecond), e0, polls, d.Round(time.Millisecond))

	// Restarts: while p3 is down the cluster moves on, so the record p3
	// kept on disk is stale (kept) or gone (wiped); p3 must learn the new
	// one before it routes, though it still reaches both backends.
	for _, wipe := range []bool{false, true} {
		old, next := "b", "a"
		if wipe {
			old, next = "a", "b"
		}
		p3.proc.kill()
		if wipe {
			m.forget(p3) // after the kill: no sample can restore the old epoch
			if err := os.RemoveAll(p3.stateDir); err != nil {
				t.Fatal(err)
			}
		}
		p1.heal()
		p2.heal()
		c.switchTo(next, c.proxies[:2])
		polls, d := checkFresh(fmt.Sprintf("restart (state wiped: %v)", wipe), old, next, p3.start)
		t.Logf("FIGURE scenario 9: p3 restarted (state wiped: %v) after the cluster moved %s -> %s: %d polls, stale routes 0, serving %s %s after start", wipe, old, next, polls, next, d.Round(time.Millisecond))
	}
	m.finish(t, "scenario 9")
}

// The split-brain check can fail: with on_quorum_loss = "keep" a cut-off
// proxy routes on to the old primary while the majority fails over, and
// the monitor must see two backends routed at once.
func TestMonitorSeesKeepSplitBrain(t *testing.T) {
	o := defaultOpts()
	o.onQuorumLoss = "keep"
	c := newCluster(t, o)
	p1, p2, p3 := c.proxies[0], c.proxies[1], c.proxies[2]
	m := c.startMonitor()
	cut(p1, p3)
	cut(p2, p3)
	p1.dropFrom(c.backends["a"].ip)
	p2.dropFrom(c.backends["a"].ip)
	c.waitAllRoute("b", c.proxies[:2], 30*time.Second)
	testwait.For(t, "the monitor to see the split brain", 20*time.Second, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return len(m.splits) > 0
	})
	got, err := p3.ask()
	close(m.stop)
	<-m.done
	t.Logf("keep mode: cut-off p3 forwards to %q (%v); split-brain rounds seen %d of %d", got, err, len(m.splits), m.rounds)
}
