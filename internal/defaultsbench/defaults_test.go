package defaultsbench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/drill"
	"github.com/quorumproxy/quorumproxy/internal/netem"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// results gathers what every configuration measured, for the report.
var results struct {
	sync.Mutex
	kills  []killResult
	falses []falseResult
}

// killResult is a series of failures of the primary through one configuration.
type killResult struct {
	Config   string
	Failure  string // "kill -9" or "SIGSTOP"
	Settings string
	Runs     []*drill.Report
	Hooks    []float64 // the promote hook's run times, seconds (from the proxies' logs)
	Took     time.Duration
}

// falseResult is a run with a healthy primary under load or loss.
type falseResult struct {
	Config    string
	Settings  string
	Condition string
	Took      time.Duration
	Failovers int // target or record changes and promote hooks run: must be 0
	Epochs    int // new cluster epochs (a re-affirmation of the same primary is one too)
	Down      int // times a proxy's checks marked the primary down
	Checks    int // checks of the primary, all proxies
	Failed    int // of which failed
	Slow      int // of which took longer than slowMark
	Slowest   string
	Unrouted  int // /status samples in which a proxy did not route the primary
	Samples   int
	Peers     int // "peer unreachable" log lines (memberlist)
	Quorum    int // "lost quorum" log lines
	Note      string
}

// slowMark is the check time the false-failover runs count checks above.
const slowMark = 0.25

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// part reports whether QP_DEFAULTS_PARTS (default "kill,freeze,load,netem") names p.
func part(p string) bool {
	parts := os.Getenv("QP_DEFAULTS_PARTS")
	return parts == "" || slices.Contains(strings.Split(parts, ","), p)
}

// TestDefaults measures the default timings (see the package doc).
func TestDefaults(t *testing.T) {
	runs := envInt("QP_DEFAULTS_RUNS", 0)
	if runs == 0 {
		t.Skip("a measurement of the default timings (minutes): set QP_DEFAULTS_RUNS=N (make soak)")
	}
	freezes := envInt("QP_DEFAULTS_FREEZES", max(3, runs/3))
	secs := time.Duration(envInt("QP_DEFAULTS_SECONDS", 60)) * time.Second
	start := time.Now()
	load0 := loadAvg()
	for _, kind := range []string{"postgres", "redis"} {
		for _, n := range []int{1, 3} {
			name := kind + "/alone"
			if n > 1 {
				name = fmt.Sprintf("%s/cluster%d", kind, n)
			}
			t.Run(name, func(t *testing.T) {
				b := newBench(t, kind, n)
				t.Logf("%s: %s", b.name(), b.settings())
				if part("kill") {
					b.failSeries(runs, false)
				}
				if part("freeze") {
					b.failSeries(freezes, true)
				}
				if part("load") {
					b.underLoad(secs)
				}
				if part("netem") {
					b.degraded(secs)
				}
			})
		}
	}
	report := formatReport(time.Since(start), load0, loadAvg())
	t.Log("\n" + report)
	if out := os.Getenv("QP_DEFAULTS_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// killScript is the drill's fail command for a kill: kill -9 the server,
// a PostgreSQL postmaster with its children at once (stopped first, so it
// forks no other), as a crash would. freezeScript stops them instead, as
// a frozen host would look: connections are still accepted by the kernel,
// and nothing answers.
const (
	killScript   = `kill -STOP "$1"; kill -KILL "$1" $(pgrep -P "$1")`
	freezeScript = `kill -STOP "$1"; kids=$(pgrep -P "$1"); [ -z "$kids" ] || kill -STOP $kids`
)

// failSeries runs n drills, each killing (or with freeze, stopping) the
// primary's server, and brings the failed server back as a replica of the
// new primary between runs (a stopped one is killed first).
func (b *bench) failSeries(n int, freeze bool) {
	t := b.t
	t.Helper()
	failure, script := "kill -9", killScript
	if freeze {
		failure, script = "SIGSTOP", freezeScript
	}
	svc := b.cfg.Services[0] // the first proxy's: the drill writes through it
	o := drill.Options{Service: &svc, Admin: b.proxies[0].admin, Password: b.password, After: 500 * time.Millisecond, Timeout: 30 * time.Second}
	if b.kind == "postgres" {
		o.User, o.Database = testenv.User, "postgres"
	}
	// The kill lands at a uniformly random point of the primary's check
	// cycle: otherwise the settling before each run could line it up.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	res := killResult{Config: b.name(), Failure: failure, Settings: b.settings()}
	start := time.Now()
	logs0 := b.logOffsets()
	for i := 1; i <= n; i++ {
		if err := b.settle(2 * time.Minute); err != nil {
			t.Fatalf("before kill %d: %v", i, err)
		}
		name, err := b.target()
		if err != nil {
			t.Fatal(err)
		}
		old := b.backend(name)
		pid := old.pid()
		if pid == 0 {
			t.Fatalf("kill %d: %s is not running", i, name)
		}
		o.RunIndex = i
		o.Warmup = time.Second + time.Duration(rng.Int64N(int64(svc.Health.Interval)))
		o.Fail = []string{"/bin/sh", "-c", script, "fail", strconv.Itoa(pid)}
		rep, err := drill.Run(context.Background(), o, discard{})
		if rep != nil {
			res.Runs = append(res.Runs, rep)
		}
		if err != nil {
			t.Fatalf("kill %d: %v", i, err)
		}
		t.Logf("%s %d: %s -> %s: down %+.3fs decided %+.3fs routed %+.3fs RTO %.3fs; %d acknowledged, %d lost",
			failure, i, rep.OldTarget, rep.NewTarget, rep.DownAt, rep.DecidedAt, rep.RoutedAt, rep.RTO, rep.Acked, rep.Lost)
		if !rep.Recovered {
			t.Fatalf("%s %d: writes did not come back within %s: %+v", failure, i, o.Timeout, rep)
		}
		if b.kind == "postgres" && rep.Lost > 0 {
			t.Errorf("%s %d: %d acknowledged writes lost with a synchronous standby", failure, i, rep.Lost)
		}
		now, err := b.target()
		if err != nil || now == name {
			t.Fatalf("%s %d: the target is still %q (%v)", failure, i, now, err)
		}
		if freeze {
			if err := old.kill(); err != nil {
				t.Fatal(err)
			}
		}
		if err := old.rejoin(b.backend(now)); err != nil {
			t.Fatalf("%s %d: %v", failure, i, err)
		}
	}
	res.Took = time.Since(start)
	res.Hooks = b.hookTimes(logs0)
	a := drill.Summarize(res.Runs)
	t.Logf("FIGURE %s, %s: %d runs, RTO p50 %.3fs p90 %.3fs p99 %.3fs max %.3fs; promote hook p50 %s (%s; %s)", b.name(), failure, a.Runs, a.RTOP50, a.RTOP90,
		rtoPercentile(res.Runs, 99), a.RTOMax, secs(median(res.Hooks)), b.settings(), res.Took.Round(time.Second))
	results.Lock()
	results.kills = append(results.kills, res)
	results.Unlock()
}

// logOffsets marks where each proxy's log is now.
func (b *bench) logOffsets() []int {
	offs := make([]int, len(b.proxies))
	for i, p := range b.proxies {
		offs[i] = p.logs.Len()
	}
	return offs
}

// hookRan matches the proxies' log line of a promote hook's run.
var hookRan = regexp.MustCompile(`msg="hook ran".* hook=promote .*took=([0-9.]+(?:µs|ms|s))`)

// hookTimes are the promote hook's run times logged since offs.
func (b *bench) hookTimes(offs []int) []float64 {
	var out []float64
	for i, p := range b.proxies {
		for _, m := range hookRan.FindAllStringSubmatch(p.logs.String()[offs[i]:], -1) {
			if d, err := time.ParseDuration(m[1]); err == nil {
				out = append(out, d.Seconds())
			}
		}
	}
	return out
}

// median is the nearest-rank median of v (-1: empty).
func median(v []float64) float64 {
	if len(v) == 0 {
		return -1
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return drill.Percentile(v, 50)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// rtoPercentile is the nearest-rank p-th percentile of the recovered runs' RTOs (-1: none).
func rtoPercentile(runs []*drill.Report, p float64) float64 {
	return percentile(runs, p, func(r *drill.Report) float64 { return r.RTO })
}

// percentile is the nearest-rank p-th percentile of f over the recovered
// runs where f is not negative (-1: none).
func percentile(runs []*drill.Report, p float64, f func(*drill.Report) float64) float64 {
	var v []float64
	for _, r := range runs {
		if x := f(r); r.Recovered && x >= 0 {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return -1
	}
	slices.Sort(v)
	return drill.Percentile(v, p)
}

// underLoad saturates the primary through the first proxy for d
// (PostgreSQL: pgbench -c 16 -j 2; Redis: redis-benchmark -c 50) and
// counts failovers.
func (b *bench) underLoad(d time.Duration) {
	t := b.t
	t.Helper()
	if err := b.settle(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	name, err := b.target()
	if err != nil {
		t.Fatal(err)
	}
	primary := b.backend(name)
	host, port := splitAddr(b.proxies[0].listen)
	var cond string
	var load func(ctx context.Context) string
	switch b.kind {
	case "postgres":
		testenv.Need(t, "pgbench")
		phost, pport := splitAddr(primary.addr())
		env := append(os.Environ(), "PGPASSWORD="+b.password)
		// Scale 10: 16 clients do not queue on one pgbench_branches row.
		ictx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		out, err := cmdOut(ictx, env, "pgbench", "-i", "-q", "-s", "10", "-h", phost, "-p", pport, "-U", testenv.User, "postgres")
		cancel()
		if err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
		cond = fmt.Sprintf("pgbench -c 16 -j 2 -T %d (TPC-B-like, scale 10) through %s", int(d.Seconds()), b.proxies[0].name)
		load = func(ctx context.Context) string {
			out, err := cmdOut(ctx, env, "pgbench", "-c", "16", "-j", "2", "-T", strconv.Itoa(int(d.Seconds())), "-n",
				"-h", host, "-p", port, "-U", testenv.User, "postgres")
			tps := regexp.MustCompile(`tps = ([0-9.]+)`).FindStringSubmatch(out)
			if err != nil || tps == nil {
				t.Errorf("pgbench through the proxy: %v\n%s", err, out)
				return "pgbench failed"
			}
			return tps[1] + " tps"
		}
	case "redis":
		testenv.Need(t, "redis-benchmark")
		// Straight at the primary, pipelined: through the proxy, the proxy
		// and the benchmark took the CPU and Redis used a third of a core;
		// this way about half (the benchmark's client is the limit, two
		// threads of it did worse), with the machine 80-90% busy.
		rhost, rport := splitAddr(primary.addr())
		cond = fmt.Sprintf("redis-benchmark -c 50 -P 16 -t set,get -d 64 for %ds, straight at the primary", int(d.Seconds()))
		load = func(ctx context.Context) string {
			ctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			cmd := exec.CommandContext(ctx, "redis-benchmark", "-h", rhost, "-p", rport, "-a", b.password, "-c", "50", "-P", "16",
				"-t", "set,get", "-d", "64", "-l", "-q")
			out, _ := cmd.CombinedOutput() // ended by the timeout
			rps := regexp.MustCompile(`SET: ([0-9.]+) requests per second`).FindAllSubmatch(out, -1)
			if len(rps) == 0 {
				return "redis-benchmark: no complete round"
			}
			return string(rps[len(rps)-1][1]) + " SET/s (last round)"
		}
	}
	pid := primary.pid()
	cpu0 := treeCPU(pid)
	busy0, total0 := machineBusy()
	t0 := time.Now()
	res := b.watch(cond, d, load)
	wall := time.Since(t0).Seconds()
	busy1, total1 := machineBusy()
	cores := (treeCPU(pid) - cpu0) / wall
	machine := 100 * (busy1 - busy0) / max(total1-total0, 1)
	res.Note = fmt.Sprintf("%s; the primary's server used %.2f of %d cores, the machine was %.0f%% busy (load average %s)",
		res.Note, cores, runtime.NumCPU(), machine, loadAvg())
	b.record(res)
}

// degraded puts 5% loss and 50ms±50ms delay on every packet of every
// connection the proxies open, for d, and counts failovers.
func (b *bench) degraded(d time.Duration) {
	t := b.t
	t.Helper()
	if netemWhy != "" {
		t.Logf("no degraded-network run: %s", netemWhy)
		return
	}
	if err := b.settle(2 * time.Minute); err != nil {
		t.Fatal(err)
	}
	cond := "5% loss, delay 50ms±50ms (netem) on every packet of every connection a proxy opens: checks, data path, hooks, gossip"
	res := b.watch(cond, d, func(ctx context.Context) string {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		st, err := netem.Run(ctx, netem.Config{Queue: netQueue, Delay: 50 * time.Millisecond, Jitter: 50 * time.Millisecond,
			Loss: 0.05, Seed: uint64(time.Now().UnixNano())})
		if err != nil {
			t.Errorf("netem: %v", err)
		}
		return fmt.Sprintf("netem: %d packets, %d dropped", st.Seen, st.Dropped)
	})
	b.record(res)
}

// watch runs load (which lasts about d) with the primary healthy and
// counts what the proxies did meanwhile.
func (b *bench) watch(cond string, d time.Duration, load func(ctx context.Context) string) falseResult {
	t := b.t
	t.Helper()
	primary, err := b.target()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	before := b.scrape()
	hooks0 := b.promotions()
	logs0 := b.logOffsets()
	res := falseResult{Config: b.name(), Settings: b.settings(), Condition: cond}

	var mu sync.Mutex
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, p := range b.proxies {
				st, err := p.status(ctx)
				mu.Lock()
				res.Samples++
				if err != nil {
					res.Unrouted++
				} else if ok, _ := routes(st, primary); !ok {
					res.Unrouted++
				}
				mu.Unlock()
			}
		}
	}()
	start := time.Now()
	res.Note = load(ctx)
	res.Took = time.Since(start)
	close(stop)
	<-done
	after := b.scrape()

	addr := b.backend(primary).addr()
	maxFail, epochs := 0, 0
	slowest := 0.0 // the smallest bucket that holds every check of the primary
	for i := range b.proxies {
		m0, m1 := before[i], after[i]
		delta := func(name string, labels ...string) int { return int(m1.sum(name, labels...) - m0.sum(name, labels...)) }
		maxFail = max(maxFail, delta("quorumproxy_failovers_total"))
		epochs = max(epochs, delta("quorumproxy_cluster_epoch"))
		be := `backend="` + primary + `"`
		res.Down += delta("quorumproxy_health_transitions_total", be, `to="down"`)
		res.Checks += delta("quorumproxy_health_checks_total", be)
		res.Failed += delta("quorumproxy_health_check_failures_total", be)
		a := `address="` + addr + `"`
		total := delta("quorumproxy_health_check_duration_seconds_count", a)
		res.Slow += total - delta("quorumproxy_health_check_duration_seconds_bucket", a, `le="`+strconv.FormatFloat(slowMark, 'f', -1, 64)+`"`)
		bound := math.Inf(1)
		for _, le := range slices.Backward([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}) {
			if delta("quorumproxy_health_check_duration_seconds_bucket", a, `le="`+strconv.FormatFloat(le, 'f', -1, 64)+`"`) == total {
				bound = le
			}
		}
		if total > 0 {
			slowest = max(slowest, bound)
		}
		logs := b.proxies[i].logs.String()[logs0[i]:]
		res.Peers += strings.Count(logs, "peer unreachable")
		res.Quorum += strings.Count(logs, "lost quorum")
	}
	res.Failovers = max(maxFail, b.promotions()-hooks0)
	res.Epochs = epochs
	res.Slowest = fmt.Sprintf("<= %gs", slowest)
	if math.IsInf(slowest, 1) {
		res.Slowest = "> 5s"
	}
	now, err := b.target()
	if err != nil || now != primary {
		res.Failovers = max(res.Failovers, 1)
	}
	t.Logf("FIGURE %s under %s (%s): %d failovers, %d epochs; the primary marked down %d times, %d of %d checks failed, %d above %gs (slowest %s); %d of %d status samples unrouted; %d peer-unreachable and %d lost-quorum log lines; %s",
		b.name(), cond, res.Took.Round(time.Second), res.Failovers, res.Epochs, res.Down, res.Failed, res.Checks, res.Slow, slowMark, res.Slowest,
		res.Unrouted, res.Samples, res.Peers, res.Quorum, res.Note)
	if res.Failovers != 0 {
		t.Errorf("%s under %s: %d false failovers", b.name(), cond, res.Failovers)
	}
	return res
}

func (b *bench) record(r falseResult) {
	results.Lock()
	results.falses = append(results.falses, r)
	results.Unlock()
}

// scrape reads every proxy's metrics.
func (b *bench) scrape() []metrics {
	out := make([]metrics, len(b.proxies))
	for i, p := range b.proxies {
		m, err := p.metrics(context.Background())
		if err != nil {
			b.t.Fatalf("%s: %v", p.name, err)
		}
		out[i] = m
	}
	return out
}

func splitAddr(a string) (host, port string) {
	host, port, _ = strings.Cut(a, ":")
	return host, port
}

// cmdOut runs a program and returns its combined output.
func cmdOut(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// formatReport is the Markdown record of every result.
func formatReport(took time.Duration, load0, load1 string) string {
	results.Lock()
	defer results.Unlock()
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "# quorumproxy default timings, measured\n\n%s UTC on %s (%d CPUs, %s), load average %s at the start and %s at the end; the whole run took %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04"), host, runtime.NumCPU(), runtime.Version(), load0, load1, took.Round(time.Second))
	b.WriteString("## The primary's server killed (kill -9) or frozen (SIGSTOP): RTO by the drill\n\n")
	b.WriteString("Times from the failure; RTO until writes through the proxy were acknowledged again. \"Seen down\", \"decided\" and \"routed\" are the drill's polls of the first proxy's /status; the promote hook's time is from the proxies' logs.\n\n")
	b.WriteString("| configuration | failure | runs | RTO p50 | p90 | p99 | max | seen down p50 | decided p50 | routed p50 | promote hook p50 | lost writes | took |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, k := range results.kills {
		a := drill.Summarize(k.Runs)
		p50 := func(f func(*drill.Report) float64) string { return secs(percentile(k.Runs, 50, f)) }
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %d of %d | %s |\n", k.Config, k.Failure, a.Recovered,
			secs(a.RTOP50), secs(a.RTOP90), secs(rtoPercentile(k.Runs, 99)), secs(a.RTOMax),
			p50(func(r *drill.Report) float64 { return r.DownAt }), p50(func(r *drill.Report) float64 { return r.DecidedAt }),
			p50(func(r *drill.Report) float64 { return r.RoutedAt }), secs(median(k.Hooks)), a.Lost, a.Acked, k.Took.Round(time.Second))
	}
	b.WriteString("\n## False failovers: a healthy primary under load and on a degraded network\n\n")
	b.WriteString("| configuration | condition | for | failovers | primary marked down | checks failed | checks > 0.25s | unrouted samples | peer unreachable | note |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, f := range results.falses {
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %d of %d | %d (slowest %s) | %d of %d | %d | %s |\n", f.Config, f.Condition, f.Took.Round(time.Second),
			f.Failovers, f.Down, f.Failed, f.Checks, f.Slow, f.Slowest, f.Unrouted, f.Samples, f.Peers, f.Note)
	}
	b.WriteString("\n## Settings\n\n")
	seen := map[string]bool{}
	for _, k := range results.kills {
		if !seen[k.Config] {
			seen[k.Config] = true
			fmt.Fprintf(&b, "- %s: %s\n", k.Config, k.Settings)
		}
	}
	return b.String()
}

func secs(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fs", v)
}
