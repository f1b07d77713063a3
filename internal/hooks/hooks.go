// Package hooks runs operator hooks (promote, fence, notify): an argv, never
// through a shell, with QP_* variables in its environment, under a timeout.
//
// A hook is judged by its own exit status: Run returns when the hook exits.
// It runs in a process group of its own, and that group is killed when the
// hook exits or times out, so a child left in the background (`cmd &`)
// does not outlive it. A hook that means to leave a daemon running must
// detach it into a session of its own (setsid), as daemons do; such a
// daemon is the operator's, and its output is not read.
package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/groupexec"
)

// DefaultTimeout bounds a hook when the caller gives none: long enough for a
// database promotion, short enough that a stuck hook cannot hold a failover.
const DefaultTimeout = 30 * time.Second

// maxOutput is how much of a hook's combined output is kept for the log.
const maxOutput = 4 << 10

// Result is what a finished hook left behind.
type Result struct {
	Argv     []string
	Output   string // last maxOutput bytes of stdout and stderr
	Duration time.Duration
	Err      error // nil when the hook exited 0
	// Truncated is true when the hook wrote more than Output holds.
	Truncated bool
}

// Run runs argv with env (KEY -> value, added to the proxy's own environment)
// and waits for it to exit, at most timeout (zero: DefaultTimeout). Then, or
// on timeout or ctx cancellation, the hook's process group is killed.
func Run(ctx context.Context, argv []string, env map[string]string, timeout time.Duration) Result {
	res := Result{Argv: argv}
	if len(argv) == 0 {
		res.Err = errors.New("hook: empty argv")
		return res
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	start := time.Now()
	out := groupexec.Run(ctx, argv, append(os.Environ(), envList(env)...),
		groupexec.Options{Limit: maxOutput, Tail: true, Combined: true})
	res.Duration = time.Since(start)
	res.Output = string(out.Stdout)
	res.Truncated = out.Truncated
	switch err := out.Err; {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == context.DeadlineExceeded:
		res.Err = fmt.Errorf("hook %q: timed out after %s", argv[0], timeout)
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		res.Err = fmt.Errorf("hook %q: %w", argv[0], ctx.Err())
	default:
		res.Err = fmt.Errorf("hook %q: %w", argv[0], err)
	}
	return res
}

func envList(env map[string]string) []string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	list := make([]string, 0, len(keys))
	for _, k := range keys {
		list = append(list, k+"="+env[k])
	}
	return list
}
