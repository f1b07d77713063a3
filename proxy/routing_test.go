package proxy

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

type events struct {
	mu  sync.Mutex
	evs []TargetChange
}

func (e *events) add(ev TargetChange) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
}

func (e *events) list() []TargetChange {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]TargetChange(nil), e.evs...)
}

func twoBackends(t *testing.T, cfg ServiceConfig) (ServiceConfig, *server, *server) {
	a, b := startNamed(t, "a"), startNamed(t, "b")
	cfg.Listen = "127.0.0.1:0"
	cfg.Backends = []Backend{{Name: "a", Address: a.addr(), Priority: 2}, {Name: "b", Address: b.addr(), Priority: 1}}
	return cfg, a, b
}

func TestActivePassiveFailback(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(map[bool]string{false: "manual", true: "auto"}[auto], func(t *testing.T) {
			var ev events
			cfg, _, _ := twoBackends(t, ServiceConfig{Name: "svc", FailbackAuto: auto, CloseOnDown: true, SwitchHold: -1})
			var p *Proxy
			p = newProxy(t, Options{OnTarget: func(tc TargetChange) {
				_ = p.Status() // not called under the proxy's locks: no deadlock
				ev.add(tc)
			}}, cfg)
			addr := p.addrOf(t, "svc")
			// b reports first: no choice while the better a is unknown.
			p.SetHealth("svc", "b", upAny)
			if st := p.statusOf("svc"); st.Target != "" {
				t.Fatalf("target %q before a reported", st.Target)
			}
			expectClosed(t, dial(t, addr))
			p.SetHealth("svc", "a", upAny)
			if name, _ := backendOf(t, addr); name != "a" {
				t.Fatalf("got %s, want a", name)
			}
			_, held := backendOf(t, addr)
			p.SetHealth("svc", "a", down)
			expectClosed(t, held) // CloseOnDown
			if name, _ := backendOf(t, addr); name != "b" {
				t.Fatalf("after a down got %s, want b", name)
			}
			p.SetHealth("svc", "a", upAny)
			want := "b"
			if auto {
				want = "a"
			}
			if name, _ := backendOf(t, addr); name != want {
				t.Fatalf("after a recovered got %s, want %s", name, want)
			}
			wantEv := [][2]string{{"", "a"}, {"a", "b"}}
			if auto {
				wantEv = append(wantEv, [2]string{"b", "a"})
			}
			testwait.For(t, "target events", waitLimit, func() bool { return len(ev.list()) == len(wantEv) })
			for i, e := range ev.list() {
				if e.Service != "svc" || e.Old.Name != wantEv[i][0] || e.New.Name != wantEv[i][1] || e.Reason == "" {
					t.Fatalf("event %d: %+v, want %v", i, e, wantEv[i])
				}
			}
		})
	}
}

// TestRolePrimaryHoldAndDual: with Want=Primary a standby chosen at failover
// gets connections only once it reports primary (held meanwhile); a second
// primary raises the alert and never takes the writes.
func TestRolePrimaryHoldAndDual(t *testing.T) {
	var ev events
	cfg, _, _ := twoBackends(t, ServiceConfig{Name: "pg", Want: RolePrimary, CloseOnDown: true, SwitchHold: time.Minute})
	p := newProxy(t, Options{OnTarget: ev.add}, cfg)
	addr := p.addrOf(t, "pg")
	p.SetHealth("pg", "a", upRole(RolePrimary, -1))
	p.SetHealth("pg", "b", upRole(RoleReplica, 0))
	if name, _ := backendOf(t, addr); name != "a" {
		t.Fatalf("got %s", name)
	}
	p.SetHealth("pg", "a", down)
	testwait.For(t, "failover event", waitLimit, func() bool { return len(ev.list()) == 2 })
	if e := ev.list()[1]; e.New.Name != "b" || e.Old.Name != "a" {
		t.Fatalf("event %+v", e)
	}
	// b is the target but still a replica: the client is held.
	c := dial(t, addr)
	testwait.For(t, "held connection", waitLimit, func() bool { return p.statusOf("pg").Held == 1 })
	if st := p.statusOf("pg"); st.Target != "b" || st.backend("b").Eligible {
		t.Fatalf("status %+v", st)
	}
	// The old primary comes back as primary before b is promoted: sticky.
	p.SetHealth("pg", "a", upRole(RolePrimary, -1))
	if st := p.statusOf("pg"); st.Target != "b" || st.Held != 1 {
		t.Fatalf("target %q held %d", st.Target, st.Held)
	}
	p.SetHealth("pg", "b", upRole(RolePrimary, -1)) // the promote hook ran
	if got := readLine(t, c); got != "b" {
		t.Fatalf("held connection went to %s", got)
	}
	st := p.statusOf("pg")
	if !st.DualPrimary || st.Target != "b" || len(st.Primaries) != 2 {
		t.Fatalf("dual primary not raised: %+v", st)
	}
	for i := 0; i < 3; i++ {
		if name, _ := backendOf(t, addr); name != "b" {
			t.Fatalf("writes moved to %s under dual primary", name)
		}
	}
	p.SetHealth("pg", "a", upRole(RoleReplica, 0))
	if st := p.statusOf("pg"); st.DualPrimary || st.Target != "b" {
		t.Fatalf("after a demoted: %+v", st)
	}
}

// TestNoStandbyChosenAtStart: a primary that fails its first check after a
// start may only be slow, and nothing promotes the first choice, so no
// standby is chosen to wait for a promotion; the primary, once it answers,
// takes the writes (it used to stay behind a standby "awaiting promotion").
func TestNoStandbyChosenAtStart(t *testing.T) {
	var ev events
	cfg, _, _ := twoBackends(t, ServiceConfig{Name: "pg", Want: RolePrimary, SwitchHold: time.Minute})
	p := newProxy(t, Options{OnTarget: ev.add}, cfg)
	p.SetHealth("pg", "a", down)
	p.SetHealth("pg", "b", upRole(RoleReplica, 0))
	if st := p.statusOf("pg"); st.Target != "" || !strings.Contains(st.Reason, "does not pick a standby") {
		t.Fatalf("a standby chosen at start: target %q, reason %q", st.Target, st.Reason)
	}
	p.SetHealth("pg", "a", upRole(RolePrimary, -1))
	if name, _ := backendOf(t, p.addrOf(t, "pg")); name != "a" {
		t.Fatalf("writes went to %s", name)
	}
	// Once it has had a target, a failover chooses the standby as before.
	p.SetHealth("pg", "a", down)
	testwait.For(t, "failover event", waitLimit, func() bool { return len(ev.list()) == 2 })
	if st := p.statusOf("pg"); st.Target != "b" {
		t.Fatalf("after the primary failed: target %q", st.Target)
	}
}

// TestFailoverRanksByFreshPosition: once the primary is down, the replica
// that holds the most of its log takes over whatever the priorities, and
// the choice waits for a replica whose position is not read yet.
func TestFailoverRanksByFreshPosition(t *testing.T) {
	var ev events
	cfg, _, _ := twoBackends(t, ServiceConfig{Name: "pg", Want: RolePrimary, SwitchHold: time.Minute})
	c := startNamed(t, "c")
	cfg.Backends = append(cfg.Backends, Backend{Name: "c", Address: c.addr(), Priority: 0})
	cfg.Backends[1].Priority = 5 // b is preferred over c by priority
	p := newProxy(t, Options{OnTarget: ev.add}, cfg)
	rep := func(pos int64, fresh bool) Health {
		h := upRole(RoleReplica, 0)
		h.Position, h.PositionFresh = pos, fresh
		return h
	}
	p.SetHealth("pg", "a", upRole(RolePrimary, -1))
	p.SetHealth("pg", "b", rep(100, false))
	p.SetHealth("pg", "c", rep(100, false))
	testwait.For(t, "a targeted", waitLimit, func() bool { return p.statusOf("pg").Target == "a" })
	p.SetHealth("pg", "c", rep(900, true)) // c read after a's silence began
	p.SetHealth("pg", "a", down)
	if st := p.statusOf("pg"); st.Target != "a" || !strings.Contains(st.Reason, "waiting for the replication position of b") {
		t.Fatalf("with b's position not read since: target %q, reason %q", st.Target, st.Reason)
	}
	p.SetHealth("pg", "b", rep(700, true))
	testwait.For(t, "failover event", waitLimit, func() bool { return len(ev.list()) == 2 })
	if st := p.statusOf("pg"); st.Target != "c" {
		t.Fatalf("target %q (%s), want c: it holds more of a's log than the higher-priority b", st.Target, st.Reason)
	}
}

// TestSwitchHold: a connection accepted with no target waits and goes
// through once a target appears; with none it is closed after the hold.
func TestSwitchHold(t *testing.T) {
	cfg, _, _ := twoBackends(t, ServiceConfig{Name: "svc", SwitchHold: time.Minute})
	cfg2, _, _ := twoBackends(t, ServiceConfig{Name: "short", SwitchHold: 50 * time.Millisecond})
	p := newProxy(t, Options{}, cfg, cfg2)
	c := dial(t, p.addrOf(t, "svc"))
	testwait.For(t, "held", waitLimit, func() bool { return p.statusOf("svc").Held == 1 })
	p.SetHealth("svc", "a", upAny)
	p.SetHealth("svc", "b", upAny)
	if got := readLine(t, c); got != "a" {
		t.Fatalf("got %s", got)
	}
	roundTrip(t, c, "still flowing")
	if st := p.statusOf("svc"); st.Held != 0 || st.Refused != 0 {
		t.Fatalf("held %d refused %d", st.Held, st.Refused)
	}
	c2 := dial(t, p.addrOf(t, "short"))
	expectClosed(t, c2)
	if st := p.statusOf("short"); st.Refused != 1 || st.Held != 0 || st.Active != 0 {
		t.Fatalf("short: %+v", st)
	}
}

func TestActiveActiveDistribution(t *testing.T) {
	a, b := startNamed(t, "a"), startNamed(t, "b")
	p := newProxy(t, Options{},
		ServiceConfig{Name: "rr", Listen: "127.0.0.1:0", Mode: ActiveActive, Backends: []Backend{
			{Name: "a", Address: a.addr(), Weight: 1}, {Name: "b", Address: b.addr(), Weight: 3}}},
		ServiceConfig{Name: "lc", Listen: "127.0.0.1:0", Mode: ActiveActive, Balance: LeastConn, Backends: []Backend{
			{Name: "a", Address: a.addr()}, {Name: "b", Address: b.addr()}}})
	for _, s := range []string{"rr", "lc"} {
		p.SetHealth(s, "a", upAny)
		p.SetHealth(s, "b", upAny)
	}
	counts := map[string]int{}
	for i := 0; i < 20; i++ {
		name, c := backendOf(t, p.addrOf(t, "rr"))
		counts[name]++
		_ = c.Close()
	}
	if counts["a"] != 5 || counts["b"] != 15 {
		t.Fatalf("weighted round-robin: %v", counts)
	}
	// Least-conn: hold 3 open to whichever, then new ones fill the other.
	lc := p.addrOf(t, "lc")
	held := map[string]int{}
	for i := 0; i < 6; i++ {
		name, _ := backendOf(t, lc) // kept open until cleanup
		held[name]++
	}
	if held["a"] != 3 || held["b"] != 3 {
		t.Fatalf("least-conn spread %v", held)
	}
	// b leaves the rotation: everything goes to a.
	p.SetHealth("lc", "b", down)
	for i := 0; i < 3; i++ {
		if name, _ := backendOf(t, lc); name != "a" {
			t.Fatalf("down backend got traffic")
		}
	}
	if st := p.statusOf("lc"); st.backend("b").Active != 3 {
		t.Fatalf("CloseOnDown off should keep b's sessions: %d", st.backend("b").Active)
	}
}

// An operator's drain takes a backend out of new connections while its
// open sessions run on; undrain puts it back. The active-passive target
// cannot be drained, a standby can (it is then no failover candidate).
func TestDrainBackend(t *testing.T) {
	a, b := startNamed(t, "a"), startNamed(t, "b")
	p := newProxy(t, Options{},
		ServiceConfig{Name: "rr", Listen: "127.0.0.1:0", Mode: ActiveActive, Backends: []Backend{
			{Name: "a", Address: a.addr()}, {Name: "b", Address: b.addr()}}},
		ServiceConfig{Name: "ap", Listen: "127.0.0.1:0", Backends: []Backend{
			{Name: "a", Address: a.addr(), Priority: 2}, {Name: "b", Address: b.addr(), Priority: 1}}})
	for _, s := range []string{"rr", "ap"} {
		p.SetHealth(s, "a", upAny)
		p.SetHealth(s, "b", upAny)
	}
	rr := p.addrOf(t, "rr")
	var open *net.TCPConn
	for open == nil {
		if name, c := backendOf(t, rr); name == "b" {
			open = c
		}
	}
	if err := p.SetDrain("rr", "b", true); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		if name, c := backendOf(t, rr); name != "a" {
			t.Fatalf("draining b got a new connection")
		} else {
			_ = c.Close()
		}
	}
	roundTrip(t, open, "still here")
	if bs := p.statusOf("rr").backend("b"); !bs.Draining || bs.Eligible || bs.Active != 1 {
		t.Fatalf("draining b: %+v, want draining, not eligible, 1 session", bs)
	}
	if err := p.SetDrain("rr", "b", false); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for i := 0; i < 4; i++ {
		name, c := backendOf(t, rr)
		got[name] = true
		_ = c.Close()
	}
	if !got["b"] {
		t.Fatalf("undrained b got no new connection: %v", got)
	}

	if err := p.SetDrain("ap", "a", true); !errors.Is(err, ErrDrainTarget) {
		t.Fatalf("drain of the active-passive target: %v, want ErrDrainTarget", err)
	}
	if err := p.SetDrain("ap", "b", true); err != nil {
		t.Fatal(err)
	}
	p.SetHealth("ap", "a", down)
	if st := p.statusOf("ap"); st.Target != "" || !strings.Contains(st.Reason, "no eligible") {
		t.Fatalf("failover to a draining standby: target %q (%s)", st.Target, st.Reason)
	}
	if err := p.SetDrain("ap", "b", false); err != nil {
		t.Fatal(err)
	}
	if st := p.statusOf("ap"); st.Target != "b" {
		t.Fatalf("undrained standby not chosen: target %q (%s)", st.Target, st.Reason)
	}
	if err := p.SetDrain("ap", "zz", true); err == nil {
		t.Fatal("drain of an unknown backend accepted")
	}
}

// A service without roles fences the primary it fails over from: back up,
// it is not chosen when the new primary fails too, until an operator
// unfences it. An operator's fence of the target moves the service; one
// that would leave no target is refused. With roles, or with automatic
// failback, nothing is fenced on its own.
func TestFenceStandalone(t *testing.T) {
	a, b := startNamed(t, "a"), startNamed(t, "b")
	two := func(name string, want Role, auto bool) ServiceConfig {
		return ServiceConfig{Name: name, Listen: "127.0.0.1:0", Want: want, FailbackAuto: auto, SwitchHold: -1, Backends: []Backend{
			{Name: "a", Address: a.addr(), Priority: 2}, {Name: "b", Address: b.addr(), Priority: 1}}}
	}
	p := newProxy(t, Options{}, two("ap", RoleAny, false), two("roles", RolePrimary, false), two("auto", RoleAny, true))
	for _, s := range []string{"ap", "auto"} {
		p.SetHealth(s, "a", upAny)
		p.SetHealth(s, "b", upAny)
	}
	p.SetHealth("roles", "a", upRole(RolePrimary, 0))
	p.SetHealth("roles", "b", upRole(RoleReplica, 0))
	for _, s := range []string{"ap", "roles", "auto"} {
		if st := p.statusOf(s); st.Target != "a" {
			t.Fatalf("%s: target %q, want a", s, st.Target)
		}
		p.SetHealth(s, "a", down)
	}
	p.SetHealth("roles", "b", upRole(RolePrimary, 0)) // promoted
	for s, want := range map[string]bool{"ap": true, "roles": false, "auto": false} {
		if got := p.statusOf(s).backend("a").Fenced; got != want {
			t.Errorf("%s: a fenced %v after the failover, want %v", s, got, want)
		}
	}

	p.SetHealth("ap", "a", upAny)
	p.SetHealth("ap", "b", down)
	if st := p.statusOf("ap"); st.Target != "" || !strings.Contains(st.Reason, "no eligible") {
		t.Fatalf("b down with a fenced: target %q (%s), want none", st.Target, st.Reason)
	}
	expectClosed(t, dial(t, p.addrOf(t, "ap")))
	if err := p.SetFence("ap", "a", false); err != nil {
		t.Fatal(err)
	}
	if name, _ := backendOf(t, p.addrOf(t, "ap")); name != "a" {
		t.Fatalf("after the unfence got %s, want a", name)
	}
	p.SetHealth("ap", "b", upAny)
	if err := p.SetFence("ap", "a", true); err != nil {
		t.Fatal(err)
	}
	if st := p.statusOf("ap"); st.Target != "b" || !st.backend("a").Fenced {
		t.Fatalf("fence of the target: target %q, a fenced %v; want b and fenced", st.Target, st.backend("a").Fenced)
	}
	if err := p.SetFence("ap", "b", true); err == nil || !strings.Contains(err.Error(), "no backend can take over") {
		t.Fatalf("fence of the last unfenced target: %v", err)
	}
	if err := p.SetFence("ap", "a", true); err == nil {
		t.Fatal("fencing a fenced backend again was accepted")
	}
}

func TestCloseOnDownAndFence(t *testing.T) {
	cfg, _, _ := twoBackends(t, ServiceConfig{Name: "keep", Mode: ActiveActive})
	p := newProxy(t, Options{}, cfg)
	p.SetHealth("keep", "a", upAny)
	addr := p.addrOf(t, "keep")
	var conns []net.Conn
	for i := 0; i < 4; i++ {
		if name, c := backendOf(t, addr); name == "a" {
			conns = append(conns, c)
		}
	}
	if len(conns) != 4 {
		t.Fatalf("only a is up yet %d went to a", len(conns))
	}
	if n := p.CloseSessions("keep", "a"); n != 4 {
		t.Fatalf("fenced %d sessions, want 4", n)
	}
	for _, c := range conns {
		expectClosed(t, c)
	}
	testwait.For(t, "release", waitLimit, func() bool { return p.statusOf("keep").Active == 0 })
}

func TestLimits(t *testing.T) {
	a := startEcho(t)
	p := newProxy(t, Options{},
		ServiceConfig{Name: "svc", Listen: "127.0.0.1:0", MaxConns: 2, Backends: []Backend{{Name: "a", Address: a.addr()}}},
		ServiceConfig{Name: "be", Listen: "127.0.0.1:0", Backends: []Backend{{Name: "a", Address: a.addr(), MaxConns: 1}}})
	p.SetHealth("svc", "a", upAny)
	p.SetHealth("be", "a", upAny)
	addr := p.addrOf(t, "svc")
	c1, c2 := dial(t, addr), dial(t, addr)
	roundTrip(t, c1, "1")
	roundTrip(t, c2, "2")
	expectClosed(t, dial(t, addr))
	if st := p.statusOf("svc"); st.Refused != 1 || st.Accepted != 3 || st.Active != 2 {
		t.Fatalf("service limit: %+v", st)
	}
	_ = c1.Close()
	testwait.For(t, "slot freed", waitLimit, func() bool { return p.statusOf("svc").Active == 1 })
	roundTrip(t, dial(t, addr), "3")

	b1 := dial(t, p.addrOf(t, "be"))
	roundTrip(t, b1, "x")
	expectClosed(t, dial(t, p.addrOf(t, "be")))
	st := p.statusOf("be")
	if st.backend("a").Refused != 1 || st.Refused != 1 || st.backend("a").Active != 1 {
		t.Fatalf("backend limit: %+v", st)
	}
}

func TestIdleTimeout(t *testing.T) {
	a := startEcho(t)
	cfg := oneBackend("svc", a.addr())
	cfg.IdleTimeout = 150 * time.Millisecond
	p := newProxy(t, Options{}, cfg)
	p.SetHealth("svc", "a", upAny)
	c := dial(t, p.addrOf(t, "svc"))
	roundTrip(t, c, "hi")
	start := time.Now()
	expectClosed(t, c)
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", el)
	}
	testwait.For(t, "release", waitLimit, func() bool { return p.statusOf("svc").Active == 0 })
}

func TestDrain(t *testing.T) {
	a := startEcho(t)
	p := newProxy(t, Options{}, oneBackend("svc", a.addr()))
	p.SetHealth("svc", "a", upAny)
	addr := p.addrOf(t, "svc")
	c := dial(t, addr)
	roundTrip(t, c, "before")
	done := make(chan error, 1)
	go func() { done <- p.Drain(context.Background()) }()
	testwait.For(t, "listener closed", waitLimit, func() bool {
		nc, err := net.Dial("tcp", addr)
		if err == nil {
			_ = nc.Close()
		}
		return err != nil
	})
	roundTrip(t, c, "during drain")
	select {
	case err := <-done:
		t.Fatalf("drain returned early: %v", err)
	default:
	}
	_ = c.Close()
	if err := <-done; err != nil {
		t.Fatalf("drain: %v", err)
	}
	if err := p.Apply(nil); err == nil {
		t.Fatal("apply after drain succeeded")
	}

	// A drain that runs out of time closes what is left.
	p2 := newProxy(t, Options{}, oneBackend("svc", a.addr()))
	p2.SetHealth("svc", "a", upAny)
	c2 := dial(t, p2.addrOf(t, "svc"))
	roundTrip(t, c2, "x")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p2.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain: %v", err)
	}
	expectClosed(t, c2)
}

// TestReload: unaffected sessions keep flowing through a reload that adds,
// removes and changes services and backends.
func TestReload(t *testing.T) {
	a, b, c := startNamed(t, "a"), startNamed(t, "b"), startNamed(t, "c")
	old := ServiceConfig{Name: "svc", Listen: "127.0.0.1:0", Mode: ActiveActive, Backends: []Backend{
		{Name: "a", Address: a.addr()}, {Name: "b", Address: b.addr()}}}
	gone := oneBackend("gone", a.addr())
	p := newProxy(t, Options{}, old, gone)
	p.SetHealth("svc", "a", upAny)
	p.SetHealth("svc", "b", upAny)
	p.SetHealth("gone", "a", upAny)
	addr, goneAddr := p.addrOf(t, "svc"), p.addrOf(t, "gone")
	sessions := map[string]net.Conn{}
	for len(sessions) < 2 {
		name, conn := backendOf(t, addr)
		sessions[name] = conn
	}
	gc := dial(t, goneAddr)
	if readLine(t, gc) != "a" {
		t.Fatal("gone: wrong backend")
	}

	// Same listen string: the listener (and its port) stays.
	nw := old
	nw.MaxConns = 100
	nw.Backends = []Backend{{Name: "a", Address: a.addr(), Weight: 5}, {Name: "c", Address: c.addr()}}
	added := ServiceConfig{Name: "added", Listen: "127.0.0.1:0", Backends: []Backend{{Name: "c", Address: c.addr()}}}
	if err := p.Apply([]ServiceConfig{nw, added}); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, sessions["a"], "a keeps flowing")
	expectClosed(t, sessions["b"])
	expectClosed(t, gc)
	if _, err := net.Dial("tcp", goneAddr); err == nil {
		t.Fatal("removed service still listening")
	}
	if p.addrOf(t, "svc") != addr {
		t.Fatal("listener changed on reload")
	}
	// a kept its health; c is unknown until reported.
	for i := 0; i < 3; i++ {
		if name, _ := backendOf(t, addr); name != "a" {
			t.Fatalf("got %s", name)
		}
	}
	p.SetHealth("svc", "c", upAny)
	p.SetHealth("added", "c", upAny)
	if name, _ := backendOf(t, p.addrOf(t, "added")); name != "c" {
		t.Fatalf("added service got %s", name)
	}
	roundTrip(t, sessions["a"], "a still flowing")

	// A listen failure is returned; other services keep serving.
	blocker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()
	bad := ServiceConfig{Name: "bad", Listen: blocker.Addr().String(), Backends: []Backend{{Name: "c", Address: c.addr()}}}
	if err := p.Apply([]ServiceConfig{nw, added, bad}); err == nil {
		t.Fatal("listen conflict not reported")
	}
	if st := p.statusOf("bad"); st.ListenError == "" || st.Addr != "" {
		t.Fatalf("bad: %+v", st)
	}
	roundTrip(t, sessions["a"], "after failed listen")
}

// fakeLease is a lease whose deadline the test moves.
type fakeLease struct{ until atomic.Int64 }

func (l *fakeLease) Remaining() time.Duration { return time.Until(time.Unix(0, l.until.Load())) }
func (l *fakeLease) set(d time.Duration)      { l.until.Store(time.Now().Add(d).UnixNano()) }

// TestExternalLease: an External service routes only where SetRoute says,
// only under a live lease; on expiry new connections are held then refused,
// and writes of existing sessions to the backend stop.
func TestExternalLease(t *testing.T) {
	var ev events
	cfg, _, _ := twoBackends(t, ServiceConfig{Name: "ext", External: true, SwitchHold: time.Minute, CloseOnDown: true})
	p := newProxy(t, Options{OnTarget: ev.add}, cfg)
	addr := p.addrOf(t, "ext")
	p.SetHealth("ext", "a", upAny)
	p.SetHealth("ext", "b", upAny)
	if st := p.statusOf("ext"); st.Target != "" {
		t.Fatalf("External chose %q by itself", st.Target)
	}
	lease := &fakeLease{}
	lease.set(time.Hour)
	p.SetRoute("ext", "b", lease) // not the local favourite
	name, sess := backendOf(t, addr)
	if name != "b" {
		t.Fatalf("got %s", name)
	}
	roundTrip(t, sess, "under lease")

	lease.set(-time.Second) // expired
	held := dial(t, addr)
	testwait.For(t, "held under expired lease", waitLimit, func() bool { return p.statusOf("ext").Held == 1 })
	if st := p.statusOf("ext"); st.Reason != "route b: lease expired" {
		t.Fatalf("reason %q", st.Reason)
	}
	// The old session may not write to the backend any more.
	if _, err := sess.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, sess)

	lease.set(time.Hour) // renewed: the held connection goes through
	if got := readLine(t, held); got != "b" {
		t.Fatalf("held went to %s", got)
	}
	// The cluster moves the route: b's sessions close (CloseOnDown).
	p.SetRoute("ext", "a", lease)
	expectClosed(t, held)
	if name, _ := backendOf(t, addr); name != "a" {
		t.Fatalf("got %s", name)
	}
	// Locally down route: quarantine, never a local switch.
	p.SetHealth("ext", "a", down)
	if st := p.statusOf("ext"); st.Target != "a" || st.backend("a").Eligible {
		t.Fatalf("quarantine: %+v", st)
	}
	p.SetRoute("ext", "", nil)
	if st := p.statusOf("ext"); st.Target != "" {
		t.Fatalf("target %q after route cleared", st.Target)
	}
	if len(ev.list()) != 0 {
		t.Fatalf("OnTarget called for External: %+v", ev.list())
	}
}

// TestReplicaReads: Want=Replica balances over replicas within the lag
// bound only.
func TestReplicaReads(t *testing.T) {
	a, b, c := startNamed(t, "a"), startNamed(t, "b"), startNamed(t, "c")
	p := newProxy(t, Options{}, ServiceConfig{Name: "ro", Listen: "127.0.0.1:0", Want: RoleReplica, MaxLagBytes: 1000,
		Backends: []Backend{{Name: "a", Address: a.addr()}, {Name: "b", Address: b.addr()}, {Name: "c", Address: c.addr()}}})
	p.SetHealth("ro", "a", upRole(RolePrimary, -1))
	p.SetHealth("ro", "b", upRole(RoleReplica, 10))
	p.SetHealth("ro", "c", upRole(RoleReplica, 5000))
	addr := p.addrOf(t, "ro")
	for i := 0; i < 4; i++ {
		if name, _ := backendOf(t, addr); name != "b" {
			t.Fatalf("read went to %s", name)
		}
	}
	p.SetHealth("ro", "c", upRole(RoleReplica, 0)) // caught up
	seen := map[string]int{}
	for i := 0; i < 4; i++ {
		name, _ := backendOf(t, addr)
		seen[name]++
	}
	if seen["b"] != 2 || seen["c"] != 2 {
		t.Fatalf("reads %v", seen)
	}
}

func TestApplyValidation(t *testing.T) {
	p := New(Options{Logger: testLogger(t)})
	defer p.Close()
	err := p.Apply([]ServiceConfig{
		{Name: "x", Listen: "127.0.0.1:0", Backends: []Backend{{Name: "a"}, {Name: "a"}}},
		{Name: "x", Listen: "127.0.0.1:0"},
	})
	if err == nil {
		t.Fatal("duplicates accepted")
	}
	if len(p.Status()) != 0 {
		t.Fatal("invalid config partly applied")
	}
}
