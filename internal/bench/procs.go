package main

import (
	"github.com/quorumproxy/quorumproxy/internal/testenv"

	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs starts long-running helper processes (HAProxy, quorumproxy,
// iperf3 -s), each in its own process group with its output in a log file,
// and kills every one of them in stopAll.
type procs struct {
	dir string // log files live here

	mu   sync.Mutex
	list []*proc
}

// proc is one started process and the channel closed when it has exited.
type proc = testenv.Group

// start runs argv in the background, logging to dir/name.log.
func (ps *procs) start(name string, argv []string, env []string) (*proc, error) {
	p, err := testenv.StartGroup(name, filepath.Join(ps.dir, name+".log"), argv, env)
	if err != nil {
		return nil, err
	}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// stopAll stops every process started, newest first.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].Stop(3 * time.Second)
	}
}

// runTool runs a load generator to completion and returns its stdout. It is
// killed (with its process group) when ctx ends or after limit: a tool
// facing a dead proxy may retry for ever (redis-benchmark -k 0 does).
func runTool(ctx context.Context, limit time.Duration, env []string, argv ...string) (string, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		if parent.Err() != nil {
			return "", parent.Err()
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("killed after %v", limit)
		}
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, lastLines(errb.String()+out.String(), 10))
	}
	return out.String(), nil
}

// lastLines returns the last n non-empty lines of s (progress lines that
// end in \r count as lines).
func lastLines(s string, n int) string {
	s = strings.ReplaceAll(s, "\r", "\n")
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}
