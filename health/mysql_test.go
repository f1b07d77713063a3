package health

import (
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

func TestMySQLReadOnlyFlip(t *testing.T) {
	db := testenv.MustMariaDB(t)
	spec := Spec{Kind: "mysql", User: testenv.User, Password: testenv.DefaultPassword, Timeout: dbTimeout}

	r := checkOnce(t, spec, db.Addr())
	wantUp(t, r, RolePrimary)
	if r.LagBytes != 0 || r.Lag != 0 {
		t.Errorf("primary lag %d bytes %v, want 0", r.LagBytes, r.Lag)
	}

	bad := spec
	bad.Password = "not-the-password"
	r = checkOnce(t, bad, db.Addr())
	wantDown(t, r, ErrAuth)
	t.Logf("wrong password: %v", r.Err)
	if strings.Contains(r.Err.Error(), bad.Password) {
		t.Errorf("error carries the password: %v", r.Err)
	}

	// A restart between checks kills the kept connection; the server itself is fine.
	c, err := NewChecker(spec, db.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantUp(t, checkWith(c, spec), RolePrimary)
	if err := db.Restart(); err != nil {
		t.Fatal(err)
	}
	wantUp(t, checkWith(c, spec), RolePrimary)

	rec := &recorder{}
	m := NewMonitor(testLogger(t), rec.onChange)
	defer m.Close()
	spec.Interval = 50 * time.Millisecond
	if err := m.Set([]Target{{Service: "my", Backend: "a", Address: db.Addr(), Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", "primary", func(s State) bool { return s.Status == StatusUp && s.Role == RolePrimary })
	if err := db.SetReadOnly(true); err != nil {
		t.Fatal(err)
	}
	s := waitState(t, m, "a", "replica", func(s State) bool { return s.Role == RoleReplica })
	if s.Status != StatusUp || s.Lag != -1 {
		t.Errorf("read_only without replication: %+v, want up with unknown lag", s)
	}
	if err := db.SetReadOnly(false); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", "primary again", func(s State) bool { return s.Role == RolePrimary })

	// SIGSTOP: down with a timeout after fall; SIGCONT: up after rise, on a new connection.
	spec.Timeout, spec.Fall = 300*time.Millisecond, 2
	if err := m.Set([]Target{{Service: "my", Backend: "a", Address: db.Addr(), Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	if err := db.Pause(); err != nil {
		t.Fatal(err)
	}
	s = waitState(t, m, "a", "down", func(s State) bool { return s.Status == StatusDown })
	t.Logf("paused: %s", s.Reason)
	if want := "2 consecutive checks failed: timeout after 300ms"; s.Reason != want {
		t.Errorf("reason %q, want %q", s.Reason, want)
	}
	if err := db.Resume(); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "a", "up after resume", func(s State) bool { return s.Status == StatusUp && s.Role == RolePrimary })
}
