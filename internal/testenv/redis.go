package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisOptions configures StartRedis. The zero value works.
type RedisOptions struct {
	// Password for requirepass (and masterauth of replicas). Empty means no
	// authentication.
	Password string
	// TLS, when set, also serves TLS with this certificate and key on a
	// port of its own (TLSAddr); clients need no certificate.
	TLS *ServerTLS
}

// Redis is a redis-server on a loopback port with no persistence, its log
// in a temp dir. Methods are safe for concurrent use.
type Redis struct {
	server
	password string
	base     string
	tls      *ServerTLS
	tlsPort  int

	replicaOf int           // primary's port, 0 when a primary; guarded by mu
	client    *redis.Client // guarded by mu
}

// StartRedis starts a redis-server on 127.0.0.1:<free port> and waits until
// it answers PING.
func StartRedis(opts RedisOptions) (*Redis, error) {
	return startRedis(opts.Password, 0, opts.TLS)
}

// TLSAddr returns the TLS listener's host:port ("" without RedisOptions.TLS).
func (r *Redis) TLSAddr() string {
	if r.tls == nil {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.tlsPort))
}

// StartReplica starts a replica of r (replicaof + masterauth) and waits
// until its master_link_status is up.
func (r *Redis) StartReplica() (*Redis, error) {
	s, err := startRedis(r.password, r.port, nil)
	if err != nil {
		return nil, fmt.Errorf("redis replica of %s: %w", r.Addr(), err)
	}
	return s, nil
}

func startRedis(pw string, replicaOf int, tls *ServerTLS) (*Redis, error) {
	base, err := makeBaseDir("redis", nil)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	r := &Redis{server: server{kind: "redis"}, password: pw, base: base, replicaOf: replicaOf, tls: tls}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		if r.port, err = FreePort(); err != nil {
			_ = r.Stop()
			return nil, fmt.Errorf("redis: %w", err)
		}
		if tls != nil {
			if r.tlsPort, err = FreePort(); err != nil {
				_ = r.Stop()
				return nil, fmt.Errorf("redis: %w", err)
			}
		}
		err = r.start(ctx, true)
		if err == nil {
			return r, nil
		}
		if attempt >= 2 || !portBusy(r.port) {
			_ = r.Stop()
			return nil, err
		}
	}
}

// start runs the server and waits until it answers; with waitLink, a
// replica also until its link to the primary is up.
func (r *Redis) start(ctx context.Context, waitLink bool) error {
	bin, err := lookPath("redis-server")
	if err != nil {
		return err
	}
	r.mu.Lock()
	replicaOf := r.replicaOf
	r.mu.Unlock()
	argv := []string{bin,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--dir", r.base,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--logfile", "",
		"--protected-mode", "no",
		"--repl-diskless-sync", "yes",
		"--repl-diskless-sync-delay", "0", // full sync at once, not after 5s
		"--enable-debug-command", "local",
	}
	if r.password != "" {
		argv = append(argv, "--requirepass", r.password, "--masterauth", r.password)
	}
	if replicaOf != 0 {
		argv = append(argv, "--replicaof", "127.0.0.1", strconv.Itoa(replicaOf))
	}
	if r.tls != nil {
		cert, key, _, err := r.tls.write(r.base, nil)
		if err != nil {
			return fmt.Errorf("redis %s: tls: %w", r.Addr(), err)
		}
		argv = append(argv, "--tls-port", strconv.Itoa(r.tlsPort), "--tls-cert-file", cert, "--tls-key-file", key,
			"--tls-auth-clients", "no")
	}
	pr, err := startProc(argv, r.base, r.LogPath(), nil)
	if err != nil {
		return fmt.Errorf("redis %s: %w", r.Addr(), err)
	}
	r.mu.Lock()
	r.proc = pr
	r.mu.Unlock()
	if err := r.waitReady(ctx, pr, waitLink && replicaOf != 0); err != nil {
		_ = pr.kill()
		return withLog(fmt.Errorf("redis %s: start: %w", r.Addr(), err), r.LogPath())
	}
	return nil
}

// options are the go-redis options for this server: short timeouts (a
// paused server must not hang a test for long) and no maintenance
// notifications, which plain Redis 7 does not know.
func (r *Redis) options() *redis.Options {
	return &redis.Options{
		Addr:                     r.Addr(),
		Password:                 r.password,
		DialTimeout:              2 * time.Second,
		ReadTimeout:              2 * time.Second,
		WriteTimeout:             2 * time.Second,
		MaxRetries:               -1,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// Options returns go-redis options for a new client of this server.
func (r *Redis) Options() *redis.Options { return r.options() }

func (r *Redis) waitReady(ctx context.Context, pr *proc, replica bool) error {
	c := redis.NewClient(r.options())
	defer c.Close()
	return poll(ctx, func() (bool, error, error) {
		if pr.exited() {
			return false, nil, fmt.Errorf("redis-server exited: %v", pr.exitErr())
		}
		if !replica {
			if err := c.Ping(ctx).Err(); err != nil {
				return false, err, nil
			}
			return true, nil, nil
		}
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return false, err, nil
		}
		if infoField(info, "master_link_status") != "up" {
			return false, errors.New("master_link_status " + infoField(info, "master_link_status")), nil
		}
		return true, nil, nil
	})
}

// infoField returns the value of key in an INFO reply.
func infoField(info, key string) string {
	for _, l := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && k == key {
			return v
		}
	}
	return ""
}

// Password returns the requirepass password ("" for none).
func (r *Redis) Password() string { return r.password }

// LogPath returns the server log file.
func (r *Redis) LogPath() string { return filepath.Join(r.base, "redis.log") }

// Client returns a go-redis client of this server, shared by all callers
// and closed by Stop; do not close it yourself.
func (r *Redis) Client() *redis.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client == nil {
		r.client = redis.NewClient(r.options())
	}
	return r.client
}

// Promote makes a replica a primary with REPLICAOF NO ONE; a later Restart
// keeps it a primary.
func (r *Redis) Promote() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c := redis.NewClient(r.options())
	defer c.Close()
	if err := c.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		return fmt.Errorf("redis %s: promote: %w", r.Addr(), err)
	}
	r.mu.Lock()
	r.replicaOf = 0
	r.mu.Unlock()
	return nil
}

// Restart starts the server again on the same port (empty: there is no
// persistence), killing it first if it runs, and waits until it answers
// PING. A replica comes back as a replica of the same primary (the link
// comes up on its own when the primary is up; Restart does not wait for it).
func (r *Redis) Restart() error {
	r.mu.Lock()
	pr, stopped := r.proc, r.stopped
	r.mu.Unlock()
	if stopped {
		return fmt.Errorf("redis %s: restart after Stop", r.Addr())
	}
	if pr != nil {
		// Killed, not shut down: there is nothing to save, and a SIGTERM
		// waits up to 10s for lagging replicas.
		if err := pr.kill(); err != nil {
			return fmt.Errorf("redis %s: restart: %w", r.Addr(), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return r.start(ctx, false)
}

// Stop kills the server (nothing is persisted, so there is nothing to shut
// down cleanly), closes the shared client and removes its directory. It is
// idempotent.
func (r *Redis) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return nil
	}
	r.stopped = true
	var errs []error
	if r.client != nil {
		_ = r.client.Close() // errors only for a client closed twice
	}
	if r.proc != nil {
		if err := r.proc.kill(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(r.base); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redis %s: stop: %w", r.Addr(), err)
	}
	return nil
}
