package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// pgBackend is one backend of pgConfigWith: extra holds its own keys.
type pgBackend struct {
	name, address string
	priority      int
	extra         string
}

// pgConfigWith writes a daemon config with one role-primary service "pg"
// checked by postgres every 400ms (fall 2) in front of backends, with
// extra keys for the service, and returns its path.
func pgConfigWith(t *testing.T, admin, listen, extra string, backends ...pgBackend) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, `
[admin]
listen = %q

[[service]]
name = "pg"
listen = %q
role = "primary"
%s
  [service.health]
  kind = "postgres"
  user = "qp"
  database = "postgres"
  password_env = "QP_TEST_PG_PASSWORD"
  interval = "400ms"
  timeout = "350ms"
  rise = 1
  fall = 2
`, admin, listen, extra)
	for _, be := range backends {
		fmt.Fprintf(&b, "\n  [[service.backend]]\n  name = %q\n  address = %q\n  priority = %d\n%s", be.name, be.address, be.priority, be.extra)
	}
	path := filepath.Join(t.TempDir(), "qp.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A PostgreSQL primary with an asynchronous standby, preferred by
// priority, and a synchronous one, under a write load through the proxy.
// The asynchronous standby stops receiving (its WAL receiver frozen, the
// server still answering its checks); the primary is killed. The proxy
// ranks the standbys by the WAL they received after the primary fell
// silent, so the synchronous one is promoted and no acknowledged write is
// lost; by priority alone the asynchronous one would have been. Round
// after round (QP_PG_FAILOVERS, default 5; make soak runs 100), each on
// the last one's promoted standby with two new standbys.
func TestFailoverPromotesTheMostUpToDateStandby(t *testing.T) {
	testenv.Need(t, "postgres")
	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("QP_PG_FAILOVERS")); err == nil && n > 0 {
		rounds = n
	}
	primary := testenv.MustPostgres(t, testenv.PGOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rounds)*time.Minute)
	defer cancel()
	if err := primary.Exec(ctx, "CREATE TABLE acked (id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("QP_TEST_PG_PASSWORD", primary.Password())
	var total, failedTotal int
	var rtos []time.Duration
	next := int64(1)
	for round := 1; round <= rounds; round++ {
		async := testenv.MustStandby(t, primary, false)
		syncS := testenv.MustStandby(t, primary, true)
		acked, failed, rto := promotesTheSynchronousStandby(t, ctx, primary, async, syncS, &next)
		total, failedTotal, rtos = total+acked, failedTotal+failed, append(rtos, rto)
		_ = async.Stop()
		primary = syncS
	}
	slices.Sort(rtos)
	t.Logf("%d failovers: %d writes acknowledged, 0 lost, %d failed during the failovers; the synchronous standby chosen every time; writes back after p50 %v, max %v",
		rounds, total, failedTotal, rtos[len(rtos)/2].Round(time.Millisecond), rtos[len(rtos)-1].Round(time.Millisecond))
}

// promotesTheSynchronousStandby runs one round: a daemon in front of
// primary, async (priority 8) and sync (priority 1), a writer through it,
// async frozen, primary killed; it fails the test unless sync is the one
// chosen and holds every acknowledged write, and returns the writes
// acknowledged, those that failed, and how long writes were refused.
func promotesTheSynchronousStandby(t *testing.T, ctx context.Context, primary, async, syncS *testenv.Postgres, next *int64) (int, int, time.Duration) {
	t.Helper()
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := pgConfigWith(t, admin, listen, `switch_hold = "10s"`,
		pgBackend{"primary", primary.Addr(), 10, ""}, pgBackend{"async", async.Addr(), 8, ""}, pgBackend{"sync", syncS.Addr(), 1, ""})
	d := startDaemon(t, cfgPath, admin)
	defer d.cmd.Process.Kill() // the cleanup waits for it
	testwait.For(t, "target primary", 20*time.Second, func() bool {
		s := d.service(t, "pg")
		return s != nil && s.Target == "primary"
	})

	// The writer: one row per acknowledged commit, through the proxy.
	cfg, err := pgx.ParseConfig(strings.Replace(primary.DSN("postgres"), primary.Addr(), listen, 1))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnectTimeout = 2 * time.Second
	var (
		mu       sync.Mutex
		acked    []int64
		failed   int
		gapStart time.Time
		gap      time.Duration
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for id := *next; ; id++ {
			select {
			case <-stop:
				*next = id
				return
			default:
			}
			wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Second)
			var err error
			if conn == nil {
				conn, err = pgx.ConnectConfig(wctx, cfg)
			}
			if err == nil {
				_, err = conn.Exec(wctx, "INSERT INTO acked VALUES ($1)", id)
			}
			wcancel()
			mu.Lock()
			if err == nil {
				acked = append(acked, id)
				if !gapStart.IsZero() {
					gap = max(gap, time.Since(gapStart))
					gapStart = time.Time{}
				}
			} else {
				failed++
				if gapStart.IsZero() {
					gapStart = time.Now()
				}
				if conn != nil {
					conn.Close(context.Background())
					conn = nil
				}
			}
			mu.Unlock()
			if err != nil {
				time.Sleep(20 * time.Millisecond) // a retry pace, not a wait for a condition
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	testwait.For(t, "writes through the proxy", 20*time.Second, func() bool { return count() >= 200 })

	// Freeze the asynchronous standby's WAL receiver: it answers checks
	// but receives nothing more.
	var recvPid int
	if err := async.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&recvPid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(recvPid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(recvPid, syscall.SIGCONT)
	before := count()
	testwait.For(t, "more writes acknowledged by the synchronous standby alone", 20*time.Second, func() bool { return count() >= before+200 })

	promoted := make(chan string, 1)
	go func() {
		for ctx.Err() == nil {
			if s := d.service(t, "pg"); s != nil && (s.Target == "async" || s.Target == "sync") {
				if s.Target == "sync" {
					_ = syncS.Promote()
				} else {
					_ = async.Promote()
				}
				promoted <- s.Target
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if err := primary.Kill(); err != nil {
		t.Fatal(err)
	}
	var chosen string
	select {
	case chosen = <-promoted:
	case <-time.After(30 * time.Second):
		t.Fatal("no standby was chosen")
	}
	if chosen != "sync" {
		t.Fatalf("the proxy chose %q, the standby that stopped receiving; want the synchronous one", chosen)
	}
	atFailover := count()
	testwait.For(t, "writes through the promoted standby", 30*time.Second, func() bool { return count() >= atFailover+100 })
	close(stop)
	<-done

	mu.Lock()
	ids := append([]int64(nil), acked...)
	mu.Unlock()
	var present int
	if err := syncS.QueryRow(ctx, "SELECT count(*) FROM acked WHERE id = ANY($1)", ids).Scan(&present); err != nil {
		t.Fatal(err)
	}
	if present != len(ids) {
		t.Fatalf("%d of %d acknowledged writes lost", len(ids)-present, len(ids))
	}
	return len(ids), failed, gap
}

// rpo = "zero": the proxy knows from the primary which standby is
// synchronous; once that standby is down and then the primary dies, no
// automatic failover goes to the asynchronous standby (it may lack
// acknowledged commits): the service stays unrouted with an alert that
// says why, and a standby an operator promotes by hand is followed.
func TestRPOZeroHoldsWithoutASynchronousStandby(t *testing.T) {
	testenv.Need(t, "postgres")
	p1 := testenv.MustPostgres(t, testenv.PGOptions{})
	async := testenv.MustStandby(t, p1, false)
	syncS := testenv.MustStandby(t, p1, true)
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := pgConfigWith(t, admin, listen, "rpo = \"zero\"\nswitch_hold = \"1s\"",
		pgBackend{"primary", p1.Addr(), 10, ""}, pgBackend{"async", async.Addr(), 8, ""},
		pgBackend{"sync", syncS.Addr(), 1, fmt.Sprintf("  replication_name = %q\n", syncS.Name())})
	t.Setenv("QP_TEST_PG_PASSWORD", p1.Password())
	d := startDaemon(t, cfgPath, admin)
	backend := func(name string) *adminapi.Backend {
		if s := d.service(t, "pg"); s != nil {
			for i := range s.Backends {
				if s.Backends[i].Name == name {
					return &s.Backends[i]
				}
			}
		}
		return nil
	}
	testwait.For(t, "target primary, which reports its synchronous standby", 20*time.Second, func() bool {
		s, b := d.service(t, "pg"), backend("primary")
		return s != nil && s.Target == "primary" && b != nil && slices.Equal(b.SyncStandbys, []string{syncS.Name()})
	})
	if err := syncS.Kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the primary reporting no synchronous standby", 20*time.Second, func() bool {
		b := backend("primary")
		return b != nil && len(b.SyncStandbys) == 0
	})
	if err := p1.Kill(); err != nil {
		t.Fatal(err)
	}
	var alert string
	testwait.For(t, "the no_failover alert", 20*time.Second, func() bool {
		s := d.service(t, "pg")
		if s == nil {
			return false
		}
		if s.Target == "async" {
			t.Fatalf("rpo = zero failed over to the asynchronous standby (%s)", s.Why)
		}
		for _, a := range s.Alerts {
			if strings.HasPrefix(a, "no_failover: ") && strings.Contains(a, "rpo = zero") {
				alert = a
				return true
			}
		}
		return false
	})
	t.Logf("alert: %s", alert)
	// The operator accepts the loss: a promote by hand is followed.
	if err := async.Promote(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the proxy following the promoted standby", 20*time.Second, func() bool {
		s := d.service(t, "pg")
		return s != nil && s.Target == "async"
	})
}

// A cascade: "cascaded" replicates from "direct", which replicates from
// the primary. Status shows each replica's upstream; when the primary dies
// the direct replica takes over, although the cascaded one has the higher
// priority (it is a failover's last resort: it can hold no more than its
// upstream).
func TestCascadedReplicaIsLastResort(t *testing.T) {
	testenv.Need(t, "postgres")
	p1 := testenv.MustPostgres(t, testenv.PGOptions{})
	direct := testenv.MustStandby(t, p1, false)
	cascaded := testenv.MustStandby(t, direct, false)
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := pgConfigWith(t, admin, listen, "",
		pgBackend{"p1", p1.Addr(), 10, ""}, pgBackend{"direct", direct.Addr(), 1, ""}, pgBackend{"cascaded", cascaded.Addr(), 9, ""})
	t.Setenv("QP_TEST_PG_PASSWORD", p1.Password())
	d := startDaemon(t, cfgPath, admin)
	upstreams := func() map[string]string {
		out := map[string]string{}
		if s := d.service(t, "pg"); s != nil {
			for _, b := range s.Backends {
				out[b.Name] = b.Upstream
			}
		}
		return out
	}
	testwait.For(t, "target p1 and the topology in /status", 20*time.Second, func() bool {
		s, u := d.service(t, "pg"), upstreams()
		return s != nil && s.Target == "p1" && u["direct"] == "p1" && u["cascaded"] == "direct" && u["p1"] == ""
	})
	out, errOut, code := runBin(t, "status", "-admin", admin)
	if code != 0 || !strings.Contains(out, "replica of direct") {
		t.Errorf("status does not show the cascade: exit %d\n%s%s", code, out, errOut)
	}
	if err := p1.Kill(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "a failover", 20*time.Second, func() bool {
		s := d.service(t, "pg")
		return s != nil && s.Target != "p1" && s.Target != ""
	})
	if s := d.service(t, "pg"); s.Target != "direct" {
		t.Fatalf("failover to %q (%s), want the direct replica", s.Target, s.Why)
	}
}
