// Command scalebench measures a cluster of real quorumproxy processes at
// scale on loopback: N proxies (default 3), each with S services (default
// 1000), every service active-passive over the same two TCP backends that
// this process owns (listeners that accept and close), checked with kind
// "tcp" every second, other settings at their defaults. It reports
//
//   - cold start: from starting the proxies until every service is routed
//     on every proxy (a brand-new cluster waits for every peer and
//     recovers from them before its first decision);
//   - steady CPU of each proxy, in % of one core, from its threads' schedstat;
//   - gossip bytes per second, from iptables accounting rules on loopback
//     (root only; removed afterwards);
//   - mass failover: the first backend's listener is closed and the time
//     until every service routes to the second on every proxy, with the
//     cluster counters each proxy moved meanwhile;
//
// and what the proxies logged, as a Markdown table.
//
//	go run ./internal/scalebench -bin bin/quorumproxy -services 1000 -proxies 3
//	go run ./internal/scalebench -bin bin/quorumproxy -proxies 3,5 -interval 1s,2s -out bench-results-scale.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	bin         string
	out         string
	services    int
	proxies     []int
	intervals   []time.Duration // one per entry of proxies
	steady      time.Duration
	settle      time.Duration
	coldTimeout time.Duration
	failTimeout time.Duration
	keep        bool
	logLevel    string
	baseline    bool // also measure one service alone per cluster size
}

func main() {
	var o options
	var proxies, intervals string
	var quick bool
	flag.StringVar(&o.bin, "bin", "bin/quorumproxy", "quorumproxy binary to run")
	flag.StringVar(&o.out, "out", "", "also write the Markdown report to this file")
	flag.IntVar(&o.services, "services", 1000, "services per proxy")
	flag.StringVar(&proxies, "proxies", "3", "cluster sizes, comma-separated: one cluster is measured per size, in turn")
	flag.StringVar(&intervals, "interval", "1s", "health check interval: one for every size, or one per size (comma-separated)")
	flag.DurationVar(&o.steady, "steady", 20*time.Second, "how long steady CPU and gossip are measured")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "wait after the cold start before the steady measurement, and after the failover before the counters are read")
	flag.DurationVar(&o.coldTimeout, "cold-timeout", 5*time.Minute, "give up on the cold start after this")
	flag.DurationVar(&o.failTimeout, "failover-timeout", 2*time.Minute, "give up on the failover after this")
	flag.BoolVar(&o.keep, "keep", false, "keep the configs, state and logs (their directory is printed)")
	flag.StringVar(&o.logLevel, "log-level", "", `the proxies' [log] level ("debug": every service's line; the config's default otherwise)`)
	flag.BoolVar(&o.baseline, "baseline", true, "before each cluster, fail over the same cluster with one service: the time the mass failover is held against")
	flag.BoolVar(&quick, "quick", false, "a short smoke run: 100 services, 5s steady, 2s settle")
	flag.Parse()
	if quick {
		o.services, o.steady, o.settle = 100, 5*time.Second, 2*time.Second
	}
	var err error
	if o.proxies, err = parseInts(proxies); err != nil {
		fatal(fmt.Errorf("-proxies: %w", err))
	}
	if o.intervals, err = parseIntervals(intervals, len(o.proxies)); err != nil {
		fatal(fmt.Errorf("-interval: %w", err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, o)
	stop()
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "scalebench: interrupted; every process it started is stopped")
		os.Exit(130)
	}
	if err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "scalebench:", err)
	os.Exit(1)
}

// parseInts parses "3" or "3,5": positive integers.
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		if n < 1 {
			return nil, fmt.Errorf("%d: must be at least 1", n)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseIntervals parses "1s" (for all n sizes) or "1s,2s" (one per size).
// An interval must be at least 100ms, so the check timeout below it is
// positive and checks do not swamp the machine.
func parseIntervals(s string, n int) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		if d < 100*time.Millisecond {
			return nil, fmt.Errorf("%v: must be at least 100ms", d)
		}
		out = append(out, d)
	}
	switch len(out) {
	case n:
		return out, nil
	case 1:
		for len(out) < n {
			out = append(out, out[0])
		}
		return out, nil
	}
	return nil, fmt.Errorf("%d intervals for %d cluster sizes: give one, or one per size", len(out), n)
}

// started is when the benchmark began; progress lines show the time since.
var started = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, o options) error {
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("quorumproxy binary: %w (run `make build` first)", err)
	}
	// Each proxy holds a listening socket per service and event loop, plus
	// its checks' connections; the limit is inherited.
	nofile, err := raiseNoFile(1 << 20)
	if err != nil {
		return fmt.Errorf("open-file limit: %w", err)
	}
	m := describeMachine(bin, nofile)
	var results []*result
	var failed []error
	for i, n := range o.proxies {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var base *result
		if o.baseline {
			logf("cluster %d of %d, baseline: %d proxies × 1 service, checks every %v (cold start and failover only)", i+1, len(o.proxies), n, o.intervals[i])
			one := o
			one.services, one.steady = 1, 0
			if base = measure(ctx, one, bin, n, o.intervals[i]); base.err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				logf("FAILED: %v", base.err)
				failed = append(failed, fmt.Errorf("%d proxies, one service: %w", n, base.err))
			}
		}
		logf("cluster %d of %d: %d proxies × %d services, checks every %v", i+1, len(o.proxies), n, o.services, o.intervals[i])
		r := measure(ctx, o, bin, n, o.intervals[i])
		r.base = base
		results = append(results, r)
		if r.err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			logf("FAILED: %v", r.err)
			failed = append(failed, fmt.Errorf("%d proxies: %w", n, r.err))
		}
	}
	text := report(m, o, results)
	fmt.Print(text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			return fmt.Errorf("write results: %w", err)
		}
		logf("results written to %s", o.out)
	}
	return errors.Join(failed...)
}
