// Package repoint makes Redis replicas follow a new primary, as Sentinel
// does after a failover: it reads where a server replicates from (INFO
// replication) and sends REPLICAOF. The daemon decides when and to whom
// (internal/daemon/repoint.go); this package only talks to the servers,
// with the login of the service's health check.
package repoint

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

	"github.com/quorumproxy/quorumproxy/health"
)

// Redis is a login to the Redis servers of one service: the user,
// password and TLS settings of its health check.
type Redis struct {
	Spec health.Spec
}

// Replication is what INFO replication says of a server.
type Replication struct {
	// Role is "master" or "slave".
	Role string
	// MasterHost and MasterPort are the primary a replica follows.
	MasterHost string
	MasterPort int
	// LinkUp: master_link_status is up.
	LinkUp bool
}

// Follows reports whether the server replicates from the primary at
// address (host:port). A host is compared as written and, failing that,
// by the addresses it resolves to.
func (r Replication) Follows(address string) bool {
	if r.Role != "slave" {
		return false
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil || port != strconv.Itoa(r.MasterPort) {
		return false
	}
	if strings.EqualFold(host, r.MasterHost) {
		return true
	}
	mine, err1 := net.LookupHost(host)
	theirs, err2 := net.LookupHost(r.MasterHost)
	if err1 != nil || err2 != nil {
		return false
	}
	for _, a := range mine {
		for _, b := range theirs {
			if net.ParseIP(a).Equal(net.ParseIP(b)) {
				return true
			}
		}
	}
	return false
}

// String reads as "primary" or "replica of HOST:PORT (link up)".
func (r Replication) String() string {
	if r.Role != "slave" {
		return "primary"
	}
	link := "down"
	if r.LinkUp {
		link = "up"
	}
	return fmt.Sprintf("replica of %s (link %s)", net.JoinHostPort(r.MasterHost, strconv.Itoa(r.MasterPort)), link)
}

// Replication reads INFO replication from the server at address.
func (l Redis) Replication(ctx context.Context, address string) (Replication, error) {
	var out Replication
	err := l.with(ctx, address, func(c *redis.Client) error {
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		out, err = ParseReplication(info)
		return err
	})
	return out, err
}

// ReplicaOf makes the server at address a replica of the primary at
// primary (host:port): REPLICAOF HOST PORT. Redis answers OK when it
// already follows that primary too, so it is idempotent.
func (l Redis) ReplicaOf(ctx context.Context, address, primary string) error {
	host, port, err := net.SplitHostPort(primary)
	if err != nil {
		return fmt.Errorf("new primary's address %q: %w", primary, err)
	}
	return l.with(ctx, address, func(c *redis.Client) error {
		s, err := c.Do(ctx, "REPLICAOF", host, port).Text()
		if err != nil {
			return err
		}
		if !strings.HasPrefix(s, "OK") {
			return fmt.Errorf("REPLICAOF %s %s answered %q", host, port, s)
		}
		return nil
	})
}

// ParseReplication reads the text of INFO replication.
func ParseReplication(info string) (Replication, error) {
	fields := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			fields[k] = v
		}
	}
	r := Replication{Role: fields["role"]}
	switch r.Role {
	case "master":
	case "slave":
		r.MasterHost = fields["master_host"]
		r.MasterPort, _ = strconv.Atoi(fields["master_port"])
		r.LinkUp = fields["master_link_status"] == "up"
	default:
		return r, fmt.Errorf("INFO replication has no known role (role:%q)", r.Role)
	}
	return r, nil
}

// errNoRedial is what the one-shot client's dialer answers if go-redis
// asks for a second connection.
var errNoRedial = errors.New("connection lost")

// with runs f with a client whose only connection is one dialled here (as
// the health check does): go-redis' pool then never dials, retries or
// logs by itself.
func (l Redis) with(ctx context.Context, address string, f func(*redis.Client) error) error {
	timeout := l.Spec.Timeout
	if timeout <= 0 {
		timeout = health.DefaultTimeout
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	tlsCfg, err := TLSConfig(l.Spec, address)
	if err != nil {
		return err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return err
	}
	defer conn.Close()
	if tlsCfg != nil {
		tc := tls.Client(conn, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		conn = tc
	}
	var handed atomic.Bool
	c := redis.NewClient(&redis.Options{
		Addr: address,
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			if handed.Swap(true) {
				return nil, errNoRedial
			}
			return conn, nil
		},
		Username:                 l.Spec.User,
		Password:                 l.Spec.Password,
		Protocol:                 2,
		DisableIdentity:          true,
		MaxRetries:               -1,
		DialerRetries:            1,
		PoolSize:                 1,
		ReadTimeout:              timeout,
		WriteTimeout:             timeout,
		ContextTimeoutEnabled:    true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	defer c.Close()
	return f(c)
}

// TLSConfig is the TLS client configuration the health check of address
// uses (nil without TLS): the same verification and client certificate.
func TLSConfig(s health.Spec, address string) (*tls.Config, error) { return s.TLSConfig(address) }

// Backoff is how long to wait before the nth retry (n >= 1) of a repoint
// that failed: 1s doubling, at most 5 minutes.
func Backoff(n int) time.Duration {
	d := time.Second
	for i := 1; i < n && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}
