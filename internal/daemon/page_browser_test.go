package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// pageView is what the status page shows, read from the DOM by pageScript.
type pageView struct {
	Title   string
	Refresh string // the meta refresh's content
	Banners []struct{ Kind, Text string }
	Target  string // the service's target line
	Rows    map[string]pageRow
	History []string // newest first, cells joined by " | "
	Terms   []string
}

// pageRow is one backend's row.
type pageRow struct {
	Target       bool   // the row is marked as the target
	BadgeVisible bool   // its "target" badge has a size on screen
	Health       string // "up, failing 2/4"
	Since        string // "for 3s"
	Class        string // the health cell's classes
	Color        string // the health cell's computed colour
	Role         string
}

const pageScript = `(() => {
	const all = (s, el = document) => [...el.querySelectorAll(s)];
	const svc = document.querySelector('section[data-service="db"]');
	const rows = {};
	for (const r of all('tr[data-backend]', svc || document.createElement('div'))) {
		const h = r.querySelector('td.health'), badge = r.querySelector('.badge');
		rows[r.dataset.backend] = {
			Target: r.classList.contains('target') && !!badge && badge.textContent === 'target',
			BadgeVisible: !!badge && badge.offsetWidth > 0 && badge.offsetHeight > 0,
			Health: h.firstChild.textContent.trim(),
			Since: (h.querySelector('.since') || {textContent: ''}).textContent.trim(),
			Class: h.className,
			Color: getComputedStyle(h).color,
			Role: r.children[3].textContent.trim(),
		};
	}
	const meta = document.querySelector('meta[http-equiv="refresh"]');
	return {
		Title: document.title,
		Refresh: meta ? meta.content : '',
		Banners: all('#banners .banner').map(b => ({Kind: b.className, Text: b.textContent})),
		Target: svc ? svc.querySelector('p').textContent : '',
		Rows: rows,
		History: all('#history tr.entry').map(r => [...r.cells].map(c => c.textContent.replace(/\s+/g, ' ').trim()).join(' | ')),
		Terms: all('#terms dt').map(d => d.textContent),
	};
})()`

// The colours the page gives a steady up backend and one whose checks
// fail but that is not down yet (page.html's .up and .failing).
const (
	colorUp      = "rgb(0, 119, 0)"
	colorFailing = "rgb(138, 83, 0)"
)

// The status page in a real browser through a real failover: a proxy alone
// in front of a Redis primary and its replica (promote hook: the README's
// redis-promote). Before: the primary is the marked target, both up, no
// banner. The primary frozen (SIGSTOP): its row says "up, failing n/4" in
// amber while the checks fail that have not yet taken it down. After: the
// promoted replica is the marked target, the old primary down, and the
// history shows the move and the promote hook; the page reloads itself to
// show it. The old primary resumed: a dual-primary banner. Both killed: a
// no-route banner.
func TestStatusPageInBrowser(t *testing.T) {
	chrome := chromiumPath(t)
	testenv.Need(t, "redis", "redis-cli")
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after the servers' cleanups

	r := testenv.MustRedis(t, testenv.RedisOptions{})
	r1 := testenv.MustReplica(t, r)
	promote, err := filepath.Abs(filepath.Join("..", "..", "testdata", "hooks", "redis-promote"))
	if err != nil {
		t.Fatal(err)
	}
	admin, listen := testenv.FreeAddr(t), testenv.FreeAddr(t)
	dir := t.TempDir()
	// fall 4 at 1s: a frozen primary is "failing" for about 3s, long
	// enough to see on a loaded machine.
	text := fmt.Sprintf(`[admin]
listen = %q
[proxy]
drain_timeout = "0s"
[[service]]
name = "db"
listen = %q
role = "primary"
health = { kind = "redis", interval = "1s", fast_interval = "1s", timeout = "500ms", rise = 1, fall = 4 }
hooks = { promote = [%q], timeout = "10s" }
backend = [{ name = "r", address = %q, priority = 10 }, { name = "r1", address = %q, priority = 5 }]
`, admin, listen, promote, r.Addr(), r1.Addr())
	d, _ := startInProcess(t, filepath.Join(dir, "qp.toml"), admin, text)
	defer d.Shutdown()

	ctx := startChromium(t, chrome)
	shots := os.Getenv("QP_SCREENSHOT_DIR") // screenshots go there, never into the repo
	url := "http://" + admin + "/"
	var last pageView
	// read loads the page (unless reload is false: then the page's own
	// refresh must bring the change) and reads what it shows.
	read := func(reload bool, query string) (pageView, error) {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if reload {
			if err := chromedp.Do(c, chromedp.Navigate(url+query)); err != nil {
				return pageView{}, err
			}
		}
		v, err := chromedp.Run(c, chromedp.Evaluate[pageView](pageScript))
		if err == nil {
			last = v
		}
		return v, err // a read during the page's own reload fails: read again
	}
	stage := func(name string, timeout time.Duration, reload bool, cond func(v pageView) bool) pageView {
		t.Helper()
		start, reads := time.Now(), 0
		testwait.ForState(t, timeout, func() (bool, string) {
			reads++
			v, err := read(reload, "?refresh=0")
			if err != nil {
				return false, fmt.Sprintf("%s: reading the page: %v", name, err)
			}
			return cond(v), fmt.Sprintf("%s; the page shows %+v", name, v)
		})
		t.Logf("%s: seen after %v (%d reads): target %q, rows %+v, banners %+v", name,
			time.Since(start).Round(time.Millisecond), reads, last.Target, last.Rows, last.Banners)
		if shots != "" {
			screenshot(t, ctx, filepath.Join(shots, "status-page-"+strings.ReplaceAll(name, " ", "-")+".png"))
		}
		return last
	}

	// Before: r is the target, both up.
	v := stage("before", 30*time.Second, true, func(v pageView) bool {
		return v.Rows["r"].Target && v.Rows["r"].Health == "up" && v.Rows["r1"].Health == "up" && !v.Rows["r1"].Target
	})
	if !v.Rows["r"].BadgeVisible || v.Rows["r"].Color != colorUp || v.Rows["r"].Role != "primary" || !strings.HasPrefix(v.Rows["r"].Since, "for ") {
		t.Errorf("before: r's row %+v; want a visible target badge, green (%s), role primary, time in state", v.Rows["r"], colorUp)
	}
	if len(v.Banners) != 0 || v.Refresh != "" {
		t.Errorf("before: banners %+v, refresh %q; want none (and no refresh at ?refresh=0)", v.Banners, v.Refresh)
	}
	for _, term := range []string{"target", "failing n/m, rising n/m", "quorum", "epoch", "fenced", "lease", "paused"} {
		if !strings.Contains(strings.Join(v.Terms, "|"), term) {
			t.Errorf("the terms %q do not explain %q", v.Terms, term)
		}
	}
	if !historyHas(v.History, "target", "none -> r") {
		t.Errorf("before: history %q; want the first target", v.History)
	}

	// During: r frozen, its checks time out; until the fourth it is "up,
	// failing n/4", amber, and still the target.
	frozen := time.Now()
	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	failing := regexp.MustCompile(`^up, failing [1-3]/4$`)
	v = stage("during", 30*time.Second, true, func(v pageView) bool {
		return v.Rows["r"].Target && failing.MatchString(v.Rows["r"].Health)
	})
	if row := v.Rows["r"]; !strings.Contains(row.Class, "failing") || row.Color != colorFailing || row.Color == colorUp {
		t.Errorf("during: r's row %+v; want class failing, amber %s, not green", row, colorFailing)
	}
	t.Logf("during: %q shown %v after the freeze", v.Rows["r"].Health, time.Since(frozen).Round(time.Millisecond))

	// After: r1 promoted and marked; the page reloads itself to show it.
	if _, err := read(true, "?refresh=1"); err != nil {
		t.Fatal(err)
	}
	if last.Refresh != "1" {
		t.Errorf("?refresh=1: meta refresh %q, want 1", last.Refresh)
	}
	v = stage("after", 60*time.Second, false, func(v pageView) bool {
		return v.Rows["r1"].Target && !v.Rows["r"].Target && v.Rows["r"].Health == "down" && v.Rows["r1"].Role == "primary" &&
			historyHas(v.History, "target", "r -> r1")
	})
	t.Logf("after: r1 marked the target %v after the freeze", time.Since(frozen).Round(time.Millisecond))
	if !historyHas(v.History, "hook", "promote") || !strings.Contains(v.Target, "target r1") {
		t.Errorf("after: history %q, target line %q; want the promote hook's run and target r1", v.History, v.Target)
	}
	if !strings.Contains(v.Rows["r"].Class, "down") || v.Rows["r1"].Color != colorUp {
		t.Errorf("after: rows %+v; want r down, r1 green", v.Rows)
	}

	// The old primary back, still a primary: two primaries, writes stay on r1.
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	v = stage("old primary back", 30*time.Second, true, func(v pageView) bool {
		return hasBanner(v, "banner-dual", "DUAL PRIMARY: db:") && v.Rows["r1"].Target
	})
	if !strings.Contains(v.Title, "alert") {
		t.Errorf("with a banner the title %q does not say so", v.Title)
	}

	// Both gone: no route.
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := r1.Kill(); err != nil {
		t.Fatal(err)
	}
	stage("no route", 30*time.Second, true, func(v pageView) bool {
		return hasBanner(v, "banner-noroute", "NO ROUTE: db refuses new clients") && strings.Contains(v.Target, "target none")
	})
}

func historyHas(h []string, kind, text string) bool {
	for _, e := range h {
		if strings.Contains(e, " | "+kind+" | ") && strings.Contains(e, text) {
			return true
		}
	}
	return false
}

func hasBanner(v pageView, class, text string) bool {
	for _, b := range v.Banners {
		if strings.Contains(b.Kind, class) && strings.Contains(b.Text, text) {
			return true
		}
	}
	return false
}

// chromiumPath finds Chromium (Debian's chromium package) or Chrome; it
// skips t when there is none, or fails it under QP_REQUIRE_SERVERS=1.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const msg = "no chromium (Debian's chromium package) or google-chrome in PATH"
	if testenv.Required() {
		t.Fatalf("%s (QP_REQUIRE_SERVERS=1; run internal/scripts/install-deps.sh as root)", msg)
	}
	t.Skipf("skipping: %s (run internal/scripts/install-deps.sh as root to install)", msg)
	return ""
}

// startChromium starts a headless Chromium with a fresh profile and
// returns a tab's context. At the end of t the browser is closed and every
// process it started (marked through its environment) must be gone.
func startChromium(t *testing.T, path string) context.Context {
	t.Helper()
	b := make([]byte, 8)
	rand.Read(b)
	mark := "chromium-" + hex.EncodeToString(b)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // as root Chromium refuses to start with its sandbox
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900),
		chromedp.Env(testenv.MarkEnv+"="+mark),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		if err := chromedp.Cancel(cctx); err != nil {
			t.Logf("closing chromium: %v", err)
		}
		ccancel()
		cancel()
		acancel() // kills the browser if it did not close, and waits for it
		defer testenv.KillMarked(mark)
		testwait.ForState(t, 10*time.Second, func() (bool, string) {
			left := testenv.Marked(mark)
			return len(left) == 0, fmt.Sprintf("chromium processes still running after the browser closed: %v", left)
		})
	})
	// Start the browser now, on a context without a timeout: it lives as
	// long as the context of the first run.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return ctx
}

// screenshot writes the page as it is now to path (a PNG).
func screenshot(t *testing.T, ctx context.Context, path string) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(path, png, 0o644)
	}
	if err != nil {
		t.Logf("screenshot %s: %v", path, err)
		return
	}
	t.Logf("screenshot: %s", path)
}
