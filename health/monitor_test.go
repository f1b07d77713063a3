package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// recorder collects onChange calls.
type recorder struct {
	mu     sync.Mutex
	events []State
}

func (r *recorder) onChange(s State) {
	r.mu.Lock()
	r.events = append(r.events, s)
	r.mu.Unlock()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// statuses returns the Status of each event about backend, collapsing repeats.
func (r *recorder) statuses(backend string) []Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Status
	for _, e := range r.events {
		if e.Backend == backend && (len(out) == 0 || out[len(out)-1] != e.Status) {
			out = append(out, e.Status)
		}
	}
	return out
}

func stateOf(m *Monitor, backend string) (State, bool) {
	for _, s := range m.States() {
		if s.Backend == backend {
			return s, true
		}
	}
	return State{}, false
}

// waitState polls m until backend's state satisfies cond.
func waitState(t *testing.T, m *Monitor, backend string, what string, cond func(State) bool) State {
	t.Helper()
	var s State
	testwait.ForState(t, 20*time.Second, func() (bool, string) {
		var ok bool
		s, ok = stateOf(m, backend)
		return ok && cond(s), fmt.Sprintf("waiting for %s %s; last state %+v", backend, what, s)
	})
	return s
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestMonitorRiseFall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	rec := &recorder{}
	m := NewMonitor(testLogger(t), rec.onChange)
	defer m.Close()
	spec := Spec{Kind: "tcp", Interval: 30 * time.Millisecond, Timeout: 2 * time.Second, Rise: 3, Fall: 2}
	if err := m.Set([]Target{{Service: "svc", Backend: "a", Address: addr, Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	s := waitState(t, m, "a", "up", func(s State) bool { return s.Status == StatusUp })
	if s.Reason != "first check succeeded" || s.Checks < 1 || s.LastChange.IsZero() || s.Address != addr {
		t.Errorf("after first check: %+v", s)
	}

	ln.Close()
	s = waitState(t, m, "a", "down", func(s State) bool { return s.Status == StatusDown })
	if want := "2 consecutive checks failed: connection refused"; s.Reason != want {
		t.Errorf("down reason %q, want %q", s.Reason, want)
	}
	if s.LastError != "connection refused" || s.Failures < 2 || s.Role != RoleUnknown || s.LagBytes != -1 {
		t.Errorf("down state: %+v", s)
	}

	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s = waitState(t, m, "a", "up again", func(s State) bool { return s.Status == StatusUp })
	if want := "3 consecutive checks succeeded"; s.Reason != want {
		t.Errorf("up reason %q, want %q", s.Reason, want)
	}
	if s.LastError != "" {
		t.Errorf("LastError %q after rise", s.LastError)
	}
	if got := rec.statuses("a"); fmt.Sprint(got) != "[up down up]" {
		t.Errorf("onChange statuses %v, want [up down up]", got)
	}

	// Steady state: checks go on, onChange stays quiet.
	n, checks := rec.count(), s.Checks
	waitState(t, m, "a", "5 more checks", func(s State) bool { return s.Checks >= checks+5 })
	if got := rec.count(); got != n {
		t.Errorf("onChange called %d times while nothing changed", got-n)
	}
}

func TestMonitorIntervals(t *testing.T) {
	spec := Spec{Interval: time.Second, FastInterval: 100 * time.Millisecond, DownInterval: 5 * time.Second,
		Rise: 2, Fall: 2}
	m := NewMonitor(nil, nil)
	defer m.Close()
	l := &loop{spec: spec.withDefaults(), position: -1}
	p := &probe{spec: spec.withDefaults(), targets: []*loop{l}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	defer p.cancel()
	up, fail := Result{Up: true}, Result{Err: ErrRefused}
	for i, step := range []struct {
		res  Result
		want time.Duration
	}{
		{up, time.Second},              // up
		{fail, 100 * time.Millisecond}, // falling
		{fail, 5 * time.Second},        // down
		{fail, 5 * time.Second},        // still down
		{up, 100 * time.Millisecond},   // rising
		{up, time.Second},              // up
	} {
		next, _, _, ok := m.apply(p, step.res, time.Now())
		if !ok || next != step.want {
			t.Errorf("step %d: next check in %v (ok %v), want %v", i, next, ok, step.want)
		}
	}
	p.cancel()
	if _, _, _, ok := m.apply(p, up, time.Now()); ok {
		t.Error("apply recorded a result after the loop was stopped")
	}
}

func TestMonitorReload(t *testing.T) {
	lns := make([]net.Listener, 3)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lns[i] = ln
	}
	rec := &recorder{}
	m := NewMonitor(testLogger(t), rec.onChange)
	defer m.Close()
	spec := Spec{Kind: "tcp", Interval: 20 * time.Millisecond, Timeout: 2 * time.Second, Rise: 2, Fall: 2}
	tgt := func(b string, ln net.Listener, s Spec) Target {
		return Target{Service: "svc", Backend: b, Address: ln.Addr().String(), Spec: s}
	}
	if err := m.Set([]Target{tgt("keep", lns[0], spec), tgt("respec", lns[1], spec), tgt("move", lns[1], spec), tgt("drop", lns[2], spec)}); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"keep", "respec", "move", "drop"} {
		waitState(t, m, b, "up with 3 checks", func(s State) bool { return s.Status == StatusUp && s.Checks >= 3 })
	}
	keep, _ := stateOf(m, "keep")
	respec, _ := stateOf(m, "respec")

	slower := spec
	slower.Interval = 25 * time.Millisecond
	reloadAt := time.Now()
	err := m.Set([]Target{
		tgt("keep", lns[0], spec),
		tgt("respec", lns[1], slower),
		tgt("move", lns[2], spec),
		tgt("new", lns[2], spec),
		{Service: "svc", Backend: "bad", Address: "127.0.0.1:1", Spec: Spec{Kind: "gopher"}},
	})
	if !errors.Is(err, ErrUnknownKind) || !strings.Contains(err.Error(), `backend "bad"`) {
		t.Errorf("Set error %v, want the bad target named", err)
	}
	var names []string
	for _, s := range m.States() {
		names = append(names, s.Backend)
	}
	if got := fmt.Sprint(names); got != "[keep move new respec]" {
		t.Errorf("targets after reload %v, want [keep move new respec]", got)
	}

	s, _ := stateOf(m, "keep")
	if s.Checks < keep.Checks || !s.LastChange.Equal(keep.LastChange) || s.Status != StatusUp {
		t.Errorf("unchanged target lost its state: before %+v after %+v", keep, s)
	}
	s, _ = stateOf(m, "respec")
	if s.Status != StatusUp || !s.LastChange.Equal(respec.LastChange) || s.Checks < respec.Checks {
		t.Errorf("target with a new interval lost its status: before %+v after %+v", respec, s)
	}
	for _, b := range []string{"keep", "respec", "move", "new"} {
		waitState(t, m, b, "checked after reload", func(s State) bool { return s.Status == StatusUp })
	}
	// A new address is a new backend: its state starts over with a first check.
	s, _ = stateOf(m, "move")
	if s.Address != lns[2].Addr().String() || !s.LastChange.After(reloadAt) || s.Reason != "first check succeeded" {
		t.Errorf("moved target kept the old address's state: %+v", s)
	}
	// The kept loop kept running: its checks keep counting from where they were.
	waitState(t, m, "keep", "more checks", func(s State) bool { return s.Checks >= keep.Checks+3 })
	if got := rec.statuses("keep"); fmt.Sprint(got) != "[up]" {
		t.Errorf("kept target reported %v, want only [up]", got)
	}
}

func TestMonitorCloseCancelsHangingCheck(t *testing.T) {
	accepted := make(chan struct{}, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case accepted <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	m := NewMonitor(testLogger(t), nil)
	spec := Spec{Kind: "http", Interval: time.Hour, Timeout: time.Hour}
	if err := m.Set([]Target{{Service: "svc", Backend: "slow", Address: ln.Addr().String(), Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-accepted:
	case <-time.After(20 * time.Second):
		t.Fatal("check never reached the server")
	}
	closed := make(chan struct{})
	go func() { m.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return while a check hung (timeout 1h)")
	}
	s, _ := stateOf(m, "slow")
	if s.Status != StatusUnknown || s.Checks != 0 {
		t.Errorf("a cancelled check was recorded: %+v", s)
	}
	m.Close() // idempotent
	if err := m.Set(nil); err == nil {
		t.Error("Set after Close succeeded")
	}
}

func TestReplicaLag(t *testing.T) {
	m := NewMonitor(nil, nil)
	defer m.Close()
	add := func(service, backend string, status Status, role Role, pos int64) *loop {
		l := &loop{target: Target{Service: service, Backend: backend}, position: pos}
		l.state.Status, l.state.Role = status, role
		m.loops[targetKey{service, backend}] = l
		if m.bySvc == nil {
			m.bySvc = map[string][]*loop{}
		}
		m.bySvc[service] = append(m.bySvc[service], l)
		return l
	}
	replica := add("pg", "r", StatusUp, RoleReplica, 400)
	lag := func() int64 {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.replicaLagLocked(replica)
	}
	if got := lag(); got != -1 {
		t.Errorf("no primary: %d, want -1", got)
	}
	add("other", "p", StatusUp, RolePrimary, 5000)
	if got := lag(); got != -1 {
		t.Errorf("primary of another service only: %d, want -1", got)
	}
	p := add("pg", "p", StatusUp, RolePrimary, 1000)
	if got := lag(); got != 600 {
		t.Errorf("one primary: %d, want 600", got)
	}
	add("pg", "r2", StatusUp, RoleReplica, 900)
	if got := lag(); got != 600 {
		t.Errorf("with another replica: %d, want 600", got)
	}
	p.position = 300 // sampled before the replica
	if got := lag(); got != 0 {
		t.Errorf("primary sampled earlier: %d, want 0", got)
	}
	p.position = 1000
	p2 := add("pg", "p2", StatusUp, RolePrimary, 2000)
	if got := lag(); got != -1 {
		t.Errorf("two primaries: %d, want -1", got)
	}
	p2.state.Status = StatusDown
	if got := lag(); got != 600 {
		t.Errorf("second primary down: %d, want 600", got)
	}
	replica.position = -1
	if got := lag(); got != -1 {
		t.Errorf("replica position unknown: %d, want -1", got)
	}
}

// A replica's position is fresh, and its changes reported, only when read
// by a check that started after its primary's first failed check; that
// failure nudges the replica's check; an answer of the primary makes every
// position stale again.
func TestPositionFresh(t *testing.T) {
	m := NewMonitor(nil, nil)
	defer m.Close()
	spec := Spec{Interval: time.Second, Rise: 1, Fall: 2}.withDefaults()
	mk := func(backend string) (*probe, *loop) {
		l := &loop{target: Target{Service: "pg", Backend: backend}, spec: spec, position: -1}
		l.state = State{Service: "pg", Backend: backend, LagBytes: -1, Lag: -1, Position: -1}
		p := &probe{spec: spec, targets: []*loop{l}, nudge: make(chan struct{}, 1)}
		p.ctx, p.cancel = context.WithCancel(context.Background())
		t.Cleanup(p.cancel)
		l.probe = p
		m.loops[targetKey{"pg", backend}] = l
		return p, l
	}
	pp, _ := mk("p")
	pr, lr := mk("r")
	m.bySvc = map[string][]*loop{"pg": {pp.targets[0], lr}}
	primary := Result{Up: true, Role: RolePrimary, Position: 1000, Received: -1}
	replica := func(received int64) Result {
		return Result{Up: true, Role: RoleReplica, Position: 900, Received: received}
	} // replay (lag) unchanged
	fail := Result{Err: ErrTimeout, Position: -1}
	clock := time.Now()
	step := func(p *probe, r Result) ([]changedState, []*probe) {
		clock = clock.Add(time.Millisecond)
		_, ch, nudge, ok := m.apply(p, r, clock)
		if !ok {
			t.Fatal("apply: stopped")
		}
		return ch, nudge
	}
	step(pp, primary)
	if ch, _ := step(pr, replica(900)); len(ch) != 1 || ch[0].Position != 900 || ch[0].PositionFresh {
		t.Fatalf("first replica check: %+v", ch)
	}
	if ch, _ := step(pr, replica(960)); len(ch) != 0 || lr.state.Position != 960 {
		t.Fatalf("a stale position's change was reported (%+v) or not kept (%d)", ch, lr.state.Position)
	}
	if _, nudge := step(pp, fail); len(nudge) != 1 || nudge[0] != pr {
		t.Fatalf("the primary's first failed check nudged %v, want the replica's check", nudge)
	}
	if _, nudge := step(pp, fail); len(nudge) != 0 {
		t.Fatalf("a second failed check nudged again: %v", nudge)
	}
	ch, _ := step(pr, replica(970))
	if len(ch) != 1 || ch[0].Position != 970 || !ch[0].PositionFresh {
		t.Fatalf("after the primary failed: %+v", ch)
	}
	if ch, _ := step(pr, replica(970)); len(ch) != 0 {
		t.Fatalf("an unchanged fresh position was reported: %+v", ch)
	}
	step(pp, primary)
	if ch, _ := step(pr, replica(980)); len(ch) != 1 || ch[0].PositionFresh {
		t.Fatalf("the primary answers again: %+v", ch)
	}
}

// CheckNow checks at once, outside the interval, and returns the state
// that check left (a promote is judged right after its hook by this).
func TestMonitorCheckNow(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	rec := &recorder{}
	m := NewMonitor(testLogger(t), rec.onChange)
	defer m.Close()
	spec := Spec{Kind: "tcp", Interval: time.Hour, FastInterval: time.Hour, DownInterval: time.Hour, Timeout: 2 * time.Second, Rise: 1, Fall: 1}
	if err := m.Set([]Target{{Service: "svc", Backend: "a", Address: addr, Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", "down after the first check", func(s State) bool { return s.Status == StatusDown })
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.CheckNow(ctx, "svc", "a")
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != StatusUp || st.Checks != 2 {
		t.Fatalf("after CheckNow: %+v; want up after the second check (the interval is an hour)", st)
	}
	if got := rec.statuses("a"); fmt.Sprint(got) != "[down up]" {
		t.Errorf("onChange statuses %v, want [down up]", got)
	}
	if _, err := m.CheckNow(ctx, "svc", "nope"); err == nil {
		t.Error("CheckNow of an unknown backend: no error")
	}
	m.Close()
	if _, err := m.CheckNow(ctx, "svc", "a"); err == nil {
		t.Error("CheckNow after Close: no error")
	}
}

// The streak toward a new status is visible before the status flips: an
// up backend whose checks fail shows Failing n of Fall, a success resets
// it, and a down backend's good checks show Rising n of Rise.
func TestMonitorStreak(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	m := NewMonitor(testLogger(t), func(State) {})
	defer m.Close()
	// Long streaks at a short interval: each step holds long enough to see.
	spec := Spec{Kind: "tcp", Interval: 10 * time.Millisecond, FastInterval: 10 * time.Millisecond,
		Timeout: 2 * time.Second, Rise: 40, Fall: 40}
	if err := m.Set([]Target{{Service: "svc", Backend: "a", Address: addr, Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	s := waitState(t, m, "a", "up", func(s State) bool { return s.Status == StatusUp })
	if s.Failing != 0 || s.Rising != 0 || s.Rise != 40 || s.Fall != 40 {
		t.Errorf("up, nothing under way: %+v; want no streak, rise 40, fall 40", s)
	}
	ln.Close()
	waitState(t, m, "a", "up and failing 3+", func(s State) bool {
		return s.Status == StatusUp && s.Failing >= 3 && s.Failing < 40 && s.Rising == 0
	})
	if ln, err = net.Listen("tcp", addr); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", "up, the streak reset by a success", func(s State) bool { return s.Status == StatusUp && s.Failing == 0 })
	ln.Close()
	waitState(t, m, "a", "down with no streak", func(s State) bool { return s.Status == StatusDown && s.Failing == 0 && s.Rising == 0 })
	if ln, err = net.Listen("tcp", addr); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	waitState(t, m, "a", "down and rising 3+", func(s State) bool {
		return s.Status == StatusDown && s.Rising >= 3 && s.Rising < 40 && s.Failing == 0
	})
}
