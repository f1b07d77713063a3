package main

// Restarts and upgrades that drop nothing. On SIGUSR2 the running process
// starts the binary on disk (a replaced binary is an upgrade) with the same
// arguments and hands it its listening sockets; the new process checks its
// config, listens on them, waits for its first health checks and says it
// is ready; only then does the old one stop accepting, drain its sessions
// (drain_timeout) and exit. The sockets themselves never close, so no
// client is refused and none queued in a listen backlog is lost: both
// processes accept from the same queues until the old one stops.
//
// The protocol is cloudflare/tableflip's (inherited fds named in an
// environment variable, a pipe for "ready"), written here with the
// standard library because tableflip's Fds keeps its own duplicate of
// every socket it was given until an upgrade succeeds, with no way to
// drop one: a listener the proxy closes on a reload (a service removed or
// moved) or at a drain would stay open, and clients would queue on it with
// nobody accepting. Here the sockets are duplicated from the live
// listeners at the moment of the upgrade, and each of the data plane's
// SO_REUSEPORT groups (a socket per event loop) passes whole.
//
// A clustered proxy's gossip ports cannot be shared and its state_dir is
// locked by its Node, so there the hand-over has two steps: the new
// process loads its config and says so ('c'); the old one stops accepting
// (clients queue in the listen backlogs, which the new process holds),
// stops its checks and leaves the cluster, then lets the new one go on
// ('g'); that one starts its Node, recovers the cluster's state like any
// restarted proxy, and accepts (holding clients in switch_hold until it
// has a lease). Only one Node of the proxy runs at any time; see
// Daemon.StopForHandOver for why the old process's open sessions are safe.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/daemon"
	"golang.org/x/sys/unix"
)

// handoverEnv carries a handoverSpec from the old process to the new.
const handoverEnv = "QUORUMPROXY_HANDOVER"

// upgradeTimeout bounds the wait for the new process to become ready
// (tableflip's default); past it the new one is killed and the old keeps
// serving.
const upgradeTimeout = time.Minute

// routingWait bounds how long a new process waits for its first health
// checks before it says it is ready anyway.
const routingWait = 30 * time.Second

// handoverSpec names the fds a new process inherits (numbers in the new
// process).
type handoverSpec struct {
	Parent int `json:"parent"`
	Ready  int `json:"ready"`
	// Go, when not -1, is a pipe to wait on for 'g' after saying 'c'.
	Go int `json:"go"`
	// The listening sockets (their JSON keys are the spec's own).
	daemon.Sockets
	// Marks: fences and drains a proxy alone keeps in memory.
	Marks daemon.Marks `json:"marks"`
}

// Messages on the ready pipe, new process to old, and on the go pipe.
const (
	msgReady   = 'r' // serving on the handed-over sockets
	msgChecked = 'c' // config loaded; waiting for the old process to leave the cluster
	msgGo      = 'g' // left: go on
)

func (h *handoverSpec) fds() []int {
	fds := []int{h.Ready}
	if h.Go >= 0 {
		fds = append(fds, h.Go)
	}
	if h.Admin >= 0 {
		fds = append(fds, h.Admin)
	}
	for _, g := range h.Services {
		fds = append(fds, g...)
	}
	return fds
}

// inheritedSpec reads and clears handoverEnv: nil when this process was
// not started by an upgrade. Its fds are made close-on-exec at once, so
// that hooks do not inherit listening sockets.
func inheritedSpec() (*handoverSpec, error) {
	v, ok := os.LookupEnv(handoverEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(handoverEnv)
	h := &handoverSpec{Go: -1, Sockets: daemon.Sockets{Admin: -1}} // what an older sender leaves out
	if err := json.Unmarshal([]byte(v), h); err != nil {
		return nil, fmt.Errorf("%s: %w", handoverEnv, err)
	}
	for _, fd := range h.fds() {
		if fd < 3 {
			return nil, fmt.Errorf("%s: fd %d is not an inherited one", handoverEnv, fd)
		}
		unix.CloseOnExec(fd)
	}
	return h, nil
}

// waitGo, for a clustered old process, says the config is loaded and
// waits until the old process has left the cluster.
func (h *handoverSpec) waitGo() error {
	if h.Go < 0 {
		return nil
	}
	if err := h.send(msgChecked); err != nil {
		return err
	}
	f := os.NewFile(uintptr(h.Go), "go pipe")
	defer f.Close()
	var b [1]byte
	if n, err := f.Read(b[:]); n != 1 || b[0] != msgGo {
		return fmt.Errorf("the old process (pid %d) did not let go: %v", h.Parent, err)
	}
	return nil
}

// adminListener turns the inherited admin socket into a listener if the
// config still listens where it was made; otherwise it is closed.
func (h *handoverSpec) adminListener(listen string) (net.Listener, error) {
	if h.Admin < 0 {
		return nil, nil
	}
	fd := h.Admin
	h.Admin = -1
	f := os.NewFile(uintptr(fd), "admin listener")
	defer f.Close()
	if listen != h.AdminListen {
		return nil, nil // [admin] listen changed: bound anew
	}
	ln, err := net.FileListener(f) // a duplicate: f closes
	if err != nil {
		return nil, fmt.Errorf("handed-over admin socket: %w", err)
	}
	return ln, nil
}

// send writes one message on the ready pipe (left open).
func (h *handoverSpec) send(msg byte) error {
	_, err := unix.Write(h.Ready, []byte{msg})
	return err
}

// takeOver is the new process's side after daemon.New: wait (bounded) for
// every service to route, then tell systemd that this process is the
// service now and the old one that it may stop accepting.
func takeOver(log *slog.Logger, d *daemon.Daemon, h *handoverSpec) {
	ctx, cancel := context.WithTimeout(context.Background(), routingWait)
	err := d.WaitRouting(ctx)
	cancel()
	if err != nil {
		log.Warn("taking over before every service routes", "err", err)
	}
	// NotifyAccess=all lets this process, not yet the main one, say so.
	sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1\nSTATUS=serving", os.Getpid()))
	err = h.send(msgReady)
	_ = unix.Close(h.Ready)
	if err != nil {
		// The old process is gone (it kills us itself when it gives up):
		// serving on is all that is left to do.
		log.Warn("upgrade: the old process could not be told; serving on", "pid", h.Parent, "err", err)
		return
	}
	log.Info("took over the listening sockets", "from_pid", h.Parent)
}

// errHandoverStopped: the old process was told to stop before the new one
// was ready.
var errHandoverStopped = errors.New("stopped before the new process was ready")

// upgradeResult is how an upgrade ended: the new process's pid when it is
// ready, or why not; left says this process already stopped accepting
// and left its cluster (leave ran), so it cannot serve on.
type upgradeResult struct {
	pid   int
	left  bool
	err   error
	start time.Time
}

// startUpgrade starts the binary at os.Args[0] with this process's
// arguments and hands it socks (closed here in every case) and marks. With leave
// (a clustered proxy), the new process first loads its config and waits;
// leave then runs here and the new process goes on. It returns once the
// new process says it is ready, or why it is not: it exited, timed out
// (killed) or stop was closed (killed).
func startUpgrade(socks daemon.Sockets, marks daemon.Marks, leave func(), stop <-chan struct{}) (res upgradeResult) {
	res.start = time.Now()
	defer socks.Close() // the new process has its own copies
	exe, err := exec.LookPath(os.Args[0])
	if err != nil {
		res.err = fmt.Errorf("binary: %w", err)
		return res
	}
	var pipes []*os.File // closed on return
	defer func() {
		for _, f := range pipes {
			f.Close()
		}
	}()
	pipe := func() (r, w *os.File) {
		if err == nil {
			if r, w, err = os.Pipe(); err == nil {
				pipes = append(pipes, r, w)
			}
		}
		return r, w
	}
	readyR, readyW := pipe()
	var goR, goW *os.File
	if leave != nil {
		goR, goW = pipe()
	}
	if err != nil {
		res.err = err
		return res
	}
	// Raw fds, never (*os.File).Fd or exec.Cmd.ExtraFiles: those put a
	// socket in blocking mode, and that mode is shared with this
	// process's event loops.
	files := []uintptr{0, 1, 2}
	add := func(fd int) int {
		files = append(files, uintptr(fd))
		return len(files) - 1
	}
	addFile := func(f *os.File) int {
		n := -1
		if rc, err := f.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { n = add(int(fd)) })
		}
		return n
	}
	h := handoverSpec{Parent: os.Getpid(), Go: -1, Marks: marks,
		Sockets: daemon.Sockets{Admin: -1, AdminListen: socks.AdminListen, Services: map[string][]int{}}}
	h.Ready = addFile(readyW)
	if goR != nil {
		h.Go = addFile(goR)
	}
	if socks.Admin >= 0 {
		h.Admin = add(socks.Admin)
	}
	for addr, g := range socks.Services {
		for _, fd := range g {
			h.Services[addr] = append(h.Services[addr], add(fd))
		}
	}
	spec, err := json.Marshal(h)
	if err != nil || h.Ready < 0 || (goR != nil && h.Go < 0) {
		res.err = fmt.Errorf("handing over: %v", err)
		return res
	}
	// Not in our own environment: run's inheritedSpec unset it.
	env := append(os.Environ(), handoverEnv+"="+string(spec))
	pid, _, err := syscall.StartProcess(exe, os.Args, &syscall.ProcAttr{Env: env, Files: files})
	// Our ends only from here: the reader sees EOF when the child exits.
	readyW.Close()
	if goR != nil {
		goR.Close()
	}
	if err != nil {
		res.err = fmt.Errorf("starting %s: %w", exe, err)
		return res
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		res.err = err
		return res
	}
	exited := make(chan error, 1)
	go func() {
		st, err := proc.Wait()
		if err == nil {
			err = errors.New(st.String())
		}
		exited <- err
	}()
	msgs := make(chan byte, 2)
	go func() {
		defer close(msgs)
		var b [1]byte
		for {
			if n, _ := readyR.Read(b[:]); n != 1 {
				return
			}
			msgs <- b[0]
		}
	}()
	t := time.NewTimer(upgradeTimeout)
	defer t.Stop()
	for {
		select {
		case m, ok := <-msgs:
			switch {
			case ok && m == msgReady:
				res.pid = pid
				return res
			case ok && m == msgChecked && leave != nil && !res.left:
				leave()
				res.left = true
				if _, err := goW.Write([]byte{msgGo}); err != nil {
					_ = proc.Kill()
					res.err = fmt.Errorf("new process %d: %w", pid, err)
					return res
				}
				continue
			case ok:
				_ = proc.Kill()
				res.err = fmt.Errorf("new process %d: unexpected message %q", pid, m)
				return res
			}
			// The pipe closed without "ready": the process is exiting.
			res.err = fmt.Errorf("new process %d exited before it was ready: %w", pid, <-exited)
			return res
		case err := <-exited:
			res.err = fmt.Errorf("new process %d exited before it was ready: %w", pid, err)
			return res
		case <-t.C:
			_ = proc.Kill()
			res.err = fmt.Errorf("new process %d not ready within %s: killed", pid, upgradeTimeout)
			return res
		case <-stop:
			_ = proc.Kill()
			res.err = errHandoverStopped
			return res
		}
	}
}
