package daemon

import (
	"testing"
	"time"
)

// The token check takes as long whatever the guess: before, a guess of
// another length was refused at once (subtle.ConstantTimeCompare returns
// early on a length mismatch), which told the token's length.
func TestSecurityTokenCompareTime(t *testing.T) {
	token := []byte("0123456789abcdef0123456789abcdef")
	timeOf := func(got []byte) time.Duration {
		best := time.Duration(1 << 62)
		for range 200 {
			start := time.Now()
			for range 200 {
				tokenMatches(got, token)
			}
			best = min(best, time.Since(start))
		}
		return best / 200
	}
	short := timeOf([]byte("x"))
	sameLen := timeOf([]byte("0123456789abcdef0123456789abcdeX"))
	t.Logf("FIGURE token check: %v for a 1-byte guess, %v for a guess of the token's length", short, sameLen)
	if r := float64(sameLen) / float64(short); r > 2 || r < 0.5 {
		t.Errorf("a guess's length shows in the check's time: %v vs %v", short, sameLen)
	}
	if !tokenMatches(token, token) || tokenMatches(token[:31], token) {
		t.Error("tokenMatches is wrong")
	}
}
