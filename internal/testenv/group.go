package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Group is a background process that a benchmark starts and stops (a
// proxy, HAProxy, iperf3 -s): in a process group of its own, so that one
// signal reaches it and its children, with its output in a log file.
type Group struct {
	Name string
	Log  string // the log file
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
}

// StartGroup runs argv (env nil: this process's environment) with stdout
// and stderr written to logPath. Pdeathsig kills it should the caller die
// without stopping it.
func StartGroup(name, logPath string, argv, env []string) (*Group, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: start %s: %w", name, argv[0], err)
	}
	p := &Group{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id (the process group id too).
func (p *Group) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Group) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Failure describes an early exit with the tail of the log.
func (p *Group) Failure() error {
	return fmt.Errorf("%s exited early (%v); last lines of %s:\n%s", p.Name, p.err, p.Log, Tail(p.Log, 20))
}

// Stop sends SIGTERM to the process group, SIGKILL after grace, and
// SIGKILL again to whatever outlived the leader.
func (p *Group) Stop(grace time.Duration) {
	if !p.Exited() {
		_ = syscall.Kill(-p.Pid(), syscall.SIGTERM)
		t := time.NewTimer(grace)
		select {
		case <-p.done:
		case <-t.C:
			_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
			<-p.done
		}
		t.Stop()
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
}
