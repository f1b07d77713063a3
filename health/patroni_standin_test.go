package health

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// patroniNode stands in for one node's Patroni REST API, after
// patroni/api.py (RestApiHandler.do_GET and do_GET_patroni): every GET
// answers the node's status document; "/" and "/primary" answer 200 only
// while the node holds the leader lock, "/replica" only on a running
// replica, "/patroni" always. Patroni itself needs a DCS to run: this
// server is what a check of it sees.
type patroniNode struct {
	mu       sync.Mutex
	leader   bool   // holds the leader lock
	role     string // "master", "primary" or "replica": PostgreSQL's recovery state
	state    string // "running", "stopping", ...
	location int64  // primary: its WAL position; replica: received
	replayed int64
	srv      *httptest.Server
	requests int
}

func newPatroniNode(t *testing.T, role string, leader bool, location int64) *patroniNode {
	n := &patroniNode{role: role, leader: leader, state: "running", location: location, replayed: location}
	n.srv = httptest.NewServer(http.HandlerFunc(n.serve))
	t.Cleanup(n.srv.Close)
	return n
}

func (n *patroniNode) address() string { return strings.TrimPrefix(n.srv.URL, "http://") }

func (n *patroniNode) set(f func(*patroniNode)) {
	n.mu.Lock()
	f(n)
	n.mu.Unlock()
}

func (n *patroniNode) serve(w http.ResponseWriter, r *http.Request) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.requests++
	xlog := fmt.Sprintf(`{"location": %d}`, n.location)
	if n.role == "replica" {
		xlog = fmt.Sprintf(`{"received_location": %d, "replayed_location": %d, "replayed_timestamp": %q, "paused": false}`,
			n.location, n.replayed, time.Now().Add(-3*time.Second).UTC().Format("2006-01-02 15:04:05.999999-07:00"))
	}
	body := fmt.Sprintf(`{"state": %q, "postmaster_start_time": "2024-08-28 19:39:26.352526+00:00", "role": %q, "server_version": 160004, "xlog": %s, "timeline": 1, "dcs_last_seen": 1692356718, "patroni": {"version": "4.0.0", "scope": "demo", "name": "n"}}`,
		n.state, n.role, xlog)
	code := http.StatusServiceUnavailable
	switch r.URL.Path {
	case "/", "/primary":
		if n.leader && n.role != "replica" {
			code = http.StatusOK
		}
	case "/replica":
		if n.role == "replica" && n.state == "running" {
			code = http.StatusOK
		}
	case "/patroni":
		code = http.StatusOK
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	fmt.Fprint(w, body)
}

// Two services over one Patroni cluster, their traffic on ports that never
// answer a check, their checks on each node's REST API: one check per node
// for both, the roles, positions and lag of one GET /primary each, and
// Patroni's switchover followed (the old leader, briefly a primary without
// the lock, is up with no role, then a replica).
func TestPatroniStandIn(t *testing.T) {
	n1 := newPatroniNode(t, "primary", true, 67395656)
	n2 := newPatroniNode(t, "replica", false, 67395000)
	n2.set(func(n *patroniNode) { n.replayed = 67390000 })
	rec := &recorder{}
	m := NewMonitor(nil, rec.onChange)
	defer m.Close()
	spec := Spec{Kind: "http", Roles: "patroni", Path: "/primary", Interval: 20 * time.Millisecond,
		Timeout: 2 * time.Second, Rise: 1, Fall: 1}
	var targets []Target
	for _, svc := range []string{"pg-rw", "pg-bouncer"} {
		for _, n := range []struct {
			name string
			node *patroniNode
		}{{"n1", n1}, {"n2", n2}} {
			s := spec
			s.Address = n.node.address()
			targets = append(targets, Target{Service: svc, Backend: n.name, Address: fakeServer(t, silent), Spec: s})
		}
	}
	if err := m.Set(targets); err != nil {
		t.Fatal(err)
	}
	if got := m.Checks(); got != 2 {
		t.Errorf("%d checks for 2 services over 2 nodes, want 2 (one per checked address)", got)
	}
	state := func(svc, backend string) State {
		for _, s := range m.States() {
			if s.Service == svc && s.Backend == backend {
				return s
			}
		}
		t.Fatalf("no state for %s/%s", svc, backend)
		return State{}
	}
	testwait.ForState(t, 20*time.Second, func() (bool, string) {
		a, b := state("pg-bouncer", "n1"), state("pg-bouncer", "n2")
		return a.Role == RolePrimary && b.Role == RoleReplica && b.LagBytes >= 0,
			fmt.Sprintf("n1 %v %v, n2 %v %v lag %d", a.Status, a.Role, b.Status, b.Role, b.LagBytes)
	})
	for _, svc := range []string{"pg-rw", "pg-bouncer"} {
		a, b := state(svc, "n1"), state(svc, "n2")
		if a.CheckAddress != n1.address() || b.CheckAddress != n2.address() || a.Address == a.CheckAddress {
			t.Errorf("%s: traffic %s checked at %s, traffic %s checked at %s", svc, a.Address, a.CheckAddress, b.Address, b.CheckAddress)
		}
		if b.LagBytes != 67395656-67390000 || b.Position != 67395000 || b.Lag < 3*time.Second || b.Lag > time.Minute {
			t.Errorf("%s n2: lag %d bytes, %v; position %d", svc, b.LagBytes, b.Lag, b.Position)
		}
	}

	// Patroni moves the lock: n1 keeps running as a primary for a moment
	// without it (503 on /primary), then follows n2.
	n1.set(func(n *patroniNode) { n.leader = false })
	testwait.For(t, "n1 without the lock: up, no role", 20*time.Second, func() bool {
		s := state("pg-rw", "n1")
		return s.Status == StatusUp && s.Role == RoleUnknown
	})
	n2.set(func(n *patroniNode) { n.leader, n.role, n.location, n.replayed = true, "primary", 67400000, 0 })
	n1.set(func(n *patroniNode) { n.state = "stopping" })
	testwait.For(t, "n2 primary, n1 down while stopping", 20*time.Second, func() bool {
		return state("pg-rw", "n2").Role == RolePrimary && state("pg-rw", "n1").Status == StatusDown
	})
	if s := state("pg-rw", "n1"); !strings.Contains(s.LastError, `Patroni reports PostgreSQL "stopping"`) {
		t.Errorf("n1 down with %q", s.LastError)
	}
	n1.set(func(n *patroniNode) {
		n.state, n.role, n.location, n.replayed = "running", "replica", 67400000, 67400000
	})
	testwait.For(t, "n1 a replica", 20*time.Second, func() bool {
		s := state("pg-rw", "n1")
		return s.Status == StatusUp && s.Role == RoleReplica && s.LagBytes == 0 && s.Lag == 0
	})

	// A check at once (as a promote is judged) reads the same.
	st, err := m.CheckNow(context.Background(), "pg-bouncer", "n2")
	if err != nil || st.Role != RolePrimary {
		t.Errorf("CheckNow: %+v, %v", st, err)
	}

	// One GET a check, for both services (one more when Close cut a check short).
	m.Close()
	for _, n := range []struct {
		name string
		node *patroniNode
	}{{"n1", n1}, {"n2", n2}} {
		checks := state("pg-rw", n.name).Checks
		n.node.mu.Lock()
		got := n.node.requests
		n.node.mu.Unlock()
		if uint64(got) < checks || uint64(got) > checks+1 {
			t.Errorf("%s: %d requests for %d checks", n.name, got, checks)
		}
	}
}
