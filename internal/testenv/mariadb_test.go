package testenv

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

func mysqlConnectQuery(ctx context.Context, dsn string) error {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	var one int
	return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

func TestMariaDBStartStop(t *testing.T) {
	Need(t, "mariadb")
	start := time.Now()
	m, err := StartMariaDB()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mariadb started in %v", time.Since(start))
	ctx := ctxT(t)
	if err := mysqlConnectQuery(ctx, m.DSN()); err != nil {
		t.Fatalf("connect as %s over TCP: %v", User, err)
	}
	cfg, err := mysql.ParseDSN(m.DSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Passwd = "wrong"
	if err := mysqlConnectQuery(ctx, cfg.FormatDSN()); err == nil {
		t.Fatal("wrong password accepted")
	}
	pid, logPath := m.Pid(), m.LogPath()
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("mariadbd %d alive after Stop", pid)
	}
	if _, err := os.Stat(logPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir left after Stop: %v", err)
	}
	if err := m.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestMariaDBReadOnly(t *testing.T) {
	m := MustMariaDB(t)
	ctx := ctxT(t)
	for _, on := range []bool{true, false, true} {
		if err := m.SetReadOnly(on); err != nil {
			t.Fatal(err)
		}
		// Read through the user's TCP connection, as a health check would.
		db, err := sql.Open("mysql", m.DSN())
		if err != nil {
			t.Fatal(err)
		}
		var ro int
		err = db.QueryRowContext(ctx, "SELECT @@global.read_only").Scan(&ro)
		_ = db.Close()
		if err != nil {
			t.Fatal(err)
		}
		if (ro != 0) != on {
			t.Fatalf("read_only = %d after SetReadOnly(%v)", ro, on)
		}
	}
}

func TestMariaDBPauseKillRestart(t *testing.T) {
	m := MustMariaDB(t)
	ctx := ctxT(t)
	if err := m.Exec(ctx, "CREATE TABLE qp.t (id int primary key) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if err := m.Exec(ctx, "INSERT INTO qp.t VALUES (?)", 5); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := mysqlConnectQuery(short, m.DSN())
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("connect+query on a paused server: %v, want a timeout", err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := mysqlConnectQuery(ctx, m.DSN()); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	var id int
	if err := m.QueryRow(ctx, "SELECT id FROM qp.t").Scan(&id); err != nil || id != 5 {
		t.Fatalf("row after restart: %d, %v", id, err)
	}
	// The cleanup's Stop must also work on a paused server.
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
}

func TestMariaDBReplica(t *testing.T) {
	m := MustMariaDB(t)
	ctx := ctxT(t)
	if err := m.Exec(ctx, "CREATE TABLE qp.t (id int primary key) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	r := MustMariaDBReplica(t, m)
	if err := m.Exec(ctx, "INSERT INTO qp.t VALUES (9)"); err != nil {
		t.Fatal(err)
	}
	err := poll(ctx, func() (bool, error, error) {
		var n int
		if err := r.QueryRow(ctx, "SELECT count(*) FROM qp.t WHERE id = 9").Scan(&n); err != nil {
			return false, err, nil
		}
		return n == 1, nil, nil
	})
	if err != nil {
		t.Fatalf("row never reached the replica: %v", err)
	}
	if ro, err := r.ReadOnly(ctx); err != nil || !ro {
		t.Fatalf("replica read_only = %v, %v", ro, err)
	}
	st, err := r.SlaveStatus(ctx)
	if err != nil || st["Seconds_Behind_Master"] != "0" {
		t.Fatalf("Seconds_Behind_Master = %q, %v", st["Seconds_Behind_Master"], err)
	}
	if err := r.Promote(); err != nil {
		t.Fatal(err)
	}
	if st, err := r.SlaveStatus(ctx); err != nil || len(st) != 0 {
		t.Fatalf("slave status after promote: %v, %v", st, err)
	}
	if ro, err := r.ReadOnly(ctx); err != nil || ro {
		t.Fatalf("read_only after promote = %v, %v", ro, err)
	}
}
