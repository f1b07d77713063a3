package health

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// Services that check the same address the same way share one check; each
// keeps its own state, and a backend that fails under many services is
// one log line, not one per service.
func TestSharedChecks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	logs := &testenv.Buffer{}
	rec := &recorder{}
	m := NewMonitor(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})), rec.onChange)
	defer m.Close()
	spec := Spec{Kind: "tcp", Interval: 30 * time.Millisecond, Timeout: 2 * time.Second, Rise: 1, Fall: 1}
	const services = 20
	var targets []Target
	for i := range services {
		svc := "svc-" + string(rune('a'+i))
		targets = append(targets,
			Target{Service: svc, Backend: "db", Address: addr, Spec: spec},
			Target{Service: svc, Backend: "other", Address: other.Addr().String(), Spec: spec})
	}
	// One service checks the same address with another fall: its own check.
	slow := spec
	slow.Fall = 3
	targets = append(targets, Target{Service: "slow", Backend: "db", Address: addr, Spec: slow})
	if err := m.Set(targets); err != nil {
		t.Fatal(err)
	}
	if got := m.Checks(); got != 3 {
		t.Fatalf("%d checks for 41 targets over 2 addresses and 2 specs, want 3", got)
	}
	allDB := func(want Status) func() bool {
		return func() bool {
			n := 0
			for _, s := range m.States() {
				if s.Backend == "db" && s.Service != "slow" && s.Status == want {
					n++
				}
			}
			return n == services
		}
	}
	testwait.For(t, "every service's db up", 20*time.Second, allDB(StatusUp))
	if n := strings.Count(logs.String(), "msg=\"backend up\" services=20 address="+addr); n != 1 {
		t.Errorf("%d summary lines for 20 services coming up, want 1:\n%s", n, logs.String())
	}

	ln.Close()
	testwait.For(t, "every service's db down", 20*time.Second, allDB(StatusDown))
	out := logs.String()
	if n := strings.Count(out, "msg=\"backend down\" services=20 address="+addr); n != 1 {
		t.Errorf("%d summary lines for 20 services going down, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, "msg=\"backend down\" service="); n > 1 {
		t.Errorf("%d lines for single services going down; want the summary (and slow's own, at most):\n%s", n, out)
	}
	for _, s := range m.States() {
		if s.Backend == "db" && s.Service != "slow" && s.Reason != "1 consecutive checks failed: connection refused" && !strings.HasPrefix(s.Reason, "first check failed") {
			t.Errorf("%s: reason %q", s.Service, s.Reason)
		}
	}
	// onChange is told about every target, not about the check (after the
	// state changed: poll).
	testwait.For(t, "onChange told of every service's db going down", 20*time.Second, func() bool {
		downs := 0
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, e := range rec.events {
			if e.Backend == "db" && e.Status == StatusDown && e.Service != "slow" {
				downs++
			}
		}
		return downs >= services
	})

	// CheckNow through one service checks the shared address for all.
	st, err := m.CheckNow(context.Background(), "svc-a", "other")
	if err != nil || st.Status != StatusUp || st.Service != "svc-a" {
		t.Fatalf("CheckNow: %+v, %v", st, err)
	}

	// Dropping all but one service keeps the check of the one left.
	if err := m.Set(targets[:2]); err != nil {
		t.Fatal(err)
	}
	if got := m.Checks(); got != 2 {
		t.Errorf("%d checks after the reload, want 2", got)
	}
	if got := len(m.States()); got != 2 {
		t.Errorf("%d states after the reload, want 2", got)
	}
}
