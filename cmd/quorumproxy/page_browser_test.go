package main

import (
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumproxy/quorumproxy/internal/testbrowser"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// The status page of a cluster's proxy in a real browser: the cluster's
// record and lease, a pause banner while an operator pauses, the failover
// when the primary dies (target marked, a new epoch, the record in the
// history), and, with the other two proxies frozen, a lost-quorum banner
// and, once the lease ends, a no-route one.
func TestStatusPageClusterInBrowser(t *testing.T) {
	testbrowser.Path(t)
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	a, b := startEcho(t, "a"), startEcho(t, "b")
	ps, tokenFile := startEchoCluster(t, a, b)
	testwait.For(t, "all three proxies routing to a", 30*time.Second, allRoute(t, "a", ps))
	br := testbrowser.Start(t)
	url := "http://" + ps[0].admin + "/?refresh=0"
	// cell is column i (service, epoch, primary, fenced, routing, lease,
	// max voted, in flight, last decision) of echo's cluster row.
	cell := func(p testbrowser.Page, i int) string {
		cs := strings.Split(p.Cluster["echo"], " | ")
		if i >= len(cs) {
			return ""
		}
		return cs[i]
	}
	lease := regexp.MustCompile(`^[0-9]+ms$`)

	p := br.Stage("cluster before", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		return p.Services["echo"].Rows["a"].Target && cell(p, 2) == "a" && cell(p, 4) == "a" && lease.MatchString(cell(p, 5))
	})
	if len(p.Banners) != 0 || !strings.Contains(p.ClusterHeader, "node qp1 · 3 proxies · reaches 3 · quorum 2") {
		t.Errorf("before: banners %+v, cluster heading %q; want none, qp1 reaching 3 of 3, quorum 2", p.Banners, p.ClusterHeader)
	}
	epoch := cell(p, 1)

	// The first pause may meet a lease round in flight and give up: ask
	// again, as an operator would.
	testwait.For(t, "paused", 30*time.Second, func() bool {
		out, errOut, code := runBin(t, "pause", "-config", ps[0].cfgPath, "-token-file", tokenFile)
		if code != 0 {
			t.Logf("pause: %s %s", out, errOut)
		}
		return code == 0 && ps[0].clusterService(t).Paused
	})
	br.Stage("cluster paused", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		return p.HasBanner("banner-paused", "PAUSED: echo: no automatic failover") && strings.Contains(cell(p, 0), "PAUSED")
	})
	if out, errOut, code := runBin(t, "resume", "-admin", ps[0].admin, "-token-file", tokenFile); code != 0 {
		t.Fatalf("resume: exit %d: %s %s", code, out, errOut)
	}
	br.Stage("cluster resumed", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		return len(p.Banners) == 0 && !strings.Contains(cell(p, 0), "PAUSED") && p.HistoryHas("operator", "resume requested")
	})

	// The primary dies: b is marked, at a new epoch, and the history says so.
	a.Close()
	p = br.Stage("cluster failover", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		return p.Services["echo"].Rows["b"].Target && cell(p, 2) == "b" && cell(p, 4) == "b" &&
			p.HistoryHas("record", "primary moved from a to b")
	})
	if cell(p, 1) == epoch || !strings.Contains(cell(p, 3), "a") {
		t.Errorf("after the failover: epoch %q (was %q), fenced %q; want a new epoch, a fenced", cell(p, 1), epoch, cell(p, 3))
	}

	// qp2 and qp3 frozen: qp1 alone has lost its quorum and, once its
	// lease ends, routes nowhere.
	for _, q := range ps[1:] {
		if err := q.d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.d.cmd.Process.Signal(syscall.SIGCONT) })
	}
	br.Stage("cluster lost quorum", url, true, 30*time.Second, func(p testbrowser.Page) bool {
		return p.HasBanner("banner-quorum", "LOST QUORUM: this proxy reaches 1 of 3 proxies (itself included), 2 needed") &&
			p.HasBanner("banner-noroute", "NO ROUTE: echo") && !p.Services["echo"].Rows["b"].Target
	})
}
