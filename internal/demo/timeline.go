package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// timeline prints what happens, each line stamped with the time since the
// demo started (t+1.234s). Lines may come from several goroutines.
type timeline struct {
	mu  sync.Mutex
	out io.Writer
	t0  time.Time
}

func newTimeline(out io.Writer, t0 time.Time) *timeline {
	return &timeline{out: out, t0: t0}
}

// stamp formats t relative to the start of the demo.
func (tl *timeline) stamp(t time.Time) string {
	return fmt.Sprintf("t+%.3fs", t.Sub(tl.t0).Seconds())
}

// printf prints a line stamped now.
func (tl *timeline) printf(format string, args ...any) {
	tl.at(time.Now(), format, args...)
}

// at prints a line stamped with t, which may lie a little in the past
// (events read back from the proxy or the hook carry their own time).
func (tl *timeline) at(t time.Time, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	tl.mu.Lock()
	defer tl.mu.Unlock()
	pad := strings.Repeat(" ", len(tl.stamp(t))+2)
	for i, line := range strings.Split(strings.TrimRight(msg, "\n"), "\n") {
		if i == 0 {
			fmt.Fprintf(tl.out, "%s  %s\n", tl.stamp(t), line)
		} else {
			fmt.Fprintf(tl.out, "%s%s\n", pad, line)
		}
	}
}

// section prints a heading.
func (tl *timeline) section(title string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	fmt.Fprintf(tl.out, "\n=== %s ===\n", title)
}

// result is what one part measured. Zero times mean "not seen".
type result struct {
	Part      string
	OldTarget string // the primary that was killed
	NewTarget string // where the proxy sent traffic afterwards

	Killed         time.Time // SIGKILL sent to the primary
	Detected       time.Time // the proxy marked the old primary down
	TargetMoved    time.Time // /status first showed the new target
	HookStarted    time.Time // the promote hook started
	HookDone       time.Time // the promote hook finished
	HookOK         bool
	FirstGoodWrite time.Time // first write sent after the kill and acknowledged

	Acked          int // acknowledged writes in all
	AckedAfterKill int // of which sent after the kill
	Errors         int // writes that failed (not acknowledged)
	ReadBack       int // acknowledged writes found at the end
	Lost           int // acknowledged writes missing at the end (RPO in writes)
	LostAfterKill  int // of which sent after the kill: must be 0
	LostIDs        []int64

	Notes []string // part-specific lines (benchmark figures)
}

// RTO is the time from the kill to the first good write, or 0 if none.
func (r *result) RTO() time.Duration {
	if r.FirstGoodWrite.IsZero() || r.Killed.IsZero() {
		return 0
	}
	return r.FirstGoodWrite.Sub(r.Killed)
}

// moved reports whether traffic demonstrably moved to another backend.
func (r *result) moved() error {
	switch {
	case r.FirstGoodWrite.IsZero():
		return fmt.Errorf("no write was acknowledged after the primary %q was killed", r.OldTarget)
	case r.NewTarget == "" || r.NewTarget == r.OldTarget:
		return fmt.Errorf("the proxy's target did not move away from %q (now %q)", r.OldTarget, r.NewTarget)
	case r.LostAfterKill > 0:
		return fmt.Errorf("%d writes acknowledged after the switch were lost", r.LostAfterKill)
	}
	return nil
}

// report prints a part's summary.
func (tl *timeline) report(r *result) {
	since := func(t time.Time) string {
		if t.IsZero() {
			return "not seen"
		}
		return fmt.Sprintf("%s  (kill %+.3fs)", tl.stamp(t), t.Sub(r.Killed).Seconds())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n--- %s: summary ---\n", r.Part)
	fmt.Fprintf(&b, "  primary %-8q killed          %s\n", r.OldTarget, tl.stamp(r.Killed))
	fmt.Fprintf(&b, "  detected down by the proxy        %s\n", since(r.Detected))
	fmt.Fprintf(&b, "  target moved to %-8q          %s\n", r.NewTarget, since(r.TargetMoved))
	hook := "promote hook started              " + since(r.HookStarted)
	if !r.HookDone.IsZero() {
		ok := "ok"
		if !r.HookOK {
			ok = "FAILED"
		}
		hook += fmt.Sprintf(", %s after %.3fs", ok, r.HookDone.Sub(r.HookStarted).Seconds())
	}
	fmt.Fprintf(&b, "  %s\n", hook)
	fmt.Fprintf(&b, "  first good write                  %s\n", since(r.FirstGoodWrite))
	fmt.Fprintf(&b, "  RTO (kill -> first good write)    %.3fs\n", r.RTO().Seconds())
	fmt.Fprintf(&b, "  writes acknowledged               %d (%d sent after the kill); failed: %d\n", r.Acked, r.AckedAfterKill, r.Errors)
	fmt.Fprintf(&b, "  RPO: acknowledged writes lost     %d of %d (read back through the proxy: %d found)\n", r.Lost, r.Acked, r.ReadBack)
	if len(r.LostIDs) > 0 {
		fmt.Fprintf(&b, "       lost ids (first %d): %v\n", len(r.LostIDs), r.LostIDs)
	}
	if r.Lost > 0 && r.LostAfterKill == 0 {
		fmt.Fprintf(&b, "       (each acknowledged before the kill: replication here is asynchronous, so the old primary's\n"+
			"       last writes may never have reached the new one; a synchronous standby would keep them)\n")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	fmt.Fprint(tl.out, b.String())
}
