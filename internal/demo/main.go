// Command demo is `make demo`: it starts real Redis and PostgreSQL pairs on
// loopback, puts quorumproxy in front of each, loads them with
// redis-benchmark, pgbench and Go writers, kills the primary with SIGKILL
// and prints a timeline of what happens and when: detection, the target
// moving, the promote hook, the first good write after the kill (the
// measured RTO) and the acknowledged writes that were lost (the RPO, read
// back at the end).
//
// Part 3 puts three clustered proxies in front of the PostgreSQL pair: they
// vote on the switch, one of them runs the promote hook, and a proxy left
// without a majority stops routing when its lease runs out.
//
//	go run ./internal/demo -bin bin/quorumproxy [-part all|redis|postgres|cluster]
//
// The demo binary is also the promote hook: quorumproxy runs it again as
// `demo hook-redis-promote` or `demo hook-pg-promote`, with QP_NEW_ADDRESS
// (and in a cluster QP_EPOCH) in the environment. It exits non-zero if
// traffic did not move.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

func main() {
	if len(os.Args) > 1 {
		if hook, ok := hooks[os.Args[1]]; ok {
			os.Exit(runHook(hook, os.Stdout, os.Stderr))
		}
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "bin/quorumproxy", "the quorumproxy binary")
	part := fs.String("part", "all", "which part to run: all, redis, postgres or cluster")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *part != "all" && *part != "redis" && *part != "postgres" && *part != "cluster" {
		fmt.Fprintf(stderr, "demo: -part must be all, redis, postgres or cluster, not %q\n", *part)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	d, err := newDemo(*bin, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	var failed []error
	if *part == "all" || *part == "redis" {
		r, err := d.redisPart(ctx, defaultRedisOptions())
		if err != nil {
			failed = append(failed, fmt.Errorf("part 1 (redis): %w", err))
		} else {
			d.tl.report(r)
		}
	}
	if ctx.Err() == nil && (*part == "all" || *part == "postgres") {
		r, err := d.postgresPart(ctx, defaultPostgresOptions())
		if err != nil {
			failed = append(failed, fmt.Errorf("part 2 (postgres): %w", err))
		} else {
			d.tl.report(r)
		}
	}
	if ctx.Err() == nil && (*part == "all" || *part == "cluster") {
		r, err := d.clusterPart(ctx, defaultClusterOptions())
		if err != nil {
			failed = append(failed, fmt.Errorf("part 3 (cluster): %w", err))
		} else {
			d.tl.reportCluster(r)
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "demo: interrupted; everything it started has been stopped")
		return 130
	}
	if err := errors.Join(failed...); err != nil {
		fmt.Fprintf(stderr, "demo FAILED: %v\n", err)
		return 1
	}
	d.tl.printf("demo finished: traffic moved in every part; everything it started has been stopped")
	return 0
}

// demo holds what every part shares.
type demo struct {
	bin  string    // the quorumproxy binary
	self string    // this program, run again by quorumproxy as the promote hook
	tl   *timeline // where the story is told
}

func newDemo(bin string, out io.Writer) (*demo, error) {
	abs, err := filepath.Abs(bin)
	if err != nil {
		return nil, fmt.Errorf("quorumproxy binary %q: %w", bin, err)
	}
	if fi, err := os.Stat(abs); err != nil || fi.IsDir() {
		return nil, fmt.Errorf("quorumproxy binary %q not found: run `make build` first", bin)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program for the hook: %w", err)
	}
	return &demo{bin: abs, self: self, tl: newTimeline(out, time.Now())}, nil
}

// need reports which programs a part needs and are missing.
func need(what ...string) error {
	if err := testenv.Check(what...); err != nil {
		return fmt.Errorf("%w (run `make deps` as root to install them)", err)
	}
	return nil
}
