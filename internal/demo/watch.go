package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
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
	last     map[string]*serviceStatus // proxy name -> last status seen
	downAt   map[string]time.Time      // backend -> when the proxy marked it down
	targetAt map[string]time.Time      // target -> when first seen
	hooks    []hookEvent
	evOff    int

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// hookEvent is one line the hook appended to the events file.
type hookEvent struct {
	At     time.Time
	Kind   string // start, ok, fail
	Detail string
}

func (d *demo) watch(ctx context.Context, service string, proxies []*proxyProc, eventsPath string) *watcher {
	ctx, cancel := context.WithCancel(ctx)
	w := &watcher{tl: d.tl, service: service, proxies: proxies, eventsPath: eventsPath,
		last: map[string]*serviceStatus{}, downAt: map[string]time.Time{}, targetAt: map[string]time.Time{},
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
		if s, ok := st.service(w.service); ok {
			w.compare(p.name, s)
		}
	}
	w.readHookEvents()
}

// compare prints what changed since the last status of this proxy.
func (w *watcher) compare(proxy string, s *serviceStatus) {
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
	old := map[string]backendStatus{}
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
