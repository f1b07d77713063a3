package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// GET /health and /health/SERVICE follow what the proxy forwards: 200 with
// the backend while a service routes, 503 with the reason when it does not
// (the proxy stays ready: no other proxy could do better), 404 for a name
// it does not have, and 503 for the whole proxy while a listener failed
// or while it drains.
func TestReadiness(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	a, b := testenv.StartEcho(t, "a"), testenv.StartEcho(t, "b")
	admin, listen, deadListen := testenv.FreeAddr(t), testenv.FreeAddr(t), testenv.FreeAddr(t)
	nobody := testenv.FreeAddr(t) // nothing listens there
	path := filepath.Join(t.TempDir(), "qp.toml")
	text := fmt.Sprintf(`[admin]
listen = %q
[proxy]
drain_timeout = "30s"
[[service]]
name = "echo"
listen = %q
health = { interval = "50ms", timeout = "40ms", rise = 1, fall = 1 }
backend = [{ name = "a", address = %q, priority = 2 }, { name = "b", address = %q, priority = 1 }]
[[service]]
name = "dead"
listen = %q
health = { interval = "50ms", timeout = "40ms", rise = 1, fall = 1 }
backend = [{ name = "x", address = %q }]
`, admin, listen, a.Addr(), b.Addr(), deadListen, nobody)
	d, api := startInProcess(t, path, admin, text)
	health := func(service string) (adminapi.Readiness, int) {
		rd, code, err := api.Health(context.Background(), service)
		if err != nil {
			t.Logf("health %q: %v", service, err)
		}
		return rd, code
	}

	testwait.For(t, "echo ready on a, dead not ready", 10*time.Second, func() bool {
		rd, code := health("echo")
		dead, deadCode := health("dead")
		return code == http.StatusOK && rd.Ready && strings.Join(rd.Backends, ",") == "a" &&
			deadCode == http.StatusServiceUnavailable && !dead.Ready && dead.Reason != ""
	})
	whole, code := health("")
	if code != http.StatusOK || !whole.Ready || whole.Services != 2 || whole.Routing != 1 || whole.NotRouting["dead"] == "" ||
		len(whole.RoutingTo) != 1 || whole.RoutingTo["a"] != 1 {
		t.Errorf("whole proxy: %d %+v; want 200, 2 services, 1 routing (to a), dead named", code, whole)
	}
	if rd, code := health("nope"); code != http.StatusNotFound || rd.Ready || !strings.Contains(rd.Reason, "nope") {
		t.Errorf("unknown service: %d %+v; want 404 naming it", code, rd)
	}

	a.Close()
	testwait.For(t, "echo ready on b", 10*time.Second, func() bool {
		rd, code := health("echo")
		whole, _ := health("")
		return code == http.StatusOK && strings.Join(rd.Backends, ",") == "b" && whole.RoutingTo["b"] == 1 && whole.RoutingTo["a"] == 0
	})
	b.Close()
	testwait.For(t, "echo not ready once both are down", 10*time.Second, func() bool {
		rd, code := health("echo")
		return code == http.StatusServiceUnavailable && !rd.Ready && rd.Reason != ""
	})
	if whole, code := health(""); code != http.StatusOK || whole.Routing != 0 || len(whole.RoutingTo) != 0 {
		t.Errorf("whole proxy with no backend up: %d %+v; want 200 (no other proxy does better), 0 routing", code, whole)
	}

	// A listener that cannot bind makes the whole proxy unready, and says
	// which.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if err := os.WriteFile(path, []byte(text+fmt.Sprintf(`[[service]]
name = "taken"
listen = %q
backend = [{ name = "y", address = %q }]
`, taken.Addr().String(), nobody)), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Reload()
	testwait.For(t, "whole proxy unready naming the service that does not listen", 10*time.Second, func() bool {
		rd, code := health("")
		return code == http.StatusServiceUnavailable && strings.Contains(rd.Reason, `"taken"`)
	})

	// While it drains, a load balancer must stop sending clients.
	held, err := net.Dial("tcp", listen) // keeps Drain waiting
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { d.Shutdown(); close(done) }()
	testwait.For(t, "unready while draining", 10*time.Second, func() bool {
		rd, code := health("echo")
		whole, wcode := health("")
		return code == http.StatusServiceUnavailable && strings.HasPrefix(rd.Reason, "stopping") &&
			wcode == http.StatusServiceUnavailable && strings.HasPrefix(whole.Reason, "stopping")
	})
	held.Close()
	api.HTTP.CloseIdleConnections()
	<-done
}
