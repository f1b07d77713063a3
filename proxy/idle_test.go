package proxy

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// countSockets counts this process's socket fds.
func countSockets(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

func rssBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

type memSnap struct {
	fds, other int // socket fds, other fds
	rss        int64
	heap, stck uint64
	goroutines int
}

func snapshot(t *testing.T) memSnap {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSnap{fds: countSockets(t), other: countFDs(t) - countSockets(t), rss: rssBytes(t), heap: ms.HeapInuse, stck: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// TestIdleConnections opens thousands of idle proxied connections from a
// helper process (which also runs the backend) so that this process holds
// only the proxy's side, then checks exactly two socket fds per connection
// and no growth of other fds (a splice pipe would be two more), and reports
// memory per connection. Other fds are checked for growth only, because
// the runtime closes pooled splice pipes of earlier tests' echo servers by
// finalizer at unpredictable times.
func TestIdleConnections(t *testing.T) {
	t.Run("parked", func(t *testing.T) { testIdle(t, 50*time.Millisecond) })
	t.Run("goroutines", func(t *testing.T) { testIdle(t, -1) })
}

func testIdle(t *testing.T, parkAfter time.Duration) {
	n := 4000
	if s := os.Getenv("QP_IDLE_CONNS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	// This process and the helper each hold two fds per connection.
	need := uint64(2*n + 1024)
	if rl.Cur < need {
		if rl.Max < need && os.Geteuid() == 0 {
			rl.Max = need
		}
		rl.Cur = min(need, rl.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < need {
			t.Skipf("RLIMIT_NOFILE %d < %d needed and cannot be raised (%v); run as root or raise ulimit -n", rl.Cur, need, err)
		}
	}

	stdin, out, _ := startHelper(t, "QP_PROXY_HELPER=1")
	line := func() string {
		if !out.Scan() {
			t.Fatalf("helper exited: %v", out.Err())
		}
		return out.Text()
	}
	beAddr := line()

	p := newProxy(t, Options{Logger: testLogger(t), parkAfter: parkAfter}, oneBackend("idle", beAddr))
	p.SetHealth("idle", "a", upAny)
	addr := p.addrOf(t, "idle")
	open := func(k int) {
		if _, err := fmt.Fprintf(stdin, "open %s %d\n", addr, k); err != nil {
			t.Fatal(err)
		}
		if l := line(); l != "ok" {
			t.Fatalf("helper: %s", l)
		}
	}
	open(1) // warm up lazily created runtime state
	testwait.For(t, "warm-up session", waitLimit, func() bool { return p.statusOf("idle").Active == 1 })
	if parkAfter > 0 {
		testwait.For(t, "warm-up parked", waitLimit, func() bool { return p.parked() == 2 })
	}
	before := snapshot(t)
	start := time.Now()
	open(n)
	t.Logf("opened %d proxied connections in %v", n, time.Since(start))
	testwait.For(t, "sessions", waitLimit, func() bool { return p.statusOf("idle").Active == int64(n+1) })
	if parkAfter > 0 {
		testwait.For(t, "all parked", waitLimit, func() bool { return p.parked() == int64(2*(n+1)) })
	}
	after := snapshot(t)

	fds := after.fds - before.fds
	per := func(a, b int64) float64 { return float64(a-b) / float64(n) }
	t.Logf("per idle proxied connection: fds %.2f, RSS %.0f B, heap in use %.0f B, stacks %.0f B, goroutines %.2f",
		float64(fds)/float64(n), per(after.rss, before.rss), per(int64(after.heap), int64(before.heap)),
		per(int64(after.stck), int64(before.stck)), per(int64(after.goroutines), int64(before.goroutines)))
	if raceEnabled {
		t.Log("(race detector on: memory figures are inflated)")
	}
	if fds != 2*n {
		t.Fatalf("%d socket fds for %d connections, want exactly 2 each", fds, n)
	}
	if after.other > before.other {
		t.Fatalf("%d more non-socket fds (pipes?) with %d idle connections", after.other-before.other, n)
	}
	_ = stdin.Close()
	testwait.For(t, "all sessions closed", waitLimit, func() bool { return p.statusOf("idle").Active == 0 })
	for out.Scan() {
	}
	if err := out.Err(); err != nil {
		t.Fatal(err)
	}
}
