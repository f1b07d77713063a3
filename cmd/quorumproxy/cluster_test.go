package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

const clusterConfig = `
[admin]
listen = %q
token_file = %q

[cluster]
node_name = %q
bind = %q
secret_key_file = %q
state_dir = %q
lease_timeout = "600ms"
gossip_interval = "50ms"
probe_interval = "250ms"
rejoin_interval = "500ms"
switch_hold = "300ms"
%s

[[service]]
name = "echo"
listen = %q

  [service.health]
  kind = "tcp"
  interval = "100ms"
  timeout = "50ms"
  rise = 1
  fall = 2

  [service.hooks]
  promote = ["/bin/sh", "-c", "echo \"$QP_EPOCH $QP_NEW_BACKEND\" >> \"$0\"", %q]
  fence = ["/bin/sh", "-c", "echo \"$QP_EPOCH fence $QP_OLD_BACKEND\" >> \"$0\"", %q]

  [[service.backend]]
  name = "a"
  address = %q
  priority = 10

  [[service.backend]]
  name = "b"
  address = %q
  priority = 5
`

type clusterProxy struct {
	name, admin, listen, hookOut string
	cfgPath, stateDir            string
	d                            *daemonProc
}

func (p *clusterProxy) routing(t *testing.T) (string, uint64) {
	st, err := p.d.status(t)
	if err != nil || st.Cluster == nil || len(st.Cluster.Services) == 0 {
		return "", 0
	}
	s := st.Cluster.Services[0]
	return s.Routing, s.Epoch
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// allRoute reports whether every proxy of who says it routes to want and a
// client through it reaches want.
func allRoute(t *testing.T, want string, who []*clusterProxy) func() bool {
	return func() bool {
		for _, p := range who {
			if r, _ := p.routing(t); r != want {
				return false
			}
			if got, err := ask(p.listen, "x"); err != nil || got != want+":x" {
				return false
			}
		}
		return true
	}
}

// clusterService is the cluster's view of the one service on this proxy.
func (p *clusterProxy) clusterService(t *testing.T) adminapi.ClusterService {
	st, err := p.d.status(t)
	if err != nil || st.Cluster == nil || len(st.Cluster.Services) == 0 {
		return adminapi.ClusterService{}
	}
	return st.Cluster.Services[0]
}

// Three real proxy processes gossiping over loopback agree on the target,
// fail over together, run the promote hook once per epoch, keep routing
// with one proxy lost, keep the old primary fenced until an operator
// unfences it, switch over by vote, fence the primary away, and a proxy cut off from the
// majority stops routing.
func TestClusterOfThree(t *testing.T) {
	a, b := startEcho(t, "a"), startEcho(t, "b")
	ps, tokenFile := startEchoCluster(t, a, b)
	testwait.For(t, "all three proxies routing to a", 30*time.Second, allRoute(t, "a", ps))
	_, epochA := ps[0].routing(t)
	page := getBody(t, "http://"+ps[0].admin+"/")
	for _, want := range []string{"quorum 2", "qp2", "<td>echo</td>"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	metricsText := getBody(t, "http://"+ps[0].admin+"/metrics")
	for _, want := range []string{"quorumproxy_cluster_epoch", "quorumproxy_cluster_commits_total", "quorumproxy_memberlist_",
		`quorumproxy_failovers_total{service="echo"} 0`} { // there from the start
		if !strings.Contains(metricsText, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Every metric the alert rules and the dashboard use exists, with a
	// HELP text.
	testwait.For(t, "a health check observed", 10*time.Second, func() bool {
		return strings.Contains(getBody(t, "http://"+ps[0].admin+"/metrics"), "quorumproxy_health_check_duration_seconds_bucket")
	})
	metricsText = getBody(t, "http://"+ps[0].admin+"/metrics")
	for _, name := range deployMetrics(t) {
		if !strings.Contains(metricsText, "# HELP "+name+" ") {
			t.Errorf("/metrics has no %s, which deploy/ uses", name)
		}
	}

	// The primary dies: the proxies agree on b at a higher epoch.
	a.Close()
	testwait.For(t, "all three proxies routing to b", 30*time.Second, allRoute(t, "b", ps))
	_, epochB := ps[0].routing(t)
	if epochB <= epochA {
		t.Fatalf("epoch did not grow: %d then %d", epochA, epochB)
	}
	// The promote hook ran for that epoch on exactly one proxy.
	want := fmt.Sprintf("%d b", epochB)
	testwait.For(t, "promote hook for epoch "+want, 20*time.Second, func() bool {
		n := 0
		for _, p := range ps {
			data, _ := os.ReadFile(p.hookOut)
			for _, line := range strings.Split(string(data), "\n") {
				if line == want {
					n++
				}
			}
		}
		return n == 1
	})

	// The history says what happened, on every proxy, and the committing
	// one's also has the hook runs with how they ended.
	moved := fmt.Sprintf("primary moved from a to b (a fenced), epoch %d", epochB)
	hooksRan := 0
	for _, p := range ps {
		testwait.For(t, p.name+"'s history has the failover", 10*time.Second, func() bool {
			out, _, _ := runBin(t, "history", "-admin", p.admin, "-service", "echo")
			return strings.Contains(out, moved) && strings.Contains(out, "record")
		})
		out, _, _ := runBin(t, "history", "-admin", p.admin)
		if strings.Contains(out, "promote hook (a -> b)") && strings.Contains(out, "exit 0") {
			hooksRan++
		}
	}
	if hooksRan != 1 {
		t.Errorf("%d proxies' histories show the promote hook's run, want 1 (the committing proxy's)", hooksRan)
	}

	// One proxy lost: the other two still hold a quorum and keep routing.
	ps[2].d.cmd.Process.Signal(syscall.SIGKILL)
	testwait.For(t, "two proxies still routing to b", 20*time.Second, allRoute(t, "b", ps[:2]))
	// Its history outlives it, in its state_dir.
	if data, err := os.ReadFile(filepath.Join(ps[2].stateDir, "history.jsonl")); err != nil || !strings.Contains(string(data), moved) {
		t.Errorf("the killed proxy's history file (%v) lacks %q:\n%s", err, moved, data)
	}

	// The old primary is back; failback is manual, so traffic stays on b
	// until an operator switches over, by vote.
	startEchoAt(t, "a", a.Addr())
	for _, p := range ps[:2] {
		testwait.For(t, p.name+" sees a up", 20*time.Second, func() bool {
			s := p.d.service(t, "echo")
			return s != nil && len(s.Backends) == 2 && s.Backends[0].Name == "a" && s.Backends[0].Health == "up"
		})
	}
	if r, _ := ps[0].routing(t); r != "b" {
		t.Fatalf("failback happened without an operator: routing %q", r)
	}
	// The echo service has no roles, so the failover fenced a: a switchover
	// back is refused until an operator unfences it (a voted epoch).
	if v := ps[0].clusterService(t); !slices.Equal(v.Fenced, []string{"a"}) {
		t.Fatalf("fenced after the failover: %v, want [a]", v.Fenced)
	}
	if out, _, _ := runBin(t, "status", "-admin", ps[0].admin); !regexp.MustCompile(`echo +\d+ +b +a `).MatchString(out) {
		t.Errorf("quorumproxy status does not show a fenced:\n%s", out)
	}
	if m := getBody(t, "http://"+ps[0].admin+"/metrics"); !regexp.MustCompile(`quorumproxy_cluster_fenced\{backend="a",service="echo"\} 1`).MatchString(m) {
		t.Errorf("/metrics does not show a fenced:\n%s", grepLines(m, "fenced"))
	}
	if _, errOut, code := runBin(t, "switchover", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-to", "a"); code == 0 || !strings.Contains(errOut, "fenced") {
		t.Fatalf("switchover to fenced a: exit %d, %q; want a refusal that says a is fenced", code, errOut)
	}
	if _, errOut, code := runBin(t, "unfence", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-backend", "b"); code == 0 || !strings.Contains(errOut, "not fenced") {
		t.Fatalf("unfence of b, which is not fenced: exit %d, %q", code, errOut)
	}
	// An unfence is one attempt, like a switchover: ask again if it gave up.
	testwait.For(t, "a unfenced", 40*time.Second, func() bool {
		if len(ps[0].clusterService(t).Fenced) == 0 {
			return true
		}
		if _, errOut, code := runBin(t, "unfence", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-backend", "a"); code != 0 {
			t.Logf("unfence: %s", errOut)
		}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && len(ps[0].clusterService(t).Fenced) != 0 {
			time.Sleep(50 * time.Millisecond)
		}
		return len(ps[0].clusterService(t).Fenced) == 0
	})
	// A switchover is one attempt; the operator (here the test) asks again
	// if a concurrent decision or a stale view made it give up.
	testwait.For(t, "two proxies routing to a after the switchover", 40*time.Second, func() bool {
		if allRoute(t, "a", ps[:2])() {
			return true
		}
		if _, errOut, code := runBin(t, "switchover", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-to", "a"); code != 0 {
			t.Logf("switchover: %s", errOut)
		}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if r, _ := ps[0].routing(t); r == "a" {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		return allRoute(t, "a", ps[:2])()
	})
	if out, _, _ := runBin(t, "history", "-admin", ps[0].admin, "-service", "echo"); !strings.Contains(out, "switchover to a requested") ||
		!strings.Contains(out, "unfence of a") || !strings.Contains(out, "operator") {
		t.Errorf("history lacks the operator's unfence and switchover:\n%s", out)
	}
	// A wrong token is refused.
	if _, _, code := runBin(t, "switchover", "-admin", ps[0].admin, "-service", "echo", "-to", "b"); code == 0 {
		t.Fatal("switchover without a token was accepted")
	}
	if _, _, code := runBin(t, "fence", "-admin", ps[0].admin, "-service", "echo", "-backend", "b"); code == 0 {
		t.Fatal("fence without a token was accepted")
	}
	// Without roles, the switchover fenced the old primary b: nothing else
	// would tell it from a standby. The operator vouches for it.
	if v := ps[0].clusterService(t); !slices.Equal(v.Fenced, []string{"b"}) {
		t.Fatalf("fenced after the switchover: %v, want [b]", v.Fenced)
	}
	if out, errOut, code := runBin(t, "unfence", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-backend", "b"); code != 0 {
		t.Fatalf("unfence of b: exit %d: %s %s", code, out, errOut)
	}
	// An operator's fence of the primary moves the service to the best
	// candidate and keeps the fenced backend out of later failovers.
	testwait.For(t, "a fenced and the service on b", 40*time.Second, func() bool {
		done := func() bool {
			v := ps[0].clusterService(t)
			return slices.Equal(v.Fenced, []string{"a"}) && v.Primary == "b"
		}
		if done() {
			return true
		}
		if _, errOut, code := runBin(t, "fence", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-backend", "a"); code != 0 {
			t.Logf("fence: %s", errOut)
		}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && !done() {
			time.Sleep(50 * time.Millisecond)
		}
		return done()
	})
	testwait.For(t, "two proxies routing to b after the fence", 20*time.Second, allRoute(t, "b", ps[:2]))
	// With a fenced, nothing could take over from b: its fence is refused.
	if _, errOut, code := runBin(t, "fence", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo", "-backend", "b"); code == 0 || !strings.Contains(errOut, "no backend can take over") {
		t.Fatalf("fence of primary b with a fenced: exit %d, %q; want a refusal", code, errOut)
	}

	// A second proxy lost: the last one is cut off from the majority and
	// stops routing once its lease runs out.
	ps[1].d.cmd.Process.Signal(syscall.SIGKILL)
	testwait.For(t, "the lone proxy stops routing", 20*time.Second, func() bool {
		r, _ := ps[0].routing(t)
		if r != "" {
			return false
		}
		_, err := ask(ps[0].listen, "y")
		return err != nil
	})
}

// Peers listed on ports other than 7946, with bind left out: each proxy
// listens where the others were told to find it (the address it advertises),
// so the three agree and fail over together.
func TestClusterBindDefaultsToPeerAddress(t *testing.T) {
	a, b := startEcho(t, "a"), startEcho(t, "b")
	ps, _ := startEchoClusterWith(t, a, b, echoClusterOpts{noBind: true})
	testwait.For(t, "all three proxies routing to a", 30*time.Second, allRoute(t, "a", ps))
	for _, p := range ps {
		if cfg, _ := os.ReadFile(p.cfgPath); strings.Contains(string(cfg), "\nbind = ") {
			t.Fatalf("%s: the config sets bind; this test is about leaving it out", p.name)
		}
	}
	a.Close()
	testwait.For(t, "all three proxies routing to b", 30*time.Second, allRoute(t, "b", ps))
}

// clusterNames are the proxies of the test clusters.
var clusterNames = []string{"qp1", "qp2", "qp3"}

// clusterFiles writes a gossip key and an admin token into dir and gives
// the [[cluster.peer]] list of the three proxies clusterNames, each with a
// free gossip address.
func clusterFiles(t *testing.T, dir string) (keyFile, tokenFile, peers string, gossip map[string]string) {
	t.Helper()
	keyFile, tokenFile = filepath.Join(dir, "gossip.key"), filepath.Join(dir, "token")
	if err := os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gossip = map[string]string{}
	var b strings.Builder
	for _, n := range clusterNames {
		gossip[n] = freeAddr(t)
		fmt.Fprintf(&b, "[[cluster.peer]]\nname = %q\naddress = %q\n", n, gossip[n])
	}
	return keyFile, tokenFile, b.String(), gossip
}

// startEchoCluster starts three proxy processes with clusterConfig in
// front of echo servers a and b and returns them and the token file.
func startEchoCluster(t *testing.T, a, b *echoServer) ([]*clusterProxy, string) {
	t.Helper()
	return startEchoClusterWith(t, a, b, echoClusterOpts{})
}

// echoClusterOpts change what startEchoClusterWith starts.
type echoClusterOpts struct {
	bin     string // the binary; "" for the one built for the tests
	lease   string // lease_timeout; "" for clusterConfig's
	noToken bool   // no [admin] token_file
	noBind  bool   // no [cluster] bind: each gossips on its own peer address
	// checks replaces the health checks' interval and timeout lines ("":
	// every 100ms, timeout 50ms)
	checks string
}

func startEchoClusterWith(t *testing.T, a, b *echoServer, o echoClusterOpts) ([]*clusterProxy, string) {
	t.Helper()
	dir := t.TempDir()
	keyFile, tokenFile, peers, gossip := clusterFiles(t, dir)
	var ps []*clusterProxy
	for _, n := range clusterNames {
		p := &clusterProxy{name: n, admin: freeAddr(t), listen: freeAddr(t), hookOut: filepath.Join(dir, n+".hooks"),
			stateDir: filepath.Join(dir, n+".state")}
		p.cfgPath = filepath.Join(dir, n+".toml")
		cfg := fmt.Sprintf(clusterConfig, p.admin, tokenFile, n, gossip[n], keyFile, p.stateDir,
			peers, p.listen, p.hookOut, p.hookOut, a.Addr(), b.Addr())
		if o.lease != "" {
			cfg = strings.Replace(cfg, `lease_timeout = "600ms"`, "lease_timeout = "+o.lease, 1)
		}
		if o.noToken {
			cfg = strings.Replace(cfg, "token_file = ", "# token_file = ", 1)
		}
		if o.noBind {
			cfg = strings.Replace(cfg, "\nbind = ", "\n# bind = ", 1)
		}
		if o.checks != "" {
			const checks = "  interval = \"100ms\"\n  timeout = \"50ms\"\n"
			if !strings.Contains(cfg, checks) {
				t.Fatal("the cluster config's check lines moved: update echoClusterOpts.checks")
			}
			cfg = strings.Replace(cfg, checks, o.checks, 1)
		}
		if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	for _, p := range ps {
		if o.bin != "" {
			p.d = startDaemonCmd(t, exec.Command(o.bin, "run", "-config", p.cfgPath), p.admin)
		} else {
			p.d = startDaemon(t, p.cfgPath, p.admin)
		}
	}
	return ps, tokenFile
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// startEchoAt starts an echo server on a given address (a backend coming back).
func startEchoAt(t *testing.T, name, addr string) *echoServer {
	t.Helper()
	var e *echoServer
	testwait.For(t, "listening again on "+addr, 10*time.Second, func() bool {
		var err error
		e, err = testenv.ListenEcho(name, addr)
		return err == nil
	})
	t.Cleanup(e.Close)
	return e
}

// An operator pauses the cluster (Patroni's pause): the primary dies and
// nothing fails over, every surface says paused, a restarted proxy is still
// paused, a switchover still works; after a resume the cluster fails over
// by itself again.
func TestClusterPause(t *testing.T) {
	a, b := startEcho(t, "a"), startEcho(t, "b")
	ps, tokenFile := startEchoCluster(t, a, b)
	testwait.For(t, "all three proxies routing to a", 30*time.Second, allRoute(t, "a", ps))
	// The first pause may meet a lease round in flight and give up: ask
	// again, as an operator would.
	testwait.For(t, "paused", 30*time.Second, func() bool {
		out, errOut, code := runBin(t, "pause", "-config", ps[0].cfgPath, "-token-file", tokenFile)
		if code != 0 {
			t.Logf("pause: %s %s", out, errOut)
		}
		return code == 0 && ps[0].clusterService(t).Paused
	})
	for _, p := range ps {
		testwait.For(t, p.name+" sees the pause", 10*time.Second, func() bool { return p.clusterService(t).Paused })
	}
	if out, _, _ := runBin(t, "status", "-admin", ps[1].admin); !strings.Contains(out, "echo (PAUSED)") {
		t.Errorf("status does not say paused:\n%s", out)
	}
	if m := getBody(t, "http://"+ps[1].admin+"/metrics"); !regexp.MustCompile(`quorumproxy_cluster_paused\{service="echo"\} 1`).MatchString(m) {
		t.Errorf("/metrics does not say paused:\n%s", grepLines(m, "paused"))
	}
	hc := &adminapi.Client{Addr: ps[1].admin}
	if rd, code, err := hc.Health(t.Context(), "echo"); err != nil || code != http.StatusOK || !rd.Paused {
		t.Errorf("readiness while paused and routing: %d %+v %v; want 200, paused", code, rd, err)
	}
	if _, _, code := runBin(t, "pause", "-admin", ps[0].admin, "-token-file", tokenFile, "-service", "echo"); code == 0 {
		t.Error("a second pause of a paused service was accepted")
	}

	// A restarted proxy reads the pause from its state_dir.
	ps[2].d.cmd.Process.Signal(syscall.SIGTERM)
	err := <-ps[2].d.exited
	ps[2].d.exited <- err // for startDaemon's cleanup
	ps[2].d = startDaemon(t, ps[2].cfgPath, ps[2].admin)
	testwait.For(t, "restarted qp3 routing to a, paused", 30*time.Second, func() bool {
		v := ps[2].clusterService(t)
		return v.Paused && v.Routing == "a"
	})

	// The primary dies: paused, nobody fails over, and the status says why.
	a.Close()
	testwait.For(t, "every proxy says the failover waits for the pause", 20*time.Second, func() bool {
		for _, p := range ps {
			if v := p.clusterService(t); !strings.Contains(v.Decision, "paused") || v.Primary != "a" {
				return false
			}
		}
		return true
	})
	time.Sleep(2 * time.Second) // a negative check: more than three leases with nothing decided
	for _, p := range ps {
		if v := p.clusterService(t); v.Primary != "a" || !v.Paused {
			t.Fatalf("%s while paused: primary %q, paused %v; want a, paused", p.name, v.Primary, v.Paused)
		}
	}
	if rd, code, _ := hc.Health(t.Context(), "echo"); code != http.StatusServiceUnavailable || !strings.HasPrefix(rd.Reason, "paused") {
		t.Errorf("readiness with the primary down while paused: %d %+v; want 503 saying paused", code, rd)
	}

	// Resumed, the cluster fails over by itself.
	if out, errOut, code := runBin(t, "resume", "-admin", ps[0].admin, "-token-file", tokenFile); code != 0 {
		t.Fatalf("resume: exit %d: %s %s", code, out, errOut)
	}
	testwait.For(t, "all three proxies routing to b after the resume", 30*time.Second, allRoute(t, "b", ps))
	if ps[0].clusterService(t).Paused {
		t.Error("still paused after the resume")
	}
	if out, _, _ := runBin(t, "history", "-admin", ps[0].admin, "-service", "echo"); !strings.Contains(out, "pause requested") ||
		!strings.Contains(out, "resume requested") || !strings.Contains(out, "paused: no automatic failover") || !strings.Contains(out, "resumed: automatic failover") {
		t.Errorf("history lacks the pause and the resume:\n%s", out)
	}
}
