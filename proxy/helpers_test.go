package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("QP_PROXY_HELPER") == "1" {
		helperMain()
		return
	}
	goleak.VerifyTestMain(m)
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// server is a real TCP backend for tests.
type server struct {
	ln    net.Listener
	name  string
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	n     atomic.Int64 // connections accepted
}

// startServer runs handler for each connection; greet (if non-empty) is
// written first so tests can tell backends apart.
func startServer(t testing.TB, name string, handler func(c *net.TCPConn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, name: name, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.n.Add(1)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				handler(c.(*net.TCPConn))
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) close() {
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// echo copies back everything and half-closes at EOF.
func echo(c *net.TCPConn) {
	_, _ = io.Copy(c, c)
	_ = c.CloseWrite()
}

// named writes its name and a newline, then echoes.
func named(name string) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		if _, err := io.WriteString(c, name+"\n"); err != nil {
			return
		}
		echo(c)
	}
}

func startEcho(t testing.TB) *server { return startServer(t, "echo", echo) }

func startNamed(t testing.TB, name string) *server { return startServer(t, name, named(name)) }

func newProxy(t testing.TB, opts Options, cfgs ...ServiceConfig) *Proxy {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.parkAfter == 0 {
		// Park idle directions almost at once, so every test also runs
		// sessions through the poller.
		opts.parkAfter = 5 * time.Millisecond
	}
	p := New(opts)
	t.Cleanup(func() { _ = p.Close() })
	if err := p.Apply(cfgs); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *Proxy) parked() int64 {
	if p.poller == nil {
		return 0
	}
	return p.poller.parked.Load()
}

func (p *Proxy) statusOf(name string) ServiceStatus {
	st, _ := p.ServiceStatus(name)
	return st
}

func (p *Proxy) addrOf(t testing.TB, name string) string {
	t.Helper()
	a := p.statusOf(name).Addr
	if a == "" {
		t.Fatalf("service %q not listening", name)
	}
	return a
}

func (st ServiceStatus) backend(name string) BackendStatus {
	for _, b := range st.Backends {
		if b.Name == name {
			return b
		}
	}
	return BackendStatus{}
}

var upAny = Health{Known: true, Up: true, LagBytes: -1, Lag: -1}
var down = Health{Known: true, Up: false, LagBytes: -1, Lag: -1}

func upRole(r Role, lagBytes int64) Health {
	return Health{Known: true, Up: true, Role: r, LagBytes: lagBytes, Lag: -1}
}

// waitLimit is how long a proxy test waits for a state it polls for.
const waitLimit = 10 * time.Second

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// readLine reads the greeting line of a named backend.
func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("reading greeting: %v (got %q)", err, b)
		}
		if one[0] == '\n' {
			return string(b)
		}
		b = append(b, one[0])
	}
}

// backendOf connects and returns which named backend answered.
func backendOf(t testing.TB, addr string) (string, *net.TCPConn) {
	t.Helper()
	c := dial(t, addr)
	return readLine(t, c), c
}

// expectClosed asserts the peer closes c (EOF or reset) without data.
func expectClosed(t testing.TB, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("expected the proxy to close the connection, got n=%d err=%v", n, err)
	}
}

// roundTrip writes msg and expects it echoed.
func roundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo %q, want %q", buf, msg)
	}
}

// startHelper runs this test binary again as a helper process with env
// added, and returns its stdin and a scanner over its stdout; the helper
// is waited for when the test ends (closing stdin tells it to exit).
func startHelper(t *testing.T, env ...string) (io.WriteCloser, *bufio.Scanner, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	return stdin, bufio.NewScanner(stdout), cmd
}

// helperMain is a separate process holding the clients and the backend of
// the idle-connection test, so that the test process's fds and memory are
// the proxy's alone. Protocol on stdin/stdout: it prints the echo
// server's address; "open ADDR N" opens N connections through the proxy,
// round-trips a byte on each and prints "ok"; stdin EOF exits.
func helperMain() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Not io.Copy between TCP conns: its splice pipe would add two
			// fds per connection to the helper.
			go func() {
				_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
				_ = c.Close()
			}()
		}
	}()
	fmt.Println(ln.Addr().String())
	var held []net.Conn
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var addr string
		var n int
		if _, err := fmt.Sscanf(sc.Text(), "open %s %d", &addr, &n); err != nil {
			fmt.Println("error", err)
			continue
		}
		err := func() error {
			for i := 0; i < n; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
				cancel()
				if err != nil {
					return err
				}
				held = append(held, c)
				if _, err := c.Write([]byte{'x'}); err != nil {
					return err
				}
				if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
					return err
				}
			}
			return nil
		}()
		if err != nil {
			fmt.Println("error", err)
			continue
		}
		fmt.Println("ok")
	}
	for _, c := range held {
		_ = c.Close()
	}
}
