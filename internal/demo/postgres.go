package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// postgresOptions are the knobs of part 2.
type postgresOptions struct {
	Scale         int           // pgbench -i -s
	Clients       int           // pgbench -c
	Duration      time.Duration // pgbench runs (and is restarted) this long in all
	Before        time.Duration // the primary is killed this long after pgbench starts
	FailoverLimit time.Duration // give up if no write succeeds this long after the kill
	Health        healthOptions
}

func defaultPostgresOptions() postgresOptions {
	return postgresOptions{Scale: 2, Clients: 4, Duration: 15 * time.Second, Before: 5 * time.Second, FailoverLimit: 30 * time.Second, Health: demoHealth}
}

// pgService is the name of the proxied service in part 2.
const pgService = "pg"

// postgresPart is part 2: a PostgreSQL primary and streaming standby behind
// quorumproxy with role = "primary", pgbench and a Go writer, SIGKILL to the
// primary, pg_promote() by the hook, and the figures.
func (d *demo) postgresPart(ctx context.Context, o postgresOptions) (res *result, err error) {
	if err := need("postgres", "pgbench"); err != nil {
		return nil, err
	}
	tl := d.tl
	tl.section("Part 2: PostgreSQL primary + streaming standby behind quorumproxy (role = primary), primary killed under pgbench")
	var cl cleanups
	defer func() {
		tl.printf("cleaning up part 2: proxy, PostgreSQL servers, temp dir")
		start := time.Now()
		if cerr := cl.run(); cerr != nil && err == nil {
			err = cerr
		}
		tl.printf("cleaned up in %.1fs", time.Since(start).Seconds())
	}()

	dir, err := os.MkdirTemp("", "qp-demo-pg-")
	if err != nil {
		return nil, err
	}
	cl.add(func() error { return os.RemoveAll(dir) })

	tl.printf("starting a PostgreSQL primary (initdb) and streaming standby (pg_basebackup) on loopback")
	p1, err := testenv.StartPostgres(testenv.PGOptions{})
	if err != nil {
		return nil, fmt.Errorf("starting the PostgreSQL primary: %w", err)
	}
	cl.add(p1.Stop)
	p2, err := p1.StartStandby(false)
	if err != nil {
		return nil, fmt.Errorf("starting the PostgreSQL standby: %w", err)
	}
	cl.add(p2.Stop)
	tl.printf("postgres p1 (primary) on %s; p2 (async streaming standby) on %s", p1.Addr(), p2.Addr())

	listen, admin, err := twoPorts()
	if err != nil {
		return nil, err
	}
	events := filepath.Join(dir, "hook-events")
	conf := renderConfig(admin, serviceConf{
		Name: pgService, Listen: listen, Kind: "postgres", Role: "primary",
		Interval: o.Health.Interval, Timeout: o.Health.Timeout, Rise: 2, Fall: o.Health.Fall,
		User: testenv.User, Database: "postgres", PasswordEnv: envPGPassword,
		SwitchHold: 5 * time.Second,
		Promote:    []string{d.self, "hook-pg-promote"}, HookTimeout: 30 * time.Second,
		Backends: []backendConf{{Name: "p1", Address: p1.Addr(), Priority: 100}, {Name: "p2", Address: p2.Addr(), Priority: 50}},
	})
	env := []string{envEvents + "=" + events, envPGPassword + "=" + p1.Password(), envPGUser + "=" + testenv.User}
	// Issue 4 item 9: three proxies go here, each with its own config.
	px, err := startProxy(ctx, d.bin, dir, "qp1", admin, conf, env)
	if err != nil {
		return nil, err
	}
	cl.add(px.stop)
	proxies := []*proxyProc{px}
	tl.printf("quorumproxy qp1 started: service %q on %s (active-passive, role primary, health postgres every %s, fall %d,\n"+
		"promote hook: %s hook-pg-promote -> SELECT pg_promote() on $QP_NEW_ADDRESS); admin %s",
		pgService, listen, o.Health.Interval, o.Health.Fall, filepath.Base(d.self), admin)
	w := d.watch(ctx, pgService, proxies, events)
	defer w.close()
	if _, err := px.waitService(ctx, pgService, 15*time.Second, `target "p1" (primary) with p2 up as a replica`, func(s *adminapi.Service) bool {
		return s.Target == "p1" && allUp(s) && roleOf(s, "p1") == "primary" && roleOf(s, "p2") == "replica"
	}); err != nil {
		return nil, err
	}

	dsn := pgDSN(listen, testenv.User, p1.Password(), "postgres")
	pgEnv := append(os.Environ(), "PGPASSWORD="+p1.Password(), "PGCONNECT_TIMEOUT=10")
	host, port, _ := net.SplitHostPort(listen)
	pgArgs := []string{"-h", host, "-p", port, "-U", testenv.User}
	start := time.Now()
	initCmd := exec.CommandContext(ctx, "pgbench", append(append([]string{"-i", "-q", "-s", strconv.Itoa(o.Scale)}, pgArgs...), "postgres")...)
	initCmd.Env = pgEnv
	if out, err := initCmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pgbench -i through the proxy: %w\n%s", err, out)
	}
	tl.printf("pgbench -i -s %d through the proxy: done in %.1fs", o.Scale, time.Since(start).Seconds())
	if err := pgExec(ctx, dsn, "CREATE TABLE IF NOT EXISTS demo_writes (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		return nil, err
	}

	d.printStatus(ctx, "before the switch", pgService, proxies)
	res = &result{Part: "part 2 (postgres)", OldTarget: "p1"}

	// pgbench runs in the background for the whole duration; the writer and
	// the kill happen meanwhile.
	benchArgs := append(append([]string{"-c", strconv.Itoa(o.Clients), "-j", "2", "-P", "1", "--progress-timestamp", "-n"}, pgArgs...), "postgres")
	until := time.Now().Add(o.Duration)
	bctx, stopBench := context.WithCancel(ctx)
	defer stopBench()
	var bwg sync.WaitGroup
	var benchNotes []string
	bwg.Add(1)
	go func() {
		defer bwg.Done()
		benchNotes = d.pgbenchLoop(bctx, pgEnv, benchArgs, until)
	}()

	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	wr := newWriter(tl, "writer", func(ctx context.Context, id int64) error {
		if conn == nil {
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				return err
			}
			conn = c
		}
		if _, err := conn.Exec(ctx, "INSERT INTO demo_writes (id) VALUES ($1)", id); err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Close(cctx)
			cancel()
			conn = nil
			return err
		}
		return nil
	})
	after := time.Until(until) - o.Before
	plan := failover{proxies: proxies, service: pgService, before: o.Before, after: max(after, time.Second), limit: o.FailoverLimit, kill: p1.Kill}
	if err := d.runFailover(ctx, res, wr, plan); err != nil {
		return nil, err
	}
	bwg.Wait()
	res.Notes = append(res.Notes, benchNotes...)
	w.close()
	w.fill(res)
	d.printStatus(ctx, "after the switch", pgService, proxies)

	found, err := pgReadBack(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("reading back through the proxy: %w", err)
	}
	wr.fill(res, found)
	tl.printf("read back the writer's table through the proxy: %d of %d acknowledged ids found, %d lost", res.ReadBack, res.Acked, res.Lost)
	return res, res.moved()
}

// pgbenchLoop runs pgbench until the deadline, restarting it when it stops
// early: pgbench 15 aborts a client whose connection breaks and does not
// reconnect, so after a failover a new run connects through the same proxy
// address. It prints the progress lines and returns each run's summary.
func (d *demo) pgbenchLoop(ctx context.Context, env, args []string, until time.Time) []string {
	var notes []string
	for run := 1; ctx.Err() == nil; run++ {
		left := time.Until(until).Truncate(time.Second)
		if left < 2*time.Second {
			break
		}
		a := append([]string{"-T", strconv.Itoa(int(left.Seconds()))}, args...)
		if run == 1 {
			d.tl.printf("pgbench %s (through the proxy, in the background)", strings.Join(a, " "))
		} else {
			d.tl.printf("pgbench run %d: restarted through the same proxy address for %s", run, left)
		}
		summary, err := d.pgbench(ctx, env, a)
		if ctx.Err() != nil {
			break
		}
		note := fmt.Sprintf("pgbench run %d: %s", run, summary)
		if err != nil {
			note += fmt.Sprintf(" (exit: %v)", err)
		}
		d.tl.printf("%s", note)
		notes = append(notes, note)
		if sleep(ctx, 100*time.Millisecond) != nil {
			break
		}
	}
	return notes
}

// pgbench runs pgbench once, printing its progress lines on the timeline,
// and returns its summary (tps, transactions, failures).
func (d *demo) pgbench(ctx context.Context, env, args []string) (string, error) {
	cmd := exec.CommandContext(ctx, "pgbench", args...)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting pgbench: %w", err)
	}
	var wg sync.WaitGroup
	var summary []string
	wg.Add(2)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			for _, k := range []string{"number of transactions actually processed", "number of failed transactions", "tps = "} {
				if strings.HasPrefix(line, k) {
					summary = append(summary, strings.TrimSpace(line))
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		d.pgbenchStderr(stderr)
	}()
	wg.Wait()
	err = cmd.Wait()
	if len(summary) == 0 {
		summary = []string{"no summary"}
	}
	return strings.Join(summary, "; "), err
}

// maxPgbenchErrors is how many of one run's error lines the timeline shows.
const maxPgbenchErrors = 6

// pgbenchStderr turns progress lines ("progress: 1700000000.123 s, 523.0
// tps, lat 7.6 ms stddev 2.1, 0 failed") into timeline lines at their own
// time and shows the first error lines.
func (d *demo) pgbenchStderr(r io.Reader) {
	sc := bufio.NewScanner(r)
	shown := 0
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "progress: "); ok {
			stamp, figures, _ := strings.Cut(rest, " s, ")
			if sec, err := strconv.ParseFloat(stamp, 64); err == nil {
				d.tl.at(time.Unix(0, int64(sec*1e9)), "pgbench: %s", figures)
				continue
			}
		}
		if shown < maxPgbenchErrors {
			d.tl.printf("pgbench: %s", strings.TrimPrefix(line, "pgbench: "))
		}
		shown++
	}
	if shown > maxPgbenchErrors {
		d.tl.printf("pgbench: (%d more lines)", shown-maxPgbenchErrors)
	}
}

// pgExec runs one statement through the proxy.
func pgExec(ctx context.Context, dsn, sql string) error {
	return retry(ctx, func(ctx context.Context) error {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		_, err = c.Exec(ctx, sql)
		return err
	})
}

// pgReadBack returns every id in demo_writes, read through the proxy.
func pgReadBack(ctx context.Context, dsn string) (map[int64]bool, error) {
	found := map[int64]bool{}
	err := retry(ctx, func(ctx context.Context) error {
		clear(found)
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		rows, err := c.Query(ctx, "SELECT id FROM demo_writes")
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		for _, id := range ids {
			found[id] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("SELECT id FROM demo_writes: %w", err)
	}
	return found, nil
}

// roleOf returns the role /status shows for a backend.
func roleOf(s *adminapi.Service, backend string) string {
	for _, b := range s.Backends {
		if b.Name == backend {
			return b.Role
		}
	}
	return ""
}
