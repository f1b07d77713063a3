package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is one server process we started (a postmaster, redis-server,
// mariadbd), reaped by a goroutine that closes done when it has exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result; read only after done is closed
}

// startProc starts argv with stdout and stderr appended to logPath, as cred's
// user when cred is not nil, and records the process in base so that a
// later run can kill it if we die without stopping it.
func startProc(argv []string, base, logPath string, cred *syscall.Credential) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close() // the child holds its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = cleanEnv()
	cmd.Dir = "/"
	// No Setpgid: an interrupt of the test run from a terminal then reaches
	// the servers too, so they do not outlive it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go p.reap()
	if err := os.WriteFile(filepath.Join(base, serverFile), []byte(procID(p.pid())), 0o644); err != nil {
		_ = p.kill()
		return nil, fmt.Errorf("record server pid: %w", err)
	}
	return p, nil
}

func (p *proc) reap() {
	p.err = p.cmd.Wait()
	close(p.done)
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited (and been reaped).
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitErr describes how the process ended; call only after exited.
func (p *proc) exitErr() error {
	if p.err == nil {
		return errors.New("exited with status 0")
	}
	return p.err
}

// pause freezes the process and every descendant with SIGSTOP. The parent
// goes first so it cannot fork a child we would miss.
func (p *proc) pause() error {
	if p.exited() {
		return errors.New("not running")
	}
	if err := syscall.Kill(p.pid(), syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP %d: %w", p.pid(), err)
	}
	// A child forked just before the parent stopped appears on a rescan.
	seen := map[int]bool{}
	for range 3 {
		for _, c := range descendants(p.pid()) {
			if !seen[c] {
				seen[c] = true
				_ = syscall.Kill(c, syscall.SIGSTOP) // may have exited meanwhile
			}
		}
	}
	return nil
}

// resume continues the process and its descendants (children first, so the
// parent does not find them frozen).
func (p *proc) resume() {
	if p.exited() {
		return
	}
	for _, c := range descendants(p.pid()) {
		_ = syscall.Kill(c, syscall.SIGCONT)
	}
	_ = syscall.Kill(p.pid(), syscall.SIGCONT)
}

// kill SIGKILLs the process and all its descendants and waits until the
// process is reaped and the descendants are gone.
func (p *proc) kill() error {
	if p.exited() {
		return nil
	}
	_ = syscall.Kill(p.pid(), syscall.SIGSTOP) // no new children from here on
	kids := descendants(p.pid())
	_ = syscall.Kill(p.pid(), syscall.SIGKILL)
	for _, c := range kids {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("pid %d not reaped after SIGKILL", p.pid())
	}
	return poll(ctx, func() (bool, error, error) {
		for _, c := range kids {
			if alive(c) {
				return false, fmt.Errorf("child %d still alive", c), nil
			}
		}
		return true, nil, nil
	})
}

// shutdown resumes the process if paused, sends sig and waits up to
// stopTimeout for it to exit; then it kills the tree. A forced kill is not
// an error: the caller wanted the process gone.
func (p *proc) shutdown(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	p.resume()
	kids := descendants(p.pid())
	if err := syscall.Kill(p.pid(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to %d: %w", sig, p.pid(), err)
	}
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		for _, c := range kids {
			if alive(c) {
				_ = syscall.Kill(c, syscall.SIGKILL) // stragglers only; normally gone
			}
		}
		return nil
	case <-t.C:
		return p.kill()
	}
}

// alive reports whether pid exists and is not a zombie (a container's init
// may never reap orphans).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, state, ok := statFields(string(b))
	return ok && state != "Z" && state != "X"
}

// statFields returns the ppid and state of a /proc/PID/stat line. The
// command name may hold spaces and parentheses, so parse after the last ')'.
func statFields(s string) (ppid int, state string, ok bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, "", false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, "", false
	}
	return ppid, f[0], true
}

// descendants lists every live process below pid, from /proc.
func descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		ppid, state, ok := statFields(string(b))
		if !ok || state == "Z" {
			continue
		}
		children[ppid] = append(children[ppid], c)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		for _, c := range children[n] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// osUser is a user to run a server or tool as; nil means ourselves.
type osUser struct {
	uid, gid int
}

func (u *osUser) cred() *syscall.Credential {
	if u == nil {
		return nil
	}
	return &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{}}
}

// chown gives path to u; a no-op for ourselves.
func (u *osUser) chown(path string) error {
	if u == nil {
		return nil
	}
	return os.Chown(path, u.uid, u.gid)
}

// lookupUser returns the named OS user when we are root, nil otherwise.
func lookupUser(name string) (*osUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("running as root needs OS user %q: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("user %q uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("user %q gid %q: %w", name, u.Gid, err)
	}
	return &osUser{uid: uid, gid: gid}, nil
}

// runTool runs a short-lived program (initdb, pg_basebackup, ...) as u and
// returns its combined output in the error when it fails.
func runTool(ctx context.Context, u *osUser, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = cleanEnv()
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.cred()}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, lastLines(string(out), logTailLines))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// makeBaseDir creates a fresh directory for one server under Root(), owned
// by u and closed to others. Not t.TempDir(): a server running as its own
// user must be able to reach it, and programs use it too.
func makeBaseDir(kind string, u *osUser) (string, error) {
	sweepOnce.Do(sweepStale)
	dir, err := os.MkdirTemp(Root(), dirPrefix+kind+"-")
	if err != nil {
		return "", fmt.Errorf("temp dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(selfID()), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("temp dir owner: %w", err)
	}
	if u != nil {
		if err := checkTraversable(dir); err != nil {
			_ = os.RemoveAll(dir)
			return "", err
		}
		if err := u.chown(dir); err != nil {
			_ = os.RemoveAll(dir)
			return "", fmt.Errorf("chown %s: %w", dir, err)
		}
	}
	return dir, nil
}

// checkTraversable fails unless every parent of dir can be searched by other
// users, which a server running as its own user needs.
func checkTraversable(dir string) error {
	for d := dirParent(dir); ; d = dirParent(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not searchable by other users (mode %v); set TMPDIR to a directory that is", d, fi.Mode().Perm())
		}
		if d == "/" {
			return nil
		}
	}
}

func dirParent(d string) string {
	i := strings.LastIndexByte(d, '/')
	if i <= 0 {
		return "/"
	}
	return d[:i]
}

// dirPrefix starts the name of every directory the harness makes, so a
// later run can find those of runs that died without Stop.
const dirPrefix = "qp-testenv-"

// ownerFile in each directory names the process that made it (selfID);
// serverFile names the server process started there (see startProc).
const (
	ownerFile  = "owner"
	serverFile = "server"
)

var sweepOnce sync.Once

// procID identifies a process across pid reuse: pid and start time.
func procID(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return strconv.Itoa(pid) + " " + f[19] // field 22, starttime
}

func selfID() string { return procID(os.Getpid()) }

// sweepStale removes directories left by harness processes that are gone
// (a test binary killed by its timeout never runs its cleanups), killing
// the servers still running from them. Directories of live processes and
// fresh ones without an owner yet are left alone.
func sweepStale() {
	sweepDir(Root())
	if os.TempDir() != Root() {
		sweepDir(os.TempDir()) // where Root was, with QP_TESTENV_DIR or no tmpfs
	}
}

func sweepDir(parent string) {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dirPrefix) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			fi, serr := os.Stat(dir)
			if serr != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		} else {
			owner := string(b)
			pid, _, _ := strings.Cut(owner, " ")
			n, err := strconv.Atoi(pid)
			if err != nil || procID(n) == owner {
				continue
			}
		}
		killRecorded(dir)
		removePGShm(filepath.Join(dir, "data", "postmaster.pid"))
		_ = os.RemoveAll(dir)
	}
}

// killRecorded SIGKILLs the server recorded in dir (see startProc) and its
// descendants, if that very process still runs.
func killRecorded(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, serverFile))
	if err != nil {
		return
	}
	id := string(b)
	pidStr, _, _ := strings.Cut(id, " ")
	pid, err := strconv.Atoi(pidStr)
	if err != nil || procID(pid) != id {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	kids := descendants(pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for _, c := range kids {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
}

var root struct {
	once sync.Once
	dir  string
}

// minTmpfsFree is the free space /dev/shm needs before servers go there;
// pgbench runs write a few hundred MB of WAL.
const minTmpfsFree = 2 << 30

// Root returns the directory under which server directories are made:
// $QP_TESTENV_DIR if set; else /dev/shm when it is a tmpfs with room (data
// directories in memory make start-up and base backups several times
// faster on a busy disk, and a process kill still loses nothing); else
// os.TempDir().
func Root() string {
	root.once.Do(func() {
		root.dir = os.TempDir()
		if d := os.Getenv("QP_TESTENV_DIR"); d != "" {
			root.dir = d
			return
		}
		var st unix.Statfs_t
		if err := unix.Statfs("/dev/shm", &st); err != nil || st.Type != unix.TMPFS_MAGIC {
			return
		}
		if uint64(st.Bavail)*uint64(st.Bsize) < minTmpfsFree {
			return
		}
		fi, err := os.Stat("/dev/shm")
		if err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
			return
		}
		root.dir = "/dev/shm"
	})
	return root.dir
}
