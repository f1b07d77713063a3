package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/drill"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// clusterOptions are the knobs of part 3.
type clusterOptions struct {
	Before        time.Duration // the primary is killed this long after the writer starts
	After         time.Duration // the writer goes on this long after its first good write
	FailoverLimit time.Duration // give up if no write succeeds this long after the kill
	LeaseTimeout  time.Duration // [cluster] lease_timeout
	SwitchHold    time.Duration // how long new connections are held during a switch
	Health        healthOptions
}

func defaultClusterOptions() clusterOptions {
	return clusterOptions{Before: 3 * time.Second, After: 2 * time.Second, FailoverLimit: 30 * time.Second,
		LeaseTimeout: 2 * time.Second, SwitchHold: 2 * time.Second, Health: demoHealth}
}

// clusterResult is what part 3 measured beyond a result.
type clusterResult struct {
	*result
	Epoch      uint64 // the epoch of the failover decision
	HookProxy  string // the proxy that ran the promote hook for it
	Committer  string // the proxy /status showed committing it ("" if polling missed it)
	HookRuns   int    // promote hook runs (on any proxy) for that epoch
	LoneProxy  string
	ProxyKills time.Time // the other two proxies SIGKILLed
	LoneStop   time.Time // the lone proxy's /status first showed no route
	LoneLease  time.Duration
	Refused    error // what a new connection through the lone proxy got
	Closed     error // what an open session through the lone proxy got
}

// clusterService is the name of the proxied service in part 3.
const clusterService = "pg"

// clusterNames are the three proxies of part 3.
var clusterNames = []string{"qp1", "qp2", "qp3"}

// clusterPart is part 3: the PostgreSQL pair behind three quorumproxy
// processes that agree, by majority vote, on which backend is the primary.
// A writer goes through qp1 and a reader through qp2; the primary is
// killed, the proxies vote, exactly one of them runs the promote hook, and
// all three route to the new primary. Then two proxies are killed and the
// last one stops routing once its lease runs out.
func (d *demo) clusterPart(ctx context.Context, o clusterOptions) (cres *clusterResult, err error) {
	if err := need("postgres"); err != nil {
		return nil, err
	}
	tl := d.tl
	tl.section("Part 3: three quorumproxy processes in a cluster in front of the PostgreSQL pair: the vote and the switch")
	var cl cleanups
	defer func() {
		tl.printf("cleaning up part 3: proxies, PostgreSQL servers, temp dir")
		start := time.Now()
		if cerr := cl.run(); cerr != nil && err == nil {
			err = cerr
		}
		tl.printf("cleaned up in %.1fs", time.Since(start).Seconds())
	}()

	dir, err := os.MkdirTemp("", "qp-demo-cluster-")
	if err != nil {
		return nil, err
	}
	cl.add(func() error { return os.RemoveAll(dir) })

	tl.printf("starting a PostgreSQL primary (initdb) and streaming standby (pg_basebackup) on loopback")
	p1, err := testenv.StartPostgres(testenv.PGOptions{})
	if err != nil {
		return nil, fmt.Errorf("starting the PostgreSQL primary: %w", err)
	}
	cl.add(p1.Stop)
	p2, err := p1.StartStandby(false)
	if err != nil {
		return nil, fmt.Errorf("starting the PostgreSQL standby: %w", err)
	}
	cl.add(p2.Stop)
	tl.printf("postgres p1 (primary) on %s; p2 (async streaming standby) on %s", p1.Addr(), p2.Addr())

	proxies, listens, err := d.startCluster(ctx, dir, &cl, o, p1, p2)
	if err != nil {
		return nil, err
	}
	events := filepath.Join(dir, "hook-events")
	w := d.watch(ctx, clusterService, proxies, events)
	defer w.close()
	for _, p := range proxies {
		if _, err := p.waitService(ctx, clusterService, 30*time.Second, `target "p1" (primary) with p2 up as a replica`, func(s *adminapi.Service) bool {
			return s.Target == "p1" && allUp(s) && roleOf(s, "p1") == "primary" && roleOf(s, "p2") == "replica"
		}); err != nil {
			return nil, err
		}
		if _, err := p.waitCluster(ctx, 30*time.Second, `routing "p1" at an epoch`, func(s *adminapi.ClusterService) bool {
			return s.Routing == "p1" && s.Epoch > 0
		}); err != nil {
			return nil, err
		}
	}
	tl.printf("all three proxies route %q to p1 under one committed epoch", clusterService)

	wdsn := pgDSN(listens[0], testenv.User, p1.Password(), "postgres")
	rdsn := pgDSN(listens[1], testenv.User, p1.Password(), "postgres")
	if err := pgExec(ctx, wdsn, "CREATE TABLE IF NOT EXISTS demo_writes (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		return nil, fmt.Errorf("creating the table through qp1: %w", err)
	}
	d.printStatus(ctx, "before the switch", clusterService, proxies)

	res := &result{Part: "part 3 (cluster of three)", OldTarget: "p1"}
	cres = &clusterResult{result: res}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	wr := newWriter(tl, "writer (via qp1)", func(ctx context.Context, id int64) error {
		if conn == nil {
			c, err := pgx.Connect(ctx, wdsn)
			if err != nil {
				return err
			}
			conn = c
		}
		if _, err := conn.Exec(ctx, "INSERT INTO demo_writes (id) VALUES ($1)", id); err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Close(cctx)
			cancel()
			conn = nil
			return err
		}
		return nil
	})
	rd := &reader{tl: tl, name: "reader (via qp2)", dsn: rdsn}
	rctx, stopReader := context.WithCancel(ctx)
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() { defer rwg.Done(); rd.run(rctx) }()
	defer func() { stopReader(); rwg.Wait() }()

	plan := failover{proxies: proxies, service: clusterService, before: o.Before, after: o.After, limit: o.FailoverLimit, kill: p1.Kill}
	if err := d.runFailover(ctx, res, wr, plan); err != nil {
		return nil, err
	}
	stopReader()
	rwg.Wait()
	rd.report(res)

	// Every proxy ends up routing to the new primary at the new epoch.
	var epoch uint64
	for _, p := range proxies {
		s, err := p.waitCluster(ctx, 30*time.Second, `routing "p2"`, func(s *adminapi.ClusterService) bool { return s.Routing == "p2" })
		if err != nil {
			return nil, err
		}
		if epoch != 0 && s.Epoch != epoch {
			return nil, fmt.Errorf("proxies route p2 at different epochs: %d and %d", epoch, s.Epoch)
		}
		epoch = s.Epoch
	}
	cres.Epoch = epoch
	// The committing proxy's hook may still be finishing: wait for its end.
	if err := waitFor(ctx, 30*time.Second, func() bool {
		for _, ev := range w.hookEvents() {
			if ev.Epoch == epoch && ev.Kind != "start" {
				return true
			}
		}
		return false
	}); err != nil {
		return nil, fmt.Errorf("the promote hook for epoch %d did not finish: %w", epoch, err)
	}
	w.fill(res)
	d.printStatus(ctx, "after the switch", clusterService, proxies)
	summarizeCluster(cres, w, proxies)
	if cres.HookRuns != 1 {
		return nil, fmt.Errorf("the promote hook ran %d times for epoch %d, want exactly once", cres.HookRuns, epoch)
	}
	if cres.Committer != "" && cres.Committer != cres.HookProxy {
		return nil, fmt.Errorf("epoch %d was committed by %s but its promote hook ran on %s", epoch, cres.Committer, cres.HookProxy)
	}

	found, err := pgReadBack(ctx, rdsn)
	if err != nil {
		return nil, fmt.Errorf("reading back through qp2: %w", err)
	}
	wr.fill(res, found)
	tl.printf("read back the writer's table through qp2: %d of %d acknowledged ids found, %d lost", res.ReadBack, res.Acked, res.Lost)
	if err := res.moved(); err != nil {
		return nil, err
	}

	if err := d.loseMajority(ctx, cres, proxies, listens[0], wdsn, o); err != nil {
		return nil, err
	}
	w.close()
	return cres, nil
}

// startCluster writes one config per proxy (its own node_name, admin,
// gossip address and state_dir; the same peers, key and services) and
// starts the three.
func (d *demo) startCluster(ctx context.Context, dir string, cl *cleanups, o clusterOptions, p1, p2 *testenv.Postgres) ([]*proxyProc, []string, error) {
	key := make([]byte, 16)
	if _, err := rand.Read(key); err != nil {
		return nil, nil, err
	}
	keyFile := filepath.Join(dir, "gossip.key")
	// 32 hex characters: a 32-byte key, printable.
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		return nil, nil, fmt.Errorf("writing the gossip key: %w", err)
	}
	var peers []peerConf
	for _, n := range clusterNames {
		port, err := testenv.FreePort()
		if err != nil {
			return nil, nil, err
		}
		peers = append(peers, peerConf{Name: n, Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))})
	}
	events := filepath.Join(dir, "hook-events")
	var proxies []*proxyProc
	var listens []string
	for i, n := range clusterNames {
		listen, admin, err := twoPorts()
		if err != nil {
			return nil, nil, err
		}
		conf := renderClusterConfig(admin, clusterConf{
			Node: n, Bind: peers[i].Address, SecretKeyFile: keyFile, StateDir: filepath.Join(dir, n+".state"),
			LeaseTimeout: o.LeaseTimeout, SwitchHold: o.SwitchHold, Peers: peers,
		}, clusterServiceConf(listen, o, d.self, p1.Addr(), p2.Addr()))
		env := []string{envEvents + "=" + events, envPGPassword + "=" + p1.Password(), envPGUser + "=" + testenv.User, envProxy + "=" + n}
		px, err := startProxy(ctx, d.bin, dir, n, admin, conf, env)
		if err != nil {
			return nil, nil, err
		}
		cl.add(px.stop)
		proxies = append(proxies, px)
		listens = append(listens, listen)
		d.tl.printf("quorumproxy %s started: service %q on %s, admin %s, gossip %s", n, clusterService, listen, admin, peers[i].Address)
	}
	d.tl.printf("cluster: 3 peers, quorum 2, lease_timeout %s, encrypted gossip on loopback; each proxy checks both backends\n"+
		"(postgres check every %s, fall %d) and votes; the proxy that commits a decision runs the promote hook\n"+
		"(%s hook-pg-promote, with QP_EPOCH as a fencing token)", o.LeaseTimeout, o.Health.Interval, o.Health.Fall, filepath.Base(d.self))
	return proxies, listens, nil
}

// clusterServiceConf is the service every proxy of part 3 serves.
func clusterServiceConf(listen string, o clusterOptions, self, p1, p2 string) serviceConf {
	return serviceConf{
		Name: clusterService, Listen: listen, Kind: "postgres", Role: "primary",
		Interval: o.Health.Interval, Timeout: o.Health.Timeout, Rise: 2, Fall: o.Health.Fall,
		User: testenv.User, Database: "postgres", PasswordEnv: envPGPassword,
		SwitchHold: o.SwitchHold,
		Promote:    []string{self, "hook-pg-promote"}, HookTimeout: 30 * time.Second,
		Backends: []backendConf{{Name: "p1", Address: p1, Priority: 100}, {Name: "p2", Address: p2, Priority: 50}},
	}
}

// summarizeCluster adds each proxy's view of the switch to the notes and
// counts the promote hook's runs for the decision's epoch.
func summarizeCluster(r *clusterResult, w *watcher, proxies []*proxyProc) {
	since := func(t time.Time) string {
		if t.IsZero() {
			return "not seen"
		}
		return fmt.Sprintf("kill %+.3fs", t.Sub(r.Killed).Seconds())
	}
	evs := w.clusterEvents()
	w.mu.Lock()
	down := map[string]time.Time{}
	for name, s := range w.last {
		for _, b := range s.Backends {
			if b.Name == r.OldTarget && b.Health == "down" && !b.LastChange.IsZero() {
				down[name] = b.LastChange
			}
		}
	}
	w.mu.Unlock()
	committed := fmt.Sprintf("committed epoch %d ", r.Epoch)
	for _, ev := range evs {
		if ev.Kind == "decision" && strings.HasPrefix(ev.Value, committed) {
			r.Committer = ev.Proxy
		}
	}
	for _, p := range proxies {
		var proposed, epoch, route time.Time
		for _, ev := range evs {
			if ev.Proxy != p.name || ev.At.Before(r.Killed) {
				continue
			}
			switch {
			case ev.Kind == "propose" && ev.Epoch == r.Epoch && proposed.IsZero():
				proposed = ev.At
			case ev.Kind == "epoch" && ev.Epoch == r.Epoch && epoch.IsZero():
				epoch = ev.At
			case ev.Kind == "route" && ev.Value == r.NewTarget && route.IsZero():
				route = ev.At
			}
		}
		note := fmt.Sprintf("%s: p1 down %s; epoch %d seen %s; routing %q %s", p.name, since(down[p.name]), r.Epoch, since(epoch), r.NewTarget, since(route))
		if !proposed.IsZero() {
			note += fmt.Sprintf("; proposed epoch %d %s", r.Epoch, since(proposed))
		}
		r.Notes = append(r.Notes, note)
	}
	var runs []string
	for _, ev := range w.hookEvents() {
		if ev.Kind != "start" || ev.Epoch == 0 {
			continue
		}
		runs = append(runs, fmt.Sprintf("epoch %d on %s", ev.Epoch, ev.Proxy))
		if ev.Epoch == r.Epoch {
			r.HookRuns++
			r.HookProxy = ev.Proxy
		}
	}
	r.Notes = append(r.Notes, fmt.Sprintf("promote hook runs seen (the bootstrap epoch promotes nothing): %s", strings.Join(runs, "; ")))
}

// loseMajority kills two of the three proxies: the last one can no longer
// renew its lease with a majority and stops routing when it runs out; new
// connections through it are refused and open sessions are closed.
func (d *demo) loseMajority(ctx context.Context, r *clusterResult, proxies []*proxyProc, listen, dsn string, o clusterOptions) error {
	tl := d.tl
	lone := proxies[0]
	r.LoneProxy = lone.name
	tl.printf("now what the majority buys: %s loses both of its peers and must stop routing within its lease (%s)", lone.name, o.LeaseTimeout)
	// An open session through the lone proxy, to show it closed.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	sess, err := pgx.Connect(cctx, dsn)
	cancel()
	if err != nil {
		return fmt.Errorf("a session through %s before losing the majority: %w", lone.name, err)
	}
	defer sess.Close(context.Background())
	st, err := lone.status(ctx)
	if err != nil {
		return err
	}
	if s := st.ClusterService(clusterService); s != nil {
		r.LoneLease = time.Duration(s.LeaseMS * float64(time.Millisecond))
	}
	r.ProxyKills = time.Now()
	for _, p := range proxies[1:] {
		if err := p.kill(); err != nil {
			return err
		}
	}
	tl.at(r.ProxyKills, "SIGKILL -> %s and %s; %s holds a lease with %.0fms left and a session to p2", proxies[1].name, proxies[2].name, lone.name, r.LoneLease.Seconds()*1000)
	s, err := lone.waitCluster(ctx, 30*time.Second, "no route (lease lost)", func(s *adminapi.ClusterService) bool { return s.Routing == "" })
	if err != nil {
		return err
	}
	r.LoneStop = time.Now()
	tl.printf("%s: STOPPED ROUTING %.3fs after losing its peers (lease_timeout %s; lease left at the kill %.0fms); last decision: %s",
		lone.name, r.LoneStop.Sub(r.ProxyKills).Seconds(), o.LeaseTimeout, r.LoneLease.Seconds()*1000, s.Decision)

	start := time.Now()
	nctx, cancel := context.WithTimeout(ctx, o.SwitchHold+10*time.Second)
	c, err := pgx.Connect(nctx, dsn)
	cancel()
	if err == nil {
		c.Close(context.Background())
		return fmt.Errorf("a new connection through %s succeeded after it lost its majority", lone.name)
	}
	r.Refused = err
	tl.printf("%s: new connection REFUSED after %.3fs (held up to switch_hold %s): %v", lone.name, time.Since(start).Seconds(), o.SwitchHold, err)

	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = sess.Exec(qctx, "SELECT 1")
	cancel()
	if err == nil {
		return fmt.Errorf("the session opened through %s still works after it lost its majority", lone.name)
	}
	r.Closed = err
	tl.printf("%s: the session opened before is CLOSED: %v", lone.name, err)
	return nil
}

// reportCluster prints part 3's summary.
func (tl *timeline) reportCluster(r *clusterResult) {
	tl.report(r.result)
	var b strings.Builder
	committer := r.Committer
	if committer == "" {
		committer = "not seen by polling"
	}
	fmt.Fprintf(&b, "  failover decision: epoch %d committed by %s; promote hook ran %d time(s) for it, on %s\n", r.Epoch, committer, r.HookRuns, r.HookProxy)
	if !r.LoneStop.IsZero() {
		fmt.Fprintf(&b, "  majority lost: %s stopped routing %.3fs after its two peers were killed (lease left %.0fms);\n"+
			"    new connection: %v\n    open session: %v\n",
			r.LoneProxy, r.LoneStop.Sub(r.ProxyKills).Seconds(), r.LoneLease.Seconds()*1000, r.Refused, r.Closed)
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	fmt.Fprint(tl.out, b.String())
}

// waitCluster polls the proxy until cond holds for its cluster view of the
// part's service.
func (p *proxyProc) waitCluster(ctx context.Context, limit time.Duration, what string, cond func(*adminapi.ClusterService) bool) (*adminapi.ClusterService, error) {
	var last *adminapi.ClusterService
	var got *adminapi.ClusterService
	err := waitFor(ctx, limit, func() bool {
		st, err := p.status(ctx)
		if err != nil {
			return false
		}
		s := st.ClusterService(clusterService)
		if s == nil {
			return false
		}
		last = s
		if cond(s) {
			got = s
			return true
		}
		return false
	})
	if err != nil {
		desc := "none"
		if last != nil {
			desc = fmt.Sprintf("epoch %d primary %q routing %q decision %q", last.Epoch, last.Primary, last.Routing, last.Decision)
		}
		return nil, fmt.Errorf("proxy %s: waiting %s for %s: %w (last cluster status: %s)\n%s", p.name, limit, what, err, desc, p.logTail(20))
	}
	return got, nil
}

// waitFor polls cond every 20ms until it holds or limit passes.
func waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// reader reads the writer's table through another proxy every readEvery.
type reader struct {
	tl   *timeline
	name string
	dsn  string

	mu     sync.Mutex
	good   [][2]time.Time // sent and answered, of each successful read
	failed int
	maxID  int64
	errs   []string
}

const readEvery = 100 * time.Millisecond

func (r *reader) run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	tick := time.NewTicker(readEvery)
	defer tick.Stop()
	next := time.Now().Add(time.Second)
	lastGood, lastFailed := 0, 0
	for ctx.Err() == nil {
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, writeTimeout)
		var id int64
		err := func() error {
			if conn == nil {
				c, err := pgx.Connect(rctx, r.dsn)
				if err != nil {
					return err
				}
				conn = c
			}
			return conn.QueryRow(rctx, "SELECT coalesce(max(id), 0) FROM demo_writes").Scan(&id)
		}()
		cancel()
		if ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		if err != nil {
			r.failed++
			msg := drill.ErrorKind(err)
			if !slices.Contains(r.errs, msg) && len(r.errs) < drill.MaxErrorKinds {
				r.errs = append(r.errs, msg)
				r.tl.printf("%s: read failed (first of its kind): %v", r.name, err)
			}
			if conn != nil {
				conn.Close(context.Background())
				conn = nil
			}
		} else {
			r.good = append(r.good, [2]time.Time{sent, time.Now()})
			r.maxID = max(r.maxID, id)
		}
		if time.Now().After(next) {
			r.tl.printf("%s: %5d reads ok, %4d failed in the last 1s; highest id read %d", r.name, len(r.good)-lastGood, r.failed-lastFailed, r.maxID)
			lastGood, lastFailed = len(r.good), r.failed
			next = next.Add(time.Second)
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// report adds the reader's figures to the result's notes.
func (r *reader) report(res *result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	first := "none"
	for _, t := range r.good {
		if !t[0].Before(res.Killed) {
			first = fmt.Sprintf("sent kill %+.3fs, answered kill %+.3fs", t[0].Sub(res.Killed).Seconds(), t[1].Sub(res.Killed).Seconds())
			break
		}
	}
	res.Notes = append(res.Notes, fmt.Sprintf("%s: %d reads ok, %d failed; first good read after the kill: %s", r.name, len(r.good), r.failed, first))
}
