package chaos

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
	"go.uber.org/goleak"
)

// Names of everything the harness creates start with this prefix followed
// by the owning test process's pid in base 36, so a later run can tell its
// own live objects from leftovers of a killed one.
const prefix = "qpc"

const (
	echoEnv     = "QP_CHAOS_ECHO" // set in a re-exec of the test binary: serve echo
	servicePort = 7000
	adminPort   = 7654
	gossipPort  = 7946
	backendPort = 6000
	token       = "chaos-token"
)

var (
	binPath   string // the quorumproxy binary, built in TestMain
	selfPath  string // this test binary, re-executed as an echo backend
	skipWhy   string // non-empty: every test skips with this reason
	clusterNo int
	noMu      sync.Mutex

	// The dial is bounded too: a dial abandoned by a timed-out request to a
	// cut-off proxy would otherwise outlive the test.
	httpc = &http.Client{Timeout: 400 * time.Millisecond, Transport: &http.Transport{
		DisableKeepAlives: true, DialContext: (&net.Dialer{Timeout: 400 * time.Millisecond}).DialContext}}
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(echoEnv); spec != "" {
		serveEcho(spec)
		return
	}
	code := run(m)
	os.Exit(code)
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipWhy = "network namespaces, veth pairs and iptables need root; run the chaos tests as root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		skipWhy = "the ip tool (iproute2) is not installed"
	} else if _, err := exec.LookPath("iptables"); err != nil {
		skipWhy = "iptables is not installed"
	}
	var dir string
	if skipWhy == "" {
		cleanLeftovers()
		var err error
		dir, err = os.MkdirTemp("", "qp-chaos")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binPath = filepath.Join(dir, "quorumproxy")
		args := []string{"build", "-o", binPath}
		// A race-instrumented daemon is slower on two cores; soak runs may ask for it.
		if os.Getenv("QP_CHAOS_RACE") == "1" {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "github.com/quorumproxy/quorumproxy/cmd/quorumproxy")...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building quorumproxy: %v\n%s", err, out)
			return 1
		}
		if selfPath, err = os.Executable(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	return code
}

// serveEcho is the echo backend: "name=addr"; every line comes back as
// "name:line", so a client sees which backend it reached. It serves until
// the process is killed.
func serveEcho(spec string) {
	name, addr, _ := strings.Cut(spec, "=")
	if _, err := testenv.ListenEcho(name, addr); err != nil {
		fmt.Fprintf(os.Stderr, "echo %s: %v\n", name, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	select {}
}

func pid36() string { return strconv.FormatInt(int64(os.Getpid()), 36) }

// ownerAlive reports whether the pid (base 36) that named an object is a
// running test binary; other objects are leftovers of a killed run.
func ownerAlive(p string) bool {
	n, err := strconv.ParseInt(p, 36, 64)
	if err != nil {
		return false
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n))
	return err == nil && strings.HasSuffix(strings.TrimSpace(string(comm)), ".test")
}

// cleanLeftovers removes namespaces, links and processes of earlier runs
// that were killed before their cleanup ran.
func cleanLeftovers() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix+"-") {
			continue
		}
		parts := strings.Split(f[0], "-")
		if len(parts) < 2 || ownerAlive(parts[1]) {
			continue
		}
		deleteNetns(f[0])
	}
	out, _ = exec.Command("ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		owner, _, ok := strings.Cut(strings.TrimPrefix(name, prefix), "-")
		if ok && !ownerAlive(owner) {
			exec.Command("ip", "link", "del", name).Run()
		}
	}
}

// deleteNetns kills every process in a namespace, then deletes it.
func deleteNetns(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGCONT)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	exec.Command("ip", "netns", "del", ns).Run()
}

func sh(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func trials(def int) int {
	if n, err := strconv.Atoi(os.Getenv("QP_CHAOS_TRIALS")); err == nil && n > 0 {
		return n
	}
	return def
}

// soakDuration is d, or QP_CHAOS_SECONDS when set (make soak).
func soakDuration(d time.Duration) time.Duration {
	if n, err := strconv.Atoi(os.Getenv("QP_CHAOS_SECONDS")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return d
}

// opts tunes one cluster.
type opts struct {
	lease        string // lease_timeout
	interval     string // health interval
	timeout      string // health timeout
	fall         int
	onQuorumLoss string
	proxies      int // N
	// gossip and probe are gossip_interval and probe_interval; "" leaves
	// the key out, so the network's default applies.
	gossip, probe string
	network       string   // [cluster] network; "" leaves it out (lan)
	regions       []string // the proxies' region labels, p1's first; none: no labels
	regionOrder   []string // the service's region_order
	backends      []backendSpec
	// first is the backend every proxy routes to before newCluster
	// returns; "": any one, as long as all route to the same.
	first string
	// bin is the quorumproxy binary the proxies start as; "": this
	// build's (binPath).
	bin string
}

// backendSpec is one echo backend of the service.
type backendSpec struct {
	name     string
	priority int
	region   string // "": no label
}

func defaultOpts() opts {
	return opts{lease: "1s", interval: "100ms", timeout: "80ms", fall: 2, onQuorumLoss: "close", proxies: 3,
		gossip: "50ms", probe: "250ms", first: "a",
		backends: []backendSpec{{name: "a", priority: 10}, {name: "b", priority: 5}}}
}

// cluster is N proxies (three unless opts say otherwise) and the echo
// backends of opts (by default "a", priority 10, and "b", priority 5),
// each in its own namespace on one bridge.
type cluster struct {
	t        *testing.T
	id       string // pid36-k
	net      string // "10.x.y."
	bridge   string
	dir      string
	proxies  []*proxyNode
	backends map[string]*backendNode
}

type proxyNode struct {
	c                  *cluster
	name, ns, ip, veth string
	cfgPath, stateDir  string
	hookOut            string
	proc               *proc
	bin                string // the binary it runs; "": binPath
}

type backendNode struct {
	c                  *cluster
	name, ns, ip, veth string
	proc               *proc
}

// proc is a process started inside a namespace.
type proc struct {
	cmd    *exec.Cmd
	logs   *testenv.Buffer
	exited chan struct{}
}

func startProc(ns string, env []string, args ...string) (*proc, error) {
	p := &proc{logs: &testenv.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	// ip netns exec execs the program, so the signal reaches it: nothing
	// outlives a killed test binary.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) signal(sig syscall.Signal) {
	if p != nil {
		p.cmd.Process.Signal(sig)
	}
}

func (p *proc) kill() {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.cmd.Process.Kill()
	<-p.exited
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// newCluster builds the namespaces and bridge, starts the backends and
// the proxies, and waits until every proxy routes to o.first ("a" by
// default).
func newCluster(t *testing.T, o opts) *cluster {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	noMu.Lock()
	clusterNo++
	k := clusterNo
	noMu.Unlock()
	c := &cluster{t: t, id: pid36() + "-" + strconv.FormatInt(int64(k), 36), dir: t.TempDir(), backends: map[string]*backendNode{}}
	c.bridge = prefix + c.id + "br"
	c.net = pickSubnet(t)
	t.Cleanup(c.destroy)

	sh(t, "ip", "link", "add", c.bridge, "type", "bridge")
	sh(t, "ip", "addr", "add", c.net+"1/24", "dev", c.bridge)
	sh(t, "ip", "link", "set", c.bridge, "up")
	addNode := func(role string, host int) (ns, ip, veth string) {
		ns = fmt.Sprintf("%s-%s-%s", prefix, c.id, role)
		ip = c.net + strconv.Itoa(host)
		veth = fmt.Sprintf("%s%s%s", prefix, c.id, role)
		sh(t, "ip", "netns", "add", ns)
		sh(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		sh(t, "ip", "link", "set", veth, "master", c.bridge)
		sh(t, "ip", "link", "set", veth, "up")
		sh(t, "ip", "netns", "exec", ns, "ip", "addr", "add", ip+"/24", "dev", "eth0")
		sh(t, "ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
		sh(t, "ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
		return ns, ip, veth
	}
	var backends strings.Builder
	for i, spec := range o.backends {
		b := &backendNode{c: c, name: spec.name}
		b.ns, b.ip, b.veth = addNode(spec.name, 21+i)
		c.backends[spec.name] = b
		b.start()
		fmt.Fprintf(&backends, "\n  [[service.backend]]\n  name = %q\n  address = \"%s:%d\"\n  priority = %d\n", spec.name, b.ip, backendPort, spec.priority)
		if spec.region != "" {
			fmt.Fprintf(&backends, "  region = %q\n", spec.region)
		}
	}
	var timings strings.Builder
	if o.gossip != "" {
		fmt.Fprintf(&timings, "gossip_interval = %q\n", o.gossip)
	}
	if o.probe != "" {
		fmt.Fprintf(&timings, "probe_interval = %q\n", o.probe)
	}
	if o.network != "" {
		fmt.Fprintf(&timings, "network = %q\n", o.network)
	}
	var order string
	if len(o.regionOrder) > 0 {
		order = fmt.Sprintf("region_order = [\"%s\"]\n", strings.Join(o.regionOrder, `", "`))
	}
	key := filepath.Join(c.dir, "gossip.key")
	tok := filepath.Join(c.dir, "token")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tok, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var peers strings.Builder
	for i := 1; i <= o.proxies; i++ {
		p := &proxyNode{c: c, name: fmt.Sprintf("p%d", i), bin: o.bin}
		p.ns, p.ip, p.veth = addNode(p.name, 10+i)
		fmt.Fprintf(&peers, "[[cluster.peer]]\nname = %q\naddress = \"%s:%d\"\n", p.name, p.ip, gossipPort)
		if i <= len(o.regions) && o.regions[i-1] != "" {
			fmt.Fprintf(&peers, "region = %q\n", o.regions[i-1])
		}
		c.proxies = append(c.proxies, p)
	}
	for _, p := range c.proxies {
		p.stateDir = filepath.Join(c.dir, p.name+".state")
		p.hookOut = filepath.Join(c.dir, p.name+".promoted")
		p.cfgPath = filepath.Join(c.dir, p.name+".toml")
		cfg := fmt.Sprintf(configTmpl, p.ip, adminPort, tok, p.name, p.ip, gossipPort, key, p.stateDir, o.lease, o.onQuorumLoss,
			timings.String(), peers.String(), p.ip, servicePort, order, o.interval, o.timeout, o.fall, p.hookOut, p.hookOut+".fenced") +
			backends.String()
		if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range c.proxies {
		p.start()
	}
	if o.first != "" {
		c.waitAllRoute(o.first, c.proxies, 60*time.Second)
	} else {
		c.waitAgree(60 * time.Second)
	}
	return c
}

// waitAgree waits until every proxy routes and forwards to one backend,
// the same on all, and returns it.
func (c *cluster) waitAgree(timeout time.Duration) string {
	c.t.Helper()
	var got string
	testwait.For(c.t, names(c.proxies)+" routing to one backend", timeout, func() bool {
		v := c.proxies[0].view()
		if !v.ok || v.routing == "" {
			return false
		}
		for _, p := range c.proxies {
			if !p.proc.running() {
				c.t.Fatalf("%s exited:\n%s", p.name, tail(p.proc.logs.String(), 30))
			}
			if !p.routesTo(v.routing) {
				return false
			}
		}
		got = v.routing
		return true
	})
	return got
}

const configTmpl = `
[admin]
listen = "%s:%d"
token_file = %q

[proxy]
drain_timeout = "0s"

[cluster]
node_name = %q
bind = "%s:%d"
secret_key_file = %q
state_dir = %q
lease_timeout = %q
on_quorum_loss = %q
switch_hold = "200ms"
rejoin_interval = "500ms"
%s%s
[[service]]
name = "echo"
listen = "%s:%d"
connect_timeout = "1s"
%s
  [service.health]
  kind = "tcp"
  interval = %q
  timeout = %q
  rise = 1
  fall = %d

  [service.hooks]
  promote = ["/bin/sh", "-c", "echo \"$QP_EPOCH $QP_NEW_BACKEND\" >> \"$0\"", %q]
  # a service without roles fences its old primary before the promote
  fence = ["/bin/sh", "-c", "echo \"$QP_EPOCH $QP_OLD_BACKEND\" >> \"$0\"", %q]
`

// pickSubnet picks a 10.x.y.0/24 that no interface of this host uses.
func pickSubnet(t *testing.T) string {
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").Output()
	if err != nil {
		t.Fatalf("ip addr show: %v", err)
	}
	for {
		n := fmt.Sprintf("10.%d.%d.", 100+rand.IntN(150), rand.IntN(250))
		if !bytes.Contains(out, []byte(" "+n)) {
			return n
		}
	}
}

func (c *cluster) destroy() {
	for _, p := range c.proxies {
		if p.proc != nil {
			p.proc.kill()
			if os.Getenv("QP_CHAOS_LOGS") == "1" {
				c.t.Logf("%s logs:\n%s", p.name, p.proc.logs.String())
			} else if c.t.Failed() {
				c.t.Logf("%s logs (tail):\n%s", p.name, tail(p.proc.logs.String(), 60))
			}
		}
	}
	for _, b := range c.backends {
		b.proc.kill()
	}
	// The host ends first: a namespace's own links go away asynchronously.
	for _, p := range c.proxies {
		exec.Command("ip", "link", "del", p.veth).Run()
		deleteNetns(p.ns)
	}
	for _, b := range c.backends {
		exec.Command("ip", "link", "del", b.veth).Run()
		deleteNetns(b.ns)
	}
	exec.Command("ip", "link", "del", c.bridge).Run()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (b *backendNode) addr() string { return fmt.Sprintf("%s:%d", b.ip, backendPort) }

// start runs the echo backend and waits until it listens.
func (b *backendNode) start() {
	t := b.c.t
	t.Helper()
	var err error
	b.proc, err = startProc(b.ns, []string{echoEnv + "=" + b.name + "=" + b.addr()}, selfPath)
	if err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "backend "+b.name+" listening", 10*time.Second, func() bool {
		if !b.proc.running() {
			t.Fatalf("backend %s exited: %s", b.name, b.proc.logs.String())
		}
		return strings.Contains(b.proc.logs.String(), "ready")
	})
}

func (b *backendNode) kill() { b.proc.kill() }

func (p *proxyNode) start() {
	t := p.c.t
	t.Helper()
	var err error
	bin := binPath
	if p.bin != "" {
		bin = p.bin
	}
	p.proc, err = startProc(p.ns, nil, bin, "run", "-config", p.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
}

func (p *proxyNode) listen() string { return fmt.Sprintf("%s:%d", p.ip, servicePort) }

// status reads p's /status; an answer without the cluster's service is an
// error (the proxy is not up yet).
func (p *proxyNode) status() (*adminapi.Status, error) {
	c := adminapi.Client{Addr: fmt.Sprintf("%s:%d", p.ip, adminPort), HTTP: httpc}
	st, err := c.Status(context.Background())
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", p.name, err)
	}
	if st.Cluster == nil || len(st.Cluster.Services) == 0 || len(st.Services) == 0 {
		return nil, fmt.Errorf("status of %s: no cluster service", p.name)
	}
	return st, nil
}

// health reads p's readiness: the whole proxy (service "") or one service;
// code 0 when it did not answer.
func (p *proxyNode) health(service string) (adminapi.Readiness, int) {
	c := adminapi.Client{Addr: fmt.Sprintf("%s:%d", p.ip, adminPort), HTTP: httpc}
	rd, code, err := c.Health(context.Background(), service)
	if err != nil {
		return adminapi.Readiness{}, 0
	}
	return rd, code
}

// ready reports whether p's readiness says it forwards echo to backend.
func (p *proxyNode) ready(backend string) bool {
	rd, code := p.health("echo")
	return code == http.StatusOK && rd.Ready && len(rd.Backends) == 1 && rd.Backends[0] == backend
}

// view is one proxy's record and route at one moment.
type view struct {
	ok       bool // answered
	routing  string
	epoch    uint64
	primary  string
	decision string
	fenced   []string
	why      string
	held     string
	health   map[string]string
}

func (p *proxyNode) view() view {
	st, err := p.status()
	if err != nil {
		return view{}
	}
	s := st.Cluster.Services[0]
	v := view{ok: true, routing: s.Routing, epoch: s.Epoch, primary: s.Primary, decision: s.Decision, fenced: s.Fenced, why: st.Services[0].Why, held: s.Held, health: map[string]string{}}
	for _, b := range st.Services[0].Backends {
		v.health[b.Name] = b.Health
	}
	return v
}

// ask sends one line through the proxy and returns the backend's name.
func (p *proxyNode) ask() (string, error) {
	c, err := net.DialTimeout("tcp", p.listen(), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "x\n"); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	name, _, ok := strings.Cut(strings.TrimSpace(reply), ":")
	if !ok {
		return "", fmt.Errorf("garbled reply %q through %s", reply, p.name)
	}
	return name, nil
}

// promotions lists the "epoch backend" lines the promote hook wrote.
func (p *proxyNode) promotions() []string {
	data, _ := os.ReadFile(p.hookOut)
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

func (c *cluster) promotions() []string {
	var all []string
	for _, p := range c.proxies {
		all = append(all, p.promotions()...)
	}
	sort.Strings(all)
	return all
}

// routesTo reports whether p says it routes to want and a client through
// it reaches want.
func (p *proxyNode) routesTo(want string) bool {
	if v := p.view(); !v.ok || v.routing != want {
		return false
	}
	got, err := p.ask()
	return err == nil && got == want
}

// notRouting returns an error when p definitely does not route to want:
// its status names another route or a client through it reaches another
// backend. A status or client that times out on a loaded machine proves
// nothing either way and is not counted.
func (p *proxyNode) notRouting(want string) error {
	if v := p.view(); v.ok && v.routing != want {
		return fmt.Errorf("%s routes %q (epoch %d, decision %q), not %q", p.name, v.routing, v.epoch, v.decision, want)
	}
	if got, err := p.ask(); err == nil && got != want {
		return fmt.Errorf("a client through %s reached %q, not %q", p.name, got, want)
	}
	return nil
}

func (c *cluster) waitAllRoute(want string, who []*proxyNode, timeout time.Duration) {
	c.t.Helper()
	testwait.For(c.t, fmt.Sprintf("%s routing to %s", names(who), want), timeout, func() bool {
		for _, p := range who {
			if !p.proc.running() {
				c.t.Fatalf("%s exited:\n%s", p.name, tail(p.proc.logs.String(), 30))
			}
			if !p.routesTo(want) {
				return false
			}
		}
		return true
	})
}

func names(ps []*proxyNode) string {
	var n []string
	for _, p := range ps {
		n = append(n, p.name)
	}
	return strings.Join(n, ",")
}

// ipt runs iptables in a namespace.
func ipt(t testing.TB, ns string, args ...string) {
	t.Helper()
	sh(t, append([]string{"ip", "netns", "exec", ns, "iptables"}, args...)...)
}

// dropFrom makes p's namespace drop every packet from ip (one direction).
func (p *proxyNode) dropFrom(ip string) { ipt(p.c.t, p.ns, "-A", "INPUT", "-s", ip, "-j", "DROP") }

// cut separates two proxies both ways.
func cut(a, b *proxyNode) {
	a.dropFrom(b.ip)
	b.dropFrom(a.ip)
}

// heal removes every rule in p's namespace.
func (p *proxyNode) heal() {
	ipt(p.c.t, p.ns, "-F", "INPUT")
	ipt(p.c.t, p.ns, "-F", "OUTPUT")
}

func (c *cluster) healAll() {
	for _, p := range c.proxies {
		p.heal()
	}
}

// switchover asks p to move the service to backend to, by vote.
func (p *proxyNode) switchover(to string) error {
	return p.control("switchover", url.Values{"service": {"echo"}, "to": {to}})
}

// control posts form to one of p's state-changing admin endpoints.
func (p *proxyNode) control(verb string, form url.Values) error {
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://%s:%d/api/v1/%s", p.ip, adminPort, verb),
		strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("%s via %s: %s: %s", verb, p.name, resp.Status, body)
	}
	return nil
}

// switchTo moves the cluster to backend to (unfencing it first if it is
// fenced) and waits until who route there. The echo service has no roles,
// so the switchover fences the old primary; the operator (this helper)
// then unfences it again, vouching that it is a standby, so that later
// scenarios can fail over to it.
func (c *cluster) switchTo(to string, who []*proxyNode) {
	c.t.Helper()
	defer c.unfenceAll(who)
	testwait.For(c.t, names(who)+" routing to "+to+" after a switchover", 60*time.Second, func() bool {
		all := func() bool {
			for _, p := range who {
				if !p.routesTo(to) {
					return false
				}
			}
			return true
		}
		if all() {
			return true
		}
		err := who[0].switchover(to)
		if err != nil && strings.Contains(err.Error(), "is fenced") {
			// the echo service has no roles: a failover fenced its old
			// primary, and the operator unfences it before failing back
			err = who[0].control("unfence", url.Values{"service": {"echo"}, "backend": {to}})
		}
		if err != nil {
			c.t.Logf("%v", err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if all() {
				return true
			}
			time.Sleep(50 * time.Millisecond)
		}
		return false
	})
}

// unfenceAll unfences every fenced backend through who[0] and waits until
// who see an empty fenced set.
func (c *cluster) unfenceAll(who []*proxyNode) {
	c.t.Helper()
	testwait.For(c.t, names(who)+" seeing no fenced backend", 60*time.Second, func() bool {
		fenced := who[0].view().fenced
		for _, p := range who {
			if v := p.view(); len(v.fenced) > 0 {
				fenced = v.fenced
			}
		}
		if len(fenced) == 0 {
			return true
		}
		if err := who[0].control("unfence", url.Values{"service": {"echo"}, "backend": {fenced[0]}}); err != nil {
			c.t.Logf("%v", err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if v := who[0].view(); len(v.fenced) == 0 || v.fenced[0] != fenced[0] {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		return false
	})
}

// sample is one round of every proxy's view, taken concurrently.
type sample struct {
	at    time.Time
	views []view
}

func (c *cluster) round() sample {
	s := sample{at: time.Now(), views: make([]view, len(c.proxies))}
	var wg sync.WaitGroup
	for i, p := range c.proxies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.views[i] = p.view()
		}()
	}
	wg.Wait()
	return s
}

// monitor samples every proxy's view until stopped and checks, per round,
// that no two proxies route the service to different backends, and over
// the run that every epoch has one primary and no proxy's epoch decreases.
type monitor struct {
	c        *cluster
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	rounds   int
	answered int // proxy views that answered
	unrouted int // of those, without a route
	splits   []string
	gen      int               // bumped by forget; rounds begun before are dropped
	records  map[uint64]string // epoch -> primary, as any proxy reported it
	bad      []string          // two primaries for one epoch, or an epoch going back
	last     []uint64
}

func (c *cluster) startMonitor() *monitor {
	m := &monitor{c: c, stop: make(chan struct{}), done: make(chan struct{}), records: map[uint64]string{}, last: make([]uint64, len(c.proxies))}
	go func() {
		defer close(m.done)
		for {
			select {
			case <-m.stop:
				return
			default:
			}
			m.mu.Lock()
			gen := m.gen
			m.mu.Unlock()
			m.add(c.round(), gen)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return m
}

func (m *monitor) add(s sample, gen int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gen != m.gen {
		return
	}
	m.rounds++
	routed := map[string]string{}
	for i, v := range s.views {
		if !v.ok {
			continue
		}
		name := m.c.proxies[i].name
		m.answered++
		if v.routing != "" {
			routed[name] = v.routing
		} else {
			m.unrouted++
		}
		if v.epoch < m.last[i] {
			m.bad = append(m.bad, fmt.Sprintf("%s: epoch went from %d back to %d", name, m.last[i], v.epoch))
		}
		m.last[i] = v.epoch
		if v.epoch > 0 {
			if prim, ok := m.records[v.epoch]; ok && prim != v.primary {
				m.bad = append(m.bad, fmt.Sprintf("epoch %d has primaries %q and %q (%s)", v.epoch, prim, v.primary, name))
			} else if !ok {
				m.records[v.epoch] = v.primary
			}
		}
	}
	backends := map[string]bool{}
	for _, b := range routed {
		backends[b] = true
	}
	if len(backends) > 1 {
		m.splits = append(m.splits, fmt.Sprintf("%s: %v", s.at.Format("15:04:05.000"), routed))
	}
}

// finish stops sampling and fails the test on any violation seen.
func (m *monitor) finish(t *testing.T, what string) (rounds int) {
	t.Helper()
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := m.sortedEpochs()
	var epochs []string
	for _, e := range keys {
		epochs = append(epochs, fmt.Sprintf("%d:%s", e, m.records[e]))
	}
	t.Logf("%s: split-brain rounds %d in %d sampling rounds of all %d proxies; epoch records seen %v", what, len(m.splits), m.rounds, len(m.c.proxies), epochs)
	if len(m.splits) > 0 {
		t.Errorf("%s: two proxies routed to different backends at once: %v", what, m.splits)
	}
	if len(m.bad) > 0 {
		t.Errorf("%s: record violations: %v", what, m.bad)
	}
	return m.rounds
}

// forget drops what was seen of p's epoch: a wiped state_dir legitimately
// starts from nothing.
func (m *monitor) forget(p *proxyNode) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	for i, q := range m.c.proxies {
		if q == p {
			m.last[i] = 0
		}
	}
}

func (m *monitor) epochs() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.records)
}

// sortedEpochs lists the epochs seen, lowest first; call with m.mu held.
func (m *monitor) sortedEpochs() []uint64 {
	keys := make([]uint64, 0, len(m.records))
	for e := range m.records {
		keys = append(keys, e)
	}
	slices.Sort(keys)
	return keys
}

// changes counts the primary changes between consecutive epoch records
// seen: an epoch that re-affirms the same primary is not a change.
func (m *monitor) changes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := m.sortedEpochs()
	n := 0
	for i := 1; i < len(keys); i++ {
		if m.records[keys[i]] != m.records[keys[i-1]] {
			n++
		}
	}
	return n
}

// durations summarises measured times.
func summary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return fmt.Sprintf("%d trials: median %s max %s min %s", len(s), s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), s[0].Round(time.Millisecond))
}
