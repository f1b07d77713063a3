package main

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
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
		res, err := measureIdle(b.ctx, t.proc.pid(), t.addrs[svcHold], b.hold, b.o.idleConns)
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
func (b *bench) measure(t *target, what string, cpuRow *row, perUnit float64, f func() (units float64, err error)) {
	if t.proc != nil && t.proc.exited() {
		return // reported after this run
	}
	var before float64
	if t.proc != nil {
		before, _ = cpuSeconds(t.proc.pid())
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
		if after, err := cpuSeconds(t.proc.pid()); err == nil {
			cpuRow.samples[t.name] = append(cpuRow.samples[t.name], (after-before)/units*perUnit)
		}
	}
}

// throughput runs every workload o.runs times on every target, interleaved,
// and returns the throughput rows and the proxies' CPU-cost rows.
func (b *bench) throughput() (tput, cpu []row, err error) {
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
	ctx, l, runs := b.ctx, b.l, b.o.runs
	for run := range runs {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		// Rotate the order each run so no target always goes first.
		order := make([]*target, len(b.targets))
		for i := range order {
			order[i] = b.targets[(i+run)%len(b.targets)]
		}
		for _, t := range order {
			b.measure(t, "redis-benchmark", &cpu[0], 1e6, func() (float64, error) {
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
			b.measure(t, "pgbench", &cpu[1], 1e6, func() (float64, error) {
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
			b.measure(t, "iperf3", &cpu[2], 1e3, func() (float64, error) {
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
			b.measure(t, "connection churn", &cpu[3], 1e6, func() (float64, error) {
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
		return nil, nil, ctx.Err()
	}
	return tput, cpu, nil
}

// dropDead reports proxies that died and leaves them out of later runs; the
// others are still measured.
func (b *bench) dropDead() {
	var dead []*target
	for _, t := range b.proxies {
		if t.proc.exited() {
			dead = append(dead, t)
			b.fail(t.proc.failure())
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
		fmt.Sprintf("idle: %d connections opened through each proxy to an accept-and-hold server, each sent one byte; proxy RSS (VmRSS) and /proc/PID/fd count after minus before", b.o.idleConns),
		fmt.Sprintf("HAProxy: nbthread %d (= cores), option splice-auto (splice-request/response on the iperf3 proxy), maxconn %d, maxpipes %d, 1h timeouts, no logging, check inter 1s", runtime.NumCPU(), haMaxconn, haMaxPipes),
		"quorumproxy: one active-active service per workload, one backend, tcp check every 1s, log level warn",
	}
}
