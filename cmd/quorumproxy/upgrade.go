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
// A clustered proxy refuses: its gossip ports cannot be shared, and its
// lease is its own; see the README ("Restarts and upgrades").

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
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
	Parent      int              `json:"parent"`
	Ready       int              `json:"ready"`
	AdminListen string           `json:"admin_listen,omitempty"`
	Admin       int              `json:"admin"`
	Services    map[string][]int `json:"services"`
}

func (h *handoverSpec) fds() []int {
	fds := []int{h.Ready}
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
	h := &handoverSpec{}
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

// closeAll closes every inherited fd but the ready pipe.
func (h *handoverSpec) closeSockets() {
	for _, fd := range h.fds()[1:] {
		_ = unix.Close(fd)
	}
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

// ready tells the old process that this one serves.
func (h *handoverSpec) ready() error {
	f := os.NewFile(uintptr(h.Ready), "ready pipe")
	defer f.Close()
	_, err := f.Write([]byte{1})
	return err
}

// takeOver is the new process's side after daemon.New: wait (bounded) for
// every service to route, then tell systemd that this process is the
// service now and the old one that it may stop accepting.
func takeOver(log *slog.Logger, d *daemon.Daemon, h *handoverSpec) error {
	ctx, cancel := context.WithTimeout(context.Background(), routingWait)
	err := d.WaitRouting(ctx)
	cancel()
	if err != nil {
		log.Warn("taking over before every service routes", "err", err)
	}
	// NotifyAccess=all lets this process, not yet the main one, say so.
	sdNotify(fmt.Sprintf("MAINPID=%d\nREADY=1\nSTATUS=serving", os.Getpid()))
	if err := h.ready(); err != nil {
		return fmt.Errorf("telling pid %d: %w", h.Parent, err)
	}
	log.Info("took over the listening sockets", "from_pid", h.Parent)
	return nil
}

// errHandoverStopped: the old process was told to stop before the new one
// was ready.
var errHandoverStopped = errors.New("stopped before the new process was ready")

// startUpgrade starts the binary at os.Args[0] with this process's
// arguments and hands it socks (closed here in every case). It returns the
// new process's pid once that says it is ready, or why it is not: it
// exited, timed out (killed) or stop was closed (killed).
func startUpgrade(socks daemon.Sockets, stop <-chan struct{}) (int, error) {
	defer socks.Close() // the new process has its own copies
	exe, err := exec.LookPath(os.Args[0])
	if err != nil {
		return 0, fmt.Errorf("binary: %w", err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer readyR.Close()
	// Raw fds, never (*os.File).Fd or exec.Cmd.ExtraFiles: those put a
	// socket in blocking mode, and that mode is shared with this
	// process's event loops.
	files := []uintptr{0, 1, 2}
	add := func(fd int) int {
		files = append(files, uintptr(fd))
		return len(files) - 1
	}
	rw, err := readyW.SyscallConn()
	if err != nil {
		readyW.Close()
		return 0, err
	}
	h := handoverSpec{Parent: os.Getpid(), Admin: -1, AdminListen: socks.AdminListen, Services: map[string][]int{}}
	_ = rw.Control(func(fd uintptr) { h.Ready = add(int(fd)) })
	if socks.Admin >= 0 {
		h.Admin = add(socks.Admin)
	}
	for addr, g := range socks.Services {
		for _, fd := range g {
			h.Services[addr] = append(h.Services[addr], add(fd))
		}
	}
	spec, err := json.Marshal(h)
	if err != nil {
		readyW.Close()
		return 0, err
	}
	env := []string{handoverEnv + "=" + string(spec)}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, handoverEnv+"=") {
			env = append(env, kv)
		}
	}
	pid, _, err := syscall.StartProcess(exe, os.Args, &syscall.ProcAttr{Env: env, Files: files})
	readyW.Close()
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", exe, err)
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return 0, err
	}
	exited := make(chan error, 1)
	go func() {
		st, err := proc.Wait()
		if err == nil {
			err = errors.New(st.String())
		}
		exited <- err
	}()
	ready := make(chan bool, 1)
	go func() {
		var b [1]byte
		n, _ := readyR.Read(b[:])
		ready <- n == 1
	}()
	t := time.NewTimer(upgradeTimeout)
	defer t.Stop()
	select {
	case ok := <-ready:
		if ok {
			return pid, nil
		}
		// The pipe closed without a word: the process is exiting.
		return 0, fmt.Errorf("new process %d: %w", pid, <-exited)
	case err := <-exited:
		return 0, fmt.Errorf("new process %d exited before it was ready: %w", pid, err)
	case <-t.C:
		_ = proc.Kill()
		return 0, fmt.Errorf("new process %d not ready within %s: killed", pid, upgradeTimeout)
	case <-stop:
		_ = proc.Kill()
		return 0, errHandoverStopped
	}
}
