package health

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

func TestRedisRoleAndPromotion(t *testing.T) {
	const pw = "redis-secret"
	primary := testenv.MustRedis(t, testenv.RedisOptions{Password: pw})
	replica := testenv.MustReplica(t, primary)
	spec := Spec{Kind: "redis", Password: pw, Timeout: dbTimeout}

	r := checkOnce(t, spec, primary.Addr())
	wantUp(t, r, RolePrimary)
	if r.Position < 0 || r.LagBytes != 0 || r.Lag != 0 {
		t.Errorf("primary: position %d lag %d bytes %v", r.Position, r.LagBytes, r.Lag)
	}
	r = checkOnce(t, spec, replica.Addr())
	wantUp(t, r, RoleReplica)
	if r.Position < 0 || r.LagBytes != -1 || r.Lag != -1 {
		t.Errorf("replica alone: position %d lag %d bytes %v, want >=0, -1, -1", r.Position, r.LagBytes, r.Lag)
	}

	bad := spec
	bad.Password = "not-the-password"
	r = checkOnce(t, bad, primary.Addr())
	wantDown(t, r, ErrAuth)
	t.Logf("wrong password: %v", r.Err)
	if strings.Contains(r.Err.Error(), bad.Password) || strings.Contains(r.Err.Error(), pw) {
		t.Errorf("error carries a password: %v", r.Err)
	}
	bad.Password = ""
	wantDown(t, checkOnce(t, bad, primary.Addr()), ErrAuth)

	// An ACL user that may run INFO and nothing else is enough.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := primary.Client().Do(ctx, "ACL", "SETUSER", "monitor", "on", ">mon-secret", "-@all", "+info").Err(); err != nil {
		t.Fatal(err)
	}
	wantUp(t, checkOnce(t, Spec{Kind: "redis", User: "monitor", Password: "mon-secret", Timeout: dbTimeout}, primary.Addr()), RolePrimary)
	wantDown(t, checkOnce(t, Spec{Kind: "redis", User: "monitor", Password: pw, Timeout: dbTimeout}, primary.Addr()), ErrAuth)

	rec := &recorder{}
	m := NewMonitor(testLogger(t), rec.onChange)
	defer m.Close()
	spec.Interval = 50 * time.Millisecond
	if err := m.Set([]Target{
		{Service: "redis", Backend: "primary", Address: primary.Addr(), Spec: spec},
		{Service: "redis", Backend: "replica", Address: replica.Addr(), Spec: spec},
	}); err != nil {
		t.Fatal(err)
	}
	if err := primary.Client().Set(ctx, "k", strings.Repeat("x", 100000), 0).Err(); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "replica", "caught up", func(s State) bool {
		return s.Status == StatusUp && s.Role == RoleReplica && s.LagBytes == 0
	})

	// SIGSTOP: a frozen server is a timeout, within the timeout.
	spec.Timeout = 300 * time.Millisecond
	if err := replica.Pause(); err != nil {
		t.Fatal(err)
	}
	c, err := NewChecker(spec, replica.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r = checkWith(c, spec)
	c.Close()
	wantDown(t, r, ErrTimeout)
	if r.Err.Error() != "timeout after 300ms" {
		t.Errorf("paused replica: %v, want timeout after 300ms", r.Err)
	}
	if err := replica.Resume(); err != nil {
		t.Fatal(err)
	}

	if err := replica.Promote(); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "replica", "promoted", func(s State) bool { return s.Status == StatusUp && s.Role == RolePrimary })
	rec.mu.Lock()
	var roles []Role
	for _, e := range rec.events {
		if e.Backend == "replica" && (len(roles) == 0 || roles[len(roles)-1] != e.Role) {
			roles = append(roles, e.Role)
		}
	}
	rec.mu.Unlock()
	if len(roles) < 2 || roles[0] != RoleReplica || roles[len(roles)-1] != RolePrimary {
		t.Errorf("onChange roles of the replica %v, want replica ... primary", roles)
	}

	if err := primary.Kill(); err != nil {
		t.Fatal(err)
	}
	s := waitState(t, m, "primary", "down after kill", func(s State) bool { return s.Status == StatusDown })
	t.Logf("killed: %s", s.Reason)
}

func TestParseRedisReplication(t *testing.T) {
	r, err := parseRedisReplication("# Replication\r\nrole:slave\r\nmaster_host:10.0.0.5\r\nmaster_port:6379\r\nmaster_link_status:up\r\nslave_repl_offset:1234\r\nslave_read_repl_offset:1300\r\n")
	if err != nil || r.Role != RoleReplica || r.Position != 1234 || r.Received != 1300 || r.Upstream != "10.0.0.5:6379" || !r.Up {
		t.Errorf("replica: %+v %v", r, err)
	}
	r, err = parseRedisReplication("# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:99\r\n")
	if err != nil || r.Role != RolePrimary || r.Position != 99 || r.LagBytes != 0 {
		t.Errorf("primary: %+v %v", r, err)
	}
	if _, err := parseRedisReplication("# Replication\r\nrole:sentinel\r\n"); err == nil {
		t.Error("unknown role accepted")
	}
}

// Expect: a replica that another proxy promotes is seen as primary at the
// next fast check, not at the next interval (here an hour away), and the
// fast checks stop once it reports the role.
func TestExpectPromotion(t *testing.T) {
	primary := testenv.MustRedis(t, testenv.RedisOptions{})
	replica := testenv.MustReplica(t, primary)
	m := NewMonitor(testLogger(t), nil)
	defer m.Close()
	spec := Spec{Kind: "redis", Timeout: dbTimeout, Interval: time.Hour, FastInterval: 50 * time.Millisecond, Rise: 1, Fall: 1}
	if err := m.Set([]Target{{Service: "redis", Backend: "replica", Address: replica.Addr(), Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	s := waitState(t, m, "replica", "up as a replica", func(s State) bool { return s.Status == StatusUp && s.Role == RoleReplica })

	m.Expect("redis", "replica", RolePrimary, time.Minute)
	// Expecting alone checks at once and goes on at FastInterval.
	waitState(t, m, "replica", "checked again", func(x State) bool { return x.Checks >= s.Checks+3 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := replica.Client().Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	s = waitState(t, m, "replica", "seen promoted", func(s State) bool { return s.Role == RolePrimary })

	// The role came: back to the interval. A check in flight may still
	// land; then nothing for an hour.
	m.mu.Lock()
	l := m.loops[targetKey{"redis", "replica"}]
	cleared := l.expectUntil.IsZero()
	m.mu.Unlock()
	if !cleared {
		t.Error("the expectation outlived the role it waited for")
	}
	// An expectation for a role the backend already has is a no-op.
	m.Expect("redis", "replica", RolePrimary, time.Minute)
	m.mu.Lock()
	cleared = l.expectUntil.IsZero()
	m.mu.Unlock()
	if !cleared {
		t.Error("expecting a role the backend reports set fast checks")
	}
}

// A primary marked down before its replicas' checks came back says so
// (ReplicasUnread), so that a failover waits for their fresh positions
// instead of ranking stale ones; once they are read it says no more.
func TestReplicasUnreadAtPrimaryDown(t *testing.T) {
	primary, replica, m := watchedRedisPair(t, Spec{Kind: "redis", Timeout: 3 * time.Second, Interval: 200 * time.Millisecond,
		FastInterval: 50 * time.Millisecond, Rise: 1, Fall: 2})

	// The replica's next checks hang (frozen, within its 3s timeout): the
	// primary, killed, is down after two refused checks 50ms apart.
	if err := replica.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			replica.Resume()
		}
	}()
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	s := waitState(t, m, "primary", "down", func(s State) bool { return s.Status == StatusDown })
	if !s.ReplicasUnread {
		t.Errorf("primary down while the replica's check hangs: ReplicasUnread false: %+v", s)
	}
	if r, _ := stateOf(m, "replica"); r.PositionFresh {
		t.Errorf("the frozen replica's position is fresh: %+v", r)
	}
	replica.Resume()
	resumed = true
	waitState(t, m, "replica", "read fresh", func(s State) bool { return s.PositionFresh })
	waitState(t, m, "primary", "no longer waiting for reads", func(s State) bool { return !s.ReplicasUnread })
}

// A failing primary stops waiting for a replica's read once that read has
// come, even when it failed: the primary is checked again at once, not at
// its next check a down_interval later (30s here).
func TestReplicasUnreadClearsWhenTheReadFails(t *testing.T) {
	primary, replica, m := watchedRedisPair(t, Spec{Kind: "redis", Timeout: 500 * time.Millisecond, Interval: time.Second,
		FastInterval: 50 * time.Millisecond, DownInterval: 30 * time.Second, Rise: 1, Fall: 2})
	// The replica hangs, so its nudged check times out; the primary,
	// stopped, is down after two refused checks 50ms apart, before that.
	if err := replica.Pause(); err != nil {
		t.Fatal(err)
	}
	defer replica.Resume()
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	s := waitState(t, m, "primary", "down", func(s State) bool { return s.Status == StatusDown })
	if !s.ReplicasUnread {
		t.Fatalf("primary down while the replica's check hangs: ReplicasUnread false: %+v", s)
	}
	testwait.ForState(t, 5*time.Second, func() (bool, string) {
		p, _ := stateOf(m, "primary")
		r, _ := stateOf(m, "replica")
		return !p.ReplicasUnread, fmt.Sprintf("primary still waiting for a read (replica: %s, failing %d, last error %q)", r.Status, r.Failing, r.LastError)
	})
}

// watchedRedisPair starts a Redis primary and its replica and a Monitor
// checking both with spec, closed at the test's end, and waits until it
// sees each up in its role.
func watchedRedisPair(t *testing.T, spec Spec) (primary, replica *testenv.Redis, m *Monitor) {
	t.Helper()
	primary = testenv.MustRedis(t, testenv.RedisOptions{})
	replica = testenv.MustReplica(t, primary)
	m = NewMonitor(testLogger(t), nil)
	t.Cleanup(m.Close)
	if err := m.Set([]Target{
		{Service: "redis", Backend: "primary", Address: primary.Addr(), Spec: spec},
		{Service: "redis", Backend: "replica", Address: replica.Addr(), Spec: spec},
	}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "primary", "up as primary", func(s State) bool { return s.Status == StatusUp && s.Role == RolePrimary })
	waitState(t, m, "replica", "up as a replica", func(s State) bool { return s.Status == StatusUp && s.Role == RoleReplica })
	return primary, replica, m
}
