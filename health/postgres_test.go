package health

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// dbTimeout is the check timeout of database tests: generous, the machine may be loaded.
const dbTimeout = 5 * time.Second

func pgSpec(p *testenv.Postgres) Spec {
	return Spec{Kind: "postgres", User: testenv.User, Password: p.Password(), Timeout: dbTimeout}
}

func pgExec(t *testing.T, p *testenv.Postgres, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}

// TestBrokenServers checks that each database checker classifies a listener that says nothing,
// one that answers garbage, one that resets and a closed port, each with its own reason.
func TestBrokenServers(t *testing.T) {
	// A MySQL client waits for the handshake packet whose length an HTTP reply's first bytes
	// announce (5 MB), and then sees the server close.
	httpWant := map[string]error{"postgres": ErrProtocol, "redis": ErrProtocol, "mysql": ErrClosed}
	for _, kind := range []string{"postgres", "redis", "mysql"} {
		spec := Spec{Kind: kind, User: "qp", Password: "secret", Timeout: time.Second}
		for _, tc := range []struct {
			name string
			addr string
			want error
		}{
			{"silent", fakeServer(t, silent), ErrTimeout},
			{"garbage", fakeServer(t, garbage), ErrProtocol},
			{"http", fakeServer(t, httpServer), httpWant[kind]},
			{"reset", fakeServer(t, reset), ErrReset},
			{"refused", closedPort(t), ErrRefused},
		} {
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				r := checkOnce(t, spec, tc.addr)
				t.Logf("%s: %v (in %v)", tc.name, r.Err, r.Latency)
				wantDown(t, r, tc.want)
				if tc.want == ErrTimeout && r.Err.Error() != "timeout after 1s" {
					t.Errorf("error %q, want %q", r.Err, "timeout after 1s")
				}
			})
		}
	}
}

func TestPostgresRoleAndLag(t *testing.T) {
	pg := testenv.MustPostgres(t, testenv.PGOptions{Password: "pg-secret"})
	sb := testenv.MustStandby(t, pg, false)

	r := checkOnce(t, pgSpec(pg), pg.Addr())
	wantUp(t, r, RolePrimary)
	if r.Position <= 0 || r.LagBytes != 0 || r.Lag != 0 {
		t.Errorf("primary: position %d lag %d bytes %v, want >0, 0, 0", r.Position, r.LagBytes, r.Lag)
	}
	r = checkOnce(t, pgSpec(sb), sb.Addr())
	wantUp(t, r, RoleReplica)
	if r.Position <= 0 || r.LagBytes != -1 {
		t.Errorf("standby alone: position %d lag bytes %d, want >0 and -1 (unknown without the primary)", r.Position, r.LagBytes)
	}

	rec := &recorder{}
	m := NewMonitor(testLogger(t), rec.onChange)
	defer m.Close()
	spec := pgSpec(pg)
	spec.Interval = 50 * time.Millisecond
	if err := m.Set([]Target{
		{Service: "pg", Backend: "primary", Address: pg.Addr(), Spec: spec},
		{Service: "pg", Backend: "standby", Address: sb.Addr(), Spec: spec},
	}); err != nil {
		t.Fatal(err)
	}
	// A replayed transaction first, so pg_last_xact_replay_timestamp is set.
	pgExec(t, pg, "CREATE TABLE lag (x int)")
	testwait.For(t, "table replayed on the standby", 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var replayed bool
		err := sb.QueryRow(ctx, "SELECT to_regclass('lag') IS NOT NULL AND pg_last_xact_replay_timestamp() IS NOT NULL").Scan(&replayed)
		return err == nil && replayed
	})
	waitState(t, m, "standby", "caught up", func(s State) bool {
		return s.Status == StatusUp && s.Role == RoleReplica && s.LagBytes == 0 && s.Lag == 0
	})

	pgExec(t, sb, "SELECT pg_wal_replay_pause()")
	pgExec(t, pg, "INSERT INTO lag SELECT generate_series(1, 20000)")
	s1 := waitState(t, m, "standby", "lagging", func(s State) bool { return s.LagBytes > 0 && s.Lag > 0 })
	t.Logf("replay paused: standby %d bytes, %v behind", s1.LagBytes, s1.Lag)
	pgExec(t, pg, "INSERT INTO lag SELECT generate_series(1, 20000)")
	s2 := waitState(t, m, "standby", "lagging more", func(s State) bool { return s.LagBytes > s1.LagBytes })
	t.Logf("more writes: standby %d bytes, %v behind", s2.LagBytes, s2.Lag)
	if p, _ := stateOf(m, "primary"); p.Role != RolePrimary || p.LagBytes != 0 {
		t.Errorf("primary state %+v", p)
	}

	pgExec(t, sb, "SELECT pg_wal_replay_resume()")
	s3 := waitState(t, m, "standby", "caught up after resume", func(s State) bool { return s.LagBytes == 0 && s.Lag == 0 })
	t.Logf("replay resumed: standby %d bytes, %v behind", s3.LagBytes, s3.Lag)

	// Promotion flips the role, and onChange says so.
	if err := sb.Promote(); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "standby", "promoted", func(s State) bool { return s.Status == StatusUp && s.Role == RolePrimary })
	rec.mu.Lock()
	var roles []Role
	for _, e := range rec.events {
		if e.Backend == "standby" && (len(roles) == 0 || roles[len(roles)-1] != e.Role) {
			roles = append(roles, e.Role)
		}
	}
	rec.mu.Unlock()
	if len(roles) < 2 || roles[0] != RoleReplica || roles[len(roles)-1] != RolePrimary {
		t.Errorf("onChange roles of the standby %v, want replica ... primary", roles)
	}
}

func TestPostgresPauseAndKill(t *testing.T) {
	pg := testenv.MustPostgres(t, testenv.PGOptions{Password: "pg-secret"})

	// Wrong password: a clear error that does not carry the password.
	bad := pgSpec(pg)
	bad.Password = "not-the-password"
	r := checkOnce(t, bad, pg.Addr())
	wantDown(t, r, ErrAuth)
	t.Logf("wrong password: %v", r.Err)
	if strings.Contains(r.Err.Error(), bad.Password) || strings.Contains(r.Err.Error(), pg.Password()) {
		t.Errorf("error carries a password: %v", r.Err)
	}
	// Nor does the Monitor's log or state.
	var logs bytes.Buffer
	var logMu sync.Mutex
	m0 := NewMonitor(slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)), nil)
	if err := m0.Set([]Target{{Service: "pg", Backend: "a", Address: pg.Addr(), Spec: bad}}); err != nil {
		t.Fatal(err)
	}
	s0 := waitState(t, m0, "a", "down", func(s State) bool { return s.Status == StatusDown })
	m0.Close()
	logMu.Lock()
	logged := logs.String()
	logMu.Unlock()
	if !strings.Contains(logged, "authentication failed") {
		t.Errorf("log does not say why the backend is down: %s", logged)
	}
	if strings.Contains(logged, bad.Password) || strings.Contains(fmt.Sprintf("%+v", s0), bad.Password) {
		t.Errorf("password in the log or state: %s", logged)
	}

	bad = pgSpec(pg)
	bad.Database = "nosuchdb"
	wantDown(t, checkOnce(t, bad, pg.Addr()), ErrServer)

	// One checker across pause and resume: its kept connection is dropped at the timeout
	// and a new one is made once the server answers again. Checks of the running server get
	// a generous deadline (slow) so that a loaded machine does not fail them.
	spec := pgSpec(pg)
	spec.Timeout = 300 * time.Millisecond
	slow := spec
	slow.Timeout = dbTimeout
	c, err := NewChecker(spec, pg.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantUp(t, checkWith(c, slow), RolePrimary)
	if err := pg.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			pg.Resume()
		}
	}()
	for i := range 2 { // the kept connection, then a fresh one
		start := time.Now()
		r := checkWith(c, spec)
		took := time.Since(start)
		t.Logf("paused, check %d: %v in %v", i, r.Err, took)
		wantDown(t, r, ErrTimeout)
		if r.Err.Error() != "timeout after 300ms" {
			t.Errorf("error %q, want %q", r.Err, "timeout after 300ms")
		}
		if took > 10*spec.Timeout {
			t.Errorf("check on a frozen server took %v with timeout %v", took, spec.Timeout)
		}
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	wantUp(t, checkWith(c, slow), RolePrimary)

	// A restart between checks kills the kept connection; the server itself is fine.
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	wantUp(t, checkWith(c, slow), RolePrimary)

	// The Monitor: SIGSTOP gives a timeout-down after fall, SIGCONT up after rise.
	m := NewMonitor(testLogger(t), nil)
	defer m.Close()
	spec.Interval, spec.Rise, spec.Fall = 100*time.Millisecond, 2, 2
	if err := m.Set([]Target{{Service: "pg", Backend: "a", Address: pg.Addr(), Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", "up", func(s State) bool { return s.Status == StatusUp })
	if err := pg.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed = false
	s := waitState(t, m, "a", "down", func(s State) bool { return s.Status == StatusDown })
	if want := "2 consecutive checks failed: timeout after 300ms"; s.Reason != want {
		t.Errorf("reason %q, want %q", s.Reason, want)
	}
	if err := pg.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	s = waitState(t, m, "a", "up after resume", func(s State) bool { return s.Status == StatusUp })
	if want := "2 consecutive checks succeeded"; s.Reason != want {
		t.Errorf("reason %q, want %q", s.Reason, want)
	}

	// Killed: the kept connection breaks, then the port refuses.
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	s = waitState(t, m, "a", "down after kill", func(s State) bool { return s.Status == StatusDown })
	t.Logf("killed: %s", s.Reason)
	waitState(t, m, "a", "refused", func(s State) bool { return s.LastError == ErrRefused.Error() })
	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", "up after restart", func(s State) bool { return s.Status == StatusUp })
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
