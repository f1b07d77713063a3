package main

import (
	"context"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseRedisBenchmark(t *testing.T) {
	// Real redis-benchmark 7 -q output: progress lines end in \r.
	out := "SET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r" +
		"SET: 98039.22 requests per second, p50=0.263 msec                    \n" +
		"GET: rps=101234.0 (overall: 101234.0) avg_msec=0.250 (overall: 0.250)\r" +
		"GET: 104166.67 requests per second, p50=0.255 msec                    \n\n"
	got, err := parseRedisBenchmark(out)
	if err != nil {
		t.Fatal(err)
	}
	if got["SET"] != 98039.22 || got["GET"] != 104166.67 || len(got) != 2 {
		t.Fatalf("got %v", got)
	}
	if _, err := parseRedisBenchmark("Could not connect to Redis at 127.0.0.1:1: Connection refused\n"); err == nil {
		t.Fatal("no error for output without results")
	}
}

func TestParsePgbench(t *testing.T) {
	out := `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
number of clients: 20
latency average = 1.234 ms
initial connection time = 25.123 ms
tps = 16205.123456 (without initial connection time)
`
	got, err := parsePgbench(out)
	if err != nil {
		t.Fatal(err)
	}
	if got != 16205.123456 {
		t.Fatalf("tps %v", got)
	}
	if _, err := parsePgbench("pgbench: error: connection refused\n"); err == nil {
		t.Fatal("no error for output without tps")
	}
}

func TestParseIperf(t *testing.T) {
	got, err := parseIperf(`{"start":{},"end":{"sum_sent":{"bits_per_second":2.1e10},"sum_received":{"bits_per_second":2.0e10}}}`)
	if err != nil {
		t.Fatal(err)
	}
	if got != 20 {
		t.Fatalf("Gbit/s %v", got)
	}
	if _, err := parseIperf(`{"start":{},"end":{},"error":"the server is busy running a test. try again later"}`); err == nil {
		t.Fatal("no error for a busy server")
	}
	if _, err := parseIperf(`not json`); err == nil {
		t.Fatal("no error for garbage")
	}
}

func TestParseRedisCSV(t *testing.T) {
	out := `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"GET","32258.06","0.209","0.056","0.159","0.247","2.743","4.623"
`
	rps, p99, err := parseRedisCSV(out, "GET")
	if err != nil || rps != 32258.06 || p99 != 2.743 {
		t.Fatalf("got %v %v %v", rps, p99, err)
	}
	if _, _, err := parseRedisCSV(out, "SET"); err == nil {
		t.Fatal("missing test not reported")
	}
}

func TestParseCtxSwitches(t *testing.T) {
	st := "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n"
	if n := parseCtxSwitches(st); n != 127 {
		t.Fatalf("got %v", n)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{7}, 7},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
}

func TestParseVmRSS(t *testing.T) {
	got, err := parseVmRSS(strings.NewReader("Name:\thaproxy\nVmPeak:\t  99 kB\nVmRSS:\t   15804 kB\nThreads:\t2\n"))
	if err != nil || got != 15804 {
		t.Fatalf("got %d, %v", got, err)
	}
	if _, err := parseVmRSS(strings.NewReader("Name:\tx\n")); err == nil {
		t.Fatal("no error without VmRSS")
	}
}

func TestReport(t *testing.T) {
	rows := []row{
		{name: "redis-benchmark GET, 50 clients", unit: "req/s", samples: map[string][]float64{
			tDirect: {100000, 90000, 110000}, tHAProxy: {60000, 50000, 55000}, tQP: {66000, 54000, 60000}}},
		{name: "pgbench -S, 20 clients", unit: "tps", samples: map[string][]float64{
			tDirect: {10000}, tHAProxy: {8000}, tQP: {6000}}},
		{name: "connection churn", unit: "req/s", samples: map[string][]float64{
			tDirect: {14000, 14000, 14000}, tHAProxy: {10000, 7000, 9000}, tQP: {9500, 7700, 9900}}},
		{name: rowIdleKiB, unit: "KiB", lowerBetter: true, noDirect: true, samples: map[string][]float64{
			tHAProxy: {1.5}, tQP: {9}}},
		{name: rowIdleFDs, unit: "fds", lowerBetter: true, noDirect: true, samples: map[string][]float64{
			tHAProxy: {2}, tQP: {2}}},
	}
	cpu := []row{{name: "pgbench -S", unit: "µs per transaction", lowerBetter: true, samples: map[string][]float64{
		tHAProxy: {20, 30, 25}, tQP: {40, 50, 45}}}}
	text := report(machine{date: "d", cpus: "2"}, results{rows: rows, cpu: cpu, params: []string{"p"}, runs: 3})
	for _, want := range []string{
		"| workload | direct | HAProxy | quorumproxy | qp/HAProxy | qp/HAProxy, median per run | qp/direct |",
		"| redis-benchmark GET, 50 clients (req/s) | 100000 | 55000 | 60000 | 1.09× | 1.09× | 0.60× |",
		"| pgbench -S, 20 clients (tps) | 10000 | 8000 | 6000 | 0.75× | 0.75× | 0.60× |",
		"| idle connections: RSS per connection, after the connect burst (KiB, lower is better) | — | 1.50 | 9.00 | 6.00× | 6.00× | — |",
		"redis-benchmark GET, 50 clients ≥ 1.1× HAProxy: 1.09× (per run 1.08–1.10×, median 1.09×) — NOT met",
		"pgbench -S, 20 clients ≥ 1.1× HAProxy: 0.75× — NOT met",
		"RSS per idle connection ≤ 4 KiB, right after the connect burst: quorumproxy 9.00 KiB (HAProxy 1.50) — NOT met",
		"CPU pgbench -S ≤ 0.9× HAProxy's: 1.80× — NOT met",
		// Ratio of the medians 9500/9000; per run 0.95, 1.10, 1.10.
		"| connection churn (req/s) | 14000 | 9000 | 9500 | 1.06× | 1.10× | 0.68× |",
		"connection churn ≥ 1.0× HAProxy: 1.06× (per run 0.95–1.10×, median 1.10×) — met",
		"fds per idle connection = 2: quorumproxy 2.00 (HAProxy 2.00) — met",
		"| pgbench -S (µs per transaction) | 25.00 | 45.00 | 1.80× |",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q:\n%s", want, text)
		}
	}
}

// TestQPConfigValid checks the generated quorumproxy config against the
// real config package: no errors and no warnings.
func TestQPConfigValid(t *testing.T) {
	listen := map[string]string{}
	backends := map[string]string{}
	for i, s := range serviceNames {
		listen[s] = net.JoinHostPort("127.0.0.1", string(rune('1'+i))+"0001")
		backends[s] = net.JoinHostPort("127.0.0.1", string(rune('1'+i))+"0002")
	}
	text := qpConfig("127.0.0.1:9999", 0, "auto", listen, backends)
	cfg, warns, err := config.Parse("bench.toml", []byte(text))
	if err != nil {
		t.Fatalf("generated config rejected: %v\n%s", err, text)
	}
	if len(warns) != 0 {
		t.Fatalf("generated config has warnings: %v", warns)
	}
	if len(cfg.Services) != len(serviceNames) {
		t.Fatalf("%d services, want %d", len(cfg.Services), len(serviceNames))
	}
}

// TestHAProxyConfigValid runs `haproxy -c` on the generated config.
func TestHAProxyConfigValid(t *testing.T) {
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skip("haproxy not installed: cannot check the generated config (make deps installs it)")
	}
	listen := map[string]string{}
	backends := map[string]string{}
	for i, s := range serviceNames {
		listen[s] = net.JoinHostPort("127.0.0.1", string(rune('1'+i))+"0001")
		backends[s] = net.JoinHostPort("127.0.0.1", string(rune('1'+i))+"0002")
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(haproxyConfig(listen, backends, 5000)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("haproxy", "-c", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "WARNING") {
		t.Fatalf("haproxy -c warns:\n%s", out)
	}
}

// TestMeasureIdleSelf measures idle connections held by this very process
// (client and server ends both live here), so every connection costs
// exactly two fds.
func TestMeasureIdleSelf(t *testing.T) {
	h, err := startHold()
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	// Health-check-like connections that send nothing are not counted.
	c, err := net.Dial("tcp", h.addr())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := h.probe(h.addr()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 500
	res, err := measureIdle(ctx, os.Getpid(), h.addr(), h, n)
	if err != nil {
		t.Fatal(err)
	}
	if res.FDsPerConn != 2 {
		t.Fatalf("fds per connection %.3f (before %d, after %d), want 2", res.FDsPerConn, res.FDsBefore, res.FDsAfter)
	}
	if res.RSSAfterKiB <= 0 || res.RSSBeforeKiB <= 0 {
		t.Fatalf("RSS not read: %+v", res)
	}
	// measureIdle closes its connections and waits until the server saw
	// them go.
	if got := h.ready.Load(); got != 0 {
		t.Fatalf("hold server still holds %d connections", got)
	}
	t.Logf("this process: %.2f KiB and %.2f fds per connection pair", res.KiBPerConn, res.FDsPerConn)
}

func TestParseStatCPU(t *testing.T) {
	stat := "24811 (a b) c) R 24808 24808 11260 0 -1 4194304 101 0 0 0 250 130 0 0 20 0 1 0 92960 3133440 383\n"
	got, err := testenv.ParseStatCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	if got != 3.8 {
		t.Fatalf("cpu %v, want 3.8", got)
	}
	if _, err := testenv.ParseStatCPU("1 (x) R 1 2"); err == nil {
		t.Fatal("no error for a short line")
	}
	self, err := testenv.CPUSeconds(os.Getpid())
	if err != nil || self < 0 {
		t.Fatalf("own cpu %v, %v", self, err)
	}
}

func TestRaiseNoFile(t *testing.T) {
	lim, err := raiseNoFile(1024, 64)
	if err != nil {
		t.Fatal(err)
	}
	if lim < 1024 {
		t.Fatalf("limit %d after asking for 1024", lim)
	}
	if _, err := raiseNoFile(1<<40, 1<<40); err == nil {
		t.Fatal("no error when the need exceeds any limit")
	}
}

// gone polls until pid no longer runs (a zombie counts as gone).
func gone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pid %d still runs", pid)
}

// readPid polls for a pid written to path by a shell.
func readPid(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && strings.HasSuffix(string(b), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no pid in %s", path)
	return 0
}

// TestRunToolLimit: a hung tool is killed with its whole process group.
func TestRunToolLimit(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	_, err := runTool(context.Background(), 300*time.Millisecond, nil,
		"sh", "-c", "sleep 60 & echo $! > "+pidFile+"; wait")
	if err == nil {
		t.Fatal("no error from a tool killed at its limit")
	}
	gone(t, readPid(t, pidFile))
}

// TestProcsStopAll: stopAll ends every started process and its children.
func TestProcsStopAll(t *testing.T) {
	dir := t.TempDir()
	ps := &procs{dir: dir}
	pidFile := filepath.Join(dir, "pid")
	p, err := ps.start("sleeper", []string{"sh", "-c", "trap '' TERM; sleep 60 & echo $! > " + pidFile + "; wait"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	child := readPid(t, pidFile)
	if p.Exited() {
		t.Fatal("exited at once")
	}
	ps.stopAll() // the shell ignores SIGTERM: SIGKILL after the grace time
	if !p.Exited() {
		t.Fatal("still running after stopAll")
	}
	gone(t, child)
}
