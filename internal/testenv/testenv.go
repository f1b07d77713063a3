// Package testenv starts real database servers for tests, demos and
// benchmarks: a PostgreSQL primary with streaming standbys (async or
// synchronous), a Redis primary with replicas, and a MariaDB primary with
// replicas. Each runs on a free loopback port in its own directory under
// Root(), keeps its log there (start errors carry its last lines), and is
// removed again by Stop. Directories and servers left by a process that
// died without stopping them are removed by the next process that starts
// one.
//
// Core functions return errors and work from plain programs; the Must*
// wrappers take a testing.TB, skip (or fail, when Required) if the server
// binaries are missing, and register cleanup:
//
//	func TestFailover(t *testing.T) {
//		pg := testenv.MustPostgres(t, testenv.PGOptions{})
//		sb := testenv.MustStandby(t, pg, true)
//		pg.Kill()
//		if err := sb.Promote(); err != nil { ... }
//	}
//
// When run as root, PostgreSQL runs as the "postgres" OS user (it refuses to
// run as root); Redis and MariaDB run as root.
package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// User is the database user every server is given (a superuser), with the
// password from the options or DefaultPassword.
const User = "qp"

// DefaultPassword is the password of User when the options give none.
const DefaultPassword = "qp"

// startTimeout bounds a server start, a standby catch-up or a promotion.
// Generous because CI machines are slow and shared; polls end much earlier.
const startTimeout = 60 * time.Second

// stopTimeout bounds a graceful shutdown before the process tree is killed.
const stopTimeout = 15 * time.Second

// pollEvery is how often startup waits re-check their condition.
const pollEvery = 10 * time.Millisecond

// logTailLines is how many lines of a server log a start error carries.
const logTailLines = 40

// Required reports whether missing server binaries must fail tests rather
// than skip them: true when QP_REQUIRE_SERVERS=1 (set by `make test` and CI).
func Required() bool {
	return os.Getenv("QP_REQUIRE_SERVERS") == "1"
}

// Need skips t with a clear message, or fails it when Required(), unless
// everything named in what is available. Names: "postgres" (server, initdb,
// pg_basebackup), "redis" (redis-server), "mariadb" (mariadbd,
// mariadb-install-db), "root" (effective uid 0), or any program looked up
// in PATH ("pgbench", "redis-benchmark", "haproxy", "iperf3", "ip", ...).
func Need(t testing.TB, what ...string) {
	t.Helper()
	err := Check(what...)
	if err == nil {
		return
	}
	if Required() {
		t.Fatalf("%v (QP_REQUIRE_SERVERS=1; run internal/scripts/install-deps.sh as root)", err)
	}
	t.Skipf("skipping: %v (run internal/scripts/install-deps.sh as root to install)", err)
}

// Check returns an error naming everything in what (see Need) that is
// missing, or nil if all is available. For programs that are not tests.
func Check(what ...string) error {
	var missing []string
	for _, w := range what {
		missing = append(missing, missingFor(w)...)
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("missing: %s", strings.Join(missing, ", "))
}

func missingFor(what string) []string {
	switch what {
	case "root":
		if os.Geteuid() != 0 {
			return []string{"root privileges (euid 0)"}
		}
		return nil
	case "postgres":
		var m []string
		dir, err := PGBinDir()
		if err != nil {
			return []string{"PostgreSQL server binaries (postgresql-15)"}
		}
		for _, b := range []string{"postgres", "initdb", "pg_basebackup"} {
			if !isExecutable(filepath.Join(dir, b)) {
				m = append(m, filepath.Join(dir, b))
			}
		}
		if os.Geteuid() == 0 {
			if _, err := user.Lookup("postgres"); err != nil {
				m = append(m, `OS user "postgres"`)
			}
		}
		return m
	case "redis":
		return missingPrograms("redis-server")
	case "mariadb":
		return missingPrograms("mariadbd", "mariadb-install-db")
	default:
		return missingPrograms(what)
	}
}

func missingPrograms(names ...string) []string {
	var m []string
	for _, n := range names {
		if _, err := lookPath(n); err != nil {
			m = append(m, n)
		}
	}
	return m
}

// lookPath is exec.LookPath that also searches the sbin directories, which a
// non-login PATH often lacks (mariadbd lives in /usr/sbin).
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// PGBinDir returns the directory holding the PostgreSQL server binaries:
// $QP_PG_BINDIR if set, else the Debian location of version 15, else the
// directory of a postgres found in PATH.
func PGBinDir() (string, error) {
	if d := os.Getenv("QP_PG_BINDIR"); d != "" {
		return d, nil
	}
	if d := "/usr/lib/postgresql/15/bin"; isExecutable(filepath.Join(d, "postgres")) {
		return d, nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL server binaries not found (set QP_PG_BINDIR or install postgresql-15)")
}

var (
	portsMu sync.Mutex
	// portsGiven keeps FreePort from handing one port out twice in a
	// process while an earlier caller has not bound it yet.
	portsGiven = map[int]bool{}
	// portNext is where FreePort looks next; it starts at a place of its
	// own in each process, so parallel test processes rarely meet.
	portNext = -1
)

// FreePort returns a port on 127.0.0.1, free for TCP and UDP a moment ago,
// that this process has not returned before. It is taken below the
// kernel's ephemeral range: a port from that range (what listening on
// port 0 gives) can be taken by any process's outgoing connection between
// this check and the server's bind, which made tests fail at random.
func FreePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	lo, hi := 10000, ephemeralLow()
	if hi-lo < 1000 {
		lo = 1024 // an unusual range: take what is below it
	}
	if portNext < 0 {
		portNext = lo + (os.Getpid()*7919+int(time.Now().UnixNano()%1000))%(hi-lo)
	}
	for range hi - lo {
		port := portNext
		portNext++
		if portNext >= hi {
			portNext = lo
		}
		if portsGiven[port] || !bindable(port) {
			continue
		}
		portsGiven[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("free port: none free in %d-%d", lo, hi-1)
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 1024 {
				return n
			}
		}
	}
	return 32768
}

// bindable reports whether 127.0.0.1:port can be bound for TCP and UDP.
func bindable(port int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	_ = l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	_ = u.Close()
	return true
}

// portBusy reports whether something listens on 127.0.0.1:port already.
func portBusy(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return true
	}
	_ = l.Close()
	return false
}

// Tail returns the last n lines of the file at path (for start errors and
// reports of failed processes), or why it cannot.
func Tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// withLog wraps err with the tail of the log at path.
func withLog(err error, path string) error {
	return fmt.Errorf("%w\n--- last %d lines of %s ---\n%s", err, logTailLines, path, Tail(path, logTailLines))
}

// poll calls f every pollEvery until it reports done, returns an error, or
// ctx ends; on ctx's end the last soft failure is returned with ctx's error.
func poll(ctx context.Context, f func() (done bool, soft error, hard error)) error {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		done, soft, hard := f()
		if hard != nil {
			return hard
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			if soft != nil {
				return fmt.Errorf("%w (last: %v)", ctx.Err(), soft)
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// cleanEnv is the environment for server processes and tools: ours without
// libpq and MySQL variables that would redirect or authenticate them.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "MYSQL") || k == "LANG" || strings.HasPrefix(k, "LC_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LANG=C", "LC_ALL=C")
}
