package health

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// redisChecker reads INFO replication on a new connection per check.
//
// A new connection per check (three round trips with AUTH) also proves the server still
// accepts clients, which a kept connection would hide (maxclients, a stuck accept loop). The
// checker dials it under the check's context and hands it to a one-shot go-redis client, so
// go-redis' pool never dials by itself: its retries, backoff, failed-dial circuit breaker and
// background redial goroutine stay out of a check, and its global logger stays quiet.
type redisChecker struct {
	spec    Spec
	address string
	tls     *tls.Config // nil: plain text
}

func newRedisChecker(spec Spec, address string) (*redisChecker, error) {
	tlsCfg, err := spec.tlsConfig(address)
	if err != nil {
		return nil, fmt.Errorf("redis check %s: %w", address, err)
	}
	return &redisChecker{spec: spec, address: address, tls: tlsCfg}, nil
}

// errNoRedial is what the one-shot client's dialer answers if go-redis asks for a second
// connection within one check.
var errNoRedial = errors.New("connection lost during the check")

// dial opens a connection to the server, with TLS if the spec says so.
func (c *redisChecker) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.address)
	if err != nil {
		return nil, err
	}
	if c.tls != nil {
		tc := tls.Client(conn, c.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	return conn, nil
}

// client returns a go-redis client whose only connection is conn. The caller closes both
// (closing a conn the client already closed is harmless).
func (c *redisChecker) client(conn net.Conn) *redis.Client {
	var handed atomic.Bool // go-redis may call the dialer from a goroutine of its own
	return redis.NewClient(&redis.Options{
		Addr: c.address,
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			if handed.Swap(true) {
				return nil, errNoRedial
			}
			return conn, nil
		},
		Username:                 c.spec.User,
		Password:                 c.spec.Password,
		Protocol:                 2,
		DisableIdentity:          true,
		MaxRetries:               -1,
		DialerRetries:            1,
		PoolSize:                 1,
		ReadTimeout:              c.spec.Timeout,
		WriteTimeout:             c.spec.Timeout,
		ContextTimeoutEnabled:    true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

func (c *redisChecker) Check(ctx context.Context) Result {
	start := time.Now()
	conn, err := c.dial(ctx)
	if err != nil {
		return down(start, c.classify(ctx, err))
	}
	defer conn.Close()
	client := c.client(conn)
	defer client.Close()
	info, err := client.Info(ctx, "replication").Result()
	if err != nil {
		return down(start, c.classify(ctx, err))
	}
	r, err := parseRedisReplication(info)
	if err != nil {
		return down(start, err)
	}
	r.Latency = time.Since(start)
	return r
}

// parseRedisReplication reads role and offsets from the text of INFO replication.
func parseRedisReplication(info string) (Result, error) {
	fields := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			fields[k] = v
		}
	}
	offset := func(key string) int64 {
		n, err := strconv.ParseInt(fields[key], 10, 64)
		if err != nil {
			return -1
		}
		return n
	}
	r := Result{Up: true, LagBytes: -1, Lag: -1, Position: -1, Received: -1}
	switch fields["role"] {
	case "master":
		r.Role, r.LagBytes, r.Lag = RolePrimary, 0, 0
		r.Position = offset("master_repl_offset")
	case "slave":
		r.Role = RoleReplica
		r.Position = offset("slave_repl_offset")
		r.Received = offset("slave_read_repl_offset") // read from the primary, applied or not (Redis 7)
		if h, p := fields["master_host"], fields["master_port"]; h != "" && p != "" {
			r.Upstream = net.JoinHostPort(h, p)
		}
	default:
		return Result{}, fmt.Errorf("%w: INFO replication has no known role (role:%q)", ErrProtocol, fields["role"])
	}
	return r, nil
}

func (c *redisChecker) classify(ctx context.Context, err error) error {
	if e := netError(ctx, err, c.spec.Timeout); e != nil {
		return e
	}
	if redis.IsAuthError(err) {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return fmt.Errorf("%w: %v", ErrServer, err)
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}

func (c *redisChecker) Close() error { return nil }
