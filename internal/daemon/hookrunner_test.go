package daemon

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/hooks"
)

// A hook that cannot be started did nothing, and the proxy can tell: a
// promote of it cannot land later. One that started and failed may have.
func TestHookNotStarted(t *testing.T) {
	for _, c := range []struct {
		argv []string
		want bool
	}{
		{[]string{filepath.Join(t.TempDir(), "no-such-hook")}, true},
		{[]string{"no-such-hook-on-the-path"}, true},
		{[]string{"/bin/sh", "-c", "exit 1"}, false},
	} {
		res := hooks.Run(context.Background(), c.argv, nil, 5*time.Second)
		if res.Err == nil || hookNotStarted(res.Err) != c.want {
			t.Errorf("%v: err %v, not started %v; want %v", c.argv, res.Err, hookNotStarted(res.Err), c.want)
		}
	}
}
