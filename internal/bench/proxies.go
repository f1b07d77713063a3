package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// Services every proxy forwards, one listener each.
const (
	svcRedis = "redis"
	svcPG    = "pg"
	svcIperf = "iperf"
	svcHold  = "hold"
)

// haMaxPipes bounds HAProxy's splice pipes (default maxconn/4), so its fd
// need fits the open-file limit; the workloads use a few dozen at most.
const haMaxPipes = 1024

var serviceNames = []string{svcRedis, svcPG, svcIperf, svcHold}

// target is one way of reaching the servers: directly, through HAProxy or
// through quorumproxy.
type target struct {
	name  string
	addrs map[string]string // service → host:port clients connect to
	proc  *proc             // nil for direct
}

// listenAddrs picks a free loopback port for every service.
func listenAddrs() (map[string]string, error) {
	m := make(map[string]string, len(serviceNames))
	for _, s := range serviceNames {
		p, err := testenv.FreePort()
		if err != nil {
			return nil, err
		}
		m[s] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return m, nil
}

// haproxyConfig is HAProxy 2.6 in TCP mode with its best settings for this
// machine: one thread per core, kernel splicing, high maxconn, generous
// timeouts, no logging, and a TCP check every second like quorumproxy's.
func haproxyConfig(listen, backends map[string]string, maxconn int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    nbthread %d
    maxconn %d
    maxpipes %d

defaults
    mode tcp
    maxconn %d
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout client-fin 30s
    timeout server-fin 30s
    option splice-auto
`, runtime.NumCPU(), maxconn, haMaxPipes, maxconn)
	for _, s := range serviceNames {
		fmt.Fprintf(&b, "\nfrontend fe_%s\n    bind %s\n", s, listen[s])
		if s == svcIperf {
			// Bulk transfer: splice both ways always, not only when HAProxy
			// guesses the stream is large.
			b.WriteString("    option splice-request\n    option splice-response\n")
		}
		fmt.Fprintf(&b, "    default_backend be_%s\n", s)
		fmt.Fprintf(&b, "\nbackend be_%s\n", s)
		if s == svcIperf {
			b.WriteString("    option splice-request\n    option splice-response\n")
		}
		for i, a := range strings.Fields(backends[s]) {
			fmt.Fprintf(&b, "    server %s%d %s check inter 1s\n", s, i+1, a)
		}
	}
	return b.String()
}

// qpConfig is quorumproxy's config: one active-active service per workload
// with its backends (space-separated in backends) and a TCP check every
// second.
func qpConfig(admin string, loops int, ioURing string, listen, backends map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[admin]\nlisten = %q\n\n[log]\nlevel = \"warn\"\n\n[proxy]\nloops = %d\nio_uring = %q\n", admin, loops, ioURing)
	for _, s := range serviceNames {
		fmt.Fprintf(&b, `
[[service]]
name = %q
listen = %q
mode = "active-active"

[service.health]
kind = "tcp"
interval = "1s"
timeout = "500ms"
rise = 1
fall = 3
`, s, listen[s])
		for i, a := range strings.Fields(backends[s]) {
			fmt.Fprintf(&b, "\n[[service.backend]]\nname = \"%s%d\"\naddress = %q\n", s, i+1, a)
		}
	}
	return b.String()
}

// startHAProxy writes the config to dir and runs haproxy in the foreground.
func startHAProxy(ps *procs, dir string, backends map[string]string, maxconn int) (*target, error) {
	listen, err := listenAddrs()
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxyConfig(listen, backends, maxconn)), 0o644); err != nil {
		return nil, fmt.Errorf("haproxy config: %w", err)
	}
	if _, err := runTool(context.Background(), time.Minute, os.Environ(), "haproxy", "-c", "-q", "-f", cfg); err != nil {
		return nil, fmt.Errorf("haproxy config check: %w", err)
	}
	// -db: stay in the foreground as one process, so its PID is the one to
	// measure.
	p, err := ps.start("haproxy", []string{"haproxy", "-db", "-f", cfg}, os.Environ())
	if err != nil {
		return nil, err
	}
	return &target{name: "HAProxy", addrs: listen, proc: p}, nil
}

// startQP writes the config to dir and runs `quorumproxy run -config`.
func startQP(ps *procs, dir, bin string, loops int, ioURing string, backends map[string]string) (*target, error) {
	listen, err := listenAddrs()
	if err != nil {
		return nil, err
	}
	adminPort, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(adminPort))
	cfg := filepath.Join(dir, "quorumproxy.toml")
	if err := os.WriteFile(cfg, []byte(qpConfig(admin, loops, ioURing, listen, backends)), 0o644); err != nil {
		return nil, fmt.Errorf("quorumproxy config: %w", err)
	}
	p, err := ps.start("quorumproxy", []string{bin, "run", "-config", cfg}, os.Environ())
	if err != nil {
		return nil, err
	}
	return &target{name: "quorumproxy", addrs: listen, proc: p}, nil
}

// waitRoutes polls until t forwards each service end to end: Redis answers
// PING, PostgreSQL answers an SSLRequest, the hold server counts a marked
// connection, and iperf3 accepts a TCP connection.
func waitRoutes(ctx context.Context, t *target, hold *holdServer, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	checks := map[string]func(addr string) error{
		svcRedis: redisPing,
		svcPG:    pgSSLProbe,
		svcHold:  hold.probe,
		svcIperf: tcpProbe,
	}
	for _, s := range serviceNames {
		var last error
		for {
			if t.proc != nil && t.proc.Exited() {
				return t.proc.Failure()
			}
			if last = checks[s](t.addrs[s]); last == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s service %q at %s not forwarding: %w", t.name, s, t.addrs[s], last)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// redisPing sends an inline PING and expects +PONG.
func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("redis ping: %w", err)
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("redis ping: answer %q", line)
	}
	return nil
}

// pgSSLProbe sends PostgreSQL's SSLRequest; a server answers one byte, 'S'
// or 'N', without any authentication.
func pgSSLProbe(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:], 8)
	binary.BigEndian.PutUint32(req[4:], 80877103)
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	var ans [1]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		return fmt.Errorf("postgres ssl probe: %w", err)
	}
	if ans[0] != 'N' && ans[0] != 'S' {
		return fmt.Errorf("postgres ssl probe: answer %q", ans[0])
	}
	return nil
}

// tcpProbe only connects; iperf3 has no cheap request to check.
func tcpProbe(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}
