package testenv

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connectQuery connects over TCP with the user's DSN and runs SELECT 1.
func pgConnectQuery(ctx context.Context, dsn string) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	var one int
	return c.QueryRow(ctx, "SELECT 1").Scan(&one)
}

func TestPostgresStartStop(t *testing.T) {
	Need(t, "postgres")
	start := time.Now()
	p, err := StartPostgres(PGOptions{Password: "s3cret'x"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary started in %v", time.Since(start))
	ctx := ctxT(t)
	if err := pgConnectQuery(ctx, p.DSN("postgres")); err != nil {
		t.Fatalf("connect as %s over TCP: %v", User, err)
	}
	bad := p.DSN("") + "&password=wrong"
	if err := pgConnectQuery(ctx, bad); err == nil {
		t.Fatal("wrong password accepted")
	}
	rec, err := p.InRecovery(ctx)
	if err != nil || rec {
		t.Fatalf("primary in recovery = %v, %v", rec, err)
	}
	dir := p.DataDir()
	pid := p.Pid()
	kids := descendants(pid)
	if len(kids) == 0 {
		t.Fatal("postmaster has no children")
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, k := range append(kids, pid) {
		if alive(k) {
			t.Errorf("process %d alive after Stop", k)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir %s left after Stop: %v", dir, err)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestPostgresStandbyReplicates(t *testing.T) {
	p := MustPostgres(t, PGOptions{})
	start := time.Now()
	s := MustStandby(t, p, false)
	t.Logf("async standby started in %v", time.Since(start))
	ctx := ctxT(t)
	if err := p.Exec(ctx, "CREATE TABLE t (id int primary key)"); err != nil {
		t.Fatal(err)
	}
	if err := p.Exec(ctx, "INSERT INTO t VALUES ($1)", 42); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitCatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s.QueryRow(ctx, "SELECT count(*) FROM t WHERE id = 42").Scan(&n); err != nil || n != 1 {
		t.Fatalf("row on the standby after catch-up: %d, %v", n, err)
	}
	if err := p.WaitCatchUp(ctx); err == nil {
		t.Error("WaitCatchUp on a primary succeeded")
	}
	if rec, err := s.InRecovery(ctx); err != nil || !rec {
		t.Fatalf("standby in recovery = %v, %v", rec, err)
	}
	if err := pgConnectQuery(ctx, s.DSN("postgres")); err != nil {
		t.Fatalf("connect to standby over TCP: %v", err)
	}
	// Promotion makes it writable.
	if err := s.Promote(); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, "INSERT INTO t VALUES (43)"); err != nil {
		t.Fatalf("write after promote: %v", err)
	}
}

func TestPostgresSyncStandby(t *testing.T) {
	p := MustPostgres(t, PGOptions{Sync: true, Password: `it's a \ test`})
	start := time.Now()
	s := MustStandby(t, p, true)
	t.Logf("sync standby started in %v", time.Since(start))
	ctx := ctxT(t)
	var state string
	if err := p.QueryRow(ctx, "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", s.Name()).Scan(&state); err != nil {
		t.Fatal(err)
	}
	if state != "sync" {
		t.Fatalf("sync_state = %q, want sync", state)
	}
	for _, srv := range []*Postgres{p, s} {
		var fsync string
		if err := srv.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil || fsync != "on" {
			t.Fatalf("%s: fsync = %q, %v; want on with PGOptions.Sync", srv.Name(), fsync, err)
		}
	}
	// A commit on the primary is visible... and blocks while the sync
	// standby is frozen, which is what sync replication means.
	if err := p.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	err := p.Exec(short, "INSERT INTO t VALUES (1)")
	cancel()
	if err == nil {
		t.Error("commit returned while the sync standby was paused")
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := p.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatalf("commit after resume: %v", err)
	}
	// A promoted sync standby must not inherit the primary's list.
	if err := s.Promote(); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, "INSERT INTO t VALUES (3)"); err != nil {
		t.Fatalf("write on promoted standby: %v", err)
	}
}

func TestPostgresPauseResume(t *testing.T) {
	p := MustPostgres(t, PGOptions{})
	ctx := ctxT(t)
	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := pgConnectQuery(short, p.DSN(""))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("connect+query on a paused server: %v, want a timeout", err)
	}
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := pgConnectQuery(ctx, p.DSN("")); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	// Stop works on a paused server too.
	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestPostgresKillRestart(t *testing.T) {
	p := MustPostgres(t, PGOptions{})
	ctx := ctxT(t)
	if err := p.Exec(ctx, "CREATE TABLE t (id int); INSERT INTO t VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	kids := descendants(pid)
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) || p.Pid() != 0 {
		t.Fatalf("postmaster %d alive after Kill", pid)
	}
	for _, k := range kids {
		if alive(k) {
			t.Errorf("backend %d alive after Kill", k)
		}
	}
	if err := pgConnectQuery(ctx, p.DSN("")); err == nil {
		t.Fatal("connect succeeded after Kill")
	}
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := p.QueryRow(ctx, "SELECT id FROM t").Scan(&n); err != nil || n != 7 {
		t.Fatalf("row after restart: %d, %v", n, err)
	}
	if err := pgConnectQuery(ctx, p.DSN("")); err != nil {
		t.Fatalf("TCP after restart: %v", err)
	}
}
