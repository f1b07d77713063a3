package main

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// Target names, in table column order.
const (
	tDirect  = "direct"
	tHAProxy = "HAProxy"
	tQP      = "quorumproxy"
)

// row is one line of the results table: a workload and its samples per
// target. For throughput higher is better; for cost rows lower is better.
type row struct {
	name        string
	unit        string
	lowerBetter bool
	samples     map[string][]float64 // target → one value per run
	noDirect    bool                 // the workload has no direct column
}

// median of the samples, NaN when there are none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// fmtVal prints a value with a precision fitting its size.
func fmtVal(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case math.Abs(v) >= 1000:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// ratio prints a/b as "0.93×", or "—".
func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// perRun returns the ratio a/b of each run (a target's runs are
// interleaved with the other's, so run i of both met the same machine),
// in run order; runs missing either value are left out.
func perRun(a, b []float64) []float64 {
	var out []float64
	for i := 0; i < len(a) && i < len(b); i++ {
		if b[i] != 0 && !math.IsNaN(a[i]) && !math.IsNaN(b[i]) {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// perRunRatio prints the median of the per-run ratios, or "—".
func perRunRatio(a, b []float64) string {
	r := perRun(a, b)
	if len(r) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", median(r))
}

// machine describes where the bench ran.
type machine struct {
	date, cpus, cpuModel, kernel, goVersion string
	haproxy, redis, postgres, qpVersion     string
	loadStart, loadEnd                      string // 1-minute load average
}

// describeMachine collects the facts printed above the table.
func describeMachine(ctx context.Context, bin string) machine {
	m := machine{
		date:      time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		cpus:      fmt.Sprint(runtime.NumCPU()),
		cpuModel:  cpuModel(),
		goVersion: runtime.Version(),
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	first := func(argv ...string) string {
		out, err := runTool(ctx, 30*time.Second, nil, argv...)
		if err != nil {
			return "unknown"
		}
		line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
		return line
	}
	m.haproxy = first("haproxy", "-v")
	m.redis = first("redis-server", "--version")
	m.postgres = first(pgbenchPath, "--version")
	m.qpVersion = first(bin, "version")
	return m
}

// cpuModel is the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// results is everything one bench run measured.
type results struct {
	rows   []row // throughput and idle rows, with a direct column
	cpu    []row // proxy CPU per unit of work
	cs     []row // proxy context switches per unit of work
	scale  []scalePoint
	params []string
	idle   map[string]idleResult
	runs   int
}

// report renders the Markdown results: machine, tables, targets, every run.
func report(m machine, res results) string {
	rows, cpu := res.rows, res.cpu
	var b strings.Builder
	b.WriteString("# quorumproxy benchmark\n\n")
	fmt.Fprintf(&b, "- date: %s\n", m.date)
	fmt.Fprintf(&b, "- machine: %s CPUs, %s, Linux %s\n", m.cpus, m.cpuModel, m.kernel)
	fmt.Fprintf(&b, "- Go: %s; quorumproxy: %s\n", m.goVersion, m.qpVersion)
	fmt.Fprintf(&b, "- %s\n- %s; %s\n", m.haproxy, m.redis, m.postgres)
	fmt.Fprintf(&b, "- values are the median of %d runs, targets interleaved, after a warm-up; all traffic on loopback\n", res.runs)
	fmt.Fprintf(&b, "- load average (1 min) at start %s, at end %s: anything else running on the machine skews every column\n\n", m.loadStart, m.loadEnd)

	b.WriteString("| workload | direct | HAProxy | quorumproxy | qp/HAProxy | qp/HAProxy, median per run | qp/direct |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		d, h, q := median(r.samples[tDirect]), median(r.samples[tHAProxy]), median(r.samples[tQP])
		qd := ratio(q, d)
		if r.noDirect {
			d, qd = math.NaN(), "—"
		}
		name := r.name + " (" + r.unit
		if r.lowerBetter {
			name += ", lower is better"
		}
		name += ")"
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", name, fmtVal(d), fmtVal(h), fmtVal(q), ratio(q, h),
			perRunRatio(r.samples[tQP], r.samples[tHAProxy]), qd)
	}

	perUnit := func(title string, rs []row) {
		if len(rs) == 0 {
			return
		}
		b.WriteString("\n" + title + "\n\n")
		b.WriteString("| workload | HAProxy | quorumproxy | qp/HAProxy |\n|---|---:|---:|---:|\n")
		for _, r := range rs {
			h, q := median(r.samples[tHAProxy]), median(r.samples[tQP])
			fmt.Fprintf(&b, "| %s (%s) | %s | %s | %s |\n", r.name, r.unit, fmtVal(h), fmtVal(q), ratio(q, h))
		}
	}
	perUnit("CPU time the proxy process used per unit of work (run time of all its threads, from /proc/PID/task/*/schedstat; lower is better):", cpu)
	perUnit("Context switches of the proxy process per unit of work (voluntary and involuntary, all threads; lower is better):", res.cs)

	if len(res.scale) > 0 {
		b.WriteString("\nScaling: redis-benchmark GET by number of clients (throughput in req/s, p99 latency in ms, proxy CPU in µs per request):\n\n")
		b.WriteString("| clients | direct | HAProxy | quorumproxy | qp/HAProxy | p99 direct | p99 HAProxy | p99 quorumproxy | CPU HAProxy | CPU quorumproxy | CPU qp/HAProxy |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, pt := range res.scale {
			med := func(r row, t string) float64 { return median(r.samples[t]) }
			fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %.3f | %.3f | %.3f | %s | %s | %s |\n", pt.clients,
				fmtVal(med(pt.rps, tDirect)), fmtVal(med(pt.rps, tHAProxy)), fmtVal(med(pt.rps, tQP)), ratio(med(pt.rps, tQP), med(pt.rps, tHAProxy)),
				med(pt.p99, tDirect), med(pt.p99, tHAProxy), med(pt.p99, tQP),
				fmtVal(med(pt.cpu, tHAProxy)), fmtVal(med(pt.cpu, tQP)), ratio(med(pt.cpu, tQP), med(pt.cpu, tHAProxy)))
		}
	}

	b.WriteString("\n## Targets\n\n")
	for _, line := range targets(res) {
		b.WriteString("- " + line + "\n")
	}

	b.WriteString("\n## Parameters\n\n")
	for _, p := range res.params {
		if p == "" {
			continue
		}
		b.WriteString("- " + p + "\n")
	}

	b.WriteString("\n## Every run\n\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "- %s:", r.name)
		for _, t := range []string{tDirect, tHAProxy, tQP} {
			if len(r.samples[t]) == 0 {
				continue
			}
			vals := make([]string, len(r.samples[t]))
			for i, v := range r.samples[t] {
				vals[i] = fmtVal(v)
			}
			fmt.Fprintf(&b, " %s [%s];", t, strings.Join(vals, ", "))
		}
		b.WriteString("\n")
	}
	for _, pt := range res.scale {
		for _, x := range []struct {
			what string
			r    row
		}{{"req/s", pt.rps}, {"p99 ms", pt.p99}, {"CPU µs per request", pt.cpu}} {
			fmt.Fprintf(&b, "- GET, %d clients, %s:", pt.clients, x.what)
			for _, t := range []string{tDirect, tHAProxy, tQP} {
				if len(x.r.samples[t]) == 0 {
					continue
				}
				vals := make([]string, len(x.r.samples[t]))
				for i, v := range x.r.samples[t] {
					vals[i] = fmtVal(v)
				}
				fmt.Fprintf(&b, " %s [%s];", t, strings.Join(vals, ", "))
			}
			b.WriteString("\n")
		}
	}
	for _, t := range []string{tHAProxy, tQP} {
		ir, ok := res.idle[t]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "- idle %s: %d connections, RSS %d → %d KiB, fds %d → %d, all connected in %.1f s\n",
			t, ir.Conns, ir.RSSBeforeKiB, ir.RSSAfterKiB, ir.FDsBefore, ir.FDsAfter, ir.SecondsToOpenConns)
	}
	return b.String()
}

// targets checks the data-path targets of the event-loop plane:
// throughput ≥ 1.1× HAProxy with ≤ 0.9× its CPU per request on Redis and
// pgbench, ≥ 1.0× with ≤ 1.0× the CPU on connection churn, ≥ 1.0× on bulk,
// p99 no worse at every client count, and per idle connection 2 fds and
// ≤ 4 KiB of RSS.
func targets(res results) []string {
	var out []string
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	for _, r := range res.rows {
		h, q := median(r.samples[tHAProxy]), median(r.samples[tQP])
		if math.IsNaN(h) || math.IsNaN(q) {
			out = append(out, fmt.Sprintf("%s: no result", r.name))
			continue
		}
		switch r.name {
		case rowIdleKiB:
			out = append(out, fmt.Sprintf("RSS per idle connection ≤ 4 KiB, right after the connect burst: quorumproxy %.2f KiB (HAProxy %.2f) — %s", q, h, mark(q <= 4)))
		case rowIdleKiBSteady:
			out = append(out, fmt.Sprintf("RSS per idle connection ≤ 4 KiB, after %s idle: quorumproxy %.2f KiB (HAProxy %.2f) — %s", idleSteady, q, h, mark(q <= 4)))
		case rowIdleFDs:
			out = append(out, fmt.Sprintf("fds per idle connection = 2: quorumproxy %.2f (HAProxy %.2f) — %s", q, h, mark(math.Abs(q-2) < 0.01)))
		default:
			want := 1.0
			if strings.HasPrefix(r.name, "redis-benchmark") || strings.HasPrefix(r.name, "pgbench") {
				want = 1.1
			}
			// Judged on the ratio of the medians; the per-run ratios (each
			// run's pair met the same machine) are shown beside it.
			pr := perRun(r.samples[tQP], r.samples[tHAProxy])
			runs := ""
			if len(pr) > 1 {
				runs = fmt.Sprintf(" (per run %.2f–%.2f×, median %.2f×)", slices.Min(pr), slices.Max(pr), median(pr))
			}
			out = append(out, fmt.Sprintf("%s ≥ %.1f× HAProxy: %.2f×%s — %s", r.name, want, q/h, runs, mark(q >= want*h)))
		}
	}
	for _, r := range res.cpu {
		want := map[string]float64{"redis-benchmark GET+SET": 0.9, "pgbench -S": 0.9, "connection churn": 1.0}[r.name]
		h, q := median(r.samples[tHAProxy]), median(r.samples[tQP])
		if want == 0 || math.IsNaN(h) || math.IsNaN(q) {
			continue
		}
		out = append(out, fmt.Sprintf("CPU %s ≤ %.1f× HAProxy's: %.2f× — %s", r.name, want, q/h, mark(q <= want*h)))
	}
	for _, pt := range res.scale {
		h, q := median(pt.p99.samples[tHAProxy]), median(pt.p99.samples[tQP])
		if math.IsNaN(h) || math.IsNaN(q) {
			continue
		}
		out = append(out, fmt.Sprintf("p99 at %d clients no worse than HAProxy's: %.3f ms vs %.3f ms — %s", pt.clients, q, h, mark(q <= h)))
	}
	return out
}

// Row names used by targets.
const (
	rowIdleKiB       = "idle connections: RSS per connection, after the connect burst"
	rowIdleKiBSteady = "idle connections: RSS per connection, after 20s idle"
	rowIdleFDs       = "idle connections: fds per connection"
)
