package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// redisOptions are the knobs of part 1; the test shrinks them.
type redisOptions struct {
	BenchRequests int           // redis-benchmark -n for each of SET and GET; 0 skips the benchmark
	Before        time.Duration // the writer runs this long before the kill
	After         time.Duration // and this long after the first good write
	FailoverLimit time.Duration // give up if no write succeeds this long after the kill
	Health        healthOptions
}

// healthOptions are the proxy's check settings for a part.
type healthOptions struct {
	Interval, Timeout time.Duration
	Fall              int
}

// demoHealth checks every 200ms and fails a backend after 2 misses: fast
// detection on an idle machine. The test uses slower settings, as a loaded
// CI machine can take longer than 150ms to answer a check.
var demoHealth = healthOptions{Interval: 200 * time.Millisecond, Timeout: 150 * time.Millisecond, Fall: 2}

func defaultRedisOptions() redisOptions {
	return redisOptions{BenchRequests: 20000, Before: 2 * time.Second, After: 3 * time.Second, FailoverLimit: 20 * time.Second, Health: demoHealth}
}

// redisService is the name of the proxied service in part 1.
const redisService = "redis"

// redisKey is where the writer stores id.
func redisKey(id int64) string { return "demo:w:" + strconv.FormatInt(id, 10) }

// redisPart is part 1: a Redis primary and replica behind one quorumproxy,
// redis-benchmark, a writer, SIGKILL to the primary, and the figures.
func (d *demo) redisPart(ctx context.Context, o redisOptions) (res *result, err error) {
	if err := need("redis", "redis-cli", "redis-benchmark"); err != nil {
		return nil, err
	}
	tl := d.tl
	tl.section("Part 1: Redis primary + replica behind quorumproxy, primary killed under writes")
	var cl cleanups
	defer func() {
		tl.printf("cleaning up part 1: proxy, Redis servers, temp dir")
		start := time.Now()
		if cerr := cl.run(); cerr != nil && err == nil {
			err = cerr
		}
		tl.printf("cleaned up in %.1fs", time.Since(start).Seconds())
	}()

	dir, err := os.MkdirTemp("", "qp-demo-redis-")
	if err != nil {
		return nil, err
	}
	cl.add(func() error { return os.RemoveAll(dir) })

	tl.printf("starting a Redis primary and replica on loopback")
	r1, err := testenv.StartRedis(testenv.RedisOptions{})
	if err != nil {
		return nil, fmt.Errorf("starting the Redis primary: %w", err)
	}
	cl.add(r1.Stop)
	r2, err := r1.StartReplica()
	if err != nil {
		return nil, fmt.Errorf("starting the Redis replica: %w", err)
	}
	cl.add(r2.Stop)
	tl.printf("redis r1 (primary) on %s; r2 (replica of r1, link up) on %s", r1.Addr(), r2.Addr())

	listen, admin, err := twoPorts()
	if err != nil {
		return nil, err
	}
	events := filepath.Join(dir, "hook-events")
	conf := renderConfig(admin, serviceConf{
		Name: redisService, Listen: listen, Kind: "redis",
		Interval: o.Health.Interval, Timeout: o.Health.Timeout, Rise: 2, Fall: o.Health.Fall,
		SwitchHold: 3 * time.Second,
		Promote:    []string{d.self, "hook-redis-promote"}, HookTimeout: 30 * time.Second,
		Backends: []backendConf{{Name: "r1", Address: r1.Addr(), Priority: 100}, {Name: "r2", Address: r2.Addr(), Priority: 50}},
	})
	// Issue 4 item 9: three proxies go here, each with its own config.
	px, err := startProxy(ctx, d.bin, dir, "qp1", admin, conf, []string{envEvents + "=" + events})
	if err != nil {
		return nil, err
	}
	cl.add(px.stop)
	proxies := []*proxyProc{px}
	tl.printf("quorumproxy qp1 started: service %q on %s (active-passive, health redis every %s, fall %d, failback manual,\n"+
		"promote hook: %s hook-redis-promote -> redis-cli REPLICAOF NO ONE on $QP_NEW_ADDRESS); admin %s",
		redisService, listen, o.Health.Interval, o.Health.Fall, filepath.Base(d.self), admin)
	w := d.watch(ctx, redisService, proxies, events)
	defer w.close()
	if _, err := px.waitService(ctx, redisService, 10*time.Second, `target "r1" with both backends up`, func(s *adminapi.Service) bool {
		return s.Target == "r1" && allUp(s)
	}); err != nil {
		return nil, err
	}
	d.printStatus(ctx, "before the switch", redisService, proxies)

	res = &result{Part: "part 1 (redis)", OldTarget: "r1"}
	if o.BenchRequests > 0 {
		notes, err := d.redisBenchmark(ctx, listen, o.BenchRequests)
		if err != nil {
			return nil, err
		}
		res.Notes = append(res.Notes, notes...)
	}

	opts := r1.Options()
	opts.Addr = listen
	opts.PoolSize = 1
	opts.ContextTimeoutEnabled = true
	client := redis.NewClient(opts)
	defer client.Close()
	wr := newWriter(tl, "writer", func(ctx context.Context, id int64) error {
		return client.Set(ctx, redisKey(id), id, 0).Err()
	})
	plan := failover{proxies: proxies, service: redisService, before: o.Before, after: o.After, limit: o.FailoverLimit, kill: r1.Kill}
	if err := d.runFailover(ctx, res, wr, plan); err != nil {
		return nil, err
	}
	w.close()
	w.fill(res)
	d.printStatus(ctx, "after the switch", redisService, proxies)

	found, err := redisReadBack(ctx, client, wr.IDs())
	if err != nil {
		return nil, fmt.Errorf("reading back through the proxy: %w", err)
	}
	wr.fill(res, found)
	tl.printf("read back %d acknowledged keys through the proxy: %d found, %d lost", res.Acked, res.ReadBack, res.Lost)
	return res, res.moved()
}

// redisBenchmark runs redis-benchmark through the proxy and returns its
// figures.
func (d *demo) redisBenchmark(ctx context.Context, listen string, n int) ([]string, error) {
	host, port, _ := net.SplitHostPort(listen)
	args := []string{"-h", host, "-p", port, "-t", "set,get", "-n", strconv.Itoa(n), "-c", "20", "--csv"}
	d.tl.printf("redis-benchmark %s (through the proxy)", strings.Join(args, " "))
	bctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(bctx, "redis-benchmark", args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("redis-benchmark through the proxy: %w\n%s", err, out)
	}
	var notes []string
	for _, line := range strings.Split(string(out), "\n") {
		// --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
		f := strings.Split(strings.ReplaceAll(line, `"`, ""), ",")
		if len(f) < 5 || f[0] == "test" {
			continue
		}
		note := fmt.Sprintf("redis-benchmark through the proxy: %-4s %9s requests/s, avg %s ms, p50 %s ms", f[0], f[1], f[2], f[4])
		d.tl.printf("%s", note)
		notes = append(notes, note)
	}
	if len(notes) == 0 {
		return nil, fmt.Errorf("redis-benchmark printed no results:\n%s", out)
	}
	return notes, nil
}

// redisReadBack reads every id's key through the proxy.
func redisReadBack(ctx context.Context, c *redis.Client, ids []int64) (map[int64]bool, error) {
	found := make(map[int64]bool, len(ids))
	const batch = 500
	for i := 0; i < len(ids); i += batch {
		part := ids[i:min(i+batch, len(ids))]
		keys := make([]string, len(part))
		for j, id := range part {
			keys[j] = redisKey(id)
		}
		var vals []any
		err := retry(ctx, func(ctx context.Context) error {
			var err error
			vals, err = c.MGet(ctx, keys...).Result()
			return err
		})
		if err != nil {
			return nil, err
		}
		for j, v := range vals {
			if s, ok := v.(string); ok && s == strconv.FormatInt(part[j], 10) {
				found[part[j]] = true
			}
		}
	}
	return found, nil
}
