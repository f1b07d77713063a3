package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qp-cmd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "quorumproxy")
	out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building quorumproxy: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func runBin(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func TestCheckConfigExitCodes(t *testing.T) {
	out, errOut, code := runBin(t, "check-config", "-skip-files", "../../testdata/example.toml")
	if code != 0 {
		t.Fatalf("example.toml: exit %d\n%s%s", code, out, errOut)
	}
	// Without -skip-files the files it names are read, and they are not here.
	if _, errOut, code := runBin(t, "check-config", "../../testdata/example.toml"); code != 1 ||
		!strings.Contains(errOut, "secret_key_file: gossip key: open /etc/quorumproxy/gossip.key") {
		t.Errorf("example.toml with its files missing: exit %d\n%s", code, errOut)
	}
	bad, err := filepath.Glob("../../testdata/bad/*.toml")
	if err != nil || len(bad) == 0 {
		t.Fatalf("no bad configs found: %v", err)
	}
	for _, f := range bad {
		_, errOut, code := runBin(t, "check-config", f)
		if code != 1 {
			t.Errorf("%s: exit %d, want 1", f, code)
		}
		// Every problem names the file it is in.
		if !strings.Contains(errOut, filepath.Base(f)) {
			t.Errorf("%s: errors do not name the file:\n%s", f, errOut)
		}
	}
	if _, _, code := runBin(t, "check-config"); code != 2 {
		t.Errorf("no file: exit %d, want 2", code)
	}
	if _, _, code := runBin(t, "check-config", "/nonexistent/qp.toml"); code != 1 {
		t.Errorf("missing file: exit %d, want 1", code)
	}
	if out, _, code := runBin(t, "version"); code != 0 || !regexp.MustCompile(`^quorumproxy \d+\.\d+\.\d+ \(commit \S+, built \S+, go`).MatchString(out) {
		t.Errorf("version: exit %d %q", code, out)
	}
	if _, _, code := runBin(t, "frobnicate"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

// echoServer is a real TCP backend that answers every line with its name and the line.
type echoServer = testenv.EchoServer

func startEcho(t *testing.T, name string) *echoServer { return testenv.StartEcho(t, name) }

func freeAddr(t *testing.T) string { return testenv.FreeAddr(t) }

type daemonProc struct {
	cmd    *exec.Cmd
	admin  string
	logs   *testenv.Buffer
	exited chan error
}

func startDaemon(t *testing.T, cfgPath, admin string) *daemonProc {
	t.Helper()
	return startDaemonCmd(t, exec.Command(binPath, "run", "-config", cfgPath), admin)
}

// startDaemonCmd is startDaemon with a command of the caller's.
func startDaemonCmd(t *testing.T, cmd *exec.Cmd, admin string) *daemonProc {
	t.Helper()
	d := &daemonProc{cmd: cmd, admin: admin, logs: &testenv.Buffer{}, exited: make(chan error, 1)}
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.exited
		if t.Failed() {
			t.Logf("daemon logs:\n%s", d.logs.String())
		}
	})
	return d
}

func (d *daemonProc) status(t *testing.T) (*adminapi.Status, error) {
	return (&adminapi.Client{Addr: d.admin}).Status(context.Background())
}

func (d *daemonProc) service(t *testing.T, name string) *adminapi.Service {
	st, err := d.status(t)
	if err != nil {
		return nil
	}
	for i := range st.Services {
		if st.Services[i].Name == name {
			return &st.Services[i]
		}
	}
	return nil
}

func ask(addr, line string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(reply), err
}

const daemonConfig = `
[admin]
listen = %q

[proxy]
drain_timeout = "2s"

[[service]]
name = "echo"
listen = %q
failback = "manual"
switch_hold = "1s"

  [service.health]
  kind = "tcp"
  interval = "100ms"
  timeout = "50ms"
  rise = 1
  fall = 2

  [service.hooks]
  promote = ["/bin/sh", "-c", "env | grep '^QP_' | sort > \"$0\"", %q]

  [[service.backend]]
  name = "a"
  address = %q
  priority = 10

  [[service.backend]]
  name = "b"
  address = %q
  priority = 5
%s`

func TestRunFailoverReloadDrain(t *testing.T) {
	dir := t.TempDir()
	a, b := startEcho(t, "a"), startEcho(t, "b")
	admin, listen := freeAddr(t), freeAddr(t)
	hookOut := filepath.Join(dir, "hook.env")
	cfgPath := filepath.Join(dir, "qp.toml")
	write := func(extra string) {
		cfg := fmt.Sprintf(daemonConfig, admin, listen, hookOut, a.Addr(), b.Addr(), extra)
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	d := startDaemon(t, cfgPath, admin)

	testwait.For(t, "target a", 10*time.Second, func() bool {
		s := d.service(t, "echo")
		return s != nil && s.Target == "a"
	})
	if got, err := ask(listen, "hello"); err != nil || got != "a:hello" {
		t.Fatalf("through the proxy: %q %v", got, err)
	}

	// The primary dies: traffic moves to b and the promote hook sees where.
	a.Close()
	testwait.For(t, "target b", 10*time.Second, func() bool {
		s := d.service(t, "echo")
		return s != nil && s.Target == "b"
	})
	if got, err := ask(listen, "again"); err != nil || got != "b:again" {
		t.Fatalf("after failover: %q %v", got, err)
	}
	testwait.For(t, "promote hook output", 10*time.Second, func() bool {
		data, err := os.ReadFile(hookOut)
		return err == nil && strings.Contains(string(data), "QP_NEW_BACKEND=b\n") &&
			strings.Contains(string(data), "QP_OLD_BACKEND=a\n") && strings.Contains(string(data), "QP_NEW_ADDRESS="+b.Addr()+"\n")
	})
	// The echo service has no roles: the failover fenced a on this proxy.
	if s := d.service(t, "echo"); s == nil || len(s.Backends) != 2 || !s.Backends[0].Fenced {
		t.Errorf("a not fenced after the failover: %+v", s)
	}

	// An invalid file on SIGHUP is reported and the running config stays.
	if err := os.WriteFile(cfgPath, []byte("[[service]]\nname = \"echo\"\nlisten = 12\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	testwait.For(t, "failed reload reported", 10*time.Second, func() bool {
		st, err := d.status(t)
		return err == nil && !st.LastReload.OK && st.LastReload.Error != ""
	})
	if got, err := ask(listen, "still"); err != nil || got != "b:still" {
		t.Fatalf("after a bad reload: %q %v", got, err)
	}

	// A valid reload adds a service while the first keeps serving.
	c := startEcho(t, "c")
	listen2 := freeAddr(t)
	write(fmt.Sprintf(`
[[service]]
name = "second"
listen = %q
mode = "active-active"
  [service.health]
  interval = "100ms"
  timeout = "50ms"
  rise = 1
  [[service.backend]]
  name = "c"
  address = %q
`, listen2, c.Addr()))
	// A key read only at start is changed too: the reload says it waits.
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte("drain_timeout = \"2s\"\n"), []byte("drain_timeout = \"2s\"\nio_uring = \"off\"\n"), 1)
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	testwait.For(t, "second service routing", 10*time.Second, func() bool {
		got, err := ask(listen2, "x")
		return err == nil && got == "c:x"
	})
	testwait.For(t, "the reload's word on io_uring", 10*time.Second, func() bool {
		return strings.Contains(d.logs.String(), "loops and io_uring take effect at the next restart")
	})
	if got, err := ask(listen, "first"); err != nil || got != "b:first" {
		t.Fatalf("first service after reload: %q %v", got, err)
	}

	// Metrics carry the counters by service and backend.
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"quorumproxy_connections_accepted_total", `service="echo"`, "quorumproxy_backend_sent_bytes_total", "quorumproxy_health_transitions_total", `quorumproxy_loop_busy_seconds_total{loop="0"}`, `quorumproxy_loop_steered{loop="0"} 1`} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The loops, between them, accepted the connections made so far.
	accepted := 0
	for _, m := range regexp.MustCompile(`(?m)^quorumproxy_loop_accepted_total\{loop="[0-9]+"\} ([0-9]+)$`).FindAllSubmatch(body, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		accepted += n
	}
	if accepted == 0 {
		t.Errorf("/metrics: the loops accepted no connection, or the series is missing")
	}

	// The status command prints the table.
	out, errOut, code := runBin(t, "status", "-admin", admin)
	if code != 0 || !strings.Contains(out, "service echo") || !strings.Contains(out, "*b") {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}

	// SIGTERM drains: a session still open is closed within drain_timeout and the process exits 0.
	held, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.exited:
		d.exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit within 15s of SIGTERM")
	}
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil {
		t.Fatal("held session still open after shutdown")
	}
}

// quorumproxy drain takes a backend of an active-active service out of new
// connections on this proxy, status shows it, and undrain puts it back;
// without the token, or for a backend the service lacks, it is refused.
func TestDrainCommand(t *testing.T) {
	dir := t.TempDir()
	a, b := startEcho(t, "a"), startEcho(t, "b")
	admin, listen := freeAddr(t), freeAddr(t)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "qp.toml")
	cfg := fmt.Sprintf(`
[admin]
listen = %q
token_file = %q

[[service]]
name = "web"
listen = %q
mode = "active-active"

  [service.health]
  kind = "tcp"
  interval = "300ms"
  timeout = "250ms"
  rise = 1
  fall = 10

  [[service.backend]]
  name = "a"
  address = %q

  [[service.backend]]
  name = "b"
  address = %q
`, admin, tokenFile, listen, a.Addr(), b.Addr())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, cfgPath, admin)
	seen := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			if r, err := ask(listen, "x"); err == nil {
				got[strings.TrimSuffix(r, ":x")]++
			}
		}
		return got
	}
	testwait.For(t, "both backends in rotation", 10*time.Second, func() bool { g := seen(4); return g["a"] > 0 && g["b"] > 0 })

	if _, _, code := runBin(t, "drain", "-admin", admin, "-service", "web", "-backend", "b"); code == 0 {
		t.Fatal("drain without the token was accepted")
	}
	if _, errOut, code := runBin(t, "fence", "-admin", admin, "-token-file", tokenFile, "-service", "web", "-backend", "b"); code != 1 || !strings.Contains(errOut, "drain") {
		t.Fatalf("fence in an active-active service: exit %d, %q; want a refusal pointing to drain", code, errOut)
	}
	if _, errOut, code := runBin(t, "drain", "-admin", admin, "-token-file", tokenFile, "-service", "web", "-backend", "zz"); code != 1 || !strings.Contains(errOut, `no backend "zz"`) {
		t.Fatalf("drain of an unknown backend: exit %d, %q", code, errOut)
	}
	if out, errOut, code := runBin(t, "drain", "-admin", admin, "-token-file", tokenFile, "-service", "web", "-backend", "b"); code != 0 {
		t.Fatalf("drain: exit %d: %s %s", code, out, errOut)
	}
	if g := seen(8); g["b"] != 0 || g["a"] != 8 {
		t.Fatalf("after the drain of b: %v, want every connection on a", g)
	}
	if out, _, _ := runBin(t, "status", "-admin", admin); !regexp.MustCompile(`b +\S+ +up, draining`).MatchString(out) {
		t.Errorf("status does not show b draining:\n%s", out)
	}
	if _, _, code := runBin(t, "undrain", "-admin", admin, "-token-file", tokenFile, "-service", "web", "-backend", "b"); code != 0 {
		t.Fatal("undrain failed")
	}
	if g := seen(8); g["b"] == 0 {
		t.Fatalf("after the undrain of b: %v, want b back in rotation", g)
	}
}
