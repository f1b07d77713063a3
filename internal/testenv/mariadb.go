package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/go-sql-driver/mysql"
)

// mariadbArgs make the server small and fast; test data need no
// durability and the server is killed rather than shut down.
var mariadbArgs = []string{
	"--skip-name-resolve",
	"--debug-no-sync", // the DDL log and Aria otherwise fsync hundreds of times at bootstrap
	"--innodb-log-file-size=8M",
	"--innodb-buffer-pool-size=32M",
	"--innodb-flush-log-at-trx-commit=2",
	"--skip-innodb-doublewrite",
	"--innodb-flush-method=nosync",
	"--performance-schema=OFF",
}

// MariaDB is a mariadbd on a loopback port, its data, socket and log in a
// temp dir. User has all privileges and the password DefaultPassword.
// Methods are safe for concurrent use.
type MariaDB struct {
	server
	base    string
	primary *MariaDB // set for a replica
	tls     *ServerTLS
	admin   *sql.DB // guarded by mu
}

var mariaTemplate struct {
	once sync.Once
	dir  string
	err  error
}

// mariaTemplateDir returns a data directory made by mariadb-install-db once
// per process; every new server copies it.
func mariaTemplateDir() (string, error) {
	mariaTemplate.once.Do(func() {
		mariaTemplate.dir, mariaTemplate.err = makeMariaTemplate()
	})
	return mariaTemplate.dir, mariaTemplate.err
}

func makeMariaTemplate() (string, error) {
	bin, err := lookPath("mariadb-install-db")
	if err != nil {
		return "", err
	}
	base, err := makeBaseDir("mariadbtemplate", nil)
	if err != nil {
		return "", fmt.Errorf("mariadb: %w", err)
	}
	data := filepath.Join(base, "data")
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	argv := append([]string{bin, "--no-defaults", "--datadir=" + data,
		"--auth-root-authentication-method=normal", "--skip-test-db"}, mariadbArgs...)
	if os.Geteuid() == 0 {
		argv = append(argv, "--user=root")
	}
	if err := runTool(ctx, nil, argv...); err != nil {
		_ = os.RemoveAll(base)
		return "", fmt.Errorf("mariadb template: %w", err)
	}
	return data, nil
}

// MariaOptions configures StartMariaDBWith. The zero value works.
type MariaOptions struct {
	// TLS, when set, turns ssl on with this certificate and key; clients
	// may still connect without TLS.
	TLS *ServerTLS
}

// StartMariaDB starts a mariadbd on 127.0.0.1:<free port> with User
// (password DefaultPassword, all privileges) and a database named "qp", and
// waits until it answers a query.
func StartMariaDB() (*MariaDB, error) {
	return startMariaDB(nil, MariaOptions{})
}

// StartMariaDBWith is StartMariaDB with options.
func StartMariaDBWith(opts MariaOptions) (*MariaDB, error) {
	return startMariaDB(nil, opts)
}

func startMariaDB(primary *MariaDB, opts MariaOptions) (*MariaDB, error) {
	tmpl, err := mariaTemplateDir()
	if err != nil {
		return nil, err
	}
	base, err := makeBaseDir("mariadb", nil)
	if err != nil {
		return nil, fmt.Errorf("mariadb: %w", err)
	}
	m := &MariaDB{server: server{kind: "mariadb"}, base: base, primary: primary, tls: opts.TLS}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := runTool(ctx, nil, "cp", "-a", tmpl, m.dataDir()); err != nil {
		_ = m.Stop()
		return nil, fmt.Errorf("mariadb: copy template: %w", err)
	}
	init := fmt.Sprintf(`CREATE USER IF NOT EXISTS '%[1]s'@'%%' IDENTIFIED BY '%[2]s';
GRANT ALL PRIVILEGES ON *.* TO '%[1]s'@'%%' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS qp;
`, User, DefaultPassword)
	if err := os.WriteFile(m.initFile(), []byte(init), 0o600); err != nil {
		_ = m.Stop()
		return nil, fmt.Errorf("mariadb: init file: %w", err)
	}
	for attempt := 0; ; attempt++ {
		if m.port, err = FreePort(); err != nil {
			_ = m.Stop()
			return nil, fmt.Errorf("mariadb: %w", err)
		}
		err = m.start(ctx)
		if err == nil && primary != nil {
			if err = m.follow(ctx); err != nil {
				_ = m.Stop()
				return nil, err
			}
		}
		if err == nil {
			return m, nil
		}
		if attempt >= 2 || !portBusy(m.port) {
			_ = m.Stop()
			return nil, err
		}
	}
}

func (m *MariaDB) dataDir() string  { return filepath.Join(m.base, "data") }
func (m *MariaDB) initFile() string { return filepath.Join(m.base, "init.sql") }

// SocketPath returns the server's unix socket.
func (m *MariaDB) SocketPath() string { return filepath.Join(m.base, "mysqld.sock") }

// LogPath returns the server's error log.
func (m *MariaDB) LogPath() string { return filepath.Join(m.base, "mariadb.log") }

func (m *MariaDB) start(ctx context.Context) error {
	bin, err := lookPath("mariadbd")
	if err != nil {
		return err
	}
	argv := append([]string{bin, "--no-defaults",
		"--datadir=" + m.dataDir(),
		"--port=" + strconv.Itoa(m.port),
		"--bind-address=127.0.0.1",
		"--socket=" + m.SocketPath(),
		"--pid-file=" + filepath.Join(m.base, "mysqld.pid"),
		"--tmpdir=" + m.base,
		"--init-file=" + m.initFile(),
		"--server-id=" + strconv.Itoa(m.port),
		// Binary log for replicas (not at install time: the template must
		// not carry one).
		"--log-bin=mariadb-bin",
		"--relay-log=mariadb-relay",
	}, mariadbArgs...)
	if os.Geteuid() == 0 {
		argv = append(argv, "--user=root")
	}
	if m.tls != nil {
		cert, key, ca, err := m.tls.write(m.base, nil)
		if err != nil {
			return fmt.Errorf("mariadb %s: tls: %w", m.Addr(), err)
		}
		argv = append(argv, "--ssl-cert="+cert, "--ssl-key="+key, "--ssl-ca="+ca)
	}
	pr, err := startProc(argv, m.base, m.LogPath(), nil)
	if err != nil {
		return fmt.Errorf("mariadb %s: %w", m.Addr(), err)
	}
	m.mu.Lock()
	m.proc = pr
	if m.admin == nil {
		m.admin, err = m.openAdmin()
	}
	admin := m.admin
	m.mu.Unlock()
	if err != nil {
		_ = pr.kill()
		return err
	}
	err = poll(ctx, func() (bool, error, error) {
		if pr.exited() {
			return false, nil, fmt.Errorf("mariadbd exited: %v", pr.exitErr())
		}
		var one int
		if err := admin.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			return false, err, nil
		}
		return true, nil, nil
	})
	if err != nil {
		_ = pr.kill()
		return withLog(fmt.Errorf("mariadb %s: start: %w", m.Addr(), err), m.LogPath())
	}
	return nil
}

// openAdmin opens the harness's own handle: root over the unix socket, no
// idle connections kept (so a restart leaves none stale).
func (m *MariaDB) openAdmin() (*sql.DB, error) {
	cfg := mysql.NewConfig()
	cfg.User = "root"
	cfg.Net = "unix"
	cfg.Addr = m.SocketPath()
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("mariadb %s: admin connector: %w", m.Addr(), err)
	}
	db := sql.OpenDB(c)
	db.SetMaxIdleConns(0)
	return db, nil
}

// DSN returns a go-sql-driver/mysql DSN for User over TCP to database "qp".
func (m *MariaDB) DSN() string {
	cfg := mysql.NewConfig()
	cfg.User = User
	cfg.Passwd = DefaultPassword
	cfg.Net = "tcp"
	cfg.Addr = m.Addr()
	cfg.DBName = "qp"
	return cfg.FormatDSN()
}

// Exec runs one statement as root.
func (m *MariaDB) Exec(ctx context.Context, query string, args ...any) error {
	db, err := m.db()
	if err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("mariadb %s: exec %q: %w", m.Addr(), query, err)
	}
	return nil
}

// QueryRow runs a query as root.
func (m *MariaDB) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	m.mu.Lock()
	db := m.admin // closed after Stop: the Row then reports that
	m.mu.Unlock()
	return db.QueryRowContext(ctx, query, args...)
}

func (m *MariaDB) db() (*sql.DB, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || m.admin == nil {
		return nil, fmt.Errorf("mariadb %s: not running", m.Addr())
	}
	return m.admin, nil
}

// SetReadOnly sets the global read_only flag.
func (m *MariaDB) SetReadOnly(on bool) error {
	v := "OFF"
	if on {
		v = "ON"
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return m.Exec(ctx, "SET GLOBAL read_only = "+v)
}

// ReadOnly reports @@global.read_only.
func (m *MariaDB) ReadOnly(ctx context.Context) (bool, error) {
	var v int
	if err := m.QueryRow(ctx, "SELECT @@global.read_only").Scan(&v); err != nil {
		return false, fmt.Errorf("mariadb %s: read_only: %w", m.Addr(), err)
	}
	return v != 0, nil
}

// Restart starts the server again on the same port and data directory,
// shutting it down first if it runs, and waits until it answers.
func (m *MariaDB) Restart() error {
	m.mu.Lock()
	pr, stopped := m.proc, m.stopped
	m.mu.Unlock()
	if stopped {
		return fmt.Errorf("mariadb %s: restart after Stop", m.Addr())
	}
	if pr != nil {
		if err := pr.shutdown(syscall.SIGTERM); err != nil {
			return fmt.Errorf("mariadb %s: restart: %w", m.Addr(), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return m.start(ctx)
}

// Stop kills the server (its data is thrown away, so a clean InnoDB
// shutdown would only cost time) and removes its directory. Idempotent.
func (m *MariaDB) Stop() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil
	}
	m.stopped = true
	var errs []error
	if m.admin != nil {
		_ = m.admin.Close() // only fails for in-flight queries, which die with the server
	}
	if m.proc != nil {
		if err := m.proc.kill(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(m.base); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mariadb %s: stop: %w", m.Addr(), err)
	}
	return nil
}

// StartReplica starts a new MariaDB server replicating from m (GTID, from
// the start of m's binary log), read_only, and waits until both replication
// threads run and it has applied everything m had logged.
func (m *MariaDB) StartReplica() (*MariaDB, error) {
	r, err := startMariaDB(m, MariaOptions{})
	if err != nil {
		return nil, fmt.Errorf("mariadb replica of %s: %w", m.Addr(), err)
	}
	return r, nil
}

// follow points a fresh server at its primary and waits until caught up.
func (m *MariaDB) follow(ctx context.Context) error {
	p := m.primary
	stmts := []string{
		fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='%s', MASTER_PASSWORD='%s', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
			p.port, User, DefaultPassword),
		"START SLAVE",
		"SET GLOBAL read_only = ON",
	}
	for _, q := range stmts {
		if err := m.Exec(ctx, q); err != nil {
			return err
		}
	}
	var want string
	if err := p.QueryRow(ctx, "SELECT @@global.gtid_binlog_pos").Scan(&want); err != nil {
		return fmt.Errorf("mariadb %s: gtid_binlog_pos: %w", p.Addr(), err)
	}
	err := poll(ctx, func() (bool, error, error) {
		st, err := m.SlaveStatus(ctx)
		if err != nil {
			return false, err, nil
		}
		if st["Slave_IO_Running"] != "Yes" || st["Slave_SQL_Running"] != "Yes" {
			return false, fmt.Errorf("io %s sql %s: %s%s", st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_IO_Error"], st["Last_SQL_Error"]), nil
		}
		var pos string
		if err := m.QueryRow(ctx, "SELECT @@global.gtid_slave_pos").Scan(&pos); err != nil {
			return false, err, nil
		}
		if pos != want {
			return false, fmt.Errorf("gtid_slave_pos %q, primary at %q", pos, want), nil
		}
		return true, nil, nil
	})
	if err != nil {
		return withLog(fmt.Errorf("mariadb %s: replication from %s: %w", m.Addr(), p.Addr(), err), m.LogPath())
	}
	return nil
}

// SlaveStatus returns SHOW SLAVE STATUS as column name to value; empty when
// the server is not a replica.
func (m *MariaDB) SlaveStatus(ctx context.Context) (map[string]string, error) {
	db, err := m.db()
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return nil, fmt.Errorf("mariadb %s: show slave status: %w", m.Addr(), err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, fmt.Errorf("mariadb %s: show slave status: %w", m.Addr(), err)
	}
	out := map[string]string{}
	if !rows.Next() {
		return out, rows.Err()
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, fmt.Errorf("mariadb %s: show slave status: %w", m.Addr(), err)
	}
	for i, c := range cols {
		out[c] = vals[i].String
	}
	return out, rows.Err()
}

// Promote makes a replica a primary: replication stopped and forgotten,
// read_only off.
func (m *MariaDB) Promote() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for _, q := range []string{"STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF"} {
		if err := m.Exec(ctx, q); err != nil {
			return fmt.Errorf("promote: %w", err)
		}
	}
	return nil
}
