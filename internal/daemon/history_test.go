package daemon

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/internal/journal"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// A proxy alone keeps its history in memory: target changes, each hook's
// run with how it ended and the tail of its output, and reloads.
func TestHistoryAlone(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	a, b := testenv.StartEcho(t, "a"), testenv.StartEcho(t, "b")
	admin, listen := testenv.FreeAddr(t), testenv.FreeAddr(t)
	path := filepath.Join(t.TempDir(), "qp.toml")
	text := fmt.Sprintf(`[admin]
listen = %q
[proxy]
drain_timeout = "0s"
[[service]]
name = "echo"
listen = %q
health = { interval = "50ms", timeout = "40ms", rise = 1, fall = 1 }
hooks = { notify = ["/bin/sh", "-c", "echo moving from $QP_OLD_BACKEND; exit 3"] }
backend = [{ name = "a", address = %q, priority = 2 }, { name = "b", address = %q, priority = 1 }]
`, admin, listen, a.Addr(), b.Addr())
	d, api := startInProcess(t, path, admin, text)
	defer d.Shutdown()
	find := func(kind, text string) *journal.Entry {
		h, err := api.History(context.Background(), "echo", 0)
		if err != nil {
			t.Log(err)
			return nil
		}
		for i, e := range h.Entries {
			if e.Kind == kind && strings.Contains(e.Summary, text) {
				return &h.Entries[i]
			}
		}
		return nil
	}
	testwait.For(t, "the first target in the history", 10*time.Second, func() bool { return find("target", "none -> a") != nil })
	a.Close()
	testwait.For(t, "the move to b and its notify hook in the history", 10*time.Second, func() bool {
		return find("target", "a -> b") != nil && find("hook", "notify hook (a -> b)") != nil
	})
	if e := find("hook", "notify"); !strings.HasSuffix(e.Result, "exit status 3") || !strings.Contains(e.Output, "moving from a") || e.Hook != "notify" {
		t.Errorf("notify hook entry %+v: want exit status 3 and its output", *e)
	}
	d.Reload()
	h, err := api.History(context.Background(), "", 1)
	if err != nil || len(h.Entries) != 1 || h.Entries[0].Kind != "reload" || h.Entries[0].Summary != "config reloaded" {
		t.Errorf("last entry after a reload: %+v, %v", h.Entries, err)
	}
	if _, err := api.History(context.Background(), "nope", 0); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("history of an unknown service: %v, want 404", err)
	}
}
