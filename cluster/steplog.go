package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/quorumproxy/quorumproxy/internal/logattr"
)

// stepSummaryMax is how many lines of one kind about different services a
// step logs one by one; beyond it, the step logs one line that counts them
// (the full list at debug level, and in status). A mass failover of 300
// services is then a few lines, not a few thousand.
const stepSummaryMax = 5

// stepLog holds the Machine's log lines until its step ends (flush), so
// that lines of one kind about many services can be summarised.
type stepLog struct {
	mu      sync.Mutex
	root    slog.Handler
	entries []stepEntry
}

type stepEntry struct {
	h       slog.Handler
	r       slog.Record
	service string
}

// stepHandler is the Machine's slog.Handler: it buffers into a stepLog.
type stepHandler struct {
	next    slog.Handler
	buf     *stepLog
	service string // from WithAttrs
}

func newStepLogger(l *slog.Logger) (*slog.Logger, *stepLog) {
	buf := &stepLog{root: l.Handler()}
	return slog.New(stepHandler{next: l.Handler(), buf: buf}), buf
}

func (h stepHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h stepHandler) Handle(_ context.Context, r slog.Record) error {
	service := logattr.Service(r, h.service)
	h.buf.mu.Lock()
	h.buf.entries = append(h.buf.entries, stepEntry{h: h.next, r: r.Clone(), service: service})
	h.buf.mu.Unlock()
	return nil
}

func (h stepHandler) WithAttrs(as []slog.Attr) slog.Handler {
	service := logattr.ServiceIn(as, h.service)
	return stepHandler{next: h.next.WithAttrs(as), buf: h.buf, service: service}
}

func (h stepHandler) WithGroup(name string) slog.Handler {
	return stepHandler{next: h.next.WithGroup(name), buf: h.buf, service: h.service}
}

// flush writes the step's lines in order: a kind (level and message) with
// more than stepSummaryMax lines about services becomes one line where its
// first was, naming the first few; each of its lines goes on at debug.
func (b *stepLog) flush() {
	b.mu.Lock()
	entries := b.entries
	b.entries = nil
	b.mu.Unlock()
	if len(entries) == 0 {
		return
	}
	type kind struct {
		level slog.Level
		msg   string
	}
	count := map[kind]int{}
	for _, e := range entries {
		if e.service != "" {
			count[kind{e.r.Level, e.r.Message}]++
		}
	}
	ctx := context.Background()
	done := map[kind]bool{}
	for i, e := range entries {
		k := kind{e.r.Level, e.r.Message}
		if e.service == "" || count[k] <= stepSummaryMax {
			_ = e.h.Handle(ctx, e.r)
			continue
		}
		if !done[k] {
			done[k] = true
			var names []string
			for _, o := range entries[i:] {
				if o.service != "" && o.r.Level == k.level && o.r.Message == k.msg {
					names = append(names, o.service)
					if len(names) == stepSummaryMax {
						break
					}
				}
			}
			s := slog.NewRecord(e.r.Time, k.level, k.msg, 0)
			s.AddAttrs(slog.Int("services", count[k]),
				slog.String("first", fmt.Sprintf("%s and %d more (each at debug level)", strings.Join(names, ", "), count[k]-len(names))))
			_ = b.root.Handle(ctx, s)
		}
		if e.h.Enabled(ctx, slog.LevelDebug) {
			d := e.r.Clone()
			d.Level = slog.LevelDebug
			_ = e.h.Handle(ctx, d)
		}
	}
}
