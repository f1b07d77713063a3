package main

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// bench is one measuring session over running servers and proxies.
type bench struct {
	ctx     context.Context
	o       options
	l       loads
	hold    *holdServer
	proxies []*target // HAProxy, and quorumproxy if it started
	targets []*target // direct first, then proxies

	// serverErr says whether the server behind a failed workload still
	// answers directly (a suffix for the error message).
	serverErr func(what string) string

	idle     map[string]idleResult
	failures []error
}

// fail records a failed measurement; the others go on.
func (b *bench) fail(err error) {
	b.failures = append(b.failures, err)
	logf("FAILED %v", err)
}

// idlePhase holds o.idleConns idle connections through each proxy in turn
// and returns the KiB and fds per connection rows.
func (b *bench) idlePhase() ([]row, error) {
	b.idle = map[string]idleResult{}
	kib := row{name: rowIdleKiB, unit: "KiB", lowerBetter: true, noDirect: true, samples: map[string][]float64{}}
	steady := row{name: rowIdleKiBSteady, unit: "KiB", lowerBetter: true, noDirect: true, samples: map[string][]float64{}}
	fds := row{name: rowIdleFDs, unit: "fds", lowerBetter: true, noDirect: true, samples: map[string][]float64{}}
	for _, t := range b.proxies {
		logf("idle: %d connections through %s", b.o.idleConns, t.name)
		res, err := measureIdle(b.ctx, t.proc.Pid(), t.addrs[svcHold], b.hold, b.o.idleConns)
		if b.ctx.Err() != nil {
			return nil, b.ctx.Err()
		}
		if err != nil {
			b.fail(fmt.Errorf("idle connections through %s: %w", t.name, err))
			continue
		}
		logf("idle %s: %.2f KiB (%.2f KiB after %s idle) and %.2f fds per connection", t.name, res.KiBPerConn, res.KiBPerConnSteady, idleSteady, res.FDsPerConn)
		b.idle[t.name] = res
		kib.samples[t.name] = []float64{res.KiBPerConn}
		steady.samples[t.name] = []float64{res.KiBPerConnSteady}
		fds.samples[t.name] = []float64{res.FDsPerConn}
	}
	return []row{kib, steady, fds}, nil
}

// warmUp runs every workload briefly on every target, and sets the request
// counts from the slowest target's rates so that no run takes much longer
// than asked. A failed warm-up is reported but not fatal: the measured runs
// record their own failures.
func (b *bench) warmUp() error {
	logf("warm-up and calibration")
	getRPS, churnRPS := math.NaN(), math.NaN()
	warn := func(t *target, what string, err error) {
		if err != nil && b.ctx.Err() == nil {
			logf("warm-up %s %s failed: %v%s", t.name, what, err, b.serverErr(what))
		}
	}
	for _, t := range b.targets {
		g, s, err := redisGetSet(b.ctx, t.addrs[svcRedis], 10000)
		warn(t, "redis-benchmark", err)
		c, err := redisChurn(b.ctx, t.addrs[svcRedis], 2000)
		warn(t, "connection churn", err)
		_, err = pgbenchSelect(b.ctx, t.addrs[svcPG], b.l, 3)
		warn(t, "pgbench", err)
		_, err = iperfBulk(b.ctx, t.addrs[svcIperf], 1)
		warn(t, "iperf3", err)
		if b.ctx.Err() != nil {
			return b.ctx.Err()
		}
		// Failed warm-ups (zeros) are left out.
		if r := math.Min(g, s); r > 0 && !(r >= getRPS) {
			getRPS = r
		}
		if c > 0 && !(c >= churnRPS) {
			churnRPS = c
		}
	}
	if math.IsNaN(getRPS) {
		getRPS = 50000 // calibration failed: a middling guess
	}
	if math.IsNaN(churnRPS) {
		churnRPS = 5000
	}
	b.l.redisN = clampInt(getRPS*b.o.redisSecs, 10000, 5_000_000)
	b.l.churnN = clampInt(churnRPS*b.o.churnSecs, 2000, 1_000_000)
	return nil
}

// measure runs one workload on t and, for a proxy, records the CPU time the
// proxy spent per unit of work (f returns how many units it did).
func (b *bench) measure(t *target, what string, cpuRow, csRow *row, perUnit float64, f func() (units float64, err error)) {
	if t.proc != nil && t.proc.Exited() {
		return // reported after this run
	}
	var before, csBefore float64
	if t.proc != nil {
		before, _ = testenv.CPUSeconds(t.proc.Pid())
		csBefore, _ = ctxSwitches(t.proc.Pid())
	}
	units, err := f()
	if b.ctx.Err() != nil {
		return // interrupted: run returns ctx's error
	}
	if err != nil {
		b.fail(fmt.Errorf("%s %s: %w%s", t.name, what, err, b.serverErr(what)))
		return
	}
	if t.proc != nil && units > 0 {
		if after, err := testenv.CPUSeconds(t.proc.Pid()); err == nil {
			cpuRow.samples[t.name] = append(cpuRow.samples[t.name], (after-before)/units*perUnit)
		}
		if after, err := ctxSwitches(t.proc.Pid()); err == nil {
			csRow.samples[t.name] = append(csRow.samples[t.name], (after-csBefore)/units)
		}
	}
}

// throughput runs every workload o.runs times on every target, interleaved,
// and returns the throughput rows and the proxies' CPU-cost rows.
func (b *bench) throughput() (tput, cpu, cs []row, err error) {
	tput = []row{
		{name: "redis-benchmark GET, 50 clients", unit: "req/s", samples: map[string][]float64{}},
		{name: "redis-benchmark SET, 50 clients", unit: "req/s", samples: map[string][]float64{}},
		{name: "pgbench -S, 20 clients", unit: "tps", samples: map[string][]float64{}},
		{name: "iperf3 bulk, 1 stream", unit: "Gbit/s", samples: map[string][]float64{}},
		{name: "connection churn, redis-benchmark -k 0 PING_INLINE, 50 clients", unit: "req/s", samples: map[string][]float64{}},
	}
	cpu = []row{
		{name: "redis-benchmark GET+SET", unit: "µs per request", lowerBetter: true, samples: map[string][]float64{}},
		{name: "pgbench -S", unit: "µs per transaction", lowerBetter: true, samples: map[string][]float64{}},
		{name: "iperf3 bulk", unit: "ms per GB", lowerBetter: true, samples: map[string][]float64{}},
		{name: "connection churn", unit: "µs per connection", lowerBetter: true, samples: map[string][]float64{}},
	}
	cs = []row{
		{name: "redis-benchmark GET+SET", unit: "per request", lowerBetter: true, samples: map[string][]float64{}},
		{name: "pgbench -S", unit: "per transaction", lowerBetter: true, samples: map[string][]float64{}},
		{name: "iperf3 bulk", unit: "per GB", lowerBetter: true, samples: map[string][]float64{}},
		{name: "connection churn", unit: "per connection", lowerBetter: true, samples: map[string][]float64{}},
	}
	ctx, l, runs := b.ctx, b.l, b.o.runs
	for run := range runs {
		if ctx.Err() != nil {
			return nil, nil, nil, ctx.Err()
		}
		// Rotate the order each run so no target always goes first.
		order := make([]*target, len(b.targets))
		for i := range order {
			order[i] = b.targets[(i+run)%len(b.targets)]
		}
		for _, t := range order {
			b.measure(t, "redis-benchmark", &cpu[0], &cs[0], 1e6, func() (float64, error) {
				g, s, err := redisGetSet(ctx, t.addrs[svcRedis], l.redisN)
				if err != nil {
					return 0, err
				}
				tput[0].samples[t.name] = append(tput[0].samples[t.name], g)
				tput[1].samples[t.name] = append(tput[1].samples[t.name], s)
				logf("run %d/%d %s redis GET %.0f SET %.0f req/s", run+1, runs, t.name, g, s)
				return float64(2 * l.redisN), nil
			})
		}
		for _, t := range order {
			b.measure(t, "pgbench", &cpu[1], &cs[1], 1e6, func() (float64, error) {
				tps, err := pgbenchSelect(ctx, t.addrs[svcPG], l, l.pgSeconds)
				if err != nil {
					return 0, err
				}
				tput[2].samples[t.name] = append(tput[2].samples[t.name], tps)
				logf("run %d/%d %s pgbench -S %.0f tps", run+1, runs, t.name, tps)
				return tps * float64(l.pgSeconds), nil
			})
		}
		for _, t := range order {
			b.measure(t, "iperf3", &cpu[2], &cs[2], 1e3, func() (float64, error) {
				g, err := iperfBulk(ctx, t.addrs[svcIperf], l.iperfSecs)
				if err != nil {
					return 0, err
				}
				tput[3].samples[t.name] = append(tput[3].samples[t.name], g)
				logf("run %d/%d %s iperf3 %.2f Gbit/s", run+1, runs, t.name, g)
				return g * float64(l.iperfSecs) / 8, nil // GB moved
			})
		}
		for _, t := range order {
			b.measure(t, "connection churn", &cpu[3], &cs[3], 1e6, func() (float64, error) {
				c, err := redisChurn(ctx, t.addrs[svcRedis], l.churnN)
				if err != nil {
					return 0, err
				}
				tput[4].samples[t.name] = append(tput[4].samples[t.name], c)
				logf("run %d/%d %s churn %.0f req/s", run+1, runs, t.name, c)
				return float64(l.churnN), nil
			})
		}
		b.dropDead()
	}
	if ctx.Err() != nil {
		return nil, nil, nil, ctx.Err()
	}
	return tput, cpu, cs, nil
}

// dropDead reports proxies that died and leaves them out of later runs; the
// others are still measured.
func (b *bench) dropDead() {
	var dead []*target
	for _, t := range b.proxies {
		if t.proc.Exited() {
			dead = append(dead, t)
			b.fail(t.proc.Failure())
		}
	}
	gone := func(t *target) bool { return slices.Contains(dead, t) }
	b.proxies = slices.DeleteFunc(b.proxies, gone)
	b.targets = slices.DeleteFunc(b.targets, gone)
}

// params lists the exact commands and settings for the report.
func (b *bench) params(haMaxconn int) []string {
	return []string{
		fmt.Sprintf("redis-benchmark -t get,set -c 50 -n %d -q (calibrated to ~%.0f s per test on the slowest target)", b.l.redisN, b.o.redisSecs),
		fmt.Sprintf("pgbench -i -s 10 once; pgbench -n -S -c 20 -j 2 -T %d", b.l.pgSeconds),
		fmt.Sprintf("iperf3 -c -t %d (one stream, receiver Gbit/s)", b.l.iperfSecs),
		fmt.Sprintf("redis-benchmark -k 0 -t ping_inline -c 50 -n %d -q (calibrated to ~%.0f s on the slowest target)", b.l.churnN, b.o.churnSecs),
		fmt.Sprintf("idle: %d connections opened through each proxy (clients on %d source addresses 127.0.0.2 and up) to an accept-and-hold server on %d ports (the proxy's backends), each sent one byte; proxy RSS (VmRSS) and /proc/PID/fd count after minus before", b.o.idleConns, idleSources, holdPorts),
		b.o.idleNote,
		fmt.Sprintf("scaling: redis-benchmark -t get -c N --csv for N in %v, the same request count on every target", scaleClients),
		"context switches: voluntary_ctxt_switches + nonvoluntary_ctxt_switches over /proc/PID/task/*/status, before and after each workload",
		fmt.Sprintf("HAProxy: nbthread %d (= cores), option splice-auto (splice-request/response on the iperf3 proxy), maxconn %d, maxpipes %d, 1h timeouts, no logging, check inter 1s", runtime.NumCPU(), haMaxconn, haMaxPipes),
		fmt.Sprintf("quorumproxy: one active-active service per workload, one backend, tcp check every 1s, log level warn, loops %d (0: the default), io_uring %q", b.o.loops, b.o.ioURing),
	}
}

// scaleClients are the client counts of the scaling table.
var scaleClients = []int{1, 10, 50, 200, 1000}

// scalePoint is one client count of the scaling table: throughput, p99
// latency and the proxies' CPU per request, each with samples per target.
type scalePoint struct {
	clients       int
	rps, p99, cpu row
}

// scaling runs redis-benchmark GET at each client count on every target,
// o.runs times, interleaved.
func (b *bench) scaling() ([]scalePoint, error) {
	pts := make([]scalePoint, len(scaleClients))
	for i, c := range scaleClients {
		pts[i] = scalePoint{clients: c,
			rps: row{samples: map[string][]float64{}},
			p99: row{samples: map[string][]float64{}},
			cpu: row{samples: map[string][]float64{}}}
	}
	var ignored row
	ignored.samples = map[string][]float64{}
	for run := range b.o.runs {
		order := make([]*target, len(b.targets))
		for i := range order {
			order[i] = b.targets[(i+run)%len(b.targets)]
		}
		for i := range pts {
			pt := &pts[i]
			// Fewer requests for one client: it is latency-bound.
			n := max(2000, b.l.redisN/2)
			if pt.clients == 1 {
				n = max(2000, b.l.redisN/6)
			}
			for _, t := range order {
				if b.ctx.Err() != nil {
					return nil, b.ctx.Err()
				}
				b.measure(t, "redis-benchmark", &pt.cpu, &ignored, 1e6, func() (float64, error) {
					rps, p99, err := redisGet(b.ctx, t.addrs[svcRedis], pt.clients, n)
					if err != nil {
						return 0, err
					}
					pt.rps.samples[t.name] = append(pt.rps.samples[t.name], rps)
					pt.p99.samples[t.name] = append(pt.p99.samples[t.name], p99)
					logf("run %d/%d %s GET, %d clients: %.0f req/s, p99 %.3f ms", run+1, b.o.runs, t.name, pt.clients, rps, p99)
					return float64(n), nil
				})
			}
		}
		b.dropDead()
	}
	return pts, nil
}
