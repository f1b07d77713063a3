package mesh

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"sync"
	"time"
)

// slogWriter turns memberlist's "[LEVEL] memberlist: text" lines into slog
// records at the matching level, so its DEBUG chatter can be filtered.
// Warnings and errors of one kind (their text up to the first detail) are
// logged at most once per interval, the next one saying how many were
// left out: memberlist logs one line per bad stream or packet, which a
// hostile sender controls.
type slogWriter struct {
	logger *slog.Logger
	limit  *lineLimiter
}

var levelPrefixes = []struct {
	prefix []byte
	level  slog.Level
}{
	{[]byte("[DEBUG] "), slog.LevelDebug},
	{[]byte("[INFO] "), slog.LevelInfo},
	{[]byte("[WARN] "), slog.LevelWarn},
	{[]byte("[ERR] "), slog.LevelError},
	{[]byte("[ERROR] "), slog.LevelError},
}

// peerAway are memberlist's errors that only say a peer could not be
// reached: a peer that stops or is cut off produces them, and the cluster
// says that once, in words, at WARN ("peer unreachable"). At ERROR they
// would page on-call for an orderly restart.
var peerAway = [][]byte{
	[]byte("memberlist: Push/Pull with "),
	[]byte("memberlist: Failed to send gossip to "),
	[]byte("memberlist: Failed to send ping"),
	[]byte("memberlist: Failed to send indirect ping"),
	[]byte("memberlist: Failed fallback ping"),
	[]byte("memberlist: Failed to send UDP compound ping"),
}

func (w slogWriter) Write(p []byte) (int, error) {
	line := bytes.TrimRight(p, "\n")
	level := slog.LevelInfo
	for _, lp := range levelPrefixes {
		if bytes.HasPrefix(line, lp.prefix) {
			level = lp.level
			line = line[len(lp.prefix):]
			break
		}
	}
	if level == slog.LevelError {
		for _, a := range peerAway {
			if bytes.HasPrefix(line, a) {
				level = slog.LevelWarn
				break
			}
		}
	}
	ctx := context.Background()
	if !w.logger.Enabled(ctx, level) {
		return len(p), nil
	}
	if level >= slog.LevelWarn {
		ok, left := w.limit.allow(lineKind(line), time.Now())
		if !ok {
			return len(p), nil
		}
		if left > 0 {
			w.logger.Log(ctx, level, string(line), "similar_lines_left_out", left)
			return len(p), nil
		}
	}
	w.logger.Log(ctx, level, string(line))
	return len(p), nil
}

// lineKind is a line's text up to its first detail (a colon, quote or
// '=' after memberlist's own prefix), at most 64 bytes.
func lineKind(line []byte) string {
	rest := bytes.TrimPrefix(line, []byte("memberlist: "))
	if i := bytes.IndexAny(rest, `:"=`); i >= 0 {
		rest = rest[:i]
	}
	return string(rest[:min(len(rest), 64)])
}

// lineLimiter lets one line of each kind through per interval.
type lineLimiter struct {
	every time.Duration
	mu    sync.Mutex
	kinds map[string]*lineCount
}

type lineCount struct {
	next time.Time
	left int
}

// maxKinds bounds the limiter's memory; past it, it starts over.
const maxKinds = 256

func newLineLimiter(every time.Duration) *lineLimiter {
	return &lineLimiter{every: every, kinds: map[string]*lineCount{}}
}

// allow reports whether a line of kind may be logged now and how many of
// its kind were left out since the last one.
func (l *lineLimiter) allow(kind string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.kinds[kind]
	if k == nil {
		if len(l.kinds) >= maxKinds {
			clear(l.kinds)
		}
		k = &lineCount{}
		l.kinds[kind] = k
	}
	if now.Before(k.next) {
		k.left++
		return false, 0
	}
	left := k.left
	k.next, k.left = now.Add(l.every), 0
	return true, left
}

func newStdLogger(l *slog.Logger) *log.Logger {
	return newLimitedStdLogger(l, DefaultDropLogInterval)
}

// newLimitedStdLogger is newStdLogger with its own interval for repeated
// warnings and errors.
func newLimitedStdLogger(l *slog.Logger, every time.Duration) *log.Logger {
	return log.New(slogWriter{logger: l.With("component", "memberlist"), limit: newLineLimiter(every)}, "", 0)
}
