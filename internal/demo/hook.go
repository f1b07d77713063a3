package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Environment the demo gives the proxy, which passes it on to its hooks.
const (
	envEvents     = "QP_DEMO_EVENTS"     // file the hook appends its events to
	envPGPassword = "QP_DEMO_PGPASSWORD" // password of the PostgreSQL user (checks and hook)
	envPGUser     = "QP_DEMO_PGUSER"     // the PostgreSQL user
	envProxy      = "QP_DEMO_PROXY"      // name of the proxy that runs the hook (part 3)
)

// hookTimeout bounds the hook's own work; the proxy's hook timeout is longer.
const hookTimeout = 20 * time.Second

// hook is a promote hook the demo binary runs when quorumproxy calls it as
// `demo <name>` with QP_NEW_ADDRESS set.
type hook struct {
	name string
	run  func(ctx context.Context, addr string, out io.Writer) (did string, err error)
}

var hooks = map[string]hook{
	"hook-redis-promote": {"redis REPLICAOF NO ONE", redisPromote},
	"hook-pg-promote":    {"pg_promote()", pgPromote},
}

func runHook(h hook, stdout, stderr io.Writer) int {
	addr := os.Getenv("QP_NEW_ADDRESS")
	backend := os.Getenv("QP_NEW_BACKEND")
	events := os.Getenv(envEvents)
	if addr == "" {
		fmt.Fprintln(stderr, "demo hook: QP_NEW_ADDRESS is not set (run by quorumproxy as a promote hook)")
		return 2
	}
	// In a cluster the committing proxy runs the hook, with the decision's
	// epoch as a fencing token: say which proxy and which epoch.
	if epoch := os.Getenv("QP_EPOCH"); epoch != "" {
		fmt.Fprintf(stdout, "demo hook: QP_EPOCH=%s proxy %s backend %s\n", epoch, os.Getenv(envProxy), backend)
		backend += fmt.Sprintf(" [proxy %s, QP_EPOCH %s]", os.Getenv(envProxy), epoch)
	}
	appendEvent(events, "start", "%s on %s (%s)", h.name, backend, addr)
	ctx, cancel := context.WithTimeout(context.Background(), hookTimeout)
	defer cancel()
	did, err := h.run(ctx, addr, stdout)
	if err != nil {
		appendEvent(events, "fail", "%s on %s: %v", h.name, backend, err)
		fmt.Fprintf(stderr, "demo hook: backend %s (%s): %v\n", backend, addr, err)
		return 1
	}
	appendEvent(events, "ok", "%s on %s: %s", h.name, backend, did)
	return 0
}

// redisPromote runs `redis-cli -h H -p P REPLICAOF NO ONE`, an argv, no shell.
func redisPromote(ctx context.Context, addr string, out io.Writer) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	cmd := exec.CommandContext(ctx, "redis-cli", "-h", host, "-p", port, "REPLICAOF", "NO", "ONE")
	got, err := cmd.CombinedOutput()
	fmt.Fprintf(out, "redis-cli -h %s -p %s REPLICAOF NO ONE: %s", host, port, got)
	if err != nil {
		return "", fmt.Errorf("redis-cli REPLICAOF NO ONE: %w", err)
	}
	// redis-cli exits 0 on an error reply: read what it said.
	if strings.TrimSpace(string(got)) != "OK" {
		return "", fmt.Errorf("redis-cli REPLICAOF NO ONE answered %q", strings.TrimSpace(string(got)))
	}
	return "OK, now a primary", nil
}

// pgPromote calls pg_promote() on the new target and waits for it.
func pgPromote(ctx context.Context, addr string, out io.Writer) (string, error) {
	conn, err := pgx.Connect(ctx, pgDSN(addr, os.Getenv(envPGUser), os.Getenv(envPGPassword), "postgres"))
	if err != nil {
		return "", fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.Background())
	// Idempotent: the proxy also runs the hook for the target it picks at
	// start, which is already the primary.
	var standby bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
		return "", fmt.Errorf("pg_is_in_recovery(): %w", err)
	}
	if !standby {
		fmt.Fprintf(out, "%s is already a primary: nothing to promote\n", addr)
		return "already a primary, nothing to do", nil
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(wait => true, wait_seconds => 15)").Scan(&ok); err != nil {
		return "", fmt.Errorf("pg_promote(): %w", err)
	}
	if !ok {
		return "", errors.New("pg_promote() returned false: not promoted within 15s")
	}
	fmt.Fprintf(out, "pg_promote() on %s: promoted\n", addr)
	return "promoted, now a primary", nil
}

// pgDSN is a libpq URL for user/password at addr.
func pgDSN(addr, user, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: addr, Path: "/" + db,
		RawQuery: "sslmode=disable&connect_timeout=5"}
	return u.String()
}
