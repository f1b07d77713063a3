package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"
)

// PGOptions configures StartPostgres. The zero value works.
type PGOptions struct {
	// Password of User for TCP connections (scram-sha-256). Empty means
	// DefaultPassword.
	Password string
	// Sync turns fsync on (durable commits and realistic pgbench numbers)
	// for this server and its standbys. The default, off, is faster and
	// still loses nothing when a server process is killed; only a machine
	// crash would. Synchronous standbys are made by StartStandby(true).
	Sync bool
	// TLS, when set, turns ssl on with this certificate and key; clients
	// may still connect without TLS.
	TLS *ServerTLS
}

// pgConf is appended to the template's postgresql.conf; port, socket
// directory and cluster_name are given per instance on the command line.
const pgConf = `
# quorumproxy testenv
listen_addresses = '127.0.0.1'
fsync = off                       # test data; a process crash loses nothing anyway
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '512MB'           # standbys without slots keep up under pgbench
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s # lag visible within a second
wal_retrieve_retry_interval = 200ms # a standby reconnects quickly after a restart
max_connections = 100
shared_buffers = 32MB
dynamic_shared_memory_type = mmap # in the data dir, so nothing is left in /dev/shm
unix_socket_permissions = 0777
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] '
`

// pgHBA trusts the local socket (the harness's own admin connection) and
// asks for a password on loopback TCP, the way clients and the proxy come.
const pgHBA = `local all all trust
local replication all trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
`

// Postgres is a PostgreSQL server (a primary or a streaming standby) on a
// loopback port, with its data directory, socket and log in a temp dir.
// Methods are safe for concurrent use.
type Postgres struct {
	server
	password string
	fsync    bool
	tls      *ServerTLS
	name     string // application_name / cluster_name, unique
	base     string // temp dir: data/, sock/, postgres.log
	user     *osUser
	primary  *Postgres // nil for a primary

	nStandby  int      // standbys made so far, for their names; guarded by mu
	syncNames []string // synchronous standbys attached to this server; guarded by mu
}

var pgTemplate struct {
	once sync.Once
	dir  string
	err  error
}

// pgTemplateDir returns a data directory made by initdb once per process;
// every new primary copies it, which is much faster than initdb.
func pgTemplateDir(u *osUser) (string, error) {
	pgTemplate.once.Do(func() {
		pgTemplate.dir, pgTemplate.err = makePGTemplate(u)
	})
	return pgTemplate.dir, pgTemplate.err
}

func makePGTemplate(u *osUser) (string, error) {
	bin, err := PGBinDir()
	if err != nil {
		return "", err
	}
	base, err := makeBaseDir("pgtemplate", u)
	if err != nil {
		return "", err
	}
	data := filepath.Join(base, "data")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := runTool(ctx, u, filepath.Join(bin, "initdb"), "-N", "-D", data, "-U", "postgres",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--locale=C", "-E", "UTF8"); err != nil {
		_ = os.RemoveAll(base)
		return "", fmt.Errorf("postgres template: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(pgConf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(pgHBA), 0o600)
	}
	if err != nil {
		_ = os.RemoveAll(base)
		return "", fmt.Errorf("postgres template config: %w", err)
	}
	return data, nil
}

// StartPostgres starts a PostgreSQL primary on 127.0.0.1:<free port> with
// User as a superuser, and waits until it accepts connections.
func StartPostgres(opts PGOptions) (*Postgres, error) {
	u, err := lookupUser("postgres")
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	tmpl, err := pgTemplateDir(u)
	if err != nil {
		return nil, err
	}
	pw := opts.Password
	if pw == "" {
		pw = DefaultPassword
	}
	p, err := newPostgres(u, pw, nil)
	if err != nil {
		return nil, err
	}
	p.fsync = opts.Sync
	p.tls = opts.TLS
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := runTool(ctx, u, "cp", "-a", tmpl, p.dataDir()); err != nil {
		_ = p.Stop()
		return nil, fmt.Errorf("postgres %s: copy template: %w", p.Addr(), err)
	}
	if err := p.startFresh(ctx); err != nil {
		_ = p.Stop()
		return nil, err
	}
	if err := p.createUser(ctx); err != nil {
		_ = p.Stop()
		return nil, err
	}
	return p, nil
}

// createUser creates User; errors do not repeat the statement, which holds
// the password.
func (p *Postgres) createUser(ctx context.Context) error {
	c, err := p.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	sql := fmt.Sprintf("CREATE ROLE %s SUPERUSER LOGIN REPLICATION PASSWORD '%s'", User, strings.ReplaceAll(p.password, "'", "''"))
	if _, err := c.Exec(ctx, sql); err != nil {
		return fmt.Errorf("postgres %s: create role %s: %w", p.Addr(), User, err)
	}
	return nil
}

func newPostgres(u *osUser, pw string, primary *Postgres) (*Postgres, error) {
	base, err := makeBaseDir("pg", u)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	p := &Postgres{server: server{kind: "postgres"}, password: pw, base: base, user: u, primary: primary}
	if err := p.allocPort(); err != nil {
		_ = os.RemoveAll(base)
		return nil, err
	}
	sock := filepath.Join(base, "sock")
	if err := os.Mkdir(sock, 0o700); err == nil {
		err = u.chown(sock)
	}
	if err != nil {
		_ = os.RemoveAll(base)
		return nil, fmt.Errorf("postgres: socket dir: %w", err)
	}
	return p, nil
}

func (p *Postgres) allocPort() error {
	port, err := FreePort()
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	p.port = port
	p.name = "pg" + strconv.Itoa(port)
	return nil
}

// startFresh starts the server for the first time; if the port was taken
// meanwhile by someone else, it retries on a new one.
func (p *Postgres) startFresh(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := p.start(ctx)
		if err == nil {
			return nil
		}
		if attempt >= 2 || !portBusy(p.port) {
			return err
		}
		if err := p.allocPort(); err != nil {
			return err
		}
	}
}

// start runs the postmaster and waits until it accepts connections.
func (p *Postgres) start(ctx context.Context) error {
	bin, err := PGBinDir()
	if err != nil {
		return err
	}
	argv := []string{filepath.Join(bin, "postgres"), "-D", p.dataDir(),
		"-p", strconv.Itoa(p.port),
		"-c", "unix_socket_directories=" + p.SocketDir(),
		"-c", "cluster_name=" + p.name,
	}
	if p.fsync {
		argv = append(argv, "-c", "fsync=on")
	}
	if p.tls != nil {
		cert, key, _, err := p.tls.write(p.base, p.user)
		if err != nil {
			return fmt.Errorf("postgres %s: tls: %w", p.Addr(), err)
		}
		argv = append(argv, "-c", "ssl=on", "-c", "ssl_cert_file="+cert, "-c", "ssl_key_file="+key)
	}
	pr, err := startProc(argv, p.base, p.LogPath(), p.user.cred())
	if err != nil {
		return fmt.Errorf("postgres %s: %w", p.Addr(), err)
	}
	p.mu.Lock()
	p.proc = pr
	p.mu.Unlock()
	if err := p.waitReady(ctx, pr); err != nil {
		_ = pr.shutdown(syscall.SIGINT)
		return withLog(fmt.Errorf("postgres %s: start: %w", p.Addr(), err), p.LogPath())
	}
	return nil
}

// Name returns the server's application_name (as a standby) and
// cluster_name, unique per server.
func (p *Postgres) Name() string { return p.name }

// Password returns the password of User.
func (p *Postgres) Password() string { return p.password }

// DataDir returns the data directory.
func (p *Postgres) DataDir() string { return p.dataDir() }

// SocketDir returns the directory of the server's unix socket.
func (p *Postgres) SocketDir() string { return filepath.Join(p.base, "sock") }

// LogPath returns the server log file.
func (p *Postgres) LogPath() string { return filepath.Join(p.base, "postgres.log") }

func (p *Postgres) dataDir() string { return filepath.Join(p.base, "data") }

// DSN returns a libpq URL for User over TCP to database db ("postgres" when
// empty), with sslmode=disable.
func (p *Postgres) DSN(db string) string {
	if db == "" {
		db = "postgres"
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(User, p.password), Host: p.Addr(), Path: "/" + db}
	u.RawQuery = "sslmode=disable"
	return u.String()
}

// adminDSN connects as the postgres superuser over the unix socket (trust).
func (p *Postgres) adminDSN() string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=10", p.SocketDir(), p.port)
}

// Conn opens an administrative connection (superuser, unix socket). The
// caller closes it.
func (p *Postgres) Conn(ctx context.Context) (*pgx.Conn, error) {
	c, err := pgx.Connect(ctx, p.adminDSN())
	if err != nil {
		return nil, fmt.Errorf("postgres %s: connect: %w", p.Addr(), err)
	}
	return c, nil
}

// Exec runs one statement as a superuser.
func (p *Postgres) Exec(ctx context.Context, sql string, args ...any) error {
	c, err := p.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("postgres %s: exec %q: %w", p.Addr(), sql, err)
	}
	return nil
}

// QueryRow runs a query as a superuser; Scan on the result reads its first
// row and closes the connection.
func (p *Postgres) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c, err := p.Conn(ctx)
	if err != nil {
		return errRow{err}
	}
	return &connRow{c: c, row: c.QueryRow(ctx, sql, args...), addr: p.Addr(), sql: sql}
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type connRow struct {
	c         *pgx.Conn
	row       pgx.Row
	addr, sql string
}

func (r *connRow) Scan(dest ...any) error {
	defer r.c.Close(context.Background())
	if err := r.row.Scan(dest...); err != nil {
		return fmt.Errorf("postgres %s: query %q: %w", r.addr, r.sql, err)
	}
	return nil
}

// InRecovery reports pg_is_in_recovery(): true on a standby.
func (p *Postgres) InRecovery(ctx context.Context) (bool, error) {
	var b bool
	err := p.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&b)
	return b, err
}

// WaitReady waits until the server accepts connections and answers a query.
func (p *Postgres) WaitReady(ctx context.Context) error {
	p.mu.Lock()
	pr := p.proc
	p.mu.Unlock()
	if pr == nil {
		return fmt.Errorf("postgres %s: not running", p.Addr())
	}
	return p.waitReady(ctx, pr)
}

func (p *Postgres) waitReady(ctx context.Context, pr *proc) error {
	return poll(ctx, func() (bool, error, error) {
		if pr.exited() {
			return false, nil, fmt.Errorf("postmaster exited: %v", pr.exitErr())
		}
		cctx, cancel := context.WithTimeout(ctx, startTimeout/4)
		defer cancel()
		c, err := pgx.Connect(cctx, p.adminDSN())
		if err != nil {
			return false, err, nil
		}
		defer c.Close(context.Background())
		var one int
		if err := c.QueryRow(cctx, "SELECT 1").Scan(&one); err != nil {
			return false, err, nil
		}
		return true, nil, nil
	})
}

// StartStandby makes a streaming standby of p with pg_basebackup -R, starts
// it, and waits until p's pg_stat_replication shows it streaming. With
// sync, the standby is added to p's synchronous_standby_names (all listed
// standbys must confirm a commit) and StartStandby waits for sync_state =
// 'sync'.
func (p *Postgres) StartStandby(sync bool) (*Postgres, error) {
	s, err := newPostgres(p.user, p.password, p)
	if err != nil {
		return nil, err
	}
	s.fsync = p.fsync
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := startStandby(ctx, s, sync); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("postgres standby of %s: %w", p.Addr(), err)
	}
	return s, nil
}

// startStandby fills the new standby s from its primary and starts it.
func startStandby(ctx context.Context, s *Postgres, sync bool) error {
	p := s.primary
	bin, err := PGBinDir()
	if err != nil {
		return err
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password='%s' application_name=%s",
		p.port, User, strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(p.password), s.name)
	if err := runTool(ctx, s.user, filepath.Join(bin, "pg_basebackup"), "-D", s.dataDir(),
		"-d", conninfo, "-R", "-X", "stream", "-c", "fast", "-N", "--no-manifest"); err != nil {
		return err
	}
	// The copy carries the primary's synchronous_standby_names, which would
	// block every commit on this server once promoted.
	if err := dropAutoConf(filepath.Join(s.dataDir(), "postgresql.auto.conf"), "synchronous_standby_names"); err != nil {
		return err
	}
	// Not startFresh: a new port would not match the name (derived from
	// the port) already written into this standby's primary_conninfo.
	if err := s.start(ctx); err != nil {
		return err
	}
	if sync {
		p.mu.Lock()
		p.syncNames = append(p.syncNames, s.name)
		names := make([]string, len(p.syncNames))
		for i, n := range p.syncNames {
			names[i] = strconv.Quote(n)
		}
		p.mu.Unlock()
		ssn := fmt.Sprintf("FIRST %d (%s)", len(names), strings.Join(names, ", "))
		if err := p.Exec(ctx, fmt.Sprintf("ALTER SYSTEM SET synchronous_standby_names TO '%s'", ssn)); err != nil {
			return err
		}
		if err := p.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
			return err
		}
	}
	want := "async"
	if sync {
		want = "sync"
	}
	var last string
	err = poll(ctx, func() (bool, error, error) {
		var state, syncState string
		err := p.QueryRow(ctx, "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1", s.name).Scan(&state, &syncState)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, errors.New("not in pg_stat_replication"), nil
		}
		if err != nil {
			return false, err, nil
		}
		last = state + "/" + syncState
		if state == "streaming" && syncState == want {
			return true, nil, nil
		}
		return false, fmt.Errorf("state %s", last), nil
	})
	if err != nil {
		return withLog(fmt.Errorf("standby %s not streaming (%s wanted): %w", s.name, want, err), s.LogPath())
	}
	return nil
}

// WaitCatchUp waits until this standby has replayed everything its primary
// had written when WaitCatchUp was called.
func (p *Postgres) WaitCatchUp(ctx context.Context) error {
	if p.primary == nil {
		return fmt.Errorf("postgres %s: catch up: not a standby", p.Addr())
	}
	var target string
	if err := p.primary.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&target); err != nil {
		return err
	}
	err := poll(ctx, func() (bool, error, error) {
		var done bool
		err := p.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)", target).Scan(&done)
		if err != nil {
			return false, err, nil
		}
		return done, nil, nil
	})
	if err != nil {
		return fmt.Errorf("postgres %s: catch up to %s: %w", p.Addr(), target, err)
	}
	return nil
}

// dropAutoConf removes the lines setting key from a postgresql.auto.conf.
func dropAutoConf(path, key string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), key) {
			continue
		}
		keep = append(keep, l)
	}
	// WriteFile truncates the existing file, so owner and mode stay.
	if err := os.WriteFile(path, []byte(strings.Join(keep, "\n")), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Promote promotes a standby with pg_promote(wait => true) and returns once
// it accepts writes.
func (p *Postgres) Promote() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var ok bool
	if err := p.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
		return fmt.Errorf("postgres %s: promote: %w", p.Addr(), err)
	}
	if !ok {
		return withLog(fmt.Errorf("postgres %s: promote: pg_promote returned false", p.Addr()), p.LogPath())
	}
	return nil
}

// Restart starts the server again on the same port and data directory
// (after Kill, or shutting it down first if it runs) and waits until ready.
// A standby comes back as a standby, a promoted one as a primary.
func (p *Postgres) Restart() error {
	p.mu.Lock()
	pr, stopped := p.proc, p.stopped
	p.mu.Unlock()
	if stopped {
		return fmt.Errorf("postgres %s: restart after Stop", p.Addr())
	}
	if pr != nil {
		if err := pr.shutdown(syscall.SIGINT); err != nil {
			return fmt.Errorf("postgres %s: restart: %w", p.Addr(), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return p.start(ctx)
}

// Stop shuts the server down (fast mode; killed if that hangs, even when
// paused) and removes its directory. It is idempotent.
func (p *Postgres) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil
	}
	p.stopped = true
	var errs []error
	if p.proc != nil {
		if err := p.proc.shutdown(syscall.SIGINT); err != nil {
			errs = append(errs, err)
		}
		// A killed postmaster leaves its small SysV interlock segment and
		// postmaster.pid; a clean shutdown removed both.
		removePGShm(filepath.Join(p.dataDir(), "postmaster.pid"))
	}
	if err := os.RemoveAll(p.base); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("postgres %s: stop: %w", p.Addr(), err)
	}
	return nil
}

// removePGShm removes the SysV segment named on line 7 of a stale
// postmaster.pid ("key shmid"), if no process is attached to it.
func removePGShm(pidFile string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return
	}
	f := strings.Fields(lines[6])
	if len(f) != 2 {
		return
	}
	id, err := strconv.Atoi(f[1])
	if err != nil {
		return
	}
	var ds unix.SysvShmDesc
	if _, err := unix.SysvShmCtl(id, unix.IPC_STAT, &ds); err != nil || ds.Nattch != 0 {
		return
	}
	_, _ = unix.SysvShmCtl(id, unix.IPC_RMID, nil)
}
