// Package testbrowser drives a headless Chromium for the tests of the admin
// API's status page (GET /): it finds the browser (skipping or failing as
// testenv.Need does), starts it on a fresh profile, reads what the page
// shows from its DOM, and makes sure no browser process outlives the test.
//
//	b := testbrowser.Start(t)
//	p, err := b.Read("http://"+admin+"/?refresh=0", true)
//	if p.Services["db"].Rows["a"].Target { ... }
package testbrowser

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// ShotsEnv names a directory for screenshots (Browser.Screenshot); unset,
// none are taken. Never the repository.
const ShotsEnv = "QP_SCREENSHOT_DIR"

// The colours the page gives a steady up backend and one whose checks
// fail but that is not down yet (internal/daemon/page.html's .up and
// .failing).
const (
	ColorUp      = "rgb(0, 119, 0)"
	ColorFailing = "rgb(138, 83, 0)"
)

// Page is what the status page shows.
type Page struct {
	Title    string
	Refresh  string // the meta refresh's content, "" without one
	Banners  []Banner
	Services map[string]Service
	// Cluster is the cluster table's row of each service, its cells
	// joined by " | "; ClusterHeader the cluster section's heading.
	Cluster       map[string]string
	ClusterHeader string
	History       []string // newest first, cells joined by " | "
	Terms         []string // the terms explained
}

// Banner is one banner on top: Kind is its classes ("banner banner-paused").
type Banner struct{ Kind, Text string }

// Service is one service's section.
type Service struct {
	Target string // the line that names the target
	Rows   map[string]Row
}

// Row is one backend's row.
type Row struct {
	Target       bool   // marked as the target
	BadgeVisible bool   // its "target" badge has a size on screen
	Health       string // "up, failing 2/4"
	Since        string // "for 3s"
	Class        string // the health cell's classes
	Color        string // the health cell's computed colour
	Role         string
}

// HasBanner reports whether a banner of class holds text.
func (p Page) HasBanner(class, text string) bool {
	for _, b := range p.Banners {
		if strings.Contains(b.Kind, class) && strings.Contains(b.Text, text) {
			return true
		}
	}
	return false
}

// HistoryHas reports whether an entry of kind holds text.
func (p Page) HistoryHas(kind, text string) bool {
	for _, e := range p.History {
		if strings.Contains(e, " | "+kind+" | ") && strings.Contains(e, text) {
			return true
		}
	}
	return false
}

const readScript = `(() => {
	const all = (s, el = document) => [...el.querySelectorAll(s)];
	const cells = r => [...r.cells].map(c => c.textContent.replace(/\s+/g, ' ').trim()).join(' | ');
	const services = {};
	for (const svc of all('section[data-service]')) {
		const rows = {};
		for (const r of all('tr[data-backend]', svc)) {
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
		services[svc.dataset.service] = {Target: svc.querySelector('p').textContent, Rows: rows};
	}
	const cluster = {};
	for (const r of all('tr[data-cluster-service]')) cluster[r.dataset.clusterService] = cells(r);
	const meta = document.querySelector('meta[http-equiv="refresh"]');
	const ch = document.querySelector('#cluster h2');
	return {
		Title: document.title,
		Refresh: meta ? meta.content : '',
		Banners: all('#banners .banner').map(b => ({Kind: b.className, Text: b.textContent})),
		Services: services,
		Cluster: cluster,
		ClusterHeader: ch ? ch.textContent.replace(/\s+/g, ' ').trim() : '',
		History: all('#history tr.entry').map(cells),
		Terms: all('#terms dt').map(d => d.textContent),
	};
})()`

// Browser is a headless Chromium with one tab.
type Browser struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

// Path finds Chromium (Debian's chromium package) or Chrome; it skips t
// when there is none, or fails it under QP_REQUIRE_SERVERS=1.
func Path(t *testing.T) string {
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

// Start starts a headless Chromium (see Path) on a fresh profile. At the
// end of t the browser is closed and every process it started (marked
// through its environment) must be gone.
func Start(t *testing.T) *Browser {
	t.Helper()
	path := Path(t)
	b := make([]byte, 8)
	rand.Read(b)
	mark := "chromium-" + hex.EncodeToString(b)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // as root Chromium does not start with its sandbox
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
	// The browser lives as long as the context of the first run: one
	// without a timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	return &Browser{t: t, ctx: ctx, shots: os.Getenv(ShotsEnv)}
}

// Read loads url (unless reload is false: then whatever the tab shows now,
// as the page's own refresh left it) and reads what the page shows. A read
// during the page's own reload fails: read again.
func (b *Browser) Read(url string, reload bool) (Page, error) {
	c, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if reload {
		if err := chromedp.Do(c, chromedp.Navigate(url)); err != nil {
			return Page{}, err
		}
	}
	return chromedp.Run(c, chromedp.Evaluate[Page](readScript))
}

// Screenshot writes the tab as it is now to name.png in the directory
// ShotsEnv names; without it, it does nothing.
func (b *Browser) Screenshot(name string) {
	if b.shots == "" {
		return
	}
	path := filepath.Join(b.shots, name+".png")
	c, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(path, png, 0o644)
	}
	if err != nil {
		b.t.Logf("screenshot %s: %v", path, err)
		return
	}
	b.t.Logf("screenshot: %s", path)
}

// Stage reads url until cond holds (failing t after timeout, with what the
// page showed), logs how long that took, takes a screenshot named after
// the stage, and returns the page.
func (b *Browser) Stage(name, url string, reload bool, timeout time.Duration, cond func(Page) bool) Page {
	b.t.Helper()
	start, reads := time.Now(), 0
	var last Page
	testwait.ForState(b.t, timeout, func() (bool, string) {
		reads++
		p, err := b.Read(url, reload)
		if err != nil {
			return false, fmt.Sprintf("%s: reading the page: %v", name, err)
		}
		last = p
		return cond(p), fmt.Sprintf("%s; the page shows %+v", name, p)
	})
	b.t.Logf("%s: seen after %v (%d reads): banners %+v, services %+v, cluster %q", name,
		time.Since(start).Round(time.Millisecond), reads, last.Banners, last.Services, last.Cluster)
	b.Screenshot("status-page-" + strings.ReplaceAll(name, " ", "-"))
	return last
}
