package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// result is one cluster's figures; err says where it stopped, and the
// figures up to there are kept.
type result struct {
	proxies, services int
	interval          time.Duration
	timings           string // as the proxies' config package filled them in
	configBytes       int

	cold    []proxyWait
	coldAll time.Duration // slowest proxy; 0: not reached

	steadySecs float64
	cpuPct     []float64

	gossipNote  string  // why there is no gossip figure, if there is none
	gossipTotal float64 // bytes/s, whole cluster
	gossipPort  []float64

	fail     []proxyWait
	failAll  time.Duration
	failNote string
	// quorumDown: from the close until a quorum of proxies had logged
	// backend a down (from their logs, to the millisecond); the rest of
	// failAll is the cluster's own work.
	quorumDown time.Duration
	// base is the same cluster with one service, measured in the same
	// run: the single-service failover the mass one is held against.
	base     *result
	counters []counterDelta

	logLines [][4]int // per proxy: lines at start of cold start, steady, failover, end
	logs     []logSummary
	fetch    *fetchStats
	err      error
}

// measure starts one cluster, measures it and stops it.
func measure(ctx context.Context, o options, bin string, proxies int, interval time.Duration) *result {
	r := &result{proxies: proxies, services: o.services, interval: interval, fetch: &fetchStats{}}
	dir, err := os.MkdirTemp("", "qp-scalebench-")
	if err != nil {
		r.err = err
		return r
	}
	// Kept when asked, and when the run failed: its error points at the logs.
	defer func() {
		switch {
		case o.keep:
			logf("configs, state and logs in %s (kept)", dir)
		case r.err != nil:
			logf("the run failed: configs, state and logs kept in %s", dir)
		default:
			os.RemoveAll(dir)
		}
	}()
	a, err := listenBackend()
	if err != nil {
		r.err = err
		return r
	}
	defer a.close()
	b, err := listenBackend()
	if err != nil {
		r.err = err
		return r
	}
	defer b.close()
	spec, err := newSpec(dir, proxies, o.services, interval, a.addr(), b.addr())
	if err != nil {
		r.err = err
		return r
	}
	spec.logLevel = o.logLevel
	r.configBytes = len(spec.config(0))
	if r.timings, err = spec.validate(); err != nil {
		r.err = err
		return r
	}
	if err := writeFiles(spec); err != nil {
		r.err = err
		return r
	}
	var gossip []string
	for _, n := range spec.nodes {
		gossip = append(gossip, n.gossip)
	}
	var meter *gossipMeter
	if o.steady > 0 {
		if meter, err = newGossipMeter(gossip); err != nil {
			r.gossipNote = err.Error()
			logf("no gossip figure: %v", err)
		} else {
			defer meter.remove()
		}
	}

	r.err = r.phases(ctx, o, bin, spec, a, meter)
	for _, n := range spec.nodes {
		s, err := summarizeLogFile(n.logPath)
		if err != nil {
			logf("%s log: %v", n.name, err)
		}
		r.logs = append(r.logs, s)
	}
	return r
}

// phases runs the cold start, the steady measurement and the failover; the
// proxies are stopped when it returns.
func (r *result) phases(ctx context.Context, o options, bin string, spec *clusterSpec, a *backend, meter *gossipMeter) error {
	var ps []*proc
	defer func() {
		for _, p := range ps {
			p.Stop(5 * time.Second)
		}
	}()
	// Log lines at the end of each phase; a phase that failed ends where
	// the run did, and the phases after it log nothing.
	r.logLines = make([][4]int, len(spec.nodes))
	phase := 0
	mark := func() {
		phase++
		for i, n := range spec.nodes {
			for k := phase; k < 4; k++ {
				r.logLines[i][k] = countLines(n.logPath)
			}
		}
	}
	defer func() {
		if phase < 3 {
			mark()
		}
	}()
	var clients []*adminapi.Client
	start := time.Now()
	for _, n := range spec.nodes {
		p, err := testenv.StartGroup(n.name, n.logPath, []string{bin, "run", "-config", n.cfgPath}, nil)
		if err != nil {
			return err
		}
		ps = append(ps, p)
		clients = append(clients, statusClient(n.admin))
	}
	logf("%d proxies started; waiting until every service routes (to a, normally) on every proxy", len(ps))
	cold, err := waitRouted(ctx, ps, clients, spec.services, "", start, o.coldTimeout, r.fetch)
	r.cold = cold
	if err != nil {
		return fmt.Errorf("cold start: %w", err)
	}
	for _, w := range cold {
		r.coldAll = max(r.coldAll, w.all)
	}
	logf("cold start: every service routed on every proxy after %.1fs", r.coldAll.Seconds())
	mark()

	if o.steady > 0 {
		if err := r.steadyPhase(ctx, o, ps, meter); err != nil {
			return err
		}
	}
	mark()

	before, err := readCounters(ctx, clients, r.fetch)
	if err != nil {
		return fmt.Errorf("counters before the failover: %w", err)
	}
	logf("failover: closing backend a's listener; waiting until every service routes to b on every proxy")
	t1 := time.Now()
	a.close()
	fail, err := waitRouted(ctx, ps, clients, spec.services, "b", t1, o.failTimeout, r.fetch)
	r.fail = fail
	for _, w := range fail {
		if w.all == 0 {
			r.failAll = 0
			break
		}
		r.failAll = max(r.failAll, w.all)
	}
	if err != nil {
		// Still read the counters: they say what the cluster tried.
		if after, cerr := readCounters(ctx, clients, r.fetch); cerr == nil {
			for i := range after {
				r.counters = append(r.counters, deltaOf(before[i], after[i]))
			}
		}
		return fmt.Errorf("failover: %w", err)
	}
	var logs []string
	for _, n := range spec.nodes {
		logs = append(logs, n.logPath)
	}
	if r.quorumDown, err = quorumDown(logs, a.addr(), t1); err != nil {
		logf("when the proxies saw a down: %v", err)
	}
	logf("failover: every service routed to b on every proxy after %.2fs (a quorum saw a down after %.2fs)",
		r.failAll.Seconds(), r.quorumDown.Seconds())
	if err := sleep(ctx, o.settle); err != nil {
		return err
	}
	after, err := readCounters(ctx, clients, r.fetch)
	if err != nil {
		return fmt.Errorf("counters after the failover: %w", err)
	}
	for i := range after {
		r.counters = append(r.counters, deltaOf(before[i], after[i]))
	}
	for _, p := range ps {
		if p.Exited() {
			return p.Failure()
		}
	}
	return nil
}

// steadyPhase measures CPU and gossip over o.steady, after o.settle, with
// no /status reads meanwhile.
func (r *result) steadyPhase(ctx context.Context, o options, ps []*proc, meter *gossipMeter) error {
	if err := sleep(ctx, o.settle); err != nil {
		return err
	}
	logf("steady: %v of CPU and gossip, no /status reads meanwhile", o.steady)
	var err error
	cpu0 := make([]float64, len(ps))
	for i, p := range ps {
		if cpu0[i], err = testenv.CPUSeconds(p.Pid()); err != nil {
			return err
		}
	}
	var g0 gossipBytes
	if meter != nil {
		if g0, err = meter.read(); err != nil {
			return err
		}
	}
	t0 := time.Now()
	if err := sleep(ctx, o.steady); err != nil {
		return err
	}
	secs := time.Since(t0).Seconds()
	r.steadySecs = secs
	for i, p := range ps {
		c, err := testenv.CPUSeconds(p.Pid())
		if err != nil {
			return err
		}
		r.cpuPct = append(r.cpuPct, 100*(c-cpu0[i])/secs)
	}
	if meter != nil {
		g1, err := meter.read()
		if err != nil {
			return err
		}
		r.gossipTotal = float64(g1.total-g0.total) / secs
		for i := range g1.perProxy {
			r.gossipPort = append(r.gossipPort, float64(g1.perProxy[i]-g0.perProxy[i])/secs)
		}
	}
	for _, p := range ps {
		if p.Exited() {
			return p.Failure()
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
