package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// The Node's OnRoute puts on this queue from its only goroutine: a put
// never waits for the taker, and the taker gets every item in order.
func TestQueuePutNeverBlocks(t *testing.T) {
	defer goleak.VerifyNone(t)
	q := newQueue[int]()
	const n = 100000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			q.put(i) // nobody takes yet
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%d puts with nobody taking did not return: put blocks", n)
	}
	got := make(chan []int)
	go func() {
		var out []int
		for {
			v, ok := q.take()
			if !ok {
				got <- out
				return
			}
			out = append(out, v)
		}
	}()
	q.put(n)
	q.close()
	q.put(n + 1) // dropped: the queue is closed
	out := <-got
	if len(out) != n+1 {
		t.Fatalf("took %d items, want %d", len(out), n+1)
	}
	for i, v := range out {
		if v != i {
			t.Fatalf("item %d is %d: out of order", i, v)
		}
	}
}

const clusterTOML = `
[cluster]
node_name = "qp2"
insecure = true
state_dir = "state"
[[cluster.peer]]
name = "qp1"
address = "127.0.0.1:17001"
[[cluster.peer]]
name = "qp2"
address = "127.0.0.1:17002"
[[cluster.peer]]
name = "qp3"
address = "127.0.0.1:17003"

[[service]]
name = "pg"
listen = "127.0.0.1:6432"
switch_hold = "0s"
health = { kind = "postgres", user = "monitor" }
backend = [{ name = "a", address = "127.0.0.1:5432" }, { name = "b", address = "127.0.0.1:5433" }]
`

// Every field the daemon hands to cluster, the gossip, the proxy and the
// checks comes from config, which owns the defaults: no package falls back
// on one of its own. A field added to those configs fails this test until
// the daemon fills it (or it is listed here with why it may stay zero).
func TestDefaultsComeFromConfig(t *testing.T) {
	cfg, _, err := config.Parse("qp.toml", []byte(clusterTOML))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Cluster
	ccfg, g := clusterConfigs(cfg, "hash", clusterServices(cfg))
	zeroOK := map[string]string{
		"BootID":       "set by cluster.Start for each run",
		"Seed":         "zero takes BootID: a seed per run, not a default",
		"OnQuorumLoss": "its zero is close, set explicitly",
		"OnRecord":     "set by startCluster",
		"OnAction":     "set by startCluster",
		"Logger":       "set by startCluster",
	}
	checkFilled(t, "cluster.Config", ccfg, zeroOK)
	checkFilled(t, "cluster.GossipConfig", g, map[string]string{
		"SecretKeyFile": "this config is insecure",
		"Logger":        "set by startCluster",
		"WAN":           "network = \"lan\" here (the default)",
	})
	if ccfg.LeaseTimeout != c.LeaseTimeout || ccfg.ClockMargin != c.ClockDrift || ccfg.VoteTimeout != c.VoteTimeout() ||
		ccfg.ObservationTTL != c.ObservationTTL() || ccfg.FailedPromoteHold != c.FailedPromoteHold() {
		t.Errorf("cluster timings differ from config's: %+v", ccfg)
	}
	if g.Bind != "127.0.0.1:17002" || g.Advertise != "127.0.0.1:17002" {
		t.Errorf("gossip binds %q and advertises %q, want qp2's peer address for both", g.Bind, g.Advertise)
	}
	if g.GossipInterval != c.GossipInterval || g.ProbeInterval != c.ProbeInterval || g.RejoinInterval != c.RejoinInterval {
		t.Errorf("gossip timings differ from config's: %+v", g)
	}

	ps := proxyServices(cfg, clusterServices(cfg))
	s := cfg.Services[0]
	if len(ps) != 1 || ps[0].SwitchHold != 0 || ps[0].ConnectTimeout != s.ConnectTimeout || !ps[0].External {
		t.Errorf("proxy service %+v: want switch_hold 0 (refuse at once), connect_timeout %v, routed by the cluster", ps[0], s.ConnectTimeout)
	}
	for _, tg := range healthTargets(cfg) {
		h := s.Health
		sp := tg.Spec
		if sp.Interval != h.Interval || sp.Timeout != h.Timeout || sp.FastInterval != h.FastInterval ||
			sp.DownInterval != h.DownInterval || sp.Rise != h.Rise || sp.Fall != h.Fall || sp.Kind != string(h.Kind) {
			t.Errorf("health spec of %s differs from config's: %v", tg.Backend, sp)
		}
	}
}

// checkFilled fails t for every exported field of v that is zero and not
// in zeroOK.
func checkFilled(t *testing.T, what string, v any, zeroOK map[string]string) {
	t.Helper()
	rv := reflect.ValueOf(v)
	for i := range rv.NumField() {
		f := rv.Type().Field(i)
		if !f.IsExported() || zeroOK[f.Name] != "" {
			continue
		}
		if rv.Field(i).IsZero() {
			t.Errorf("%s.%s is not filled from config: the package would use a default of its own", what, f.Name)
		}
	}
}

func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "x\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// A Daemon runs in-process as the binary runs it: it routes, fails over
// when the target dies, answers /status through the one client, keeps its
// config when a reload is invalid, and leaves no goroutine behind.
func TestDaemonInProcess(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the echo servers' cleanups
	a, b := testenv.StartEcho(t, "a"), testenv.StartEcho(t, "b")
	admin, listen := testenv.FreeAddr(t), testenv.FreeAddr(t)
	path := filepath.Join(t.TempDir(), "qp.toml")
	text := fmt.Sprintf(`[admin]
listen = %q
[proxy]
drain_timeout = "0s"
[[service]]
name = "echo"
listen = %q
health = { interval = "50ms", timeout = "40ms", rise = 1, fall = 1 }
backend = [{ name = "a", address = %q, priority = 2 }, { name = "b", address = %q, priority = 1 }]
`, admin, listen, a.Addr(), b.Addr())
	d, api := startInProcess(t, path, admin, text)
	target := func() string {
		st, err := api.Status(context.Background())
		if err != nil || st.Service("echo") == nil {
			return ""
		}
		return st.Service("echo").Target
	}
	testwait.For(t, "echo routed to a", 10*time.Second, func() bool {
		got, err := ask(listen)
		return target() == "a" && err == nil && got == "a:x"
	})
	before := scrape(t, api)
	a.Close()
	testwait.For(t, "echo routed to b", 10*time.Second, func() bool {
		got, err := ask(listen)
		return target() == "b" && err == nil && got == "b:x"
	})
	// The move is counted and timed in /metrics (the registry is the
	// process's: other tests' failovers of "echo" count too, so by delta).
	testwait.For(t, "the failover in /metrics", 10*time.Second, func() bool {
		m := scrape(t, api)
		return m[`quorumproxy_failovers_total{service="echo"}`] == before[`quorumproxy_failovers_total{service="echo"}`]+1 &&
			m[`quorumproxy_failover_duration_seconds_count{service="echo"}`] == before[`quorumproxy_failover_duration_seconds_count{service="echo"}`]+1
	})
	if err := os.WriteFile(path, []byte(text+"bogus = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Reload()
	st, err := api.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "test" || st.LastReload.OK || !strings.Contains(st.LastReload.Error, "bogus") {
		t.Errorf("after an invalid reload: version %q, last reload %+v; want it refused, naming the key", st.Version, st.LastReload)
	}
	if got, err := ask(listen); err != nil || got != "b:x" {
		t.Errorf("after an invalid reload: %q %v, want b:x (the running config stays)", got, err)
	}
	d.Shutdown()
	api.HTTP.CloseIdleConnections()
	if _, err := ask(listen); err == nil {
		t.Error("the service still answers after Shutdown")
	}
}

// startInProcess writes text as the config file at path and starts a
// Daemon on it, with an admin client whose idle connections are closed at
// the end of the test.
func startInProcess(t *testing.T, path, admin, text string) (*Daemon, *adminapi.Client) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := LoadConfig(path, false)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{ConfigPath: path, Config: cfg, Logger: slog.New(slog.DiscardHandler), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return d, &adminapi.Client{Addr: admin, HTTP: hc}
}

// scrape reads /metrics into series -> value (comments skipped).
func scrape(t *testing.T, api *adminapi.Client) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	resp, err := api.HTTP.Get("http://" + api.Addr + "/metrics")
	if err != nil {
		t.Logf("scrape: %v", err)
		return out
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out
}
