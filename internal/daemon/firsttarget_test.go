package daemon

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// Backends started together with the proxy come up a check or two apart.
// With manual failback the first target sticks, so the first choice must
// not fall on a lower-priority backend that finished its rise while the
// higher-priority one was still rising (seen as a newcomer: b came up 10 ms
// before a and kept the traffic). a's checks take a second, so b rises and
// comes up inside a's rise.
func TestFirstTargetWaitsForABetterOneRising(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	dir := t.TempDir()
	// A backend is up while its flag is set (an HTTP check: no roles, so
	// priorities decide); a's checks take a second.
	var aUp, bUp atomic.Bool
	server := func(up *atomic.Bool, slow time.Duration) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !up.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			time.Sleep(slow)
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	sa, sb := server(&aUp, time.Second), server(&bUp, 0)
	admin, svcListen := testenv.FreeAddr(t), testenv.FreeAddr(t)
	text := fmt.Sprintf(`[admin]
listen = %q
[[service]]
name = "db"
listen = %q
health = { kind = "http", interval = "5s", timeout = "3s", down_interval = "100ms", fast_interval = "50ms", rise = 2, fall = 1 }
backend = [{ name = "a", address = %q, priority = 2 }, { name = "b", address = %q, priority = 1 }]
`, admin, svcListen, sa.Listener.Addr(), sb.Listener.Addr())
	d, api := startInProcess(t, filepath.Join(dir, "qp.toml"), admin, text)
	t.Cleanup(d.Shutdown)
	backend := func(name string) adminapi.Backend {
		st, err := api.Status(context.Background())
		if err != nil {
			return adminapi.Backend{}
		}
		for _, b := range st.Service("db").Backends {
			if b.Name == name {
				return b
			}
		}
		return adminapi.Backend{}
	}
	testwait.For(t, "both backends down", 10*time.Second, func() bool {
		return backend("a").Health == "down" && backend("b").Health == "down"
	})
	aUp.Store(true)
	testwait.For(t, "a rising", 10*time.Second, func() bool { return backend("a").Rising > 0 })
	bUp.Store(true)
	testwait.For(t, "a up", 10*time.Second, func() bool { return backend("a").Health == "up" })
	testwait.ForState(t, 10*time.Second, func() (bool, string) {
		st, err := api.Status(context.Background())
		if err != nil {
			return false, err.Error()
		}
		s := st.Service("db")
		return s.Target == "a", fmt.Sprintf("target %q (%s), want a", s.Target, s.Why)
	})
	// b must have come up while a was rising, or the test showed nothing.
	if b := backend("b"); b.Health != "up" || !b.LastChange.Before(backend("a").LastChange) {
		t.Fatalf("b %s since %v, a up since %v: b did not come up first; the check timings no longer make the race", b.Health, b.LastChange, backend("a").LastChange)
	}
	h, err := api.History(context.Background(), "db", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range h.Entries {
		if e.Kind == "target" && e.Service == "db" {
			if want := "target none -> a"; !strings.HasPrefix(e.Summary, want) {
				t.Errorf("first target entry %q, want it to begin %q", e.Summary, want)
			}
			return
		}
	}
	t.Errorf("no target entry in the history: %+v", h.Entries)
}
