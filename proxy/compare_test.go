package proxy

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// TestCompareHAProxy measures quorumproxy's data path against HAProxy and a
// direct connection in one run (redis-benchmark GET/SET, connection churn,
// iperf3 bulk). It is a measurement, not a pass/fail test: run it with
// QP_BENCH=1 go test -run CompareHAProxy -v ./proxy/.
func TestCompareHAProxy(t *testing.T) {
	if os.Getenv("QP_BENCH") == "" {
		t.Skip("measurement only: set QP_BENCH=1 (needs haproxy, redis-server, redis-benchmark, iperf3)")
	}
	for _, bin := range []string{"haproxy", "redis-server", "redis-benchmark", "iperf3"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	dir := t.TempDir()
	redisPort, iperfPort := freePort(t), freePort(t)
	startProc(t, "redis-server", "--port", strconv.Itoa(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	startProc(t, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	redisAddr := fmt.Sprintf("127.0.0.1:%d", redisPort)
	iperfAddr := fmt.Sprintf("127.0.0.1:%d", iperfPort)
	waitListening(t, redisAddr)
	waitListening(t, iperfAddr)

	p := newProxy(t, Options{Logger: slog.New(slog.DiscardHandler), parkAfter: DefaultParkAfter},
		ServiceConfig{Name: "redis", Listen: "127.0.0.1:0", Backends: []Backend{{Name: "r", Address: redisAddr}}},
		ServiceConfig{Name: "iperf", Listen: "127.0.0.1:0", Backends: []Backend{{Name: "i", Address: iperfAddr}}})
	p.SetHealth("redis", "r", upAny)
	p.SetHealth("iperf", "i", upAny)

	hpRedis, hpIperf := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`global
  maxconn 4000
  nbthread 2
defaults
  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen redis
  bind 127.0.0.1:%d
  server r %s
listen iperf
  bind 127.0.0.1:%d
  server i %s
`, hpRedis, redisAddr, hpIperf, iperfAddr)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startProc(t, "haproxy", "-db", "-f", cfgPath)
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", hpRedis))
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", hpIperf))

	targets := []struct{ name, redis, iperf string }{
		{"direct", redisAddr, iperfAddr},
		{"haproxy", fmt.Sprintf("127.0.0.1:%d", hpRedis), fmt.Sprintf("127.0.0.1:%d", hpIperf)},
		{"quorumproxy", p.addrOf(t, "redis"), p.addrOf(t, "iperf")},
	}
	type result map[string][]float64
	res := map[string]result{}
	for _, tg := range targets {
		res[tg.name] = result{}
	}
	rounds := 3
	for r := 0; r < rounds; r++ {
		// Interleave targets so load from elsewhere hits all alike.
		for _, tg := range targets {
			host, port, _ := net.SplitHostPort(tg.redis)
			rb := runOut(t, "redis-benchmark", "-h", host, "-p", port, "-c", "50", "-n", "50000", "-t", "get,set", "--csv")
			for k, v := range parseRB(rb) {
				res[tg.name][k] = append(res[tg.name][k], v)
			}
			rb = runOut(t, "redis-benchmark", "-h", host, "-p", port, "-c", "50", "-n", "10000", "-t", "ping_mbulk", "-k", "0", "--csv")
			for _, v := range parseRB(rb) {
				res[tg.name]["churn"] = append(res[tg.name]["churn"], v)
			}
			host, port, _ = net.SplitHostPort(tg.iperf)
			js := runOut(t, "iperf3", "-c", host, "-p", port, "-t", "3", "-J")
			var ip struct {
				End struct {
					SumReceived struct {
						Bps float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal([]byte(js), &ip); err != nil {
				t.Fatalf("iperf3 output: %v", err)
			}
			res[tg.name]["iperf3 Gbit/s"] = append(res[tg.name]["iperf3 Gbit/s"], ip.End.SumReceived.Bps/1e9)
		}
	}
	median := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		if len(s) == 0 {
			return 0
		}
		return s[len(s)/2]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "median of %d interleaved rounds\n%-16s %14s %14s %14s %10s %10s\n", rounds, "workload", "direct", "haproxy", "quorumproxy", "qp/hap", "hap/dir")
	for _, k := range []string{"SET", "GET", "churn", "iperf3 Gbit/s"} {
		d, h, q := median(res["direct"][k]), median(res["haproxy"][k]), median(res["quorumproxy"][k])
		fmt.Fprintf(&b, "%-16s %14.2f %14.2f %14.2f %10.2f %10.2f\n", k, d, h, q, q/h, h/d)
	}
	t.Log("\n" + b.String())
}

func parseRB(out string) map[string]float64 {
	m := map[string]float64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, ",")
		if len(f) < 2 {
			continue
		}
		name := strings.Trim(f[0], `"`)
		v, err := strconv.ParseFloat(strings.Trim(f[1], `"`), 64)
		if err != nil {
			continue
		}
		m[name] = v
	}
	return m
}

func freePort(t *testing.T) int {
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func startProc(t *testing.T, name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = nil, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

func waitListening(t *testing.T, addr string) {
	testwait.For(t, addr+" listening", waitLimit, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
}

func runOut(t *testing.T, name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return string(out)
}
