package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// errNoTraffic: the demo did not see traffic move.
var errNoTraffic = errors.New("traffic did not move")

// failover says when and how runFailover kills the primary.
type failover struct {
	proxies []*proxyProc
	service string
	before  time.Duration // the writer runs this long before the kill
	after   time.Duration // and this long after the first good write
	limit   time.Duration // give up if no write succeeds this long after the kill
	kill    func() error  // SIGKILL to the primary
}

// runFailover runs the writer, kills the primary after f.before, waits for
// the first good write and lets the writer go on for f.after.
func (d *demo) runFailover(ctx context.Context, res *result, wr *writer, f failover) error {
	wctx, stopWriter := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); wr.Run(wctx) }()
	go func() { defer wg.Done(); wr.progress(wctx, time.Second) }()
	defer func() { stopWriter(); wg.Wait() }()
	d.tl.printf("%s: writing unique ids through the proxy, one at a time", wr.name)

	if err := sleep(ctx, f.before); err != nil {
		return err
	}
	// A check that timed out on a loaded machine may have moved the target
	// already: then this run shows nothing, and says why.
	for _, p := range f.proxies {
		st, err := p.status(ctx)
		if err != nil {
			return err
		}
		if s := st.Service(f.service); s == nil || s.Target != res.OldTarget {
			return fmt.Errorf("proxy %s: target is no longer %q before the kill (a false failover?): %s", p.name, res.OldTarget, describe(s))
		}
	}
	a, _ := wr.Counts()
	res.Killed = time.Now()
	d.tl.at(res.Killed, "SIGKILL -> primary %s (%d writes acknowledged so far)", res.OldTarget, a)
	if err := f.kill(); err != nil {
		return fmt.Errorf("killing the primary %s: %w", res.OldTarget, err)
	}
	// Only writes sent after the kill has returned can count as recovered.
	wr.markKill(time.Now())

	select {
	case <-wr.Recovered():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(f.limit):
		return fmt.Errorf("%w: no write acknowledged within %s of the kill", errNoTraffic, f.limit)
	}
	if err := sleep(ctx, f.after); err != nil {
		return err
	}
	stopWriter()
	wg.Wait()
	acked, failed := wr.Counts()
	d.tl.printf("%s stopped: %d writes acknowledged, %d failed", wr.name, acked, failed)
	return nil
}

// retry runs f until it succeeds, a few times, for reads after a switch.
func retry(ctx context.Context, f func(ctx context.Context) error) error {
	var errs []error
	for range 5 {
		fctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(fctx)
		cancel()
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

// allUp reports whether every backend of s is up.
func allUp(s *adminapi.Service) bool {
	for _, b := range s.Backends {
		if b.Health != "up" {
			return false
		}
	}
	return len(s.Backends) > 0
}

// twoPorts returns a listen and an admin address on loopback.
func twoPorts() (listen, admin string, err error) {
	a, err := testenv.FreePort()
	if err != nil {
		return "", "", err
	}
	b, err := testenv.FreePort()
	if err != nil {
		return "", "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a)), net.JoinHostPort("127.0.0.1", strconv.Itoa(b)), nil
}

// sleep waits for d or until ctx ends.
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

// cleanups runs registered functions in reverse order.
type cleanups struct{ fns []func() error }

func (c *cleanups) add(f func() error) { c.fns = append(c.fns, f) }

func (c *cleanups) run() error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i](); err != nil {
			errs = append(errs, err)
		}
	}
	c.fns = nil
	return errors.Join(errs...)
}
