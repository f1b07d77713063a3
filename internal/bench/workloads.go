package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// redisRPS matches redis-benchmark -q lines such as
// "SET: 98039.22 requests per second, p50=0.263 msec".
var redisRPS = regexp.MustCompile(`^([A-Z_]+): ([0-9.]+) requests per second`)

// parseRedisBenchmark returns requests/s per test name from redis-benchmark
// -q output (progress lines end in \r and are skipped).
func parseRedisBenchmark(out string) (map[string]float64, error) {
	res := make(map[string]float64)
	for _, line := range strings.FieldsFunc(out, func(r rune) bool { return r == '\n' || r == '\r' }) {
		m := redisRPS.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return nil, fmt.Errorf("redis-benchmark line %q: %w", line, err)
		}
		res[m[1]] = v
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("redis-benchmark: no result in output %q", lastLines(out, 5))
	}
	return res, nil
}

// pgbenchTPS matches "tps = 12345.678901 (without initial connection time)".
var pgbenchTPS = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)

// parsePgbench returns the tps pgbench reports.
func parsePgbench(out string) (float64, error) {
	m := pgbenchTPS.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench: no tps in output %q", lastLines(out, 5))
	}
	return strconv.ParseFloat(m[1], 64)
}

// parseIperf returns the receiver's Gbit/s from iperf3 -J output.
func parseIperf(out string) (float64, error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return 0, fmt.Errorf("iperf3 json: %w", err)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("iperf3: no received throughput in output")
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// loads holds the parameters of every workload, fixed for the whole run
// (calibrated once, so every target does the same work).
type loads struct {
	redisN     int // requests per redis-benchmark test (GET and SET)
	churnN     int // requests for the connection-churn run
	pgSeconds  int
	iperfSecs  int
	pgUser     string
	pgPassword string
	pgDB       string
}

// hostPort splits a loopback address for the tools' -h/-p flags.
func hostPort(addr string) (string, string) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, ""
	}
	return h, p
}

// redisGetSet runs redis-benchmark GET and SET with 50 clients.
func redisGetSet(ctx context.Context, addr string, n int) (get, set float64, err error) {
	h, p := hostPort(addr)
	out, err := runTool(ctx, toolLimit, nil, "redis-benchmark", "-h", h, "-p", p,
		"-t", "get,set", "-c", "50", "-n", strconv.Itoa(n), "-q")
	if err != nil {
		return 0, 0, err
	}
	res, err := parseRedisBenchmark(out)
	if err != nil {
		return 0, 0, err
	}
	get, okG := res["GET"]
	set, okS := res["SET"]
	if !okG || !okS {
		return 0, 0, fmt.Errorf("redis-benchmark at %s: GET or SET missing in %v", addr, res)
	}
	return get, set, nil
}

// redisChurn runs redis-benchmark with a new connection per request
// (-k 0) and 50 clients.
func redisChurn(ctx context.Context, addr string, n int) (float64, error) {
	h, p := hostPort(addr)
	out, err := runTool(ctx, toolLimit, nil, "redis-benchmark", "-h", h, "-p", p,
		"-k", "0", "-t", "ping_inline", "-c", "50", "-n", strconv.Itoa(n), "-q")
	if err != nil {
		return 0, err
	}
	res, err := parseRedisBenchmark(out)
	if err != nil {
		return 0, err
	}
	v, ok := res["PING_INLINE"]
	if !ok {
		return 0, fmt.Errorf("redis-benchmark -k 0 at %s: PING_INLINE missing in %v", addr, res)
	}
	return v, nil
}

// redisGet runs redis-benchmark GET with the given clients and returns
// requests/s and the p99 latency in ms (from --csv).
func redisGet(ctx context.Context, addr string, clients, n int) (rps, p99 float64, err error) {
	h, p := hostPort(addr)
	out, err := runTool(ctx, toolLimit, nil, "redis-benchmark", "-h", h, "-p", p,
		"-t", "get", "-c", strconv.Itoa(clients), "-n", strconv.Itoa(n), "--csv")
	if err != nil {
		return 0, 0, err
	}
	return parseRedisCSV(out, "GET")
}

// parseRedisCSV finds test's line in redis-benchmark --csv output
// ("test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
// "p95_latency_ms","p99_latency_ms","max_latency_ms").
func parseRedisCSV(out, test string) (rps, p99 float64, err error) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(strings.TrimSpace(line), ",")
		if len(f) < 7 || strings.Trim(f[0], `"`) != test {
			continue
		}
		rps, err1 := strconv.ParseFloat(strings.Trim(f[1], `"`), 64)
		p99, err2 := strconv.ParseFloat(strings.Trim(f[6], `"`), 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, 0, fmt.Errorf("redis-benchmark csv line %q: %w", line, err)
		}
		return rps, p99, nil
	}
	return 0, 0, fmt.Errorf("redis-benchmark: no %s line in %q", test, lastLines(out, 5))
}

// pgEnv is the environment for pgbench: the password only through
// PGPASSWORD, never on the command line.
func (l loads) pgEnv() []string {
	return []string{"PGPASSWORD=" + l.pgPassword, "PGCONNECT_TIMEOUT=10", "PATH=/usr/bin:/bin"}
}

// pgbenchInit creates the pgbench tables at scale 10.
func pgbenchInit(ctx context.Context, addr string, l loads) error {
	h, p := hostPort(addr)
	_, err := runTool(ctx, toolLimit, l.pgEnv(), pgbenchPath, "-i", "-q", "-s", "10",
		"-h", h, "-p", p, "-U", l.pgUser, l.pgDB)
	return err
}

// pgbenchSelect runs the select-only pgbench with 20 clients, 2 threads.
func pgbenchSelect(ctx context.Context, addr string, l loads, seconds int) (float64, error) {
	h, p := hostPort(addr)
	// -n: the tables were vacuumed by the init; vacuuming before every run
	// would only add noise.
	out, err := runTool(ctx, time.Duration(seconds)*time.Second+time.Minute, l.pgEnv(), pgbenchPath, "-n", "-S", "-c", "20", "-j", "2",
		"-T", strconv.Itoa(seconds), "-h", h, "-p", p, "-U", l.pgUser, l.pgDB)
	if err != nil {
		return 0, err
	}
	return parsePgbench(out)
}

// iperfBulk runs one iperf3 client for secs seconds. iperf3 -s serves one
// test at a time and the proxies' health checks also connect to it, so a
// "busy" refusal is retried.
func iperfBulk(ctx context.Context, addr string, secs int) (float64, error) {
	h, p := hostPort(addr)
	var last error
	for attempt := range 5 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Duration(attempt) * 300 * time.Millisecond):
			}
		}
		out, err := runTool(ctx, time.Duration(secs)*time.Second+time.Minute, nil, "iperf3", "-c", h, "-p", p, "-t", strconv.Itoa(secs), "-J")
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		// iperf3 -J prints its error inside the JSON and exits non-zero.
		v, perr := parseIperf(out)
		if perr == nil {
			return v, nil
		}
		last = perr
		if err != nil && out == "" {
			last = err
		}
	}
	return 0, fmt.Errorf("iperf3 to %s: %w", addr, last)
}

// toolLimit bounds a redis-benchmark run or pgbench -i; the request counts
// are calibrated to a few seconds, so only a hung tool gets near it.
const toolLimit = 3 * time.Minute

// pgbenchPath is set from testenv's PostgreSQL bin dir when available; the
// Debian wrapper in PATH works as well.
var pgbenchPath = "pgbench"
