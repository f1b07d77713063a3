package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// holdMark is the byte an idle client sends once, so the hold server counts
// connections that really went through the proxy (health checks send
// nothing and are not counted).
const holdMark = 'h'

// holdServer accepts TCP connections and holds them open, counting those
// that sent holdMark, until the peer closes.
type holdServer struct {
	lns   []net.Listener
	ready atomic.Int64 // open connections that sent holdMark
	wg    sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// holdPorts is how many ports the hold server listens on: one destination
// gives a proxy ~28,000 ephemeral ports to dial from, and the idle test
// holds more connections than that.
const holdPorts = 4

// startHold listens on holdPorts free loopback ports.
func startHold() (*holdServer, error) {
	h := &holdServer{conns: make(map[net.Conn]struct{})}
	for range holdPorts {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			h.close()
			return nil, fmt.Errorf("hold server: %w", err)
		}
		h.lns = append(h.lns, ln)
		h.wg.Add(1)
		go h.acceptLoop(ln)
	}
	return h, nil
}

// addr is the hold server's first address.
func (h *holdServer) addr() string { return h.lns[0].Addr().String() }

// addrs lists every address, space-separated: the proxies balance over
// them as one service's backends.
func (h *holdServer) addrs() string {
	var s []string
	for _, ln := range h.lns {
		s = append(s, ln.Addr().String())
	}
	return strings.Join(s, " ")
}

// acceptLoop accepts until the listener is closed.
func (h *holdServer) acceptLoop(ln net.Listener) {
	defer h.wg.Done()
	delay := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds or similar: back off, the clients retry.
			time.Sleep(delay)
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		h.mu.Lock()
		h.conns[c] = struct{}{}
		h.mu.Unlock()
		h.wg.Add(1)
		go h.hold(c)
	}
}

// hold waits for the mark, counts the connection, and waits for EOF.
func (h *holdServer) hold(c net.Conn) {
	defer h.wg.Done()
	defer func() {
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
		c.Close()
	}()
	var b [1]byte
	n, err := c.Read(b[:])
	if err != nil || n != 1 || b[0] != holdMark {
		return
	}
	h.ready.Add(1)
	defer h.ready.Add(-1)
	for {
		if _, err := c.Read(b[:]); err != nil {
			return
		}
	}
}

// probe checks that a marked connection through addr reaches the server.
func (h *holdServer) probe(addr string) error {
	before := h.ready.Load()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte{holdMark}); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if h.ready.Load() > before {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return errors.New("hold server: marked connection did not arrive")
}

// close stops accepting, closes every held connection and waits.
func (h *holdServer) close() {
	for _, ln := range h.lns {
		ln.Close()
	}
	h.mu.Lock()
	for c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// idleSteady is how long connections sit idle before the steady RSS read.
const idleSteady = 20 * time.Second

// idleResult is what holding n idle connections cost a proxy process.
type idleResult struct {
	Conns              int
	RSSBeforeKiB       int64
	RSSAfterKiB        int64
	FDsBefore          int
	FDsAfter           int
	KiBPerConn         float64
	RSSSteadyKiB       int64   // after idleSteady more seconds with the connections idle
	KiBPerConnSteady   float64 // steady state: parked sessions, memory given back to the OS
	FDsPerConn         float64
	ProxyPID           int
	SecondsToOpenConns float64
}

// measureIdle opens n idle connections through addr to the hold server,
// waits until all arrived, and reads pid's RSS and fd count before and
// after. Every connection is closed again before it returns.
func measureIdle(ctx context.Context, pid int, addr string, h *holdServer, n int) (idleResult, error) {
	res := idleResult{Conns: n, ProxyPID: pid}
	if err := waitCount(ctx, h, 0, 30*time.Second); err != nil {
		return res, fmt.Errorf("before idle run: %w", err)
	}
	var err error
	if res.RSSBeforeKiB, err = rssKiB(pid); err != nil {
		return res, err
	}
	if res.FDsBefore, err = fdCount(pid); err != nil {
		return res, err
	}
	start := time.Now()
	conns, openErr := openIdle(ctx, addr, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		// Let the proxy tear the sessions down before the next one runs
		// (not when interrupted: everything is about to be killed).
		if ctx.Err() == nil {
			_ = waitCount(ctx, h, 0, 30*time.Second)
		}
	}()
	if openErr != nil {
		return res, openErr
	}
	if err := waitCount(ctx, h, int64(n), 60*time.Second+time.Duration(n)*time.Millisecond); err != nil {
		return res, fmt.Errorf("idle connections through %s: %w", addr, err)
	}
	res.SecondsToOpenConns = time.Since(start).Seconds()
	// RSS settles once the proxy is done with the connect burst.
	if res.RSSAfterKiB, err = settledRSS(ctx, pid); err != nil {
		return res, err
	}
	if res.FDsAfter, err = fdCount(pid); err != nil {
		return res, err
	}
	res.KiBPerConn = float64(res.RSSAfterKiB-res.RSSBeforeKiB) / float64(n)
	res.FDsPerConn = float64(res.FDsAfter-res.FDsBefore) / float64(n)
	// Right after the connect burst a Go proxy still holds the stacks of
	// goroutines that have since parked; the runtime hands that memory back
	// over the next seconds. What long-lived idle pools cost is the steady
	// figure, so read RSS again once the connections have sat idle.
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(idleSteady):
	}
	if res.RSSSteadyKiB, err = rssKiB(pid); err != nil {
		return res, err
	}
	res.KiBPerConnSteady = float64(res.RSSSteadyKiB-res.RSSBeforeKiB) / float64(n)
	return res, nil
}

// idleSources is how many 127.0.0.x addresses idle clients dial from.
const idleSources = 8

// openIdle dials n connections to addr in parallel and sends each the
// mark. On error the connections opened so far are returned too.
func openIdle(ctx context.Context, addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	var (
		next    atomic.Int64
		errOnce sync.Once
		first   error
		wg      sync.WaitGroup
	)
	const workers = 64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the clients over several source addresses: one gives
			// only ~28,000 ephemeral ports towards the proxy.
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+w%idleSources))}
			d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: src}
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := dialMarked(ctx, &d, addr)
				if err != nil {
					errOnce.Do(func() { first = fmt.Errorf("idle connection %d to %s: %w", i, addr, err) })
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	var out []net.Conn
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return out, first
}

// dialMarked connects (retrying briefly: a full accept queue drops SYNs)
// and writes the mark.
func dialMarked(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
	var last error
	for range 5 {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			last = err
			continue
		}
		if _, err := c.Write([]byte{holdMark}); err != nil {
			c.Close()
			last = err
			continue
		}
		return c, nil
	}
	return nil, last
}

// waitCount polls until the hold server holds exactly want marked
// connections.
func waitCount(ctx context.Context, h *holdServer, want int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		got := h.ready.Load()
		if got == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("hold server has %d connections, want %d: %w", got, want, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// settledRSS reads RSS until two reads 300ms apart agree within 0.5%, for
// at most 5 s, and returns the last read.
func settledRSS(ctx context.Context, pid int) (int64, error) {
	prev, err := rssKiB(pid)
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
		cur, err := rssKiB(pid)
		if err != nil {
			return 0, err
		}
		diff := cur - prev
		if diff < 0 {
			diff = -diff
		}
		prev = cur
		if float64(diff) <= 0.005*float64(cur) {
			break
		}
	}
	return prev, nil
}

// rssKiB reads VmRSS of pid from /proc.
func rssKiB(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("rss of pid %d: %w", pid, err)
	}
	defer f.Close()
	return parseVmRSS(f)
}

// parseVmRSS finds "VmRSS: N kB" in a /proc/PID/status file.
func parseVmRSS(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q", sc.Text())
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line")
}

// fdCount counts the open file descriptors of pid.
func fdCount(pid int) (int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0, fmt.Errorf("fds of pid %d: %w", pid, err)
	}
	return len(ents), nil
}

// raiseNoFile lifts RLIMIT_NOFILE for this process and the children it
// starts (an explicit Setrlimit is inherited by exec'd processes; Go's
// automatic raise is not) to want, or to the hard limit when that is lower
// and cannot be raised (no CAP_SYS_RESOURCE). It returns the soft limit
// now in force, and an error only when that is below need.
func raiseNoFile(want, need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit nofile: %w", err)
	}
	if lim.Max < want {
		up := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up); err == nil {
			return want, nil
		}
	}
	lim.Cur = max(lim.Cur, min(want, lim.Max)) // never lower it
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("set nofile limit to %d: %w", lim.Cur, err)
	}
	if lim.Cur < need {
		return lim.Cur, fmt.Errorf("open-file limit %d (hard) is below the %d needed; raise it (ulimit -Hn) or lower -idle", lim.Cur, need)
	}
	return lim.Cur, nil
}

// ctxSwitches sums the voluntary and involuntary context switches of every
// thread of pid so far.
func ctxSwitches(pid int) (float64, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("threads of pid %d: %w", pid, err)
	}
	var n float64
	for _, e := range ents {
		b, err := os.ReadFile(dir + "/" + e.Name() + "/status")
		if err != nil {
			continue // the thread exited meanwhile
		}
		n += parseCtxSwitches(string(b))
	}
	return n, nil
}

// parseCtxSwitches adds the *_ctxt_switches lines of a status file.
func parseCtxSwitches(status string) float64 {
	var n float64
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.HasSuffix(k, "ctxt_switches") {
			if x, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				n += x
			}
		}
	}
	return n
}

// loadAvg is the first field of /proc/loadavg (1-minute load average).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "unknown"
	}
	return f[0]
}
