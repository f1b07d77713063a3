package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// memNet connects in-process Nodes; cut[a][b] drops a's payloads to b.
type memNet struct {
	mu    sync.Mutex
	nodes map[string]*Node
	cut   map[[2]string]bool
}

type memTransport struct {
	net  *memNet
	from string
}

func (t memTransport) Send(to string, msg []byte) error {
	t.net.mu.Lock()
	n, blocked := t.net.nodes[to], t.net.cut[[2]string{t.from, to}]
	t.net.mu.Unlock()
	if n == nil || blocked {
		return fmt.Errorf("peer %q unreachable", to)
	}
	n.OnMessage(t.from, msg)
	return nil
}

func (t memTransport) Broadcast(_ string, msg []byte) error {
	t.net.mu.Lock()
	var names []string
	for name := range t.net.nodes {
		names = append(names, name)
	}
	t.net.mu.Unlock()
	for _, name := range names {
		if name != t.from {
			_ = t.Send(name, msg)
		}
	}
	return nil
}

func (nw *memNet) isolate(name string, on bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for other := range nw.nodes {
		nw.cut[[2]string{name, other}] = on
		nw.cut[[2]string{other, name}] = on
	}
}

type testCluster struct {
	t      *testing.T
	net    *memNet
	peers  []string
	dirs   map[string]string
	nodes  map[string]*Node
	stores map[string]*FileStore
	hooks  chan string
	hookWG sync.WaitGroup
	// failPromote, when set, names the backends whose promote hook fails;
	// notStarted those whose hook cannot even be started.
	failPromote, notStarted atomic.Pointer[[]string]
	// roles, when set, is the role each backend reports (the service is
	// then role-aware); a promote that works makes it primary.
	logs    map[string]*testenv.Buffer // each proxy's log, kept across restarts
	roles   map[string]Role
	rolesMu sync.Mutex
	maxLag  time.Duration
	rpoZero bool // the service has rpo = "zero"
	// wireHi, when set, makes the named proxies speak wire formats up to
	// the given one only (Config.knobs.wireHi).
	wireHi map[string]uint8
	// initial, when set, is what each proxy first observes of each backend
	// (up, with its role, otherwise).
	initial map[string]Observation
}

const testLease = 200 * time.Millisecond

// withLease fills the timings a Config requires from lease, with the ratios
// package config uses (FailedPromoteHold only when unset).
func withLease(c Config, lease time.Duration) Config {
	c.LeaseTimeout, c.ClockMargin = lease, 0.05
	c.ObservationTTL, c.VoteTimeout = lease*3/2, lease
	if c.FailedPromoteHold == 0 {
		c.FailedPromoteHold = 30 * lease
	}
	return c
}

var testBackends = []BackendConfig{{Name: "pg-a", Priority: 30}, {Name: "pg-b", Priority: 20}, {Name: "pg-c", Priority: 10}}

func newTestCluster(t *testing.T, n int) *testCluster { return newRoleCluster(t, n, nil, 0) }

// newRoleCluster is newTestCluster for a role-aware service whose backends
// report roles (nil: a service without roles), with max_lag_on_failover
// maxLag.
func newRoleCluster(t *testing.T, n int, roles map[string]Role, maxLag time.Duration, opts ...func(*testCluster)) *testCluster {
	c := &testCluster{t: t, net: &memNet{nodes: map[string]*Node{}, cut: map[[2]string]bool{}},
		dirs: map[string]string{}, nodes: map[string]*Node{}, stores: map[string]*FileStore{}, hooks: make(chan string, 100), logs: map[string]*testenv.Buffer{},
		roles: roles, maxLag: maxLag}
	for _, o := range opts {
		o(c)
	}
	for i := range n {
		c.peers = append(c.peers, fmt.Sprintf("proxy-%d", i))
	}
	for _, p := range c.peers {
		c.dirs[p] = t.TempDir()
		c.start(p)
	}
	t.Cleanup(c.close)
	return c
}

func (c *testCluster) start(name string) {
	store, err := OpenFileStore(c.dirs[name])
	if err != nil {
		c.t.Fatal(err)
	}
	var node *Node
	cfg := Config{Name: name, Peers: c.peers, BootID: uint64(time.Now().UnixNano()),
		Services: []ServiceConfig{{Name: "db", Backends: testBackends, RoleAware: c.roles != nil, MaxLagOnFailover: c.maxLag, RPOZero: c.rpoZero,
			Hooks: HookConfig{Fence: c.roles == nil, Promote: true, Timeout: c.hookTimeout()}}},
		OnAction: func(svc string, a Action) {
			c.hooks <- fmt.Sprintf("%s epoch %d %s %s", name, a.Epoch, a.Kind, a.Backend)
			c.hookWG.Add(1)
			go func() {
				defer c.hookWG.Done()
				r := ActionResult{Ran: true, OK: true, Up: true, Timeout: testLease}
				if f := c.failPromote.Load(); a.Kind == ActionPromote && f != nil && slices.Contains(*f, a.Backend) {
					r.OK, r.Detail = false, "promote exited 1"
				}
				if f := c.notStarted.Load(); a.Kind == ActionPromote && f != nil && slices.Contains(*f, a.Backend) {
					r.OK, r.NotStarted, r.Detail = false, true, "fork/exec /no/such/hook: no such file or directory"
				}
				if c.roles != nil {
					c.rolesMu.Lock()
					if a.Kind == ActionPromote && r.OK {
						c.roles[a.Backend] = RolePrimary
						c.net.mu.Lock()
						for _, n := range c.net.nodes {
							n.Observe("db", a.Backend, Observation{Up: true, Role: RolePrimary, LagBytes: 0, Lag: -1, Position: -1})
						}
						c.net.mu.Unlock()
					}
					r.Role = c.roles[a.Backend]
					c.rolesMu.Unlock()
				}
				_ = node.ActionDone(svc, a, r)
			}()
		}}
	cfg = withLease(cfg, testLease)
	cfg.knobs.wireHi = c.wireHi[name]
	if c.logs[name] == nil {
		c.logs[name] = &testenv.Buffer{}
	}
	cfg.Logger = slog.New(slog.NewTextHandler(c.logs[name], nil))
	node, err = NewNode(cfg, store, BootClock{}, NodeOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	c.net.mu.Lock()
	c.net.nodes[name] = node
	c.net.mu.Unlock()
	c.nodes[name], c.stores[name] = node, store
	node.Start(memTransport{net: c.net, from: name})
	c.rolesMu.Lock()
	defer c.rolesMu.Unlock()
	for _, b := range testBackends {
		o, ok := c.initial[b.Name]
		if !ok {
			o = Observation{Up: true, Role: c.roles[b.Name], LagBytes: 0, Lag: -1, Position: -1}
		}
		node.Observe("db", b.Name, o)
	}
}

// hookTimeout is the hooks' timeout: short without roles; with roles long
// enough that waiting out a settle period (twice it) would show.
func (c *testCluster) hookTimeout() time.Duration {
	if c.roles != nil {
		return 5 * time.Minute
	}
	return testLease
}

func (c *testCluster) stop(name string) {
	c.net.mu.Lock()
	delete(c.net.nodes, name)
	c.net.mu.Unlock()
	c.hookWG.Wait()
	c.nodes[name].Close()
	c.stores[name].Close()
	delete(c.nodes, name)
}

func (c *testCluster) close() {
	for name := range c.nodes {
		c.stop(name)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func (c *testCluster) waitFor(what string, d time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			var st []string
			for name, n := range c.nodes {
				s, _ := n.Status()
				st = append(st, fmt.Sprintf("%s: %+v", name, s.Services))
			}
			c.t.Fatalf("timed out waiting for %s; status: %v", what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (c *testCluster) allRoute(backend string, names ...string) func() bool {
	if len(names) == 0 {
		names = c.peers
	}
	return func() bool {
		for _, name := range names {
			if b, _ := c.nodes[name].Route("db"); b != backend {
				return false
			}
		}
		return true
	}
}

func TestNodeBootstrapFailoverAndMinority(t *testing.T) {
	c := newTestCluster(t, 3)
	// A new cluster waits out recoverWait before its first epoch.
	c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))

	// One proxy alone seeing the primary down moves nobody.
	c.nodes["proxy-0"].Observe("db", "pg-a", Observation{Up: false, Role: RoleUnknown, LagBytes: 0, Lag: -1, Position: -1})
	time.Sleep(3 * testLease) // a negative check: nothing must happen in this window
	for _, p := range []string{"proxy-1", "proxy-2"} {
		if b, _ := c.nodes[p].Route("db"); b != "pg-a" {
			t.Fatalf("%s routes to %q after one proxy saw the primary down", p, b)
		}
	}

	start := time.Now()
	for _, p := range c.peers[1:] {
		c.nodes[p].Observe("db", "pg-a", Observation{Up: false, Role: RoleUnknown, LagBytes: 0, Lag: -1, Position: -1})
	}
	c.waitFor("failover to pg-b", 20*time.Second, c.allRoute("pg-b"))
	t.Logf("failover with lease_timeout %v: %v from the quorum seeing pg-a down to every proxy routing pg-b", testLease, time.Since(start).Round(time.Millisecond))
	select {
	case h := <-c.hooks:
		t.Logf("hook: %s", h)
	case <-time.After(10 * time.Second):
		t.Fatal("no fence/promote hook ran for the failover")
	}

	// A cut-off proxy stops routing within its lease; the majority goes on.
	c.net.isolate("proxy-0", true)
	start = time.Now()
	c.waitFor("isolated proxy-0 to stop routing", 10*time.Second, c.allRoute("", "proxy-0"))
	t.Logf("a cut-off proxy stopped routing after %v (lease_timeout %v)", time.Since(start).Round(time.Millisecond), testLease)
	c.waitFor("isolated proxy-0 to say it lost the quorum", 10*time.Second, func() bool {
		return strings.Contains(c.logs["proxy-0"].String(), "cluster: lost quorum: 1 of 3 proxies reachable (itself included), 2 needed")
	})
	if b, _ := c.nodes["proxy-1"].Route("db"); b != "pg-b" {
		t.Fatalf("majority proxy-1 routes to %q, want pg-b", b)
	}
	c.net.isolate("proxy-0", false)
	c.waitFor("healed proxy-0 to route again", 10*time.Second, c.allRoute("pg-b"))
	c.waitFor("healed proxy-0 to say it has a quorum again", 10*time.Second, func() bool {
		// once at start, once after the heal
		return strings.Count(c.logs["proxy-0"].String(), "cluster: quorum: ") >= 2
	})
	if strings.Contains(c.logs["proxy-1"].String(), "lost quorum") {
		t.Error("proxy-1 of the majority said it lost the quorum")
	}

	// A restarted proxy keeps its state and routes again under a lease.
	c.stop("proxy-2")
	c.start("proxy-2")
	for _, b := range []string{"pg-a"} {
		c.nodes["proxy-2"].Observe("db", b, Observation{Up: false, Role: RoleUnknown, LagBytes: 0, Lag: -1, Position: -1})
	}
	c.waitFor("restarted proxy-2 to route pg-b", 10*time.Second, c.allRoute("pg-b", "proxy-2"))
	st, err := c.nodes["proxy-2"].Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Recovering || st.Services[0].Record.Primary != "pg-b" {
		t.Fatalf("restarted proxy-2 status %+v", st)
	}
}

// A new cluster choosing its first primary by priority (no roles) waits
// for a better-ranked backend that is rising: backends started together
// come up a check apart, and the choice sticks.
func TestNodeBootstrapWaitsForABetterOneRising(t *testing.T) {
	rising := Observation{Up: false, Rising: true, LagBytes: -1, Lag: -1, Position: -1}
	c := newRoleCluster(t, 3, nil, 0, func(c *testCluster) { c.initial = map[string]Observation{"pg-a": rising} })
	c.waitFor("every proxy waiting for pg-a", 30*time.Second, func() bool {
		for _, n := range c.nodes {
			st, err := n.Status()
			if err != nil || len(st.Services) != 1 || !strings.Contains(st.Services[0].Decision, "pg-a, better ranked, to finish rising") {
				return false
			}
		}
		return true
	})
	for name, n := range c.nodes {
		if b, _ := n.Route("db"); b != "" {
			t.Fatalf("%s routes to %s while pg-a was rising", name, b)
		}
	}
	for _, n := range c.nodes {
		n.Observe("db", "pg-a", Observation{Up: true, LagBytes: 0, Lag: -1, Position: -1})
	}
	c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))
}

func TestNodeSwitchover(t *testing.T) {
	c := newTestCluster(t, 3)
	c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))
	if _, err := c.nodes["proxy-1"].Switchover("db", "pg-c"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("switchover to pg-c", 20*time.Second, c.allRoute("pg-c"))
	if _, err := c.nodes["proxy-1"].Switchover("db", "nope"); err == nil {
		t.Fatal("switchover to an unknown backend accepted")
	}
}

func TestMachineDropsHostileInput(t *testing.T) {
	st := &memStore{}
	m, err := NewMachine(withLease(Config{Name: "a", Peers: []string{"a", "b", "c"}, Services: []ServiceConfig{{Name: "db", Backends: testBackends}}}, testLease),
		BootClock{}, nopTransport{}, st)
	if err != nil {
		t.Fatal(err)
	}
	obs, _ := encodeObs(obsMsg{Service: "db", Boot: 5, Seq: 9, Entries: []obsEntry{{"pg-a", Observation{Up: true}}}})
	older, _ := encodeObs(obsMsg{Service: "db", Boot: 5, Seq: 8, Entries: []obsEntry{{"pg-a", Observation{}}}})
	unknown, _ := encodePropose(proposeMsg{Service: "nope", Epoch: 3, Value: Value{Primary: "x"}, Kind: kindFailover})
	m.Step("b", []byte{0xde, 0xad, 0xbe, 0xef})
	m.Step("mallory", obs)
	m.Step("b", obs)
	m.Step("b", obs)   // replayed
	m.Step("b", older) // older sequence
	m.Step("b", unknown)
	c := m.Status().Counters
	if c.Garbage != 1 || c.Stranger != 1 || c.Replay != 2 || c.UnknownService != 1 {
		t.Fatalf("counters %+v: want 1 garbage, 1 stranger, 2 replays, 1 unknown service", c)
	}
	if _, err := NewMachine(withLease(Config{Name: "z", Peers: []string{"a", "b"}}, testLease), BootClock{}, nopTransport{}, &memStore{}); err == nil {
		t.Fatal("a node name outside the peer list was accepted")
	}
}

// The package has no defaults: a missing timing is an error that names it,
// and a zero clock margin is taken literally, not replaced.
func TestConfigTakesLiteralValues(t *testing.T) {
	base := withLease(Config{Name: "a", Peers: []string{"a"},
		Services: []ServiceConfig{{Name: "db", Backends: testBackends, Hooks: HookConfig{Promote: true, Timeout: time.Second}}}}, testLease)
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" : accepted
	}{
		{"complete", func(*Config) {}, ""},
		{"zero clock margin", func(c *Config) { c.ClockMargin = 0 }, ""},
		{"no lease", func(c *Config) { c.LeaseTimeout = 0 }, "LeaseTimeout is 0s"},
		{"no observation TTL", func(c *Config) { c.ObservationTTL = 0 }, "ObservationTTL"},
		{"no vote timeout", func(c *Config) { c.VoteTimeout = -time.Second }, "VoteTimeout is -1s"},
		{"no failed-promote hold", func(c *Config) { c.FailedPromoteHold = 0 }, "FailedPromoteHold"},
		{"margin of one", func(c *Config) { c.ClockMargin = 1 }, "ClockMargin is 1"},
		{"negative margin", func(c *Config) { c.ClockMargin = -0.1 }, "ClockMargin is -0.1"},
		{"hook without timeout", func(c *Config) { c.Services[0].Hooks.Timeout = 0 }, `service "db": hook Timeout`},
	} {
		cfg := base
		cfg.Services = slices.Clone(base.Services)
		tc.mod(&cfg)
		m, err := NewMachine(cfg, BootClock{}, nopTransport{}, &memStore{})
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want == "" && m.cfg.ClockMargin != cfg.ClockMargin:
			t.Errorf("%s: clock margin %v became %v", tc.name, cfg.ClockMargin, m.cfg.ClockMargin)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// blockingTransport's Send hangs until released, as a TCP dial to a dead
// peer does.
type blockingTransport struct{ release chan struct{} }

func (b blockingTransport) Send(string, []byte) error      { <-b.release; return nil }
func (b blockingTransport) Broadcast(string, []byte) error { return nil }

func TestNodeNotStalledByBlockedSend(t *testing.T) {
	store, err := OpenFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cfg := withLease(Config{Name: "a", Peers: []string{"a", "b", "c"},
		Services: []ServiceConfig{{Name: "db", Backends: testBackends}}}, testLease)
	n, err := NewNode(cfg, store, BootClock{}, NodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr := blockingTransport{release: make(chan struct{})}
	n.Start(tr)
	// Recovery sends sync requests (reliable) that hang in the transport;
	// the state machine must still answer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sync request was attempted: %+v", st)
		}
		if len(n.tr.queues["b"]) > 0 || len(n.tr.queues["c"]) > 0 {
			break // a send is stuck and more are queued behind it
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := n.Status(); err != nil {
		t.Fatalf("state machine stalled behind a blocked send: %v", err)
	}
	close(tr.release) // as closing the transport does
	n.Close()
}

// nextHook waits for the next fence/promote hook run.
func (c *testCluster) nextHook(what string) string {
	c.t.Helper()
	select {
	case h := <-c.hooks:
		return h
	case <-time.After(20 * time.Second):
		c.t.Fatalf("no hook ran for %s", what)
		return ""
	}
}

// expectHooks takes the next hook runs and requires them to be want, in
// order, on one proxy ("" for the proxy lets the first run decide it).
// Each run reads "NAME epoch E ACTION BACKEND"; it returns the proxy and
// the epochs.
func (c *testCluster) expectHooks(who string, want ...string) (string, []uint64) {
	c.t.Helper()
	var epochs []uint64
	for _, w := range want {
		h := c.nextHook(w)
		var name, action, backend string
		var e uint64
		fmt.Sscanf(h, "%s epoch %d %s %s", &name, &e, &action, &backend)
		if who == "" {
			who = name
		}
		if name != who || action+" "+backend != w {
			c.t.Fatalf("hook %q: want %q on %s (so far epochs %v)", h, w, who, epochs)
		}
		epochs = append(epochs, e)
	}
	return who, epochs
}

// A service without roles whose promote of pg-b fails: the proxy that
// committed the failover fences pg-b (a service without roles moves on
// only after a fence hook succeeded) and moves on to pg-c at the next
// epoch; the fenced backends stay out until an operator unfences them.
func TestNodePromoteFailureMovesOn(t *testing.T) {
	c := newTestCluster(t, 3)
	c.failPromote.Store(&[]string{"pg-b"})
	c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))
	for _, p := range c.peers {
		c.nodes[p].Observe("db", "pg-a", Observation{Up: false, Role: RoleUnknown, LagBytes: 0, Lag: -1, Position: -1})
	}
	who, es := c.expectHooks("", "fence pg-a", "promote pg-b", "fence pg-b", "promote pg-c")
	if es[0] != es[1] || es[1] != es[2] || es[3] <= es[2] {
		t.Fatalf("epochs %v: want the failover's fence, promote and fence at one epoch, the move at a later one", es)
	}
	c.waitFor("every proxy to route pg-c", 20*time.Second, c.allRoute("pg-c"))
	c.waitFor("pg-a and pg-b fenced everywhere", 10*time.Second, c.allFenced("pg-a,pg-b"))
	select {
	case h := <-c.hooks:
		t.Fatalf("hook %q ran after the move", h)
	default:
	}

	// Reports about an old epoch change nothing; an unknown service is an error.
	n := c.nodes[who]
	if err := n.ActionDone("db", Action{Kind: ActionPromote, Epoch: es[0], Backend: "pg-b"}, ActionResult{Ran: true}); err != nil {
		t.Fatal(err)
	}
	if err := n.ActionDone("nope", Action{Kind: ActionPromote, Epoch: es[3], Backend: "pg-c"}, ActionResult{}); err == nil {
		t.Fatal("ActionDone accepted an unknown service")
	}
	c.waitFor("every proxy still routing pg-c", 5*time.Second, c.allRoute("pg-c"))

	// The old primary, healthy again, stays fenced: a service checked
	// without roles has nothing else to keep it out. Failback is the
	// operator's: a switchover to a fenced backend is refused; unfence
	// (an epoch with no hook), then switch over.
	for _, p := range c.peers {
		c.nodes[p].Observe("db", "pg-a", Observation{Up: true, Role: RoleUnknown, LagBytes: 0, Lag: -1, Position: -1})
	}
	if _, err := n.Switchover("db", "pg-a"); err == nil || !strings.Contains(err.Error(), "fenced") {
		t.Fatalf("switchover to fenced pg-a: got %v, want a refusal that says it is fenced", err)
	}
	if _, err := n.Fence("db", "pg-c", false); err == nil || !strings.Contains(err.Error(), "not fenced") {
		t.Fatalf("unfence of pg-c, which is not fenced: got %v", err)
	}
	if _, err := n.Fence("db", "pg-a", false); err != nil {
		t.Fatal(err)
	}
	c.waitFor("pg-a unfenced in every record", 20*time.Second, c.allFenced("pg-b"))
	c.waitFor("every proxy to route pg-c again", 20*time.Second, c.allRoute("pg-c"))
	if _, err := n.Switchover("db", "pg-a"); err != nil {
		t.Fatal(err)
	}
	c.expectHooks(who, "fence pg-c", "promote pg-a")
	c.waitFor("every proxy to route pg-a", 20*time.Second, c.allRoute("pg-a"))
	// Without roles the old primary of a switchover is fenced too.
	c.waitFor("pg-b and pg-c fenced everywhere", 10*time.Second, c.allFenced("pg-b,pg-c"))

	// An operator's fence of the primary moves the service to the best
	// candidate and keeps the fenced one out.
	if _, err := n.Fence("db", "pg-c", false); err != nil {
		t.Fatal(err)
	}
	c.waitFor("pg-c unfenced in every record", 20*time.Second, c.allFenced("pg-b"))
	if _, err := n.Fence("db", "pg-a", true); err != nil {
		t.Fatal(err)
	}
	c.expectHooks(who, "fence pg-a", "promote pg-c")
	c.waitFor("every proxy to route pg-c after the fence", 20*time.Second, c.allRoute("pg-c"))
	c.waitFor("pg-a and pg-b fenced everywhere", 20*time.Second, c.allFenced("pg-a,pg-b"))
	if _, err := n.Fence("db", "pg-c", true); err == nil || !strings.Contains(err.Error(), "no backend can take over") {
		t.Fatalf("fence of the last unfenced primary: got %v, want a refusal", err)
	}
}

// allFenced reports whether every proxy's record has exactly this fenced set.
func (c *testCluster) allFenced(want Fenced) func() bool {
	return func() bool {
		for _, p := range c.peers {
			st, err := c.nodes[p].Status()
			if err != nil || st.Services[0].Record.Fenced != want {
				return false
			}
		}
		return true
	}
}

// A promote hook that cannot even be started (a wrong path) did nothing:
// the proxy moves on to the next candidate at once, without the settle
// period a hook that ran would need (ten minutes here: waiting it out
// would time the test out), and no fence hook is needed (there is none).
func TestNodePromoteNotStartedMovesOnAtOnce(t *testing.T) {
	c := newRoleCluster(t, 3, map[string]Role{"pg-a": RolePrimary, "pg-b": RoleReplica, "pg-c": RoleReplica}, 0)
	c.notStarted.Store(&[]string{"pg-b"})
	c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))
	for _, p := range c.peers {
		c.nodes[p].Observe("db", "pg-a", Observation{Up: false, Role: RoleUnknown, LagBytes: 0, Lag: -1, Position: -1})
	}
	c.expectHooks("", "promote pg-b", "promote pg-c")
	c.waitFor("every proxy to route pg-c", 20*time.Second, c.allRoute("pg-c"))
}

// max_lag_on_failover in time bounds a cluster's candidates as it bounds a
// proxy alone's (the one failover policy): pg-b, preferred by priority,
// replays 5s behind and is passed over for pg-c.
func TestNodeLagInTimeBoundsCandidates(t *testing.T) {
	c := newRoleCluster(t, 3, map[string]Role{"pg-a": RolePrimary, "pg-b": RoleReplica, "pg-c": RoleReplica}, time.Second)
	c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))
	for _, p := range c.peers {
		c.nodes[p].Observe("db", "pg-b", Observation{Up: true, Role: RoleReplica, LagBytes: 0, Lag: 5 * time.Second, Position: -1})
		c.nodes[p].Observe("db", "pg-c", Observation{Up: true, Role: RoleReplica, LagBytes: 0, Lag: 10 * time.Millisecond, Position: -1})
	}
	for _, p := range c.peers {
		c.nodes[p].Observe("db", "pg-a", Observation{Up: false, Role: RoleUnknown, LagBytes: -1, Lag: -1, Position: -1})
	}
	c.expectHooks("", "promote pg-c")
	c.waitFor("every proxy to route pg-c", 20*time.Second, c.allRoute("pg-c"))
}

// Once the primary is down, the cluster promotes the replica that holds
// the most of its log, over a higher priority, even when one proxy's own
// view of that replica's position is stale (its check has not run since):
// the quorum's fresh reads rank it.
func TestNodeRanksByFreshPosition(t *testing.T) {
	c := newRoleCluster(t, 3, map[string]Role{"pg-a": RolePrimary, "pg-b": RoleReplica, "pg-c": RoleReplica}, 0)
	c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))
	for _, p := range c.peers {
		c.nodes[p].Observe("db", "pg-b", Observation{Up: true, Role: RoleReplica, LagBytes: -1, Lag: -1, Position: 500, PositionFresh: true})
		// proxy-2, the first to propose, has read pg-c only before pg-a fell silent
		fresh := p != "proxy-2"
		c.nodes[p].Observe("db", "pg-c", Observation{Up: true, Role: RoleReplica, LagBytes: -1, Lag: -1, Position: 900, PositionFresh: fresh})
	}
	for _, p := range c.peers {
		c.nodes[p].Observe("db", "pg-a", Observation{Up: false, Role: RoleUnknown, LagBytes: -1, Lag: -1, Position: -1})
	}
	c.expectHooks("", "promote pg-c")
	c.waitFor("every proxy to route pg-c", 20*time.Second, c.allRoute("pg-c"))
}

// rpo = "zero" in a cluster: the primary reported pg-c synchronous at its
// last good check, so pg-c takes over although pg-b has the higher
// priority; with no synchronous standby known, nothing is promoted and
// the status says why.
func TestNodeRPOZero(t *testing.T) {
	for _, tc := range []struct {
		name string
		mask uint64
		want string
	}{{"synchronous standby pg-c", 1 << 2, "pg-c"}, {"none synchronous", 0, ""}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newRoleCluster(t, 3, map[string]Role{"pg-a": RolePrimary, "pg-b": RoleReplica, "pg-c": RoleReplica}, 0,
				func(c *testCluster) { c.rpoZero = true })
			c.waitFor("bootstrap to pg-a", 30*time.Second, c.allRoute("pg-a"))
			for _, p := range c.peers {
				c.nodes[p].Observe("db", "pg-a", Observation{Up: true, Role: RolePrimary, LagBytes: 0, Lag: 0, Position: -1, SyncMask: tc.mask})
			}
			for _, p := range c.peers {
				c.nodes[p].Observe("db", "pg-a", Observation{Up: false, Role: RoleUnknown, LagBytes: -1, Lag: -1, Position: -1, SyncMask: tc.mask})
			}
			if tc.want != "" {
				c.expectHooks("", "promote "+tc.want)
				c.waitFor("every proxy to route "+tc.want, 20*time.Second, c.allRoute(tc.want))
				return
			}
			c.waitFor("the no_failover alert", 20*time.Second, func() bool {
				st, err := c.nodes["proxy-2"].Status()
				if err != nil {
					return false
				}
				for _, a := range st.Services[0].Alerts {
					if strings.HasPrefix(a, "no_failover: ") && strings.Contains(a, "rpo = zero") {
						return true
					}
				}
				return false
			})
			if len(c.hooks) != 0 {
				t.Fatalf("a hook ran: %s", <-c.hooks)
			}
		})
	}
}
