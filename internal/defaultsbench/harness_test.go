package defaultsbench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/drill"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// service is the one service of every config here.
const service = "db"

var (
	binPath  string // the quorumproxy binary built from this tree (no race detector: its timings are measured)
	hooksDir string // testdata/hooks, absolute

	// The proxies run in a group of their own; every connection that a
	// member of it opens (checks, the data path to backends, hooks, gossip
	// to peers) is marked, and marked packets go through an NFQUEUE queue
	// that internal/netem binds while the network is to be degraded (with
	// --queue-bypass they pass untouched otherwise). Other processes, other
	// tests' included, are never touched.
	netGID   int
	netMark  int
	netQueue uint16
	netTag   string // iptables comment of our rules: qpdefaults-PID
	netemWhy string // non-empty: the degraded-network runs skip, saying why
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Getenv("QP_DEFAULTS_RUNS") == "" {
		return m.Run() // the measurement skips itself; the unit tests run
	}
	dir, err := os.MkdirTemp("", "qp-defaults")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "quorumproxy")
	if out, err := exec.Command("go", "build", "-o", binPath, "github.com/quorumproxy/quorumproxy/cmd/quorumproxy").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building quorumproxy: %v\n%s", err, out)
		return 1
	}
	if hooksDir, err = filepath.Abs(filepath.Join("..", "..", "testdata", "hooks")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pid := os.Getpid()
	netGID = 61000 + pid%4000
	netMark = 0x51440000 | pid%0xffff
	netQueue = uint16(2000 + pid%2000)
	netTag = "qpdefaults-" + strconv.Itoa(pid)
	undo := installMarks()
	code := m.Run()
	undo()
	return code
}

// markRules are the iptables rules (table, then the rule after -A/-D
// OUTPUT) that send what the proxies' group opens through netQueue.
func markRules() [][]string {
	return [][]string{
		{"mangle", "-m", "owner", "--gid-owner", strconv.Itoa(netGID), "-m", "conntrack", "--ctstate", "NEW",
			"-m", "comment", "--comment", netTag, "-j", "CONNMARK", "--set-mark", strconv.Itoa(netMark)},
		{"filter", "-m", "connmark", "--mark", strconv.Itoa(netMark), "-m", "comment", "--comment", netTag,
			"-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(netQueue)), "--queue-bypass"},
	}
}

// installMarks adds markRules (removing what killed runs left) and
// returns how to remove them; without root or nfnetlink_queue it sets
// netemWhy instead.
func installMarks() func() {
	switch {
	case os.Geteuid() != 0:
		netemWhy = "the degraded network needs root (iptables and NFQUEUE)"
	case !exists("/proc/net/netfilter/nfnetlink_queue"):
		netemWhy = "the degraded network needs nfnetlink_queue"
	}
	if _, err := exec.LookPath("iptables"); err != nil && netemWhy == "" {
		netemWhy = "the degraded network needs iptables"
	}
	if netemWhy != "" {
		return func() {}
	}
	sweepRules()
	var added [][]string
	undo := func() {
		for _, r := range added {
			exec.Command("iptables", append([]string{"-t", r[0], "-D", "OUTPUT"}, r[1:]...)...).Run()
		}
	}
	for _, r := range markRules() {
		if out, err := exec.Command("iptables", append([]string{"-t", r[0], "-A", "OUTPUT"}, r[1:]...)...).CombinedOutput(); err != nil {
			netemWhy = fmt.Sprintf("iptables: %v: %s", err, strings.TrimSpace(string(out)))
			undo()
			return func() {}
		}
		added = append(added, r)
	}
	return undo
}

// sweepRules removes rules of earlier runs whose process is gone.
func sweepRules() {
	for _, table := range []string{"mangle", "filter"} {
		out, _ := exec.Command("iptables", "-t", table, "-S", "OUTPUT").Output()
		for _, line := range strings.Split(string(out), "\n") {
			i := strings.Index(line, "qpdefaults-")
			if i < 0 || !strings.HasPrefix(line, "-A OUTPUT ") {
				continue
			}
			pid, _ := strconv.Atoi(strings.Fields(line[i+len("qpdefaults-"):])[0])
			if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.HasSuffix(strings.TrimSpace(string(comm)), ".test") {
				continue
			}
			f := strings.Fields(line)
			f[0] = "-D"
			exec.Command("iptables", append([]string{"-t", table}, f...)...).Run()
		}
	}
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// proxy is one quorumproxy process.
type proxy struct {
	name, admin, listen, gossip string
	stateDir, cfgPath           string
	cmd                         *exec.Cmd
	logs                        *testenv.Buffer
	exited                      chan struct{}
}

func (p *proxy) start(t *testing.T, env []string) {
	t.Helper()
	p.logs, p.exited = &testenv.Buffer{}, make(chan struct{})
	p.cmd = exec.Command(binPath, "run", "-config", p.cfgPath)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	p.cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(os.Geteuid()), Gid: uint32(netGID), Groups: []uint32{}},
		Pdeathsig:  syscall.SIGKILL,
	}
	if os.Geteuid() != 0 {
		p.cmd.SysProcAttr.Credential = nil
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() || os.Getenv("QP_DEFAULTS_LOGS") == "1" {
			t.Logf("%s logs:\n%s", p.name, p.logs.String())
		}
		if dir := os.Getenv("QP_DEFAULTS_LOGDIR"); dir != "" {
			name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()) + "-" + p.name + ".log"
			err := os.MkdirAll(dir, 0o755)
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, name), []byte(p.logs.String()), 0o644)
			}
			if err != nil {
				t.Error(err)
			}
		}
	})
}

func (p *proxy) client() *adminapi.Client {
	return &adminapi.Client{Addr: p.admin, HTTP: &http.Client{Timeout: 2 * time.Second}}
}

func (p *proxy) status(ctx context.Context) (*adminapi.Status, error) { return p.client().Status(ctx) }

// metrics reads the proxy's /metrics.
func (p *proxy) metrics(ctx context.Context) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// metrics are Prometheus samples by series ("name{labels}").
type metrics map[string]float64

func parseMetrics(r io.Reader) (metrics, error) {
	m := metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// sum adds the samples of metric name whose labels include every one of
// labels (`backend="db1"`).
func (m metrics) sum(name string, labels ...string) float64 {
	var s float64
	for k, v := range m {
		n, rest, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
				break
			}
		}
		if ok {
			s += v
		}
	}
	return s
}

// backend is one database server behind the proxies.
type backend struct {
	name string
	pg   *testenv.Postgres
	rd   *testenv.Redis
}

func (b *backend) addr() string {
	if b.pg != nil {
		return b.pg.Addr()
	}
	return b.rd.Addr()
}

func (b *backend) pid() int {
	if b.pg != nil {
		return b.pg.Pid()
	}
	return b.rd.Pid()
}

// kill kills the server (and a PostgreSQL server's children) if it runs.
func (b *backend) kill() error {
	if b.pg != nil {
		return b.pg.Kill()
	}
	return b.rd.Kill()
}

// rejoin starts the killed server again as a replica of primary.
func (b *backend) rejoin(primary *backend) error {
	if b.pg != nil {
		return b.pg.RejoinAsStandby(primary.pg, true)
	}
	return b.rd.RejoinAsReplica(primary.rd)
}

// bench is one configuration: two servers (a primary and a replica)
// behind one proxy or a cluster of three, all with default timings.
type bench struct {
	t        *testing.T
	kind     string // "postgres" | "redis"
	dir      string
	password string
	backends []*backend
	proxies  []*proxy
	hookLog  string // every promote hook run appends "EPOCH NEW_BACKEND"
	cfg      *config.Config
	env      []string
}

func (b *bench) clustered() bool { return len(b.proxies) > 1 }

func (b *bench) name() string {
	if b.clustered() {
		return fmt.Sprintf("%s, cluster of %d", kindTitle(b.kind), len(b.proxies))
	}
	return kindTitle(b.kind) + ", proxy alone"
}

func kindTitle(kind string) string {
	if kind == "postgres" {
		return "PostgreSQL"
	}
	return "Redis"
}

func (b *bench) backend(name string) *backend {
	for _, x := range b.backends {
		if x.name == name {
			return x
		}
	}
	return nil
}

// newBench starts a primary with a replica (PostgreSQL: a synchronous
// standby) and nProxies proxies in front of them, and waits until every
// proxy routes to the primary.
func newBench(t *testing.T, kind string, nProxies int) *bench {
	t.Helper()
	testenv.Need(t, kind)
	b := &bench{t: t, kind: kind, dir: t.TempDir(), password: "defaults-bench"}
	b.hookLog = filepath.Join(b.dir, "promotions.log")
	switch kind {
	case "postgres":
		p1 := testenv.MustPostgres(t, testenv.PGOptions{Password: b.password})
		p2 := testenv.MustStandby(t, p1, true)
		b.backends = []*backend{{name: "db1", pg: p1}, {name: "db2", pg: p2}}
	case "redis":
		r1 := testenv.MustRedis(t, testenv.RedisOptions{Password: b.password})
		r2 := testenv.MustReplica(t, r1)
		b.backends = []*backend{{name: "db1", rd: r1}, {name: "db2", rd: r2}}
	}
	addr := func() string {
		port, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	for i := range nProxies {
		p := &proxy{name: "qp" + strconv.Itoa(i+1), admin: addr(), listen: addr(), gossip: addr()}
		p.stateDir = filepath.Join(b.dir, p.name+".state")
		p.cfgPath = filepath.Join(b.dir, p.name+".toml")
		b.proxies = append(b.proxies, p)
	}
	keyFile := filepath.Join(b.dir, "gossip.key")
	if err := os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range b.proxies {
		if err := os.WriteFile(p.cfgPath, []byte(b.config(p, keyFile)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, _, err := config.Load(b.proxies[0].cfgPath)
	if err != nil {
		t.Fatalf("the generated config: %v", err)
	}
	b.cfg = cfg
	b.env = append(os.Environ(), "QP_DEFAULTS_DB_PASSWORD="+b.password,
		// The sample hooks log in with libpq's and redis-cli's variables.
		"PGUSER="+testenv.User, "PGPASSWORD="+b.password, "PGDATABASE=postgres", "REDISCLI_AUTH="+b.password)
	for _, p := range b.proxies {
		p.start(t, b.env)
	}
	if err := b.waitRouted(2*time.Minute, "db1"); err != nil {
		t.Fatal(err)
	}
	return b
}

// config is proxy p's configuration: what a service needs and no timing,
// unless QP_DEFAULTS_HEALTH or QP_DEFAULTS_CLUSTER add some.
func (b *bench) config(p *proxy, keyFile string) string {
	var c strings.Builder
	fmt.Fprintf(&c, "[admin]\nlisten = %q\n\n", p.admin)
	if b.clustered() {
		fmt.Fprintf(&c, "[cluster]\nnode_name = %q\nsecret_key_file = %q\nstate_dir = %q\n%s\n", p.name, keyFile, p.stateDir, os.Getenv("QP_DEFAULTS_CLUSTER"))
		for _, q := range b.proxies {
			fmt.Fprintf(&c, "[[cluster.peer]]\nname = %q\naddress = %q\n", q.name, q.gossip)
		}
		c.WriteString("\n")
	}
	fmt.Fprintf(&c, "[[service]]\nname = %q\nlisten = %q\nrole = \"primary\"\n\n  [service.health]\n  kind = %q\n", service, p.listen, b.kind)
	hook := "redis-promote"
	if b.kind == "postgres" {
		c.WriteString("  user = \"qp\"\n  database = \"postgres\"\n")
		hook = "pg-promote"
	}
	c.WriteString("  password_env = \"QP_DEFAULTS_DB_PASSWORD\"\n")
	if extra := os.Getenv("QP_DEFAULTS_HEALTH"); extra != "" {
		c.WriteString("  " + strings.ReplaceAll(extra, "\n", "\n  ") + "\n")
	}
	// The sample promote hook, its runs counted.
	fmt.Fprintf(&c, "\n  [service.hooks]\n  promote = [\"/bin/sh\", \"-c\", \"echo \\\"${QP_EPOCH:-0} $QP_NEW_BACKEND\\\" >> \\\"$0\\\"; exec \\\"$1\\\"\", %q, %q]\n",
		b.hookLog, filepath.Join(hooksDir, hook))
	for i, x := range b.backends {
		fmt.Fprintf(&c, "\n  [[service.backend]]\n  name = %q\n  address = %q\n  priority = %d\n", x.name, x.addr(), 100-50*i)
	}
	return c.String()
}

// promotions counts the promote hook's runs so far.
func (b *bench) promotions() int {
	data, _ := os.ReadFile(b.hookLog)
	return strings.Count(string(data), "\n")
}

// routes reports whether proxy p forwards new clients to backend now (in
// a cluster under a lease), and if not, why.
func routes(st *adminapi.Status, backend string) (bool, string) {
	sv := st.Service(service)
	if sv == nil {
		return false, "no service"
	}
	if cv := st.ClusterService(service); cv != nil || st.Cluster != nil {
		if cv == nil {
			return false, "no cluster record"
		}
		if cv.Routing != backend || cv.LeaseMS <= 0 {
			return false, fmt.Sprintf("cluster primary %q, routing %q, lease %.0fms (%s)", cv.Primary, cv.Routing, cv.LeaseMS, cv.Held)
		}
		return true, ""
	}
	for _, x := range sv.Backends {
		if x.Name == backend && sv.Target == backend && x.Health == "up" && x.Role == "primary" {
			return true, ""
		}
	}
	return false, fmt.Sprintf("target %q (%s)", sv.Target, sv.Why)
}

// everyProxy asks each proxy's status whether ok holds, and returns ""
// when it does for all, else why not for the first that fails.
func (b *bench) everyProxy(ok func(*adminapi.Status) (bool, string)) string {
	for _, p := range b.proxies {
		st, err := p.status(context.Background())
		if err != nil {
			return fmt.Sprintf("%s: %v", p.name, err)
		}
		if good, why := ok(st); !good {
			return p.name + ": " + why
		}
	}
	return ""
}

// waitRouted waits until every proxy routes to backend.
func (b *bench) waitRouted(timeout time.Duration, backend string) error {
	deadline := time.Now().Add(timeout)
	for {
		why := b.everyProxy(func(st *adminapi.Status) (bool, string) { return routes(st, backend) })
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not every proxy routes to %s after %s: %s", backend, timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// settle waits until every proxy has been drill.Settled (routed, every
// backend up, only the target reporting primary, nothing in flight) for
// a second and a check interval, as drill -repeat does between runs.
func (b *bench) settle(timeout time.Duration) error {
	stable := max(b.cfg.Services[0].Health.Interval, time.Second)
	deadline := time.Now().Add(timeout)
	var since time.Time
	for {
		why := b.everyProxy(func(st *adminapi.Status) (bool, string) { return drill.Settled(st, service) })
		switch {
		case why != "":
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= stable:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("did not settle within %s: %s", timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// target is the backend the first proxy targets now.
func (b *bench) target() (string, error) {
	st, err := b.proxies[0].status(context.Background())
	if err != nil {
		return "", err
	}
	if cv := st.ClusterService(service); cv != nil {
		return cv.Primary, nil
	}
	if sv := st.Service(service); sv != nil && sv.Target != "" {
		return sv.Target, nil
	}
	return "", fmt.Errorf("%s has no target", b.proxies[0].name)
}

// settings names the effective timings of the configuration.
func (b *bench) settings() string {
	h := b.cfg.Services[0].Health
	s := fmt.Sprintf("interval %s, timeout %s, rise %d, fall %d, fast_interval %s, down_interval %s; switch_hold %s",
		h.Interval, h.Timeout, h.Rise, h.Fall, h.FastInterval, h.DownInterval, b.cfg.Services[0].SwitchHold)
	if c := b.cfg.Cluster; c != nil {
		s += fmt.Sprintf("; lease_timeout %s, gossip_interval %s, probe_interval %s", c.LeaseTimeout, c.GossipInterval, c.ProbeInterval)
	}
	return s
}

// treeCPU is the CPU time, in seconds, that pid and its descendants have
// used (children they reaped included).
func treeCPU(pid int) float64 {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	cpu := map[int]float64{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 15 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[n] = pp
		var ticks float64
		for _, x := range f[11:15] { // utime stime cutime cstime
			v, _ := strconv.ParseFloat(x, 64)
			ticks += v
		}
		cpu[n] = ticks / 100
	}
	var total float64
	for n, c := range cpu {
		for a := n; a > 1; a = parent[a] {
			if a == pid {
				total += c
				break
			}
		}
	}
	return total
}

// machineBusy reads the machine's busy and total CPU time from /proc/stat.
func machineBusy() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, x := range f[1:] {
		v, _ := strconv.ParseFloat(x, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// loadAvg is the first field of /proc/loadavg.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}
