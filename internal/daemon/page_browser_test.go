package daemon

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/internal/testbrowser"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// The status page in a real browser through a real failover: a proxy alone
// in front of a Redis primary and its replica (promote hook: the README's
// redis-promote). Before: the primary is the marked target, both up, no
// banner. The primary frozen (SIGSTOP): its row says "up, failing n/6" in
// amber while the checks fail that have not yet taken it down. After: the
// promoted replica is the marked target, the old primary down, and the
// history shows the move and the promote hook; the page reloads itself to
// show it. The old primary resumed: a dual-primary banner. Both killed: a
// no-route banner.
func TestStatusPageInBrowser(t *testing.T) {
	testbrowser.Path(t)
	testenv.Need(t, "redis", "redis-cli")
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the servers' and the browser's cleanups

	r := testenv.MustRedis(t, testenv.RedisOptions{})
	r1 := testenv.MustReplica(t, r)
	promote, err := filepath.Abs(filepath.Join("..", "..", "testdata", "hooks", "redis-promote"))
	if err != nil {
		t.Fatal(err)
	}
	admin, listen := testenv.FreeAddr(t), testenv.FreeAddr(t)
	// fall 6 at 1s: a frozen primary is "failing" for about 5s, long
	// enough to see on a loaded machine (make test runs every package at
	// once).
	text := fmt.Sprintf(`[admin]
listen = %q
[proxy]
drain_timeout = "0s"
[[service]]
name = "db"
listen = %q
role = "primary"
health = { kind = "redis", interval = "1s", fast_interval = "1s", timeout = "500ms", rise = 1, fall = 6 }
hooks = { promote = [%q], timeout = "10s" }
backend = [{ name = "r", address = %q, priority = 10 }, { name = "r1", address = %q, priority = 5 }]
`, admin, listen, promote, r.Addr(), r1.Addr())
	d, _ := startInProcess(t, filepath.Join(t.TempDir(), "qp.toml"), admin, text)
	defer d.Shutdown()
	b := testbrowser.Start(t)
	url := "http://" + admin + "/?refresh=0"
	db := func(p testbrowser.Page) testbrowser.Service { return p.Services["db"] }

	// Before: r is the target, both up.
	p := b.Stage("before", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		rows := db(p).Rows
		return rows["r"].Target && rows["r"].Health == "up" && rows["r1"].Health == "up" && !rows["r1"].Target
	})
	if row := db(p).Rows["r"]; !row.BadgeVisible || row.Color != testbrowser.ColorUp || row.Role != "primary" || !strings.HasPrefix(row.Since, "for ") {
		t.Errorf("before: r's row %+v; want a visible target badge, green (%s), role primary, time in state", row, testbrowser.ColorUp)
	}
	if len(p.Banners) != 0 || p.Refresh != "" {
		t.Errorf("before: banners %+v, refresh %q; want none (and no refresh at ?refresh=0)", p.Banners, p.Refresh)
	}
	for _, term := range []string{"target", "failing n/m, rising n/m", "quorum", "epoch", "fenced", "lease", "paused"} {
		if !strings.Contains(strings.Join(p.Terms, "|"), term) {
			t.Errorf("the terms %q do not explain %q", p.Terms, term)
		}
	}
	if !p.HistoryHas("target", "none -> r") {
		t.Errorf("before: history %q; want the first target", p.History)
	}

	// During: r frozen, its checks time out; until the sixth it is "up,
	// failing n/6", amber, and still the target.
	frozen := time.Now()
	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	failing := regexp.MustCompile(`^up, failing [1-5]/6$`)
	p = b.Stage("during", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		return db(p).Rows["r"].Target && failing.MatchString(db(p).Rows["r"].Health)
	})
	if row := db(p).Rows["r"]; !strings.Contains(row.Class, "failing") || row.Color != testbrowser.ColorFailing {
		t.Errorf("during: r's row %+v; want class failing, amber %s, not green", row, testbrowser.ColorFailing)
	}
	t.Logf("during: %q shown %v after the freeze", db(p).Rows["r"].Health, time.Since(frozen).Round(time.Millisecond))

	// After: r1 promoted and marked; the page reloads itself to show it.
	self := "http://" + admin + "/?refresh=1"
	if p, err = b.Read(self, true); err != nil || p.Refresh != "1" {
		t.Errorf("?refresh=1: meta refresh %q (%v), want 1", p.Refresh, err)
	}
	p = b.Stage("after", self, false, 60*time.Second, func(p testbrowser.Page) bool {
		rows := db(p).Rows
		return rows["r1"].Target && !rows["r"].Target && rows["r"].Health == "down" && rows["r1"].Role == "primary" &&
			p.HistoryHas("target", "r -> r1")
	})
	t.Logf("after: r1 marked the target %v after the freeze", time.Since(frozen).Round(time.Millisecond))
	if !p.HistoryHas("hook", "promote") || !strings.Contains(db(p).Target, "target r1") {
		t.Errorf("after: history %q, target line %q; want the promote hook's run and target r1", p.History, db(p).Target)
	}
	if rows := db(p).Rows; !strings.Contains(rows["r"].Class, "down") || rows["r1"].Color != testbrowser.ColorUp {
		t.Errorf("after: rows %+v; want r down, r1 green", rows)
	}

	// The old primary back, still a primary: two primaries, writes stay on r1.
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	p = b.Stage("old primary back", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		return p.HasBanner("banner-dual", "DUAL PRIMARY: db:") && db(p).Rows["r1"].Target
	})
	if !strings.Contains(p.Title, "alert") {
		t.Errorf("with a banner the title %q does not say so", p.Title)
	}

	// Both gone: no route.
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := r1.Kill(); err != nil {
		t.Fatal(err)
	}
	b.Stage("no route", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		return p.HasBanner("banner-noroute", "NO ROUTE: db refuses new clients") && strings.Contains(db(p).Target, "target none")
	})
}
