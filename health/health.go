// Package health owns the local view of every backend: protocol-aware checkers (tcp, postgres,
// redis, mysql, http, exec) that report up/down, role and replication lag, and a Monitor that
// runs one loop per backend and applies consecutive rise/fall before a backend changes state.
//
// A check never outlives its timeout: every checker honours the context deadline down to the
// socket, so a frozen (SIGSTOPped) server is reported as "timeout after 100ms", not waited on.
//
// A backend is StatusUnknown until its first check completes; that first result decides at
// once (up or down) so the proxy learns the state quickly at start. After that, Rise
// consecutive successes bring it up and Fall consecutive failures bring it down.
//
// Example:
//
//	m := health.NewMonitor(logger, func(s health.State) { pool.SetHealth(s) })
//	m.Set([]health.Target{{Service: "pg", Backend: "a", Address: "10.0.0.1:5432",
//		Spec: health.Spec{Kind: "postgres", User: "qp", Password: pw}}})
//	defer m.Close()
package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// Role is what a backend reports itself to be.
type Role int

// Roles. RoleUnknown is reported by checkers that cannot tell (tcp, http without Roles) and
// by a backend that is down.
const (
	RoleUnknown Role = iota
	RolePrimary
	RoleReplica
)

// String returns "unknown", "primary" or "replica".
func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleReplica:
		return "replica"
	default:
		return "unknown"
	}
}

// Result is the outcome of one check.
type Result struct {
	// Up is true when the backend answered as expected.
	Up bool
	// Role is what the backend says it is; RoleUnknown when the checker cannot tell.
	Role Role
	// LagBytes is the replication lag in bytes; -1 when unknown. Checkers leave it -1 on
	// replicas; the Monitor fills it in from the service's primary Position.
	LagBytes int64
	// Lag is the replication lag in time; -1 when unknown, 0 on a primary or a caught-up replica.
	Lag time.Duration
	// Position is the engine's replication position (PostgreSQL WAL LSN as a byte offset,
	// Redis replication offset); -1 when unknown. On a replica it is the replayed position.
	Position int64
	// Received is how far a replica holds the primary's log, replayed or not (PostgreSQL's
	// received and flushed LSN: a promote replays it all); not above Position when unknown.
	Received int64
	// SyncStandbys, on a primary, names the standbys it reports synchronous (PostgreSQL:
	// pg_stat_replication.application_name where sync_state is 'sync'); nil when unknown.
	SyncStandbys []string
	// Upstream, on a replica, is the host:port it replicates from as the server says it
	// (PostgreSQL's pg_stat_wal_receiver, Redis's master_host:master_port); "" when unknown.
	Upstream string
	// Latency is how long the check took.
	Latency time.Duration
	// Err says what was wrong when Up is false; it matches one of the Err* sentinels with
	// errors.Is.
	Err error
}

// Checker checks one backend. Check must return by the context's deadline. A Checker is used
// by one goroutine at a time; Close releases any connection it keeps between checks.
type Checker interface {
	Check(ctx context.Context) Result
	Close() error
}

// Spec configures a checker and the rise/fall loop around it. The zero value is a tcp check with
// the defaults below.
type Spec struct {
	// Kind is "tcp" (default when empty), "postgres", "redis", "mysql", "http" or "exec".
	Kind string
	// Interval between checks while the state is stable. Zero means DefaultInterval.
	Interval time.Duration
	// Timeout bounds one check. Zero means DefaultTimeout, capped at Interval.
	Timeout time.Duration
	// FastInterval is used while a rise or fall streak is in progress. Zero means Interval.
	FastInterval time.Duration
	// DownInterval is used while the backend is down. Zero means Interval.
	DownInterval time.Duration
	// Rise is the number of consecutive successes that bring a down backend up. Zero means
	// DefaultRise.
	Rise int
	// Fall is the number of consecutive failures that bring an up backend down. Zero means
	// DefaultFall.
	Fall int
	// User, Database and Password authenticate postgres, redis (ACL user) and mysql checks.
	// The password is never logged. Database defaults to "postgres" for postgres.
	User, Database, Password string
	// TLS makes postgres, redis, mysql and http (https) checks use TLS, and verify the
	// server's certificate before anything is sent (PostgreSQL's sslmode=verify-full): it must
	// chain to TLSCA and name TLSServerName. A check never falls back to plain text.
	TLS bool
	// TLSCA is the PEM bundle of CA certificates to trust; empty: the system's roots.
	TLSCA []byte
	// TLSServerName is the name the certificate must carry; empty: the host part of the
	// backend's address (an IP address is matched against the certificate's IP SANs).
	TLSServerName string
	// TLSCert and TLSKey are a PEM client certificate and its key, for servers that ask
	// for one; both or neither. TLSKey is never logged.
	TLSCert, TLSKey []byte
	// TLSSkipVerify accepts any certificate: an impostor then receives the credentials.
	// An explicit opt-in only.
	TLSSkipVerify bool
	// Method, Path, ExpectStatus and ExpectBody configure http checks. Method defaults to GET,
	// Path to "/"; ExpectStatus zero accepts any 2xx or 3xx; ExpectBody, when set, must occur
	// in the first 64 KiB of the body.
	Method, Path string
	ExpectStatus int
	ExpectBody   string
	// Roles makes an http check read the backend's role: "" (the default: it reports none) or
	// "patroni" (Patroni's REST API; see httpcheck.go). With "patroni", ExpectStatus and
	// ExpectBody are not used.
	Roles string
	// Command is the argv of an exec check, run without a shell; exit 0 means up.
	Command []string
	// Port, when not zero, is the port checks connect to on the host of the backend's address
	// instead of its own (HAProxy's "check port"): Patroni's REST API, an exporter.
	Port int
	// Address, when set, is the host:port checks connect to instead of the backend's address
	// (HAProxy's "addr" and "port"); it overrides Port. Exec checks get it as QP_ADDRESS, and
	// TLS checks verify its host unless TLSServerName is set. See CheckAddress.
	Address string
}

// Defaults for a zero Spec, for direct users of this package; they are the
// config's defaults too, and quorumproxy itself always passes the config's
// values.
const (
	DefaultInterval = 2 * time.Second // cheap for any server, and a failure is seen within fall intervals
	DefaultTimeout  = 1 * time.Second // half the interval: checks never pile up
	DefaultRise     = 2               // one good answer after an outage is not yet proof
	DefaultFall     = 3               // tolerate two lost checks before moving traffic
)

// String formats s with the password redacted, so a Spec or Target printed with %v or handed
// to a logger never shows it.
func (s Spec) String() string {
	type plain Spec // no methods: formats field by field
	p := plain(s)
	if p.Password != "" {
		p.Password = "[redacted]"
	}
	if len(p.TLSKey) > 0 {
		p.TLSKey = []byte("[redacted]")
	}
	// Certificates are long and public: their size says enough.
	p.TLSCA = []byte(fmt.Sprintf("[%d bytes]", len(s.TLSCA)))
	p.TLSCert = []byte(fmt.Sprintf("[%d bytes]", len(s.TLSCert)))
	return fmt.Sprintf("%+v", p)
}

// withDefaults returns s with zero fields replaced by their defaults.
func (s Spec) withDefaults() Spec {
	if s.Kind == "" {
		s.Kind = "tcp"
	}
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout <= 0 {
		s.Timeout = min(DefaultTimeout, s.Interval)
	}
	if s.FastInterval <= 0 {
		s.FastInterval = s.Interval
	}
	if s.DownInterval <= 0 {
		s.DownInterval = s.Interval
	}
	if s.Rise <= 0 {
		s.Rise = DefaultRise
	}
	if s.Fall <= 0 {
		s.Fall = DefaultFall
	}
	return s
}

// NewChecker returns the checker that spec.Kind names for the backend at address (host:port).
// It checks spec.CheckAddress(address): address unless spec.Address or spec.Port say otherwise.
// It does not connect; the first Check does.
func NewChecker(spec Spec, address string) (Checker, error) {
	spec = spec.withDefaults()
	if spec.Port < 0 || spec.Port > 65535 {
		return nil, fmt.Errorf("health %s check: port %d: want 1 to 65535", spec.Kind, spec.Port)
	}
	if spec.Roles != "" && spec.Kind != "http" {
		return nil, fmt.Errorf("health %s check: roles %q: only http checks read roles that way", spec.Kind, spec.Roles)
	}
	address = spec.CheckAddress(address)
	if spec.Kind != "exec" {
		if _, _, err := net.SplitHostPort(address); err != nil {
			return nil, fmt.Errorf("health %s check: address %q: %w", spec.Kind, address, err)
		}
	}
	switch spec.Kind {
	case "tcp":
		return &tcpChecker{address: address, timeout: spec.Timeout}, nil
	case "postgres":
		return newPostgresChecker(spec, address)
	case "redis":
		return newRedisChecker(spec, address)
	case "mysql":
		return newMySQLChecker(spec, address)
	case "http":
		return newHTTPChecker(spec, address)
	case "exec":
		return newExecChecker(spec, address)
	default:
		return nil, fmt.Errorf("health check kind %q: %w", spec.Kind, ErrUnknownKind)
	}
}

// Sentinel errors that a Result.Err matches with errors.Is.
var (
	ErrTimeout    = errors.New("timeout")
	ErrRefused    = errors.New("connection refused")
	ErrReset      = errors.New("connection reset")
	ErrClosed     = errors.New("connection closed by server")
	ErrProtocol   = errors.New("protocol error")
	ErrAuth       = errors.New("authentication failed")
	ErrServer     = errors.New("server error")
	ErrUnexpected = errors.New("unexpected answer")
	ErrNetwork    = errors.New("network error")
	// ErrTLS: the server's certificate could not be verified (or the TLS
	// handshake failed); nothing was sent to it.
	ErrTLS = errors.New("TLS")
	// ErrUnknownKind is returned by NewChecker for a Spec.Kind it does not know.
	ErrUnknownKind = errors.New("unknown kind")
)

// timeoutError is returned for a check that ran out of time.
func timeoutError(timeout time.Duration) error {
	return fmt.Errorf("%w after %v", ErrTimeout, timeout)
}

// netError classifies a transport error, or returns nil when err is not one. ctx decides
// whether an interrupted read was the check's deadline.
func netError(ctx context.Context, err error, timeout time.Duration) error {
	var ne net.Error
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var opErr *net.OpError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &certErr):
		return fmt.Errorf("%w: server certificate not trusted: %w", ErrTLS, certErr.Err)
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// crypto/tls's form for an alert from the server: it refused our certificate or
		// our TLS parameters.
		return fmt.Errorf("%w: the server refused the handshake: %w", ErrTLS, opErr.Err)
	case errors.As(err, &recordErr):
		return fmt.Errorf("%w: handshake failed (is the server speaking TLS?): %w", ErrTLS, err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return timeoutError(timeout)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("check canceled: %w", ctx.Err())
	case errors.Is(err, syscall.ECONNREFUSED):
		return ErrRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return ErrReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ErrClosed
	case errors.As(err, new(*net.OpError)), errors.As(err, new(*net.DNSError)):
		return fmt.Errorf("%w: %w", ErrNetwork, err)
	}
	return nil
}

// tcpChecker is up when a TCP connection can be opened.
type tcpChecker struct {
	address string
	timeout time.Duration
}

func (c *tcpChecker) Check(ctx context.Context) Result {
	start := time.Now()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.address)
	r := Result{LagBytes: -1, Lag: -1, Position: -1}
	if err != nil {
		r.Err = netError(ctx, err, c.timeout)
		if r.Err == nil {
			r.Err = fmt.Errorf("%w: %w", ErrNetwork, err)
		}
	} else {
		conn.Close()
		r.Up = true
	}
	r.Latency = time.Since(start)
	return r
}

func (c *tcpChecker) Close() error { return nil }

// down returns a failed Result with err.
func down(start time.Time, err error) Result {
	return Result{LagBytes: -1, Lag: -1, Position: -1, Latency: time.Since(start), Err: err}
}
