// Package hooks runs operator hooks (promote, fence, notify): an argv, never
// through a shell, with QP_* variables in its environment, under a timeout
// that kills the hook's whole process group.
package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"syscall"
	"time"
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
}

// Run runs argv with env (KEY -> value, added to the proxy's own environment)
// and waits for it, at most timeout (zero: DefaultTimeout). On timeout or ctx
// cancellation the hook's process group is killed.
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

	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), envList(env)...)
	var out tailBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// A group of its own, so that a timeout also kills what the hook started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Children that keep the output pipes open must not hold Wait for ever.
	cmd.WaitDelay = time.Second

	start := time.Now()
	err := cmd.Run()
	res.Duration = time.Since(start)
	res.Output = out.String()
	switch {
	case err == nil:
	case ctx.Err() == context.DeadlineExceeded:
		res.Err = fmt.Errorf("hook %q: timed out after %s", argv[0], timeout)
	case ctx.Err() != nil:
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

// tailBuffer keeps the last maxOutput bytes written to it.
type tailBuffer struct{ b bytes.Buffer }

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > maxOutput {
		p = p[len(p)-maxOutput:]
	}
	if t.b.Len()+len(p) > maxOutput {
		rest := t.b.Bytes()[t.b.Len()+len(p)-maxOutput:]
		kept := append([]byte(nil), rest...)
		t.b.Reset()
		t.b.Write(kept)
	}
	t.b.Write(p)
	return n, nil
}

func (t *tailBuffer) String() string { return t.b.String() }
