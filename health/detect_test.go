package health

import (
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// server is what the detection trials need of a testenv server.
type server interface {
	Addr() string
	Kill() error
	Restart() error
	Pause() error
	Resume() error
}

// fault is one way to fail a server in a trial, and its repair.
type fault struct {
	name      string
	brk, mend func(server) error
}

var (
	kill  = fault{"kill", server.Kill, server.Restart}
	pause = fault{"pause", server.Pause, server.Resume}
)

// TestDetectionTime measures kill-to-down (SIGKILL) and pause-to-down (SIGSTOP) for interval
// 100ms / fall 3 over QP_DETECT_TRIALS trials per engine and logs the median and the max. It is a measurement, not a pass/fail
// test, and runs only when QP_DETECT_TRIALS is set.
func TestDetectionTime(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("QP_DETECT_TRIALS"))
	if n <= 0 {
		t.Skip("set QP_DETECT_TRIALS=N to measure detection time over N trials per engine")
	}
	spec := Spec{Interval: 100 * time.Millisecond, Timeout: 90 * time.Millisecond, Rise: 2, Fall: 3}
	engines := []struct {
		kind  string
		start func(t *testing.T) (server, Spec)
	}{
		{"postgres", func(t *testing.T) (server, Spec) {
			p := testenv.MustPostgres(t, testenv.PGOptions{})
			return p, Spec{User: testenv.User, Password: p.Password()}
		}},
		{"redis", func(t *testing.T) (server, Spec) {
			return testenv.MustRedis(t, testenv.RedisOptions{}), Spec{}
		}},
		{"mysql", func(t *testing.T) (server, Spec) {
			return testenv.MustMariaDB(t), Spec{User: testenv.User, Password: testenv.DefaultPassword}
		}},
		{"tcp", func(t *testing.T) (server, Spec) {
			return testenv.MustRedis(t, testenv.RedisOptions{}), Spec{}
		}},
	}
	for _, e := range engines {
		faults := []fault{kill, pause}
		if e.kind == "tcp" {
			faults = faults[:1] // a paused server's kernel still accepts: tcp cannot see it
		}
		for _, f := range faults {
			t.Run(e.kind+"/"+f.name, func(t *testing.T) {
				srv, auth := e.start(t)
				s := spec
				s.Kind, s.User, s.Password = e.kind, auth.User, auth.Password
				detectTrials(t, srv, s, f, n)
			})
		}
	}
}

func detectTrials(t *testing.T, srv server, spec Spec, f fault, n int) {
	var (
		mu     sync.Mutex
		downAt time.Time
		reason string
	)
	m := NewMonitor(nil, func(s State) {
		mu.Lock()
		defer mu.Unlock()
		if s.Status == StatusDown && downAt.IsZero() {
			downAt, reason = time.Now(), s.Reason
		}
	})
	defer m.Close()
	if err := m.Set([]Target{{Service: "svc", Backend: "b", Address: srv.Addr(), Spec: spec}}); err != nil {
		t.Fatal(err)
	}
	var times []time.Duration
	for i := range n {
		// Up, and seen up by a few checks in a row, before the kill.
		first := waitState(t, m, "b", "up", func(s State) bool { return s.Status == StatusUp })
		waitState(t, m, "b", "steady", func(s State) bool { return s.Status == StatusUp && s.Checks >= first.Checks+3 })
		mu.Lock()
		downAt = time.Time{}
		mu.Unlock()
		// The wait above ends just after a check; kill at a random phase of the interval
		// instead, as a real crash would.
		time.Sleep(time.Duration(rand.Int64N(int64(spec.Interval))))
		killAt := time.Now()
		if err := f.brk(srv); err != nil {
			t.Fatal(err)
		}
		killed := time.Since(killAt)
		testwait.For(t, "down", 30*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return !downAt.IsZero()
		})
		mu.Lock()
		d, why := downAt.Sub(killAt), reason
		mu.Unlock()
		times = append(times, d)
		t.Logf("trial %d: down %v after the %s began (it took %v; %s)", i+1, d.Round(time.Millisecond),
			f.name, killed.Round(time.Millisecond), why)
		if err := f.mend(srv); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(times)
	median := times[len(times)/2]
	if len(times)%2 == 0 {
		median = (times[len(times)/2-1] + times[len(times)/2]) / 2
	}
	t.Logf("%s: %s to down over %d trials (interval %v, fall %d, timeout %v): min %v median %v max %v",
		spec.Kind, f.name, n, spec.Interval, spec.Fall, spec.Timeout, times[0].Round(time.Millisecond),
		median.Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
}
