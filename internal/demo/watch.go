package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// watchEvery is how often the watcher reads /status and the hook's events.
const watchEvery = 25 * time.Millisecond

// watcher follows one service on every proxy and the promote hook's event
// file, prints each change on the timeline and remembers when it happened.
type watcher struct {
	tl         *timeline
	service    string
	proxies    []*proxyProc
	eventsPath string

	mu       sync.Mutex
	last     map[string]*adminapi.Service // proxy name -> last status seen
	downAt   map[string]time.Time         // backend -> when the proxy marked it down
	targetAt map[string]time.Time         // target -> when first seen
	hooks    []hookEvent
	evOff    int
	clast    map[string]*clusterSnap // proxy name -> last cluster view (part 3)
	cevents  []clusterEvent

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// hookEvent is one line the hook appended to the events file.
type hookEvent struct {
	At     time.Time
	Kind   string // start, ok, fail
	Detail string
	Proxy  string // part 3: the proxy that ran the hook
	Epoch  uint64 // part 3: its QP_EPOCH
}

// hookTag is what runHook adds to the backend name in a cluster.
var hookTag = regexp.MustCompile(`\[proxy (\S*), QP_EPOCH ([0-9]+)\]`)

// clusterSnap is what the watcher remembers of one proxy's cluster view.
type clusterSnap struct {
	svc     adminapi.ClusterService
	members map[string]string // peer -> state
	recov   bool
}

// clusterEvent is a change in one proxy's cluster view, as /status showed it.
type clusterEvent struct {
	At    time.Time
	Proxy string
	Kind  string // propose, decision, epoch, route
	Epoch uint64
	Value string // primary, routing backend or decision
}

func (d *demo) watch(ctx context.Context, service string, proxies []*proxyProc, eventsPath string) *watcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{tl: d.tl, service: service, proxies: proxies, eventsPath: eventsPath,
		last: map[string]*adminapi.Service{}, clast: map[string]*clusterSnap{}, downAt: map[string]time.Time{}, targetAt: map[string]time.Time{},
		cancel: cancel, done: make(chan struct{})}
	go w.loop(ctx)
	return w
}

func (w *watcher) loop(ctx context.Context) {
	defer close(w.done)
	tick := time.NewTicker(watchEvery)
	defer tick.Stop()
	for {
		w.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// close stops the watcher after one last look.
func (w *watcher) close() {
	w.closeOnce.Do(func() {
		w.cancel()
		<-w.done
		w.poll(context.Background())
	})
}

func (w *watcher) poll(ctx context.Context) {
	for _, p := range w.proxies {
		st, err := p.status(ctx)
		if err != nil {
			continue
		}
		if s := st.Service(w.service); s != nil {
			w.compare(p.name, s)
		}
		if st.Cluster != nil {
			w.compareCluster(p.name, st.Cluster)
		}
	}
	w.readHookEvents()
}

// compare prints what changed since the last status of this proxy.
func (w *watcher) compare(proxy string, s *adminapi.Service) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.last[proxy]
	w.last[proxy] = s
	if prev == nil {
		w.targetAt[s.Target] = now
		w.tl.at(now, "%s: %s", proxy, describe(s))
		return
	}
	old := map[string]adminapi.Backend{}
	for _, b := range prev.Backends {
		old[b.Name] = b
	}
	for _, b := range s.Backends {
		o := old[b.Name]
		at := b.LastChange
		if at.IsZero() || at.After(now) {
			at = now
		}
		if b.Health != o.Health {
			why := b.Reason
			if b.Health == "down" && b.LastError != "" {
				why = b.LastError
			}
			if b.Health == "down" {
				w.downAt[b.Name] = at
			}
			w.tl.at(at, "%s: backend %s is %s (%s)", proxy, b.Name, strings.ToUpper(b.Health), why)
		}
		if b.Role != o.Role && b.Health != "down" {
			w.tl.printf("%s: backend %s reports role %s (was %s)", proxy, b.Name, b.Role, o.Role)
		}
	}
	if s.Target != prev.Target {
		if _, seen := w.targetAt[s.Target]; !seen {
			w.targetAt[s.Target] = now
		}
		why := ""
		if s.Why != "" {
			why = " (" + s.Why + ")"
		}
		w.tl.at(now, "%s: target %q -> %q%s", proxy, prev.Target, s.Target, why)
	}
	if strings.Join(s.Alerts, "|") != strings.Join(prev.Alerts, "|") {
		for _, a := range s.Alerts {
			w.tl.at(now, "%s: ALERT %s", proxy, a)
		}
	}
}

// readHookEvents reads lines the hook appended since the last call:
// "<unix nanos> <kind> <detail>".
func (w *watcher) readHookEvents() {
	data, err := os.ReadFile(w.eventsPath)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.evOff > len(data) {
		return
	}
	rest := data[w.evOff:]
	// Only whole lines: the hook may be writing the next one.
	end := bytes.LastIndexByte(rest, '\n')
	if end < 0 {
		return
	}
	w.evOff += end + 1
	sc := bufio.NewScanner(bytes.NewReader(rest[:end+1]))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		if len(f) < 2 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		ev := hookEvent{At: time.Unix(0, ns), Kind: f[1]}
		if len(f) == 3 {
			ev.Detail = f[2]
		}
		if m := hookTag.FindStringSubmatch(ev.Detail); m != nil {
			ev.Proxy = m[1]
			ev.Epoch, _ = strconv.ParseUint(m[2], 10, 64)
		}
		w.hooks = append(w.hooks, ev)
		w.tl.at(ev.At, "promote hook: %s %s", ev.Kind, ev.Detail)
	}
}

// fill copies what was seen after the kill into r.
func (w *watcher) fill(r *result) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.downAt[r.OldTarget]; ok && !t.Before(r.Killed) {
		r.Detected = t
	}
	for _, s := range w.last {
		r.NewTarget = s.Target
	}
	if t, ok := w.targetAt[r.NewTarget]; ok && r.NewTarget != r.OldTarget && !t.Before(r.Killed) {
		r.TargetMoved = t
	}
	for _, ev := range w.hooks {
		if ev.At.Before(r.Killed) {
			continue
		}
		switch ev.Kind {
		case "start":
			if r.HookStarted.IsZero() {
				r.HookStarted = ev.At
			}
		case "ok", "fail":
			if r.HookDone.IsZero() {
				r.HookDone, r.HookOK = ev.At, ev.Kind == "ok"
			}
		}
	}
}

// appendEvent is the hook's side: one line in the events file.
func appendEvent(path, kind, format string, args ...any) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%d %s %s\n", time.Now().UnixNano(), kind, fmt.Sprintf(format, args...))
}

// compareCluster prints what changed in one proxy's view of the agreement:
// peers, proposals and votes, the committed epoch and what it routes to.
func (w *watcher) compareCluster(proxy string, c *adminapi.ClusterStatus) {
	now := time.Now()
	cur := &clusterSnap{members: map[string]string{}, recov: c.Recovering}
	for _, m := range c.Members {
		if !m.Self {
			cur.members[m.Name] = m.State
		}
	}
	for _, s := range c.Services {
		if s.Service == w.service {
			cur.svc = s
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.clast[proxy]
	w.clast[proxy] = cur
	s := cur.svc
	if prev == nil {
		w.tl.at(now, "%s: cluster node %s, quorum %d of %d, epoch %d primary %q routing %q%s",
			proxy, c.Node, c.Quorum, len(c.Members), s.Epoch, s.Primary, s.Routing, decisionNote(s.Decision))
		return
	}
	for name, state := range cur.members {
		if old := prev.members[name]; old != state {
			w.tl.at(now, "%s: peer %s is %s (was %s)", proxy, name, state, orDash(old))
		}
	}
	if cur.recov != prev.recov {
		w.tl.at(now, "%s: recovering (learning state from peers) = %v", proxy, cur.recov)
	}
	p := prev.svc
	if s.Proposing != 0 && (s.Proposing != p.Proposing || s.Votes != p.Votes) {
		w.tl.at(now, "%s: PROPOSING epoch %d, %d vote(s) so far", proxy, s.Proposing, s.Votes)
		if s.Proposing != p.Proposing {
			w.cevents = append(w.cevents, clusterEvent{At: now, Proxy: proxy, Kind: "propose", Epoch: s.Proposing})
		}
	}
	if s.Decision != p.Decision && s.Decision != "" {
		w.tl.at(now, "%s: decision: %s", proxy, s.Decision)
		w.cevents = append(w.cevents, clusterEvent{At: now, Proxy: proxy, Kind: "decision", Epoch: s.Epoch, Value: s.Decision})
	}
	if s.Epoch != p.Epoch || s.Primary != p.Primary {
		w.tl.at(now, "%s: EPOCH %d -> %d, primary %q -> %q", proxy, p.Epoch, s.Epoch, p.Primary, s.Primary)
		w.cevents = append(w.cevents, clusterEvent{At: now, Proxy: proxy, Kind: "epoch", Epoch: s.Epoch, Value: s.Primary})
	}
	if s.Routing != p.Routing {
		lease := "no lease"
		if s.LeaseMS > 0 {
			lease = fmt.Sprintf("lease %.0fms left", s.LeaseMS)
		}
		w.tl.at(now, "%s: ROUTING %q -> %q (epoch %d, %s)", proxy, p.Routing, s.Routing, s.Epoch, lease)
		w.cevents = append(w.cevents, clusterEvent{At: now, Proxy: proxy, Kind: "route", Epoch: s.Epoch, Value: s.Routing})
	}
}

func decisionNote(d string) string {
	if d == "" {
		return ""
	}
	return " (last decision: " + d + ")"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// clusterEvents returns a copy of the cluster changes seen so far.
func (w *watcher) clusterEvents() []clusterEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]clusterEvent(nil), w.cevents...)
}

// hookEvents returns a copy of the hook's events read so far.
func (w *watcher) hookEvents() []hookEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]hookEvent(nil), w.hooks...)
}
