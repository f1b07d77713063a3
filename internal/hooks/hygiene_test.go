package hooks

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// waitNoMarked fails t unless every process carrying mark is gone soon.
func waitNoMarked(t *testing.T, mark, what string) {
	t.Helper()
	testwait.ForState(t, 5*time.Second, func() (bool, string) {
		n := len(testenv.Marked(mark))
		return n == 0, fmt.Sprintf("%s: %d processes left behind", what, n)
	})
}

// A hook that starts a background child is judged by its own exit status,
// at once, and the child does not outlive it.
func TestRunBackgroundChildNeitherFailsNorOutlives(t *testing.T) {
	mark := testenv.Mark(t)
	t.Cleanup(func() { testenv.KillMarked(mark) })
	for i := range 20 {
		res := Run(context.Background(), []string{"/bin/sh", "-c", "sleep 1000 & echo started"}, nil, 10*time.Second)
		if res.Err != nil {
			t.Fatalf("run %d: %v (output %q)", i, res.Err, res.Output)
		}
		if strings.TrimSpace(res.Output) != "started" {
			t.Fatalf("run %d: output %q", i, res.Output)
		}
	}
	waitNoMarked(t, mark, "20 hooks with a background child")

	// A failing hook with a child: the hook's own status decides.
	res := Run(context.Background(), []string{"/bin/sh", "-c", "sleep 1000 & exit 4"}, nil, 10*time.Second)
	if res.Err == nil || !strings.Contains(res.Err.Error(), "exit status 4") {
		t.Fatalf("want exit status 4, got %v", res.Err)
	}
	waitNoMarked(t, mark, "a failed hook with a background child")
}

// A daemon that leaves the hook's process group (setsid, as daemons do)
// is the operator's to keep: the hook still ends when it exits, even
// though the daemon holds its output pipe.
func TestRunDetachedDaemonDoesNotHoldTheHook(t *testing.T) {
	mark := testenv.Mark(t)
	t.Cleanup(func() { testenv.KillMarked(mark) })
	start := time.Now()
	res := Run(context.Background(), []string{"/bin/sh", "-c", "setsid sleep 1000 & echo detached"}, nil, 10*time.Second)
	if res.Err != nil {
		t.Fatalf("%v (output %q)", res.Err, res.Output)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("hook took %v: held by its daemon's pipe", took)
	}
	if !strings.Contains(res.Output, "detached") {
		t.Fatalf("output %q", res.Output)
	}
}

// 100 MB of output is read through a bounded buffer; the tail is kept.
func TestRunOutputBounded(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res := Run(context.Background(), []string{"/bin/sh", "-c", "head -c 100000000 /dev/zero; echo; echo the-end >&2"}, nil, 30*time.Second)
	runtime.ReadMemStats(&after)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("FIGURE hook with 100 MB of output: %.1f MiB allocated", float64(alloc)/(1<<20))
	if alloc > 16<<20 {
		t.Fatalf("a hook with 100 MB of output allocated %d MiB, want a bounded buffer", alloc>>20)
	}
	if len(res.Output) > maxOutput || !strings.HasSuffix(res.Output, "the-end\n") {
		t.Fatalf("output of %d bytes ending %q", len(res.Output), res.Output[max(0, len(res.Output)-20):])
	}
}
