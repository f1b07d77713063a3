// Package groupexec runs a command (an argv, never a shell) in a process
// group of its own, for health checks and hooks:
//
//   - the command is judged by its own exit status: Run returns as soon as
//     it exits, whatever its children do with its output pipes;
//
//   - when it exits, or when ctx ends first, the whole group is killed, so
//     nothing it started in the background outlives it (a daemon that
//     leaves the group with setsid, as daemons do, is the one exception,
//     and then its output is no longer read);
//
//   - its output is read through a fixed buffer and at most Limit bytes are
//     kept, so a command that prints gigabytes costs no memory.
//
//     res := groupexec.Run(ctx, []string{"/usr/local/bin/check", "db1"}, env, groupexec.Options{Limit: 64 << 10})
//     if res.Err != nil { ... } // *exec.ExitError, a start error, or ctx's error
package groupexec

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// DefaultLinger is how long output is still read after the command exited
// and its group was killed: long enough to drain what it wrote, short
// enough that a detached daemon holding the pipe holds up nothing.
const DefaultLinger = 100 * time.Millisecond

// Options says how much output to keep.
type Options struct {
	// Limit is how many bytes of each stream are kept. Zero keeps none.
	Limit int
	// Tail keeps the last Limit bytes instead of the first.
	Tail bool
	// Combined sends stderr into the stdout pipe (one stream, in order).
	Combined bool
	// Linger bounds reading output after the command exited. Zero means
	// DefaultLinger.
	Linger time.Duration
}

// Result is what a finished command left.
type Result struct {
	Stdout, Stderr []byte // at most Limit bytes each; Stderr is empty when Combined
	// Truncated is true when output beyond Limit was read and dropped.
	Truncated bool
	// Err is nil when the command exited 0; an *exec.ExitError for another
	// status or a signal; the start error; or ctx's error (wrapped with
	// the kill) when ctx ended first.
	Err error
}

// Run runs argv with env (nil: the proxy's own environment) until it exits
// or ctx ends, then kills its process group. See the package doc.
func Run(ctx context.Context, argv, env []string, opts Options) Result {
	if len(argv) == 0 || argv[0] == "" {
		return Result{Err: errors.New("empty command")}
	}
	if opts.Linger <= 0 {
		opts.Linger = DefaultLinger
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	// Pipes of our own rather than io.Writers: with a Writer, os/exec
	// waits for every holder of the pipe (a background child too) before
	// Wait returns; with an *os.File, Wait returns when the command exits.
	outR, outW, err := os.Pipe()
	if err != nil {
		return Result{Err: err}
	}
	streams := []*capture{{r: outR, limit: opts.Limit, tail: opts.Tail}}
	cmd.Stdout, cmd.Stderr = outW, outW
	writers := []*os.File{outW}
	if !opts.Combined {
		errR, errW, err := os.Pipe()
		if err != nil {
			outR.Close()
			outW.Close()
			return Result{Err: err}
		}
		streams = append(streams, &capture{r: errR, limit: opts.Limit, tail: opts.Tail})
		cmd.Stderr = errW
		writers = append(writers, errW)
	}
	err = cmd.Start()
	for _, w := range writers {
		w.Close() // the child has its copies
	}
	if err != nil {
		for _, s := range streams {
			s.r.Close()
		}
		return Result{Err: err}
	}
	var readers sync.WaitGroup
	for _, s := range streams {
		readers.Add(1)
		go func() {
			defer readers.Done()
			s.drain()
		}()
	}

	pid := cmd.Process.Pid
	exited := make(chan struct{})
	var killedByCtx bool
	var waiter sync.WaitGroup
	waiter.Add(1)
	go func() {
		defer waiter.Done()
		select {
		case <-ctx.Done():
			killedByCtx = true
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		case <-exited:
		}
	}()
	err = cmd.Wait()
	close(exited)
	waiter.Wait()
	// The command is gone; so is whatever it left in its group. Its pgid
	// stays reserved while any member lives, so this kills no stranger.
	_ = syscall.Kill(-pid, syscall.SIGKILL)

	done := make(chan struct{})
	go func() {
		readers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(opts.Linger):
		// Someone outside the group (a detached daemon) holds the pipe.
		for _, s := range streams {
			s.r.Close()
		}
		<-done
	}
	res := Result{Stdout: streams[0].bytes(), Truncated: streams[0].truncated}
	if len(streams) > 1 {
		res.Stderr = streams[1].bytes()
		res.Truncated = res.Truncated || streams[1].truncated
	}
	for _, s := range streams {
		s.r.Close()
	}
	switch {
	case killedByCtx && err != nil:
		res.Err = ctx.Err()
	default:
		res.Err = err
	}
	return res
}

// capture reads a pipe to its end through a fixed buffer and keeps at most
// limit bytes: the first ones, or the last ones when tail is set.
type capture struct {
	r         *os.File
	limit     int
	tail      bool
	kept      []byte // ring of the last limit bytes when tail
	start     int    // ring start when tail and full
	truncated bool
}

func (c *capture) drain() {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.r.Read(buf)
		c.keep(buf[:n])
		if err != nil {
			return // io.EOF, or the pipe closed after Linger
		}
	}
}

func (c *capture) keep(p []byte) {
	if len(p) == 0 {
		return
	}
	if !c.tail {
		room := c.limit - len(c.kept)
		if len(p) > room {
			c.truncated = true
			p = p[:max(room, 0)]
		}
		c.kept = append(c.kept, p...)
		return
	}
	if c.limit <= 0 {
		c.truncated = true
		return
	}
	if len(p) >= c.limit {
		c.truncated = c.truncated || len(c.kept) > 0 || len(p) > c.limit
		c.kept = append(c.kept[:0], p[len(p)-c.limit:]...)
		c.start = 0
		return
	}
	if room := c.limit - len(c.kept); room > 0 {
		k := min(room, len(p))
		c.kept = append(c.kept, p[:k]...)
		p = p[k:]
	}
	for len(p) > 0 { // full: overwrite the oldest bytes
		c.truncated = true
		k := copy(c.kept[c.start:], p)
		p = p[k:]
		c.start = (c.start + k) % c.limit
	}
}

// bytes returns what was kept, in order.
func (c *capture) bytes() []byte {
	if c.start == 0 {
		return c.kept
	}
	return append(append([]byte(nil), c.kept[c.start:]...), c.kept[:c.start]...)
}
