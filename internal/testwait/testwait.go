// Package testwait is the tests' one way to wait for a condition: poll it
// with a deadline, never sleep and hope.
//
//	testwait.For(t, "b routing", 10*time.Second, func() bool { return route() == "b" })
package testwait

import (
	"testing"
	"time"
)

// Every is how often For polls: often enough that a wait ends within a few
// milliseconds of its condition, rarely enough not to load the machine.
const Every = 10 * time.Millisecond

// For polls cond every Every until it holds; once timeout has passed it
// fails t, naming what it waited for.
func For(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	ForState(t, timeout, func() (bool, string) { return cond(), "waiting for " + what })
}

// ForState is For with a condition that also says where things stand; the
// last state is in the failure.
func ForState(t testing.TB, timeout time.Duration, cond func() (ok bool, state string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", timeout, state)
		}
		time.Sleep(Every)
	}
}
