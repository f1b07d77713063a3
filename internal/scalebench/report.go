package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// machine describes where the benchmark ran.
type machine struct {
	cpus    int
	kernel  string
	version string
	nofile  uint64
	tmpFS   string
}

func describeMachine(bin string, nofile uint64) machine {
	m := machine{cpus: runtime.NumCPU(), nofile: nofile}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command(bin, "version").Output(); err == nil {
		m.version = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("stat", "-f", "-c", "%T", os.TempDir()).Output(); err == nil {
		m.tmpFS = strings.TrimSpace(string(out))
	}
	return m
}

func secs(d time.Duration) string {
	if d <= 0 {
		return "not reached"
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func kbps(v float64) string { return fmt.Sprintf("%.1f KB/s", v/1e3) }

// report is the Markdown report of every cluster measured.
func report(m machine, o options, rs []*result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# quorumproxy cluster at scale\n\n")
	fmt.Fprintf(&b, "%s; %d CPUs, Linux %s; state_dir on %s (%s); open-file limit %d.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), m.cpus, m.kernel, os.TempDir(), m.tmpFS, m.nofile)
	if m.version != "" {
		fmt.Fprintf(&b, "Binary: `%s`.\n\n", m.version)
	}
	fmt.Fprintf(&b, "Every proxy has the same %d active-passive services over the same two TCP backends "+
		"(listeners of the benchmark that accept and close), `kind = \"tcp\"` checks at the interval below, "+
		"every other setting at its default (the settings row: as the config package filled them in). "+
		"Backend a has priority 1, b priority 0.\n\n", o.services)

	b.WriteString("| | " + join(rs, func(r *result) string {
		return fmt.Sprintf("%d proxies × %d services, check %v", r.proxies, r.services, r.interval)
	}) + " |\n|---|" + strings.Repeat("---|", len(rs)) + "\n")
	row := func(name string, f func(r *result) string) {
		b.WriteString("| " + name + " | " + join(rs, f) + " |\n")
	}
	row("settings", func(r *result) string { return r.timings })
	row("cold start: every service routed on every proxy", func(r *result) string { return secs(r.coldAll) })
	row("… first /health answered (slowest proxy)", func(r *result) string {
		return maxOf(r.cold, func(w proxyWait) time.Duration { return w.firstStatus })
	})
	row("… recovery done (slowest proxy)", func(r *result) string {
		return maxOf(r.cold, func(w proxyWait) time.Duration { return w.recoveryDone })
	})
	row("… first service routed (fastest proxy)", func(r *result) string {
		return minOf(r.cold, func(w proxyWait) time.Duration { return w.first })
	})
	row("steady CPU per proxy, % of one core", func(r *result) string { return pcts(r.cpuPct) })
	row("gossip, whole cluster", func(r *result) string {
		if r.gossipNote != "" || r.steadySecs == 0 {
			return "not measured"
		}
		return kbps(r.gossipTotal)
	})
	row("gossip per proxy (cluster total / N)", func(r *result) string {
		if r.gossipNote != "" || r.steadySecs == 0 {
			return "not measured"
		}
		return kbps(r.gossipTotal / float64(r.proxies))
	})
	row("gossip at each proxy's port, in+out", func(r *result) string {
		var s []string
		for _, v := range r.gossipPort {
			s = append(s, fmt.Sprintf("%.1f", v/1e3))
		}
		if len(s) == 0 {
			return "not measured"
		}
		return strings.Join(s, " / ") + " KB/s"
	})
	row("mass failover: every service on b on every proxy", func(r *result) string { return secs(r.failAll) })
	row("… a quorum of proxies saw a down (their checks)", func(r *result) string { return secs(r.quorumDown) })
	row("… from there until every service was on b", func(r *result) string { return secs(afterDown(r)) })
	row("one service alone, same cluster size, same run: on b on every proxy", func(r *result) string {
		if r.base == nil {
			return "not measured"
		}
		return secs(r.base.failAll)
	})
	row("… from a quorum seeing a down", func(r *result) string {
		if r.base == nil {
			return "not measured"
		}
		return secs(afterDown(r.base))
	})
	row("mass failover minus one service (target: at most +1 s): from the close / from a quorum seeing a down", func(r *result) string {
		if r.base == nil || r.base.failAll <= 0 || r.failAll <= 0 || afterDown(r) <= 0 || afterDown(r.base) <= 0 {
			return "not measured"
		}
		return fmt.Sprintf("%+.2f s / %+.2f s", (r.failAll - r.base.failAll).Seconds(), (afterDown(r) - afterDown(r.base)).Seconds())
	})
	row("… first service on b (fastest proxy)", func(r *result) string {
		return minOf(r.fail, func(w proxyWait) time.Duration { return w.first })
	})
	row("… half the services on b (slowest proxy)", func(r *result) string {
		return maxOf(r.fail, func(w proxyWait) time.Duration { return w.median })
	})
	counter := func(name string, f func(c counterDelta) uint64) {
		row("failover: "+name+" (per proxy)", func(r *result) string {
			if len(r.counters) == 0 {
				return "not read"
			}
			var s []string
			for _, c := range r.counters {
				s = append(s, fmt.Sprint(f(c)))
			}
			return strings.Join(s, " / ")
		})
	}
	counter("proposals", func(c counterDelta) uint64 { return c.Proposals })
	counter("proposals given up", func(c counterDelta) uint64 { return c.GivenUp })
	counter("commits", func(c counterDelta) uint64 { return c.Commits })
	counter("saves (fsyncs)", func(c counterDelta) uint64 { return c.Saves })
	counter("dropped: queue_full", func(c counterDelta) uint64 { return c.QueueFull })
	counter("votes granted", func(c counterDelta) uint64 { return c.VotesGranted })
	counter("votes refused", func(c counterDelta) uint64 { return c.VotesRefused })
	counter("adoptions", func(c counterDelta) uint64 { return c.Adoptions })
	row("log lines per proxy: cold start / steady / failover", func(r *result) string {
		var s []string
		for _, l := range r.logLines {
			s = append(s, fmt.Sprintf("%d/%d/%d", l[1]-l[0], l[2]-l[1], l[3]-l[2]))
		}
		return strings.Join(s, " · ")
	})
	row("WARN / ERROR lines per proxy", func(r *result) string {
		var s []string
		for _, l := range r.logs {
			s = append(s, fmt.Sprintf("%d/%d", l.byLevel["WARN"], l.byLevel["ERROR"]))
		}
		return strings.Join(s, " · ")
	})
	row("config file per proxy", func(r *result) string { return fmt.Sprintf("%.0f KiB", float64(r.configBytes)/1024) })
	row("outcome", func(r *result) string {
		if r.err != nil {
			return "**failed** (below)"
		}
		return "ok"
	})

	b.WriteString("\nPer-proxy figures are in the order qp1 / qp2 / …. Times are from starting the proxies " +
		"(cold start) or from closing backend a's listener (failover), as seen by polling every proxy's " +
		fmt.Sprintf("`GET /health` every %v (plus the read itself): each is late by up to that much. ", pollEvery) +
		"A service counts as routed when `/health`'s `routing_to` counts it for the backend: a new connection " +
		"would be forwarded there now (in a cluster, under a lease at the current epoch). Steady CPU is the run time of every thread (`/proc/PID/task/*/schedstat`) over " +
		fmt.Sprintf("%v, starting %v after the cold start, with no admin API reads meanwhile. ", o.steady, o.settle) +
		"Gossip bytes are IP bytes (headers included) counted by iptables rules on OUTPUT of loopback over the same " +
		"window: the cluster total counts every packet from or to any gossip port once; a proxy's own port sees " +
		"its UDP both ways and the TCP streams others open to it, while the streams it opens count at the peer. " +
		fmt.Sprintf("Failover counters are the change from just before the listener closed to %v after every service was on b. ", o.settle) +
		"When a quorum saw a down comes from the proxies' logs (the first `backend down` line for a's address on each, to the millisecond; " +
		"the (N/2+1)-th of them): the time before it is the checks' (interval × fall, and where in its interval each check was when the " +
		"listener closed, which differs from run to run), the time after it the cluster's. The single-service baseline is the same " +
		"cluster with one service, started, failed over and stopped just before the mass run.\n")

	for _, r := range rs {
		fmt.Fprintf(&b, "\n## %d proxies × %d services, check every %v\n\n", r.proxies, r.services, r.interval)
		fmt.Fprintf(&b, "Admin API reads (/health every %v while a phase waits; /status for the counters): %s.\n\n", pollEvery, r.fetch.summary())
		if r.gossipNote != "" {
			fmt.Fprintf(&b, "No gossip figure: %s.\n\n", r.gossipNote)
		}
		if len(r.cold) > 0 {
			b.WriteString("| proxy | cold: /health | cold: recovered | cold: first / half / all routed | failover: first / half / all on b |\n|---|---|---|---|---|\n")
			for i, w := range r.cold {
				f := proxyWait{}
				if i < len(r.fail) {
					f = r.fail[i]
				}
				fmt.Fprintf(&b, "| qp%d | %s | %s | %s / %s / %s | %s / %s / %s |\n", i+1, secs(w.firstStatus), secs(w.recoveryDone),
					secs(w.first), secs(w.median), secs(w.all), secs(f.first), secs(f.median), secs(f.all))
			}
			b.WriteString("\n")
		}
		for i, l := range r.logs {
			if len(l.top) == 0 {
				continue
			}
			fmt.Fprintf(&b, "qp%d logged %d lines (%s); most frequent WARN/ERROR:\n\n", i+1, l.lines, l.levels())
			for j, c := range l.top {
				if j == 5 {
					fmt.Fprintf(&b, "- … %d other messages\n", len(l.top)-5)
					break
				}
				fmt.Fprintf(&b, "- %d × %s %q, e.g. `%s`\n", c.n, c.level, c.msg, truncate(c.example, 400))
			}
			b.WriteString("\n")
		}
		if r.err != nil {
			fmt.Fprintf(&b, "**Failed:**\n\n```\n%v\n```\n\n", r.err)
		}
	}
	return b.String()
}

// afterDown is the part of a failover after a quorum saw the backend
// down: the cluster's own work (0 if either is unknown).
func afterDown(r *result) time.Duration {
	if r.failAll <= 0 || r.quorumDown <= 0 || r.quorumDown > r.failAll {
		return 0
	}
	return r.failAll - r.quorumDown
}

func join(rs []*result, f func(r *result) string) string {
	var s []string
	for _, r := range rs {
		s = append(s, f(r))
	}
	return strings.Join(s, " | ")
}

func pcts(v []float64) string {
	if len(v) == 0 {
		return "not measured"
	}
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.1f", x))
	}
	return strings.Join(s, " / ") + " %"
}

func maxOf(ws []proxyWait, f func(proxyWait) time.Duration) string {
	var m time.Duration
	for _, w := range ws {
		if f(w) <= 0 {
			return "not reached"
		}
		m = max(m, f(w))
	}
	if len(ws) == 0 {
		return "not reached"
	}
	return secs(m)
}

func minOf(ws []proxyWait, f func(proxyWait) time.Duration) string {
	var m time.Duration
	for _, w := range ws {
		if d := f(w); d > 0 && (m == 0 || d < m) {
			m = d
		}
	}
	return secs(m)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
