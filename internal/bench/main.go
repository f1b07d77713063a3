// Command bench measures quorumproxy against HAProxy and a direct
// connection on the same machine in one run, and prints a Markdown table
// with ratios: redis-benchmark GET/SET, pgbench -S, iperf3 bulk, connection
// churn (redis-benchmark -k 0), and RSS and fds per idle proxied
// connection. It starts every server itself on loopback (Redis and
// PostgreSQL through internal/testenv, iperf3 -s, an in-process hold
// server, HAProxy and quorumproxy from generated configs) and stops them
// all at the end, on error and on Ctrl-C.
//
//	go run ./internal/bench -bin bin/quorumproxy -out bench-results.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// options are the command-line flags.
type options struct {
	bin       string
	out       string
	runs      int
	idleConns int
	redisSecs float64 // aim for this long per redis-benchmark test, direct
	churnSecs float64
	pgSecs    int
	iperfSecs int
	quick     bool
	ioURing   string // quorumproxy's [proxy] io_uring
	loops     int    // quorumproxy's [proxy] loops
	idleNote  string // why idleConns was lowered, if it was
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/quorumproxy", "quorumproxy binary to measure")
	flag.StringVar(&o.out, "out", "bench-results.md", "write the Markdown results here too")
	flag.IntVar(&o.runs, "runs", 3, "measured runs per workload and target (the median is reported)")
	flag.IntVar(&o.idleConns, "idle", 50000, "idle connections held through each proxy")
	flag.Float64Var(&o.redisSecs, "redis-seconds", 5, "approximate length of each redis-benchmark test on the slowest target")
	flag.Float64Var(&o.churnSecs, "churn-seconds", 3, "approximate length of the connection-churn test on the slowest target")
	flag.IntVar(&o.pgSecs, "pgbench-seconds", 10, "pgbench -T")
	flag.IntVar(&o.iperfSecs, "iperf-seconds", 5, "iperf3 -t")
	flag.BoolVar(&o.quick, "quick", false, "a short smoke run: 1 run, short workloads, 1000 idle connections")
	flag.IntVar(&o.loops, "loops", 0, "quorumproxy's [proxy] loops (0: its default)")
	flag.StringVar(&o.ioURing, "io-uring", "auto", `quorumproxy's [proxy] io_uring: "auto" or "off" (to measure what the batching brings)`)
	flag.Parse()
	if o.quick {
		o.runs, o.idleConns, o.redisSecs, o.churnSecs, o.pgSecs, o.iperfSecs = 1, 1000, 1, 1, 2, 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "bench: interrupted; every process it started is stopped")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// started is when the bench began; progress lines show the time since.
var started = time.Now()

// logf prints a progress line to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%5.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

// run sets everything up, measures, reports, and tears everything down.
func run(ctx context.Context, o options) (err error) {
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("quorumproxy binary: %w (run `make build` first)", err)
	}
	for _, tool := range []string{"haproxy", "iperf3", "redis-benchmark"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s: %w (run `make deps`)", tool, err)
		}
	}
	if dir, err := testenv.PGBinDir(); err == nil {
		pgbenchPath = filepath.Join(dir, "pgbench")
	}
	// Client and server ends of every idle connection live in this process,
	// and each proxy holds two fds per connection.
	nofile, err := raiseNoFile(uint64(max(65536, 4*o.idleConns+4096)), uint64(2*o.idleConns+1024))
	if err != nil {
		// A hard limit that cannot be raised (no CAP_SYS_RESOURCE): hold
		// as many as it allows, and say so in the report.
		// HAProxy's maxconn gets the same limit (below), with room for
		// its pipes; both proxies hold the same number, a margin under it.
		fit := (int(nofile)-2*haMaxPipes-1024)/2 - 500
		if fit < 1000 {
			return err
		}
		logf("%v: holding %d idle connections instead of %d", err, fit, o.idleConns)
		o.idleNote = fmt.Sprintf("asked for %d idle connections; the open-file hard limit %d (not raisable here) allows %d", o.idleConns, nofile, fit)
		o.idleConns = fit
	}

	tmp, err := os.MkdirTemp("", "qp-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ps := &procs{dir: tmp}
	defer ps.stopAll()

	logf("starting Redis, PostgreSQL, iperf3 -s and the hold server")
	rd, err := testenv.StartRedis(testenv.RedisOptions{})
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	defer rd.Stop()
	const pgPassword = "bench"
	pg, err := testenv.StartPostgres(testenv.PGOptions{Password: pgPassword})
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer pg.Stop()
	iperfPort, err := testenv.FreePort()
	if err != nil {
		return err
	}
	iperfAddr := fmt.Sprintf("127.0.0.1:%d", iperfPort)
	iperfSrv, err := ps.start("iperf3", []string{"iperf3", "-s", "-B", "127.0.0.1", "-p", fmt.Sprint(iperfPort)}, nil)
	if err != nil {
		return err
	}
	hold, err := startHold()
	if err != nil {
		return err
	}
	defer hold.close()

	backends := map[string]string{
		svcRedis: rd.Addr(),
		svcPG:    pg.Addr(),
		svcIperf: iperfAddr,
		svcHold:  hold.addrs(),
	}
	// serverState says whether the server behind a failed workload still
	// answers directly, with the tail of its log when it does not.
	serverState := func(what string) string {
		var err error
		var log string
		switch what {
		case "pgbench":
			err, log = pgSSLProbe(pg.Addr()), pg.LogPath()
		case "redis-benchmark", "connection churn":
			err, log = redisPing(rd.Addr()), rd.LogPath()
		case "iperf3":
			if iperfSrv.Exited() {
				err, log = iperfSrv.Failure(), iperfSrv.Log
			}
		}
		if err == nil {
			return " (the server itself still answers directly)"
		}
		return fmt.Sprintf(" (the server does not answer directly: %v; last lines of its log:\n%s)", err, testenv.Tail(log, 15))
	}
	direct := &target{name: tDirect, addrs: maps.Clone(backends)}
	direct.addrs[svcHold] = hold.addr()
	if err := waitRoutes(ctx, direct, hold, 30*time.Second); err != nil {
		if iperfSrv.Exited() {
			return iperfSrv.Failure()
		}
		return fmt.Errorf("servers: %w", err)
	}

	logf("starting HAProxy and quorumproxy")
	// HAProxy sizes its fd limit from maxconn (two fds per connection) plus
	// maxpipes, and must stay within ours.
	haMaxconn := int(min(uint64(4*o.idleConns+10000), (nofile-2*haMaxPipes-1024)/2))
	ha, err := startHAProxy(ps, tmp, backends, haMaxconn)
	if err != nil {
		return err
	}
	if err := waitRoutes(ctx, ha, hold, 30*time.Second); err != nil {
		return err
	}
	proxies := []*target{ha}
	// A quorumproxy that does not start or route is reported, and HAProxy
	// and direct are still measured so the run is not wasted.
	var failures []error
	qp, err := startQP(ps, tmp, bin, o.loops, o.ioURing, backends)
	if err == nil {
		err = waitRoutes(ctx, qp, hold, 30*time.Second)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		logf("FAILED quorumproxy: %v", err)
		failures = append(failures, fmt.Errorf("quorumproxy: %w", err))
		if qp != nil {
			qp.proc.Stop(3 * time.Second)
		}
	} else {
		proxies = append(proxies, qp)
	}

	b := &bench{
		ctx:       ctx,
		o:         o,
		hold:      hold,
		proxies:   proxies,
		targets:   append([]*target{direct}, proxies...),
		failures:  failures,
		serverErr: serverState,
		l: loads{pgSeconds: o.pgSecs, iperfSecs: o.iperfSecs,
			pgUser: testenv.User, pgPassword: pgPassword, pgDB: "postgres"},
	}
	m := describeMachine(ctx, bin)
	m.loadStart = loadAvg()
	logf("pgbench -i -s 10")
	if err := pgbenchInit(ctx, pg.Addr(), b.l); err != nil {
		return err
	}
	// Idle connections first, on freshly started proxies, so the RSS
	// growth is not hidden by memory the throughput runs left behind.
	rows, err := b.idlePhase()
	if err != nil {
		return err
	}
	if err := b.warmUp(); err != nil {
		return err
	}
	tput, cpu, cs, err := b.throughput()
	if err != nil {
		return err
	}
	scale, err := b.scaling()
	if err != nil {
		return err
	}
	m.loadEnd = loadAvg()
	text := report(m, results{rows: append(tput, rows...), cpu: cpu, cs: cs, scale: scale,
		params: b.params(haMaxconn), idle: b.idle, runs: o.runs})
	fmt.Print(text)
	if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	logf("results written to %s", o.out)
	if len(b.failures) > 0 {
		return fmt.Errorf("%d runs failed: %w", len(b.failures), errors.Join(b.failures...))
	}
	return nil
}

// clampInt rounds v into [lo, hi].
func clampInt(v float64, lo, hi int) int {
	if math.IsNaN(v) {
		return lo
	}
	return max(lo, min(hi, int(math.Round(v))))
}
