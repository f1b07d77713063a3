package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

const lagAlertConfig = `
[admin]
listen = %q

[[service]]
name = "pg"
listen = %q
role = "primary"
alert_lag_bytes = 100000

  [service.health]
  kind = "postgres"
  user = "qp"
  database = "postgres"
  password_env = "QP_TEST_PG_PASSWORD"
  interval = "200ms"
  timeout = "150ms"

  [service.hooks]
  notify = ["/bin/sh", "-c", "echo \"$QP_EVENT $QP_BACKEND\" >> %s"]

  [[service.backend]]
  name = "p1"
  address = %q
  priority = 10

  [[service.backend]]
  name = "p2"
  address = %q
  priority = 5
`

// The lag alert: a standby whose WAL receiver stops falls behind under
// writes to the primary; the alert is raised in /status and the metrics,
// notify runs once; when it catches up the alert clears and notify runs
// once more, for that crossing only.
func TestLagAlert(t *testing.T) {
	testenv.Need(t, "postgres")
	p1 := testenv.MustPostgres(t, testenv.PGOptions{})
	p2 := testenv.MustStandby(t, p1, false)
	dir := t.TempDir()
	events := filepath.Join(dir, "events")
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "qp.toml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(lagAlertConfig, admin, listen, events, p1.Addr(), p2.Addr())), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("QP_TEST_PG_PASSWORD", p1.Password())
	d := startDaemon(t, cfgPath, admin)
	testwait.For(t, "target p1", 20*time.Second, func() bool {
		s := d.service(t, "pg")
		return s != nil && s.Target == "p1"
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p1.Exec(ctx, "CREATE TABLE filler (b text)"); err != nil {
		t.Fatal(err)
	}
	var recvPid int
	if err := p2.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&recvPid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(recvPid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = syscall.Kill(recvPid, syscall.SIGCONT)
		}
	})
	if err := p1.Exec(ctx, "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)"); err != nil {
		t.Fatal(err)
	}
	alerted := func() bool {
		s := d.service(t, "pg")
		for _, a := range s.Alerts {
			if strings.HasPrefix(a, "lag: replica p2") {
				return true
			}
		}
		return false
	}
	testwait.For(t, "the lag alert in /status", 20*time.Second, alerted)
	if m := getBody(t, "http://"+admin+"/metrics"); !strings.Contains(m, `quorumproxy_alert_replication_lag{backend="p2",service="pg"} 1`) {
		t.Errorf("/metrics does not show the alert:\n%s", grepLines(m, "alert_replication_lag"))
	}
	// More writes while it is raised: no new crossing, no new notify.
	if err := p1.Exec(ctx, "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 500)"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(recvPid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	testwait.For(t, "the lag alert cleared", 30*time.Second, func() bool { return !alerted() })
	want := "lag_alert p2\nlag_cleared p2\n"
	testwait.For(t, "notify run once each way", 10*time.Second, func() bool {
		b, _ := os.ReadFile(events)
		return string(b) == want
	})
	if m := getBody(t, "http://"+admin+"/metrics"); !strings.Contains(m, `quorumproxy_alert_replication_lag{backend="p2",service="pg"} 0`) {
		t.Errorf("/metrics still shows the alert:\n%s", grepLines(m, "alert_replication_lag"))
	}
}
