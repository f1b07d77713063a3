package health

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

// mysqlChecker reads @@global.read_only and SHOW SLAVE STATUS over one driver connection kept
// between checks. It talks to the driver directly rather than through database/sql, whose pool
// retries a bad connection behind the caller's back and runs goroutines of its own.
type mysqlChecker struct {
	connector driver.Connector
	timeout   time.Duration
	conn      driver.Conn
	cause     *causeLog
}

// causeLog is the driver's logger. On a broken connection the driver logs the real error
// (a reset, a timeout, a malformed packet) and returns only ErrInvalidConn; the checker
// takes the cause from here instead of from the driver's stderr.
type causeLog struct {
	mu  sync.Mutex
	err error
}

func (l *causeLog) Print(v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range v {
		if err, ok := x.(error); ok {
			l.err = err
		}
	}
}

// isFresh reports whether the last logged error is not a timeout: a timeout has used up the
// check's time, anything else on a kept connection is worth one retry.
func (l *causeLog) isFresh() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ne net.Error
	return !(errors.As(l.err, &ne) && ne.Timeout())
}

// take returns and forgets the last logged error.
func (l *causeLog) take() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.err
	l.err = nil
	return err
}

func newMySQLChecker(spec Spec, address string) (*mysqlChecker, error) {
	cfg := mysql.NewConfig()
	cfg.Net = "tcp"
	cfg.Addr = address
	cfg.User = spec.User
	cfg.Passwd = spec.Password
	cfg.DBName = spec.Database
	cfg.Timeout = spec.Timeout
	cfg.ReadTimeout = spec.Timeout
	cfg.WriteTimeout = spec.Timeout
	cause := &causeLog{}
	cfg.Logger = cause
	tlsCfg, err := spec.tlsConfig(address)
	if err != nil {
		return nil, fmt.Errorf("mysql check %s: %w", address, err)
	}
	cfg.TLS = tlsCfg // nil: plain text; set: the driver refuses a server without TLS
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("mysql check %s: %w", address, err)
	}
	return &mysqlChecker{connector: connector, timeout: spec.Timeout, cause: cause}, nil
}

func (c *mysqlChecker) Check(ctx context.Context) Result {
	start := time.Now()
	c.cause.take()
	kept := c.conn != nil
	r, err := c.connectAndQuery(ctx)
	if err != nil && kept && ctx.Err() == nil && c.cause.isFresh() {
		// The kept connection may have died between checks (server restart, wait_timeout):
		// that says nothing about the server now, so ask once more on a new connection.
		c.cause.take()
		r, err = c.connectAndQuery(ctx)
	}
	if err != nil {
		return down(start, c.classify(ctx, err))
	}
	r.Latency = time.Since(start)
	return r
}

// connectAndQuery connects if needed and queries. On error the connection is dropped.
func (c *mysqlChecker) connectAndQuery(ctx context.Context) (Result, error) {
	if c.conn == nil {
		conn, err := c.connector.Connect(ctx)
		if err != nil {
			return Result{}, err
		}
		c.conn = conn
	}
	r, err := c.query(ctx)
	if err != nil {
		c.drop()
	}
	return r, err
}

func (c *mysqlChecker) query(ctx context.Context) (Result, error) {
	q, ok := c.conn.(driver.QueryerContext)
	if !ok {
		return Result{}, fmt.Errorf("%w: driver connection cannot query", ErrProtocol)
	}
	_, rows, err := queryRows(ctx, q, "SELECT @@global.read_only")
	if err != nil {
		return Result{}, err
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return Result{}, fmt.Errorf("%w: @@global.read_only returned %d rows", ErrProtocol, len(rows))
	}
	readOnly := rows[0][0] == "1" || rows[0][0] == "ON"
	r := Result{Up: true, Role: RolePrimary, LagBytes: 0, Lag: 0, Position: -1}
	if readOnly {
		r.Role, r.LagBytes, r.Lag = RoleReplica, -1, -1
	}
	cols, status, err := queryRows(ctx, q, "SHOW SLAVE STATUS")
	var myErr *mysql.MySQLError
	switch {
	case errors.As(err, &myErr):
		// Typically a missing REPLICATION CLIENT privilege: the role is still known.
		return r, nil
	case err != nil:
		return Result{}, err
	}
	if len(status) > 0 && readOnly {
		s, ok := column(cols, status[0], "Seconds_Behind_Master")
		if !ok {
			s, ok = column(cols, status[0], "Seconds_Behind_Source") // MySQL 8.0.22+ naming
		}
		if ok && s != "" {
			if n, err := strconv.ParseInt(s, 10, 64); err == nil {
				r.Lag = time.Duration(n) * time.Second
			}
		}
	}
	return r, nil
}

// queryRows runs query and returns its column names and rows as strings; NULL is "".
func queryRows(ctx context.Context, q driver.QueryerContext, query string) ([]string, [][]string, error) {
	rows, err := q.QueryContext(ctx, query, nil)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	cols := rows.Columns()
	var out [][]string
	dest := make([]driver.Value, len(cols))
	for {
		if err := rows.Next(dest); err == io.EOF {
			return cols, out, nil
		} else if err != nil {
			return nil, nil, err
		}
		row := make([]string, len(dest))
		for i, v := range dest {
			switch v := v.(type) {
			case []byte:
				row[i] = string(v)
			case nil:
			default:
				row[i] = fmt.Sprint(v)
			}
		}
		out = append(out, row)
	}
}

// column returns the value of the named column in row, and whether it is there.
func column(cols, row []string, name string) (string, bool) {
	for i, c := range cols {
		if c == name && i < len(row) {
			return row[i], true
		}
	}
	return "", false
}

func (c *mysqlChecker) classify(ctx context.Context, err error) error {
	if e := netError(ctx, err, c.timeout); e != nil {
		return e
	}
	var myErr *mysql.MySQLError
	if errors.As(err, &myErr) {
		switch myErr.Number {
		case 1044, 1045, 1698: // access denied to database, for user, without password
			return fmt.Errorf("%w: %s (error %d)", ErrAuth, myErr.Message, myErr.Number)
		}
		return fmt.Errorf("%w: %s (error %d)", ErrServer, myErr.Message, myErr.Number)
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) {
		if cause := c.cause.take(); cause != nil {
			return c.classify(ctx, cause)
		}
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}

func (c *mysqlChecker) drop() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

func (c *mysqlChecker) Close() error {
	c.drop()
	return nil
}
