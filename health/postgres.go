package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgQuery reads role, positions, replay delay and (on a primary) its synchronous standbys in one
// round trip, and on a standby the host:port it streams from (not a socket directory). On a
// standby the position is the replayed LSN; lag_s is NULL on a primary or
// before anything was replayed. pg_stat_replication shows application_name only to roles that
// may read it (pg_monitor), else the list is empty.
const pgQuery = `SELECT pg_is_in_recovery(),
  (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint,
  (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::bigint,
  extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
  ARRAY(SELECT application_name FROM pg_stat_replication WHERE sync_state = 'sync' AND application_name IS NOT NULL ORDER BY 1),
  (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver WHERE sender_host NOT LIKE '/%')`

// postgresChecker asks pg_is_in_recovery() and the WAL positions over one connection that it
// keeps between checks and drops on any error.
type postgresChecker struct {
	config  *pgx.ConnConfig
	timeout time.Duration
	conn    *pgx.Conn
}

func newPostgresChecker(spec Spec, address string) (*postgresChecker, error) {
	host, port, _ := net.SplitHostPort(address)
	sslmode := "disable"
	if spec.TLS {
		sslmode = "require"
	}
	// Only host, port and sslmode go through the string; user and password are set on the
	// struct so that no quoting is needed and the password is in no string that could be logged.
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host='%s' port=%s sslmode=%s", host, port, sslmode))
	if err != nil {
		return nil, fmt.Errorf("postgres check %s: %w", address, err)
	}
	cfg.User = spec.User
	cfg.Password = spec.Password
	cfg.Database = spec.Database
	if cfg.Database == "" {
		cfg.Database = "postgres"
	}
	cfg.Fallbacks = nil
	cfg.ConnectTimeout = spec.Timeout
	cfg.RuntimeParams = map[string]string{"application_name": "quorumproxy-health"}
	// The simple protocol needs one round trip per check and no prepared statement cache.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	// Our own TLS configuration (verify-full unless skipped), never the string's: require
	// alone would accept any certificate.
	tlsCfg, err := spec.tlsConfig(address)
	if err != nil {
		return nil, fmt.Errorf("postgres check %s: %w", address, err)
	}
	cfg.TLSConfig = tlsCfg
	return &postgresChecker{config: cfg, timeout: spec.Timeout}, nil
}

func (c *postgresChecker) Check(ctx context.Context) Result {
	start := time.Now()
	kept := c.conn != nil
	r, err := c.query(ctx)
	if err != nil && kept && ctx.Err() == nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// The kept connection may have died between checks (server restart, idle timeout):
		// that says nothing about the server now, so ask once more on a new connection.
		r, err = c.query(ctx)
	}
	if err != nil {
		return down(start, c.classify(ctx, err))
	}
	r.Latency = time.Since(start)
	return r
}

// query connects if needed and reads role and positions. On error the connection is dropped.
func (c *postgresChecker) query(ctx context.Context) (Result, error) {
	if c.conn == nil {
		conn, err := pgx.ConnectConfig(ctx, c.config)
		if err != nil {
			return Result{}, err
		}
		c.conn = conn
	}
	var (
		inRecovery bool
		pos        int64
		receive    *int64
		lagSecs    *float64
		sync       []string
		upstream   *string
	)
	if err := c.conn.QueryRow(ctx, pgQuery).Scan(&inRecovery, &pos, &receive, &lagSecs, &sync, &upstream); err != nil {
		c.drop()
		return Result{}, err
	}
	r := Result{Up: true, Role: RolePrimary, LagBytes: 0, Lag: 0, Position: pos, Received: -1, SyncStandbys: sync}
	if inRecovery {
		r.SyncStandbys = nil
		if upstream != nil {
			r.Upstream = *upstream
		}
		r.Role = RoleReplica
		if receive != nil {
			r.Received = max(*receive, pos)
		}
		r.LagBytes = -1 // the Monitor knows the primary's position
		switch {
		case receive != nil && *receive <= pos:
			// Replayed all it received: the last replayed transaction may be old simply
			// because the primary is idle.
			r.Lag = 0
		case lagSecs != nil:
			r.Lag = max(0, time.Duration(*lagSecs*float64(time.Second)))
		default:
			r.Lag = -1
		}
	}
	return r, nil
}

// drop closes the kept connection without waiting on a server that may be frozen.
func (c *postgresChecker) drop() {
	if c.conn == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a done context makes Close skip the goodbye round trip
	c.conn.Close(ctx)
	c.conn = nil
}

// classify turns a pgx error into one of the sentinels, keeping the server's message.
func (c *postgresChecker) classify(ctx context.Context, err error) error {
	if e := netError(ctx, err, c.timeout); e != nil {
		return e
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 28: invalid authorization specification.
		if len(pgErr.Code) == 5 && pgErr.Code[:2] == "28" {
			return fmt.Errorf("%w: %s (SQLSTATE %s)", ErrAuth, pgErr.Message, pgErr.Code)
		}
		return fmt.Errorf("%w: %s (SQLSTATE %s)", ErrServer, pgErr.Message, pgErr.Code)
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}

func (c *postgresChecker) Close() error {
	c.drop()
	return nil
}
