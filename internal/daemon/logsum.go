package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// A burst of log lines of one kind about many services (a mass failover:
// "target changed" for 300 services) is summarised: the first burstMax
// lines of a kind within burstWindow are written as they come, the rest
// at debug level only, and when the window ends one line says how many
// there were and names the first few. Lines about no service, and
// lines below INFO, always pass.
const (
	burstMax    = 5
	burstWindow = time.Second
	burstNames  = 5
)

type burstKey struct {
	level slog.Level
	msg   string
}

type burst struct {
	start      time.Time
	n          int
	suppressed int
	names      []string
	timer      *time.Timer
}

// burstState is shared by a handler and the handlers derived from it.
type burstState struct {
	mu     sync.Mutex
	root   slog.Handler
	bursts map[burstKey]*burst
}

type burstHandler struct {
	next    slog.Handler
	st      *burstState
	service string // from WithAttrs
}

func newBurstHandler(next slog.Handler) slog.Handler {
	return burstHandler{next: next, st: &burstState{root: next, bursts: map[burstKey]*burst{}}}
}

func (h burstHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h burstHandler) Handle(ctx context.Context, r slog.Record) error {
	service := h.service
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "service" {
			service = a.Value.String()
			return false
		}
		return true
	})
	if service == "" || r.Level < slog.LevelInfo {
		return h.next.Handle(ctx, r)
	}
	k := burstKey{r.Level, r.Message}
	now := time.Now()
	s := h.st
	s.mu.Lock()
	b := s.bursts[k]
	if b == nil || now.Sub(b.start) >= burstWindow {
		if b != nil {
			if b.timer != nil {
				b.timer.Stop()
			}
			s.emitLocked(k, b)
		}
		b = &burst{start: now}
		s.bursts[k] = b
	}
	b.n++
	if b.n <= burstMax {
		s.mu.Unlock()
		return h.next.Handle(ctx, r)
	}
	b.suppressed++
	if len(b.names) < burstNames {
		b.names = append(b.names, service)
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(burstWindow-now.Sub(b.start), func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.emitLocked(k, b)
			if s.bursts[k] == b {
				delete(s.bursts, k)
			}
		})
	}
	s.mu.Unlock()
	if h.next.Enabled(ctx, slog.LevelDebug) {
		r.Level = slog.LevelDebug
		return h.next.Handle(ctx, r)
	}
	return nil
}

// emitLocked writes the summary of a burst's suppressed lines.
func (s *burstState) emitLocked(k burstKey, b *burst) {
	if b.suppressed == 0 {
		return
	}
	r := slog.NewRecord(time.Now(), k.level, k.msg, 0)
	r.AddAttrs(slog.Int("more_services", b.suppressed),
		slog.String("summary", fmt.Sprintf("%d more lines like this within %v after the %d above (each at debug level), for %s",
			b.suppressed, burstWindow, burstMax, strings.Join(b.names, ", ")+more(b.suppressed-len(b.names)))))
	_ = s.root.Handle(context.Background(), r)
	b.suppressed = 0
}

func more(n int) string {
	if n <= 0 {
		return ""
	}
	return fmt.Sprintf(" and %d more", n)
}

func (h burstHandler) WithAttrs(as []slog.Attr) slog.Handler {
	service := h.service
	for _, a := range as {
		if a.Key == "service" {
			service = a.Value.String()
		}
	}
	return burstHandler{next: h.next.WithAttrs(as), st: h.st, service: service}
}

func (h burstHandler) WithGroup(name string) slog.Handler {
	return burstHandler{next: h.next.WithGroup(name), st: h.st, service: h.service}
}
