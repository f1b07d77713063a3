package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/repoint"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// The repoint hook of a proxy alone, on a service checked without roles:
// after a failover from a to b, c is repointed once (a failed run is
// retried after its backoff), and not again when it goes down and comes
// back; a, the old primary, is fenced by the failover and so left alone
// while it is up, until an operator unfences it.
func TestRepointHookAlone(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	a, b, c := testenv.StartEcho(t, "a"), testenv.StartEcho(t, "b"), testenv.StartEcho(t, "c")
	dir := t.TempDir()
	calls, fail, token := filepath.Join(dir, "calls"), filepath.Join(dir, "fail"), filepath.Join(dir, "token")
	hook := filepath.Join(dir, "repoint")
	script := `#!/bin/sh
echo "$(date +%s.%N) $QP_BACKEND $QP_NEW_BACKEND $QP_EPOCH $QP_EVENT $QP_ADDRESS $QP_NEW_ADDRESS $QP_SERVICE" >> "$1"
if [ -e "$2" ]; then rm "$2"; echo "failing once" >&2; exit 1; fi
`
	for _, f := range []struct {
		path, text string
		mode       os.FileMode
	}{{hook, script, 0o755}, {fail, "", 0o600}, {token, "t0ken\n", 0o600}} {
		if err := os.WriteFile(f.path, []byte(f.text), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	admin, listen := testenv.FreeAddr(t), testenv.FreeAddr(t)
	text := fmt.Sprintf(`[admin]
listen = %q
token_file = %q
[proxy]
drain_timeout = "0s"
[[service]]
name = "echo"
listen = %q
health = { interval = "100ms", timeout = "90ms", rise = 1, fall = 3 }
hooks = { repoint = [%q, %q, %q], timeout = "5s" }
backend = [{ name = "a", address = %q, priority = 3 }, { name = "b", address = %q, priority = 2 }, { name = "c", address = %q, priority = 1 }]
`, admin, token, listen, hook, calls, fail, a.Addr(), b.Addr(), c.Addr())
	d, api := startInProcess(t, filepath.Join(dir, "qp.toml"), admin, text)
	api.Token = "t0ken"
	defer d.Shutdown()
	backend := func(name string) adminapi.Backend {
		st, err := api.Status(context.Background())
		if err == nil && st.Service("echo") != nil {
			for _, bv := range st.Service("echo").Backends {
				if bv.Name == name {
					return bv
				}
			}
		}
		return adminapi.Backend{}
	}
	target := func() string {
		st, err := api.Status(context.Background())
		if err != nil || st.Service("echo") == nil {
			return ""
		}
		return st.Service("echo").Target
	}
	runs := func(of string) [][]string {
		data, _ := os.ReadFile(calls)
		var out [][]string
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if f := strings.Fields(l); len(f) == 8 && f[1] == of {
				out = append(out, f)
			}
		}
		return out
	}
	testwait.For(t, "echo routed to a", 10*time.Second, func() bool { return target() == "a" })

	a.Close()
	testwait.For(t, "echo routed to b", 10*time.Second, func() bool { return target() == "b" })
	testwait.For(t, "c repointed after one failed run", 30*time.Second, func() bool { return len(runs("c")) == 2 })
	rc := runs("c")
	for _, f := range rc {
		if want := []string{"c", "b", "0", "repoint", c.Addr(), b.Addr(), "echo"}; strings.Join(f[1:], " ") != strings.Join(want, " ") {
			t.Errorf("repoint run %v, want %v", f[1:], want)
		}
	}
	t0, _ := strconv.ParseFloat(rc[0][0], 64)
	t1, _ := strconv.ParseFloat(rc[1][0], 64)
	if gap := time.Duration((t1 - t0) * float64(time.Second)); gap < repoint.Backoff(1)-100*time.Millisecond {
		t.Errorf("the failed run was retried after %v, want its backoff %v", gap, repoint.Backoff(1))
	}

	// c goes down and comes back: it was repointed, so nothing runs.
	c.Close()
	testwait.For(t, "c down", 10*time.Second, func() bool { return backend("c").Health == "down" })
	c2, err := testenv.ListenEcho("c", c.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c2.Close)
	testwait.For(t, "c up again", 10*time.Second, func() bool { return backend("c").Health == "up" })

	// a comes back fenced (no roles: the failover fenced it): left alone.
	a2, err := testenv.ListenEcho("a", a.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a2.Close)
	testwait.For(t, "a up and fenced", 10*time.Second, func() bool { bv := backend("a"); return bv.Health == "up" && bv.Fenced })
	if _, err := api.BackendControl(context.Background(), "unfence", "echo", "a"); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "a repointed once unfenced", 10*time.Second, func() bool { return len(runs("a")) == 1 })
	if n, m := len(runs("c")), len(runs("b")); n != 2 || m != 0 {
		t.Fatalf("repoint runs: %d of c (want 2: one failed, one that worked), %d of b, the new primary (want 0)", n, m)
	}
	if got := target(); got != "b" {
		t.Fatalf("target %q after the unfence, want b (failback is manual)", got)
	}
	// Each run is in the history once it ended.
	var hookRuns []string
	testwait.ForState(t, 10*time.Second, func() (bool, string) {
		h, err := api.History(context.Background(), "echo", 0)
		if err != nil {
			return false, err.Error()
		}
		hookRuns = nil
		for _, e := range h.Entries {
			if e.Kind == "hook" && e.Hook == "repoint" {
				hookRuns = append(hookRuns, e.Summary)
			}
		}
		return len(hookRuns) == 3, fmt.Sprintf("history of repoint runs: %q", hookRuns)
	})
	if !strings.HasPrefix(hookRuns[0], "repoint hook (c -> b)") || !strings.Contains(hookRuns[0], "exit status 1") ||
		!strings.HasPrefix(hookRuns[2], "repoint hook (a -> b)") {
		t.Fatalf("history of repoint runs: %q", hookRuns)
	}
}
