package drill

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// The drill's writers. Each keeps one connection through the proxy and
// drops it after an error, so the next write connects again: that is what
// an application with a reconnecting client sees during a failover.

// Table is the table a drill writes to (postgres, mysql).
const Table = "quorumproxy_drill"

type pgDrill struct {
	o    Options
	run  string
	conn *pgx.Conn
}

func (d *pgDrill) connect(ctx context.Context) (*pgx.Conn, error) {
	if d.conn != nil {
		return d.conn, nil
	}
	host, port, err := net.SplitHostPort(d.o.Service.Listen)
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", d.o.Service.Listen, err)
	}
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = host, uint16(p), d.o.User, d.o.Password, d.o.Database
	cfg.ConnectTimeout = drillWriteTimeout
	cfg.RuntimeParams["application_name"] = "quorumproxy drill"
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d.conn = c
	return c, nil
}

func (d *pgDrill) exec(ctx context.Context, sql string, args ...any) error {
	c, err := d.connect(ctx)
	if err != nil {
		return err
	}
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		d.close()
		return err
	}
	return nil
}

func (d *pgDrill) setup(ctx context.Context) error {
	return d.exec(ctx, "CREATE TABLE IF NOT EXISTS "+Table+" (run text NOT NULL, id bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run, id))")
}

func (d *pgDrill) write(ctx context.Context, id int64) error {
	return d.exec(ctx, "INSERT INTO "+Table+" (run, id) VALUES ($1, $2)", d.run, id)
}

func (d *pgDrill) readBack(ctx context.Context, _ []int64) (map[int64]bool, error) {
	c, err := d.connect(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := c.Query(ctx, "SELECT id FROM "+Table+" WHERE run = $1", d.run)
	if err != nil {
		d.close()
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		d.close()
		return nil, err
	}
	found := make(map[int64]bool, len(ids))
	for _, id := range ids {
		found[id] = true
	}
	return found, nil
}

func (d *pgDrill) cleanup(ctx context.Context) error {
	return d.exec(ctx, "DELETE FROM "+Table+" WHERE run = $1", d.run)
}

func (d *pgDrill) close() {
	if d.conn != nil {
		d.conn.Close(context.Background())
		d.conn = nil
	}
}

// redisDrill writes keys that expire on their own, so a drill leaves
// nothing behind for long even if it is interrupted.
type redisDrill struct {
	run string
	c   *redis.Client
}

func newRedisDrill(o Options, run string) *redisDrill {
	return &redisDrill{run: run, c: redis.NewClient(&redis.Options{
		Addr: o.Service.Listen, Username: o.User, Password: o.Password,
		DialTimeout: drillWriteTimeout, ReadTimeout: drillWriteTimeout, WriteTimeout: drillWriteTimeout,
		// One attempt per write: a retry would hide the failure being measured.
		MaxRetries: -1, PoolSize: 1, MinIdleConns: 0, DisableIdentity: true,
	})}
}

const drillKeyTTL = time.Hour

func (d *redisDrill) key(id int64) string {
	return "quorumproxy:drill:" + d.run + ":" + strconv.FormatInt(id, 10)
}

func (d *redisDrill) setup(ctx context.Context) error { return d.c.Ping(ctx).Err() }

func (d *redisDrill) write(ctx context.Context, id int64) error {
	return d.c.SetEx(ctx, d.key(id), id, drillKeyTTL).Err()
}

func (d *redisDrill) readBack(ctx context.Context, ids []int64) (map[int64]bool, error) {
	found := map[int64]bool{}
	for i := 0; i < len(ids); i += 1000 {
		batch := ids[i:min(i+1000, len(ids))]
		keys := make([]string, len(batch))
		for j, id := range batch {
			keys[j] = d.key(id)
		}
		vals, err := d.c.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, err
		}
		for j, v := range vals {
			if v != nil {
				found[batch[j]] = true
			}
		}
	}
	return found, nil
}

func (d *redisDrill) cleanup(ctx context.Context) error {
	var keys []string
	iter := d.c.Scan(ctx, 0, "quorumproxy:drill:"+d.run+":*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 1000 {
			if err := d.c.Del(ctx, keys...).Err(); err != nil {
				return err
			}
			keys = keys[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if len(keys) > 0 {
		return d.c.Del(ctx, keys...).Err()
	}
	return nil
}

func (d *redisDrill) close() { d.c.Close() }

type mysqlDrill struct {
	run string
	db  *sql.DB
}

func newMySQLDrill(o Options, run string) (*mysqlDrill, error) {
	cfg := mysql.NewConfig()
	cfg.Net, cfg.Addr, cfg.User, cfg.Passwd, cfg.DBName = "tcp", o.Service.Listen, o.User, o.Password, o.Database
	cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = drillWriteTimeout, drillWriteTimeout, drillWriteTimeout
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	return &mysqlDrill{run: run, db: db}, nil
}

func (d *mysqlDrill) setup(ctx context.Context) error {
	_, err := d.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+Table+" (run varchar(32) NOT NULL, id bigint NOT NULL, at timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), PRIMARY KEY (run, id))")
	return err
}

func (d *mysqlDrill) write(ctx context.Context, id int64) error {
	_, err := d.db.ExecContext(ctx, "INSERT INTO "+Table+" (run, id) VALUES (?, ?)", d.run, id)
	return err
}

func (d *mysqlDrill) readBack(ctx context.Context, _ []int64) (map[int64]bool, error) {
	rows, err := d.db.QueryContext(ctx, "SELECT id FROM "+Table+" WHERE run = ?", d.run)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	found := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		found[id] = true
	}
	return found, rows.Err()
}

func (d *mysqlDrill) cleanup(ctx context.Context) error {
	_, err := d.db.ExecContext(ctx, "DELETE FROM "+Table+" WHERE run = ?", d.run)
	return err
}

func (d *mysqlDrill) close() { d.db.Close() }
