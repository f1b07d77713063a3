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

// Against a real GTID replica: role replica with lag 0 when caught up, a
// growing Seconds_Behind_Master under MASTER_DELAY, and an unknown lag
// (not zero) while the SQL thread is stopped.
func TestMySQLReplicaLag(t *testing.T) {
	m1 := testenv.MustMariaDB(t)
	m2 := testenv.MustMariaDBReplica(t, m1)
	spec := Spec{Kind: "mysql", User: testenv.User, Password: testenv.DefaultPassword, Timeout: dbTimeout}
	ctx := t.Context()

	r := checkOnce(t, spec, m2.Addr())
	wantUp(t, r, RoleReplica)
	if r.Lag != 0 {
		t.Errorf("caught-up replica lag %v, want 0", r.Lag)
	}

	for _, q := range []string{"STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 3", "START SLAVE"} {
		if err := m2.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := m1.Exec(ctx, "CREATE TABLE IF NOT EXISTS qp.lagprobe (id INT PRIMARY KEY AUTO_INCREMENT)"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := m1.Exec(ctx, "INSERT INTO qp.lagprobe VALUES ()"); err != nil {
			t.Fatal(err)
		}
		r = checkOnce(t, spec, m2.Addr())
		if r.Role == RoleReplica && r.Lag >= time.Second {
			t.Logf("delayed replica: lag %v", r.Lag)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica with MASTER_DELAY=3 never showed a lag of 1s or more: last %+v", r)
		}
		time.Sleep(200 * time.Millisecond)
	}

	if err := m2.Exec(ctx, "STOP SLAVE SQL_THREAD"); err != nil {
		t.Fatal(err)
	}
	r = checkOnce(t, spec, m2.Addr())
	wantUp(t, r, RoleReplica)
	if r.Lag != -1 {
		t.Errorf("SQL thread stopped: lag %v, want unknown (-1): a stopped replica must not look current", r.Lag)
	}
}
