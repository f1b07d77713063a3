package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

const upgradeConfig = `
[admin]
listen = %q

[proxy]
# Long enough that every old process waits for its session to end.
drain_timeout = "120s"
loops = %d

[[service]]
name = "redis"
listen = %q
switch_hold = "2s"

  [service.health]
  kind = "redis"
  interval = "500ms"
  timeout = "400ms"
  rise = 1
  fall = 3

  [[service.backend]]
  name = "r1"
  address = %q
`

// churn counts what clients of many short connections saw: each dials
// the proxy, sends PING, reads +PONG and closes.
type churn struct {
	made, refused, failed atomic.Int64
	mu                    sync.Mutex
	firstErr              error
}

func (c *churn) run(ctx context.Context, addr string, do func(net.Conn, *bufio.Reader) error) {
	for ctx.Err() == nil {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				c.refused.Add(1)
			} else {
				c.failed.Add(1)
			}
			c.note(err)
			continue
		}
		err = do(conn, bufio.NewReader(conn))
		conn.Close()
		if err != nil {
			c.failed.Add(1) // reset, closed or a wrong reply
			c.note(err)
			continue
		}
		c.made.Add(1)
	}
}

func (c *churn) note(err error) {
	c.mu.Lock()
	if c.firstErr == nil {
		c.firstErr = err
	}
	c.mu.Unlock()
}

func pingOnce(conn net.Conn, r *bufio.Reader) error {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("reply %q", line)
	}
	return nil
}

// longSession is a client connection opened before an upgrade and used
// all along: every PING must be answered.
type longSession struct {
	conn  net.Conn
	r     *bufio.Reader
	pings int
	pid   int // the process that accepted it
}

func (s *longSession) ping(t *testing.T) {
	t.Helper()
	if err := pingOnce(s.conn, s.r); err != nil {
		t.Fatalf("long session (opened on pid %d) after %d pings: %v", s.pid, s.pings, err)
	}
	s.pings++
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !bytes.Contains(st, []byte(") Z "))
}

var (
	handedOverRe = regexp.MustCompile(`msg="upgrade: handed over; draining" new_pid=(\d+) took=(\S+)`)
	failedRe     = regexp.MustCompile(`msg="upgrade failed: keeping this process"`)
)

// TestUpgradeDropsNothing restarts the proxy onto the binary on disk with
// SIGUSR2, several times, under a load of short connections (Go clients
// and redis-benchmark -k 0) plus long sessions opened before each
// upgrade: no connection is refused or reset, each long session keeps
// working on the process that accepted it, which exits only after that
// session ends. The number of event loops changes between upgrades (2, 3,
// 1), so the new process both binds beside the handed-over sockets and
// takes several on one loop. A config that does not load leaves the old
// process serving.
func TestUpgradeDropsNothing(t *testing.T) {
	mark := testenv.Mark(t)
	t.Cleanup(func() { testenv.KillMarked(mark) })
	r := testenv.MustRedis(t, testenv.RedisOptions{})
	dir := t.TempDir()
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "qp.toml")
	writeCfg := func(loops int) {
		cfg := fmt.Sprintf(upgradeConfig, admin, loops, listen, r.Addr())
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(2)
	// The log goes to a file, not a pipe: the new processes inherit it,
	// and the first one's Wait must not wait for them.
	logPath := filepath.Join(dir, "qp.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	first := exec.Command(binPath, "run", cfgPath)
	first.Stdout, first.Stderr = logf, logf
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	go first.Wait() // reaps it; liveness is read from /proc
	logs := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	defer func() {
		if t.Failed() {
			t.Logf("proxy logs:\n%s", logs())
		}
	}()
	testwait.For(t, "the proxy routing to redis", 20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		return pingOnce(c, bufio.NewReader(c)) == nil
	})

	ctx, stop := context.WithCancel(context.Background())
	var ch churn
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); ch.run(ctx, listen, pingOnce) }()
	}
	var bench *exec.Cmd
	var benchOut bytes.Buffer
	benchExited := make(chan error, 1)
	if path, err := exec.LookPath("redis-benchmark"); err == nil {
		_, port, _ := net.SplitHostPort(listen)
		bench = exec.Command(path, "-h", "127.0.0.1", "-p", port, "-k", "0", "-c", "4", "-l", "-q", "-t", "ping_inline")
		bench.Stdout, bench.Stderr = &benchOut, &benchOut
		if err := bench.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { benchExited <- bench.Wait() }()
		t.Cleanup(func() { bench.Process.Kill() })
	} else {
		t.Log("redis-benchmark not installed (Debian redis-tools): Go clients only")
	}
	// Some load before the first upgrade.
	testwait.For(t, "short connections through the proxy", 20*time.Second, func() bool { return ch.made.Load() >= 50 })

	pid := first.Process.Pid
	var sessions []*longSession
	var tooks []string
	var during int64 // short connections completed between SIGUSR2 and the hand-over
	redisConns := func() int {
		info, err := r.Client().Info(context.Background(), "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(regexp.MustCompile(`total_connections_received:(\d+)`).FindStringSubmatch(info)[1])
		return n
	}
	redisBefore := redisConns()
	upgrade := func(loops int) {
		t.Helper()
		c, err := net.Dial("tcp", listen)
		if err != nil {
			t.Fatal(err)
		}
		s := &longSession{conn: c, r: bufio.NewReader(c)}
		s.ping(t)
		// Mostly pid; the one before it if that still accepted for a moment.
		if s.pid = socketOwner(t, mark, c); s.pid == 0 {
			t.Fatalf("no proxy process holds the session from %s", c.LocalAddr())
		}
		sessions = append(sessions, s)
		writeCfg(loops)
		before := len(handedOverRe.FindAllString(logs(), -1))
		madeBefore := ch.made.Load()
		if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		var m []string
		testwait.For(t, "the hand-over", 90*time.Second, func() bool {
			all := handedOverRe.FindAllStringSubmatch(logs(), -1)
			if len(all) > before {
				m = all[before]
				return true
			}
			return false
		})
		during += ch.made.Load() - madeBefore
		next, _ := strconv.Atoi(m[1])
		tooks = append(tooks, m[2])
		// Every long session so far still works, and every old process
		// still runs: it waits for its session.
		for _, s := range sessions {
			s.ping(t)
			if !alive(s.pid) {
				t.Fatalf("pid %d exited while its session was open", s.pid)
			}
		}
		if !alive(next) {
			t.Fatalf("new pid %d not running", next)
		}
		pid = next
	}
	upgrade(3) // more loops than handed-over sockets: bind beside them
	upgrade(1) // fewer: one loop accepts on three sockets
	upgrade(2)

	// A config that does not load: the new process exits, this one serves on.
	if err := os.WriteFile(cfgPath, []byte("[proxy]\nloops = \"many\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	failedBefore := len(failedRe.FindAllString(logs(), -1))
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the failed upgrade reported", 60*time.Second, func() bool {
		return len(failedRe.FindAllString(logs(), -1)) > failedBefore
	})
	if !alive(pid) {
		t.Fatalf("pid %d exited after a failed upgrade", pid)
	}
	made := ch.made.Load()
	testwait.For(t, "short connections after the failed upgrade", 20*time.Second, func() bool { return ch.made.Load() >= made+50 })
	writeCfg(2)

	stop()
	wg.Wait()
	benchRan := "not run"
	if bench != nil {
		select {
		case err := <-benchExited:
			t.Errorf("redis-benchmark stopped during the upgrades: %v\n%s", err, benchOut.String())
		default:
			bench.Process.Kill()
			<-benchExited
			benchRan = lastLine(benchOut.String())
		}
	}
	t.Logf("upgrades: 3 hand-overs took %v (SIGUSR2 to the new process ready); Go clients' short connections: %d made (%d of them during the hand-overs), %d refused, %d failed; connections Redis received through the proxies meanwhile (redis-benchmark's and health checks included): %d; long sessions: %d on pids %v, pings %v; redis-benchmark -k 0, no error: %s",
		tooks, ch.made.Load(), during, ch.refused.Load(), ch.failed.Load(), redisConns()-redisBefore, len(sessions), pidsOf(sessions), pingsOf(sessions), benchRan)
	if n, f := ch.refused.Load(), ch.failed.Load(); n != 0 || f != 0 {
		t.Errorf("%d connections refused, %d failed during the upgrades (first: %v)", n, f, ch.firstErr)
	}
	if bytes.Contains(benchOut.Bytes(), []byte("Error")) || bytes.Contains(benchOut.Bytes(), []byte("Could not connect")) {
		t.Errorf("redis-benchmark saw errors:\n%s", benchOut.String())
	}

	// Each old process ends once its last session does, not before (two
	// sessions are on one process when the second came just before the
	// process stopped accepting).
	for i, s := range sessions {
		s.ping(t)
		if !alive(s.pid) {
			t.Fatalf("pid %d exited while its session was open", s.pid)
		}
		s.conn.Close()
		if i+1 < len(sessions) && sessions[i+1].pid == s.pid {
			continue
		}
		deadline := time.Now().Add(30 * time.Second)
		for alive(s.pid) && time.Now().Before(deadline) {
			time.Sleep(testwait.Every)
		}
		if alive(s.pid) {
			// Its goroutines go to the log, for the failure below.
			syscall.Kill(s.pid, syscall.SIGQUIT)
			testwait.For(t, "the stuck process to dump its goroutines", 10*time.Second, func() bool { return !alive(s.pid) })
			t.Fatalf("pid %d still runs 30s after its last session closed", s.pid)
		}
	}
	if !alive(pid) {
		t.Fatalf("the last process %d is not running", pid)
	}
	noRace(t, logs())
}

// noRace fails t if a proxy process (built with -race) reported a race:
// it would only show in its exit status, which nobody waits for here.
func noRace(t *testing.T, logs string) {
	t.Helper()
	if strings.Contains(logs, "WARNING: DATA RACE") {
		t.Errorf("a proxy process reported a data race:\n%s", logs)
	}
}

// socketOwner returns the pid of the marked process holding the server
// side of client connection c (IPv4 loopback), 0 if none does.
func socketOwner(t *testing.T, mark string, c net.Conn) int {
	t.Helper()
	hexAddr := func(a net.Addr) string {
		ta := a.(*net.TCPAddr)
		ip := ta.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ta.Port)
	}
	local, remote := hexAddr(c.RemoteAddr()), hexAddr(c.LocalAddr())
	tab, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	var inode string
	for _, line := range bytes.Split(tab, []byte("\n"))[1:] {
		f := bytes.Fields(line)
		if len(f) > 9 && string(f[1]) == local && string(f[2]) == remote {
			inode = string(f[9])
		}
	}
	if inode == "" {
		return 0
	}
	want := "socket:[" + inode + "]"
	for _, pid := range testenv.Marked(mark) {
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
		for _, fd := range fds {
			if l, err := os.Readlink(fd); err == nil && l == want {
				return pid
			}
		}
	}
	return 0
}

func pidsOf(ss []*longSession) []int {
	var n []int
	for _, s := range ss {
		n = append(n, s.pid)
	}
	return n
}

func pingsOf(ss []*longSession) []int {
	var n []int
	for _, s := range ss {
		n = append(n, s.pings)
	}
	return n
}

// lastLine is the last progress line redis-benchmark -q printed.
func lastLine(out string) string {
	lines := regexp.MustCompile(`[\r\n]+`).Split(out, -1)
	for i := len(lines) - 1; i >= 0; i-- {
		if l := bytes.TrimSpace([]byte(lines[i])); len(l) > 0 {
			return string(l)
		}
	}
	return ""
}

// echoOnce asks an echo backend once and wants its answer.
func echoOnce(conn net.Conn, r *bufio.Reader) error {
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, "x\n"); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "a:x\n" {
		return fmt.Errorf("reply %q", line)
	}
	return nil
}

// TestUpgradeInCluster upgrades one proxy of three under a load of short
// connections: the old process stops accepting and leaves the cluster
// once the new one has loaded its config, the new one joins, recovers and
// routes with a lease. No client is refused (they wait in the listen
// backlog, then in switch_hold, for the lease), no proxy ever routes
// elsewhere than the primary, and the epoch does not move.
func TestUpgradeInCluster(t *testing.T) {
	a, b := startEcho(t, "a"), startEcho(t, "b")
	dir := t.TempDir()
	keyFile, tokenFile, peers, gossip := clusterFiles(t, dir)
	var ps []*clusterProxy
	for _, n := range clusterNames {
		p := &clusterProxy{name: n, admin: freeAddr(t), listen: freeAddr(t), hookOut: filepath.Join(dir, n+".hooks"),
			stateDir: filepath.Join(dir, n+".state"), cfgPath: filepath.Join(dir, n+".toml")}
		cfg := fmt.Sprintf(clusterConfig, p.admin, tokenFile, n, gossip[n], keyFile, p.stateDir,
			peers, p.listen, p.hookOut, p.hookOut, a.Addr(), b.Addr())
		// Long enough for the new process to join and get its lease.
		cfg = strings.Replace(cfg, `switch_hold = "300ms"`, `switch_hold = "15s"`, 1)
		if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	mark := testenv.Mark(t)
	for _, p := range ps {
		p.d = startDaemon(t, p.cfgPath, p.admin)
	}
	// Registered after the daemons' cleanups, so it runs first: their
	// log pipe closes only when the new process is gone too.
	t.Cleanup(func() { testenv.KillMarked(mark) })
	testwait.For(t, "every proxy routing to a", 60*time.Second, allRoute(t, "a", ps))
	_, epoch := ps[0].routing(t)

	// Watch every proxy's route: never another backend, never a new epoch.
	ctx, stop := context.WithCancel(context.Background())
	var wrong atomic.Value
	var noRoute atomic.Int64 // polls of the upgraded proxy without a route
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			for i, p := range ps {
				r, e := p.routing(t)
				switch {
				case r != "" && r != "a", e != 0 && e != epoch:
					wrong.CompareAndSwap(nil, fmt.Sprintf("%s routes to %q at epoch %d (was a at %d)", p.name, r, e, epoch))
				case r == "" && i == 0:
					noRoute.Add(1)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var ch churn
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); ch.run(ctx, ps[0].listen, echoOnce) }()
	}
	testwait.For(t, "short connections through the proxy", 20*time.Second, func() bool { return ch.made.Load() >= 50 })
	long, err := net.Dial("tcp", ps[0].listen)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	lr := bufio.NewReader(long)
	if err := echoOnce(long, lr); err != nil {
		t.Fatal(err)
	}

	madeBefore := ch.made.Load()
	if err := ps[0].d.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	var took string
	var during int64
	testwait.For(t, "the hand-over", 90*time.Second, func() bool {
		m := handedOverRe.FindStringSubmatch(ps[0].d.logs.String())
		if m != nil {
			took, during = m[2], ch.made.Load()-madeBefore
		}
		return m != nil
	})
	testwait.For(t, "the new process routing to a", 30*time.Second, allRoute(t, "a", ps[:1]))
	made := ch.made.Load()
	testwait.For(t, "short connections after the upgrade", 30*time.Second, func() bool { return ch.made.Load() >= made+50 })
	stop()
	wg.Wait()
	// The old process's session forwards only while the lease it had when
	// it left holds (lease_timeout 600ms): then the data plane closes it.
	longStart := time.Now()
	var longPings int
	testwait.For(t, "the old process's session closed at its lease end", 20*time.Second, func() bool {
		if echoOnce(long, lr) != nil {
			return true
		}
		longPings++
		return false
	})
	t.Logf("cluster upgrade: took %s (SIGUSR2 to the new process ready, with a lease); short connections: %d made (%d during the hand-over), %d refused, %d failed; polls of the upgraded proxy's admin API (20ms apart) that saw no route: %d; the session open on the old process answered %d more times and was closed %v after the checks above",
		took, ch.made.Load(), during, ch.refused.Load(), ch.failed.Load(), noRoute.Load(), longPings, time.Since(longStart).Round(time.Millisecond))
	if w := wrong.Load(); w != nil {
		t.Errorf("during the upgrade: %s", w)
	}
	if n, f := ch.refused.Load(), ch.failed.Load(); n != 0 || f != 0 {
		t.Errorf("%d connections refused, %d failed during the upgrade (first: %v)", n, f, ch.firstErr)
	}
	if got := grepLines(ps[0].d.logs.String(), "leaving the cluster for it"); got == "" {
		t.Errorf("the old process did not say it left the cluster")
	}
	noRace(t, ps[0].d.logs.String())
}

// TestUpgradeKeepsFences: a proxy alone keeps the backend it failed over
// from fenced only in memory; the upgrade (here by `quorumproxy upgrade`,
// after one that fails on a bad config) carries the fence, so the new
// process does not route writes back to the old primary when it returns.
func TestUpgradeKeepsFences(t *testing.T) {
	dir := t.TempDir()
	a, b := startEcho(t, "a"), startEcho(t, "b")
	admin, listen := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "qp.toml")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(daemonConfig, admin, listen, filepath.Join(dir, "hook.env"), a.Addr(), b.Addr(), "")
	cfg = strings.Replace(cfg, "[admin]\n", fmt.Sprintf("[admin]\ntoken_file = %q\n", tokenFile), 1)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	mark := testenv.Mark(t)
	d := startDaemon(t, cfgPath, admin)
	t.Cleanup(func() { testenv.KillMarked(mark) }) // runs before the daemon's own cleanup
	testwait.For(t, "target a", 20*time.Second, func() bool { s := d.service(t, "echo"); return s != nil && s.Target == "a" })
	aAddr := a.Addr()
	a.Close()
	testwait.For(t, "target b, a fenced", 20*time.Second, func() bool {
		s := d.service(t, "echo")
		return s != nil && s.Target == "b" && len(s.Backends) == 2 && s.Backends[0].Fenced
	})
	startEchoAt(t, "a", aAddr) // the old primary is back

	// quorumproxy upgrade: refused without the token; a config that does
	// not load fails it, and the command says why; then it succeeds.
	if _, _, code := runBin(t, "upgrade", "-admin", admin); code != 1 {
		t.Fatalf("upgrade without the token: exit %d, want 1", code)
	}
	if err := os.WriteFile(cfgPath, []byte("[proxy]\nloops = \"many\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runBin(t, "upgrade", "-admin", admin, "-token-file", tokenFile); code != 1 || !strings.Contains(errOut, "upgrade failed: keeping this process") {
		t.Fatalf("upgrade onto a bad config: exit %d\n%s%s", code, out, errOut)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runBin(t, "upgrade", "-admin", admin, "-token-file", tokenFile); code != 0 || !strings.Contains(out, "upgraded: a new process") {
		t.Fatalf("upgrade: exit %d\n%s%s", code, out, errOut)
	}
	// Once the old process has stopped, only the new one answers.
	testwait.For(t, "the old process stopped after the hand-over", 90*time.Second, func() bool {
		return strings.Contains(d.logs.String(), `msg="quorumproxy stopped: handed over"`)
	})
	if !strings.Contains(d.logs.String(), `msg="upgrade: fence carried over" service=echo backend=a`) {
		t.Errorf("the new process did not say it carried the fence over")
	}
	s := d.service(t, "echo")
	if s == nil || s.Target != "b" || !s.Backends[0].Fenced {
		t.Fatalf("after the upgrade: %+v; want target b and a fenced", s)
	}
	if got, err := ask(listen, "w"); err != nil || got != "b:w" {
		t.Fatalf("after the upgrade: %q %v, want b", got, err)
	}
	noRace(t, d.logs.String())
}
