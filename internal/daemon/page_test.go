package daemon

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
)

// The page renders every banner, the streak and the target, escapes what
// it shows, and a refresh of 0 leaves the meta refresh out.
func TestPageRenders(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := &adminapi.Status{Version: "v1", Started: now.Add(-time.Hour), LastReload: adminapi.ReloadResult{OK: true},
		Services: []adminapi.Service{{
			Name: "db", Mode: "active-passive", Target: "a", TargetSince: now.Add(-72 * time.Second), Routes: []string{"a"},
			Alerts: []string{"dual_primary: a, b all report primary; writes stay on \"a\""},
			Backends: []adminapi.Backend{
				{Name: "a", Health: "up", Failing: 2, Fall: 3, LastChange: now.Add(-192 * time.Second), LagBytes: -1, LagSeconds: -1},
				{Name: "<b>", Health: "down", Rising: 1, Rise: 2, LagBytes: -1, LagSeconds: -1, LastError: "<script>alert(1)</script>"},
			},
		}, {Name: "cache", Mode: "active-passive", Why: "no backend is up", Backends: []adminapi.Backend{{Name: "c", Health: "down"}}}},
		Cluster: &adminapi.ClusterStatus{Node: "qp1", Peers: 3, Quorum: 2,
			Services: []adminapi.ClusterService{{Service: "db", Epoch: 4, Primary: "a", Paused: true}}},
	}
	p := &pageData{Status: st, Now: now, Refresh: 2, Banners: banners(st),
		History: []journal.Entry{{Time: now, Service: "db", Kind: "record", Epoch: 4, Summary: "primary moved from b to a"}}}
	var b strings.Builder
	if err := pageTmpl.Execute(&b, p); err != nil {
		t.Fatal(err)
	}
	html := b.String()
	for _, want := range []string{
		`<meta http-equiv="refresh" content="2">`,
		`class="banner banner-quorum"`, "LOST QUORUM: this proxy reaches 1 of 3 proxies",
		`class="banner banner-paused"`, "PAUSED: db:",
		`class="banner banner-noroute"`, "NO ROUTE: cache refuses new clients: no backend is up",
		`class="banner banner-dual"`, "DUAL PRIMARY: db: a, b all report primary",
		`<tr data-backend="a" class="target">`, `<span class="badge"`,
		`class="health failing">up, failing 2/3 <small class="since">for 3m12s</small>`,
		`class="health rising">down, rising 1/2`,
		"target <b class=\"target-name\">a</b> for 1m12s",
		"&lt;script&gt;alert(1)&lt;/script&gt;", `data-backend="&lt;b&gt;"`,
		"primary moved from b to a", "<dt>epoch</dt>",
	} {
		if !strings.Contains(html, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(html, "<script>") {
		t.Error("page holds an unescaped <script>")
	}
	p.Refresh = 0
	b.Reset()
	if err := pageTmpl.Execute(&b, p); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "http-equiv") {
		t.Error("refresh 0 still reloads the page")
	}
}

// A refresh the page cannot honour is a 400 that says what it wants.
func TestPageRefreshOutOfRange(t *testing.T) {
	for _, v := range []string{"x", "-1", "3601", "1.5"} {
		w := httptest.NewRecorder()
		// refused before the page reads anything of the daemon
		(&Daemon{}).handlePage(w, httptest.NewRequest("GET", "/?refresh="+v, nil))
		if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "refresh: want seconds") {
			t.Errorf("?refresh=%s: %d %q; want 400 naming refresh", v, w.Code, w.Body.String())
		}
	}
}

// Many services in one condition make one banner, not one each.
func TestPageBannersBounded(t *testing.T) {
	st := &adminapi.Status{Cluster: &adminapi.ClusterStatus{Peers: 3, Quorum: 2, Reachable: []string{"qp2"}}}
	for i := range 7 {
		st.Services = append(st.Services, adminapi.Service{Name: fmt.Sprintf("s%d", i), Why: "no route from the cluster"})
	}
	st.Services[6].Routes = []string{"a"}
	bs := banners(st)
	if len(bs) != 1 || bs[0].Kind != "noroute" ||
		bs[0].Text != "NO ROUTE: 6 services refuse new clients (s0, s1, s2, s3, s4 and 1 more; each says why below)" {
		t.Errorf("6 services without a route: %+v; want one banner naming five", bs)
	}
	st.Services = st.Services[1:] // 5: one banner each
	if bs := banners(st); len(bs) != 5 || bs[0].Text != "NO ROUTE: s1 refuses new clients: no route from the cluster" {
		t.Errorf("5 services without a route: %+v; want a banner each", bs)
	}
}

// The page of 1,000 services of two backends each, with 20 history
// entries: how long it takes to render and how big it is.
func BenchmarkPageRender(b *testing.B) {
	now := time.Now()
	st := &adminapi.Status{Version: "bench", Started: now, LastReload: adminapi.ReloadResult{OK: true}}
	for i := range 1000 {
		st.Services = append(st.Services, adminapi.Service{Name: fmt.Sprintf("svc%04d", i), Mode: "active-passive",
			Target: "a", Routes: []string{"a"}, TargetSince: now, Backends: []adminapi.Backend{
				{Name: "a", Health: "up", Failing: 1, Fall: 3, LastChange: now, LagBytes: -1, LagSeconds: -1, Role: "primary"},
				{Name: "b", Health: "up", LastChange: now, LagBytes: 0, LagSeconds: 0, Role: "replica"},
			}})
	}
	p := &pageData{Status: st, Now: now, Refresh: 2, Banners: banners(st)}
	for range 20 {
		p.History = append(p.History, journal.Entry{Time: now, Service: "svc0001", Kind: "record", Epoch: 7, Summary: "primary moved from a to b (a fenced), epoch 7"})
	}
	var out strings.Builder
	for b.Loop() {
		out.Reset()
		if err := pageTmpl.Execute(&out, p); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(out.Len()), "page-bytes")
}
