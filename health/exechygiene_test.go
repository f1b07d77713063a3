package health

import (
	"runtime"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

// A check is judged by its own exit status and output: a child it leaves
// in the background neither makes it fail nor outlives it. 100 checks
// leave no process behind.
func TestExecCheckLeavesNoOrphans(t *testing.T) {
	mark := testenv.Mark(t)
	t.Cleanup(func() { testenv.KillMarked(mark) })
	spec := Spec{Kind: "exec", Command: []string{"/bin/sh", "-c", "sleep 1000 & echo primary; exit 0"}, Timeout: 10 * time.Second}
	c, err := NewChecker(spec, "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 100 {
		if r := checkWith(c, spec); !r.Up || r.Role != RolePrimary {
			t.Fatalf("check %d: up=%v role=%v err=%v, want up as primary", i, r.Up, r.Role, r.Err)
		}
	}
	// The group is killed as each check ends; give the kernel a moment to reap.
	deadline := time.Now().Add(5 * time.Second)
	for n := len(testenv.Marked(mark)); n > 0; n = len(testenv.Marked(mark)) {
		if time.Now().After(deadline) {
			t.Fatalf("%d processes left behind by 100 checks", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A check that prints 100 MB is read through a bounded buffer: the proxy
// does not hold its output.
func TestExecCheckOutputBounded(t *testing.T) {
	spec := Spec{Kind: "exec", Command: []string{"/bin/sh", "-c", "head -c 100000000 /dev/zero; echo; echo replica"}, Timeout: 30 * time.Second}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := checkOnce(t, spec, "127.0.0.1:1")
	runtime.ReadMemStats(&after)
	if !r.Up {
		t.Fatalf("down: %v", r.Err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("FIGURE exec check with 100 MB of output: %.1f MiB allocated", float64(alloc)/(1<<20))
	if alloc > 16<<20 {
		t.Fatalf("a check with 100 MB of output allocated %d MiB, want a bounded buffer", alloc>>20)
	}
}
