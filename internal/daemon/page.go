package daemon

// The status page at GET / of the admin API: what /status says, for a
// person. Dependency-free (inline CSS, no script, nothing fetched), so it
// works offline and behind any proxy; html/template escapes every value.

import (
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
)

//go:embed page.html
var pageHTML string

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"healthText":  adminapi.Backend.HealthText,
	"healthClass": healthClass,
	"contains":    func(s []string, v string) bool { return slices.Contains(s, v) },
	"inc":         func(n int) int { return n + 1 },
}).Parse(pageHTML))

// pageHistory is how many history entries the page shows, newest first.
const pageHistory = 20

// pageRefresh is the page's default refresh in seconds: quick enough to
// watch a failover's checks fail one by one, cheap for the proxy (one
// /status per viewer per refresh).
const pageRefresh = 2

// pageData is what the template renders.
type pageData struct {
	*adminapi.Status
	Now     time.Time
	Refresh int // seconds; 0: no refresh
	Banners []pageBanner
	History []journal.Entry // newest first
}

// pageBanner is a condition that needs an operator, shown on top.
type pageBanner struct {
	Kind    string // quorum, noroute, paused, dual, store, recovering: the CSS class
	Text    string
	service string // the service it is about, if one
}

// For says for how long something has held since t ("" for a zero t).
func (p *pageData) For(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return "for " + p.Now.Sub(t).Round(time.Second).String()
}

// At is t as a time of day, UTC, with the date when it is not today's.
func (p *pageData) At(t time.Time) string {
	t, now := t.UTC(), p.Now.UTC()
	if t.YearDay() == now.YearDay() && t.Year() == now.Year() {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04:05")
}

// healthClass is the CSS class of a backend's health: a change under way
// is amber, not the colour of the state it leaves.
func healthClass(b adminapi.Backend) string {
	switch {
	case b.Health == "up" && b.Failing > 0:
		return "failing"
	case b.Health == "down" && b.Rising > 0:
		return "rising"
	case b.Health == "up", b.Health == "down":
		return b.Health
	}
	return "unknown"
}

// bannersPerKind bounds the banners of one kind: a cut-off proxy of 1,000
// services says "no route" once, not 1,000 times.
const bannersPerKind = 5

// banners lists what needs an operator across the status: lost quorum
// (and the other reasons a cluster's proxy cannot vote or route), a
// service that routes nowhere, a paused service, two primaries.
func banners(st *adminapi.Status) []pageBanner {
	var out []pageBanner
	perService := map[string][]pageBanner{} // kind -> one per service, in order
	var kinds []string
	add := func(kind, service, text string) {
		if perService[kind] == nil {
			kinds = append(kinds, kind)
		}
		perService[kind] = append(perService[kind], pageBanner{kind, text, service})
	}
	if c := st.Cluster; c != nil {
		if n := len(c.Reachable) + 1; n < c.Quorum {
			out = append(out, pageBanner{Kind: "quorum", Text: fmt.Sprintf("LOST QUORUM: this proxy reaches %d of %d proxies (itself included), %d needed: no failover, and its services stop routing when their leases end", n, c.Peers, c.Quorum)})
		}
		if c.Recovering {
			out = append(out, pageBanner{Kind: "recovering", Text: "RECOVERING: learning the cluster's state from its peers; not voting or routing yet"})
		}
		if c.StoreError != "" {
			out = append(out, pageBanner{Kind: "store", Text: "STATE_DIR CANNOT BE WRITTEN (" + c.StoreError + "): this proxy neither votes nor routes until it can"})
		}
		for _, cs := range c.Services {
			if cs.Paused {
				add("paused", cs.Service, fmt.Sprintf("PAUSED: %s: no automatic failover until `quorumproxy resume`; switchovers, fences and unfences still work", cs.Service))
			}
		}
	}
	for _, sv := range st.Services {
		if len(sv.Routes) == 0 {
			why := sv.Why
			if why == "" {
				why = "no backend it may forward to"
			}
			add("noroute", sv.Name, fmt.Sprintf("NO ROUTE: %s refuses new clients: %s", sv.Name, why))
		}
		for _, a := range sv.Alerts {
			if strings.HasPrefix(a, "dual_primary") {
				add("dual", sv.Name, "DUAL PRIMARY: "+sv.Name+": "+strings.TrimPrefix(strings.TrimPrefix(a, "dual_primary"), ": "))
			}
		}
	}
	for _, kind := range kinds {
		bs := perService[kind]
		if len(bs) <= bannersPerKind {
			out = append(out, bs...)
			continue
		}
		names := make([]string, 0, bannersPerKind)
		for _, b := range bs[:bannersPerKind] {
			names = append(names, b.service)
		}
		what := map[string]string{
			"paused":  "PAUSED: %d services: no automatic failover until `quorumproxy resume` (%s and %d more)",
			"noroute": "NO ROUTE: %d services refuse new clients (%s and %d more; each says why below)",
			"dual":    "DUAL PRIMARY: %d services have two or more backends reporting primary (%s and %d more)",
		}[kind]
		out = append(out, pageBanner{Kind: kind, Text: fmt.Sprintf(what, len(bs), strings.Join(names, ", "), len(bs)-bannersPerKind)})
	}
	return out
}

// handlePage is GET /?refresh=SECONDS (default 2, 0: none).
func (d *Daemon) handlePage(w http.ResponseWriter, r *http.Request) {
	refresh := pageRefresh
	if v := r.FormValue("refresh"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 3600 {
			http.Error(w, "refresh: want seconds between page reloads, 0 to 3600 (0: none)", http.StatusBadRequest)
			return
		}
		refresh = n
	}
	st := d.status()
	hist := d.history.List("", pageHistory)
	slices.Reverse(hist)
	p := &pageData{Status: st, Now: time.Now(), Refresh: refresh, Banners: banners(st), History: hist}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := pageTmpl.Execute(w, p); err != nil {
		d.log.Warn("status page", "err", err)
	}
}
