package proxy

import (
	"testing"
	"time"
)

// Errors that keep coming make the delay grow even when accepts succeed
// in between; a quiet second starts it over; the log gets one line a
// second with the count.
func TestAcceptBackoff(t *testing.T) {
	var b acceptBackoff
	now := time.Unix(1000, 0)
	var delays []time.Duration
	lines, covered := 0, 0
	for range 2000 { // an error every 4ms after the wait (successes in between do not matter)
		wait, logNow, n := b.failed(now)
		delays = append(delays, wait)
		if logNow {
			lines++
			covered += n
		}
		now = now.Add(4*time.Millisecond + wait)
	}
	if delays[0] != acceptDelayMin || delays[len(delays)-1] != acceptDelayMax {
		t.Errorf("delays from %v to %v, want %v to %v", delays[0], delays[len(delays)-1], acceptDelayMin, acceptDelayMax)
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] < delays[i-1] {
			t.Fatalf("delay fell from %v to %v while errors went on", delays[i-1], delays[i])
		}
	}
	elapsed := now.Sub(time.Unix(1000, 0))
	if max := int(elapsed/acceptLogEvery) + 1; lines > max || lines == 0 {
		t.Errorf("%d log lines over %v, want at most %d", lines, elapsed, max)
	}
	if covered == 0 || covered > 2000 {
		t.Errorf("the lines count %d errors", covered)
	}
	wait, _, _ := b.failed(now.Add(acceptDelayMax + acceptQuiet))
	if wait != acceptDelayMin {
		t.Errorf("after a quiet second: %v, want %v", wait, acceptDelayMin)
	}
}
