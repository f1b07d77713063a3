package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/groupexec"
)

// execChecker runs an argv without a shell; exit status 0 means up. The command gets
// QP_ADDRESS, QP_HOST and QP_PORT in its environment and may print its role on a line of its
// own: "role=primary", "primary", "master", "role=replica", "replica", "standby" or "slave".
// It runs in a process group of its own, killed when it exits or times out, and at most
// maxBody bytes of each of its streams are kept (see internal/groupexec).
type execChecker struct {
	argv    []string
	env     []string
	timeout time.Duration
}

func newExecChecker(spec Spec, address string) (*execChecker, error) {
	if len(spec.Command) == 0 || spec.Command[0] == "" {
		return nil, fmt.Errorf("exec check %s: empty command", address)
	}
	env := append(os.Environ(), "QP_ADDRESS="+address)
	if host, port, err := net.SplitHostPort(address); err == nil {
		env = append(env, "QP_HOST="+host, "QP_PORT="+port)
	}
	return &execChecker{argv: append([]string(nil), spec.Command...), env: env, timeout: spec.Timeout}, nil
}

func (c *execChecker) Check(ctx context.Context) Result {
	start := time.Now()
	res := groupexec.Run(ctx, c.argv, c.env, groupexec.Options{Limit: maxBody})
	err := res.Err
	switch {
	case err != nil && ctx.Err() != nil:
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return down(start, timeoutError(c.timeout))
		}
		return down(start, fmt.Errorf("check canceled: %w", ctx.Err()))
	case err != nil:
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			msg := lastLine(string(res.Stderr))
			if msg == "" {
				msg = lastLine(string(res.Stdout))
			}
			if msg != "" {
				return down(start, fmt.Errorf("%w: %v: %s", ErrUnexpected, exitErr, msg))
			}
			return down(start, fmt.Errorf("%w: %v", ErrUnexpected, exitErr))
		}
		return down(start, fmt.Errorf("%w: %w", ErrUnexpected, err))
	}
	return Result{Up: true, Role: parseRole(string(res.Stdout)), LagBytes: -1, Lag: -1, Position: -1,
		Latency: time.Since(start)}
}

// parseRole finds the first line of out that names a role.
func parseRole(out string) Role {
	for line := range strings.Lines(out) {
		v := strings.ToLower(strings.TrimSpace(line))
		v = strings.TrimPrefix(v, "role=")
		switch v {
		case "primary", "master":
			return RolePrimary
		case "replica", "standby", "slave":
			return RoleReplica
		}
	}
	return RoleUnknown
}

// lastLine returns the last non-empty line of s, at most 200 bytes of it.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = strings.TrimSpace(s[i+1:])
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

func (c *execChecker) Close() error { return nil }
