// Package config owns quorumproxy's configuration file: the TOML schema, its
// defaults, strict decoding and validation. Every problem in a file is
// reported in one pass with the file, line and column of the offending key.
//
//	cfg, warnings, err := config.Load("quorumproxy.toml")
//	for _, w := range warnings {
//		log.Print(w) // e.g. "qp.toml:9:1: warning: service "pg": ..."
//	}
//	var probs config.Problems
//	if errors.As(err, &probs) {
//		// probs lists every error, one per line of err.Error()
//	}
//
// testdata/example.toml in the repository documents every key with its default.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"
)

// Config is a whole quorumproxy configuration file.
type Config struct {
	Admin    Admin     `toml:"admin"`
	Log      Log       `toml:"log"`
	Proxy    Proxy     `toml:"proxy"`
	Cluster  *Cluster  `toml:"cluster"` // nil: this proxy runs alone (no [cluster] table)
	Services []Service `toml:"service"` // at least one
}

// Admin is the [admin] table: the admin HTTP API.
type Admin struct {
	// Listen is the host:port of the admin HTTP server. Default
	// DefaultAdminListen (loopback: the API can change routing). "" disables it.
	Listen string `toml:"listen"`
	// TokenFile names a file holding the bearer token required by
	// state-changing endpoints. Default "": those endpoints are refused.
	TokenFile string `toml:"token_file"`
}

// Log is the [log] table.
type Log struct {
	// Level is "debug", "info", "warn" or "error". Default "info".
	Level string `toml:"level"`
	// Format is "text" or "json". Default "text".
	Format string `toml:"format"`
	// Access logs one line per client connection when it ends: service,
	// client, backend, duration, bytes each way and why it ended (HAProxy's
	// tcplog). Default false (Linux only).
	Access bool `toml:"access"`
}

// SlogLevel returns Level as a slog.Level (info when unset).
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// Proxy is the [proxy] table: settings of the whole data path.
type Proxy struct {
	// DrainTimeout is how long a graceful shutdown waits for client sessions
	// to end before closing them. Default 10s. Zero closes them at once.
	DrainTimeout time.Duration `toml:"drain_timeout"`
	// Loops is the number of event loops of the data plane (Linux). Default
	// 0: one per CPU the Go runtime uses (GOMAXPROCS), of which half
	// (rounded up) take new connections until accepting keeps those busy.
	// A number set here takes new connections on every loop. At most 1024.
	// Read at start; a reload keeps the running count.
	Loops int `toml:"loops"`
	// IOURing is "auto" (the default): each loop batches its socket reads
	// and writes through io_uring where the kernel allows it, else makes
	// one system call for each; "off": always one system call each. Read
	// at start.
	IOURing string `toml:"io_uring"`
}

// Action says what happens to sessions when their backend goes down or
// when the quorum is lost.
type Action string

// Actions.
const (
	ActionClose Action = "close" // close the sessions (and refuse new ones)
	ActionKeep  Action = "keep"  // keep them
)

// Cluster is the optional [cluster] table. Without it a proxy runs alone.
type Cluster struct {
	// NodeName is this proxy's name; it must be one of Peers. Required.
	NodeName string `toml:"node_name"`
	// Bind is the host:port gossip listens on (TCP and UDP). Default: this
	// proxy's own [[cluster.peer]] address, where the others send to (set
	// it, to "0.0.0.0:PORT" for example, when that address is not one of
	// this machine's, as behind NAT).
	Bind string `toml:"bind"`
	// Advertise is the host:port this proxy tells the others it is at.
	// Default: its own [[cluster.peer]] address, which is where the others
	// expect it (a peer claiming its name from another address is refused).
	Advertise string `toml:"advertise"`
	// Peers lists every proxy of the cluster, this one included. N = len(Peers);
	// the quorum is N/2+1, counted against N.
	Peers []Peer `toml:"peer"`
	// SecretKeyFile names a file holding the gossip key: 16, 24 or 32 bytes,
	// raw or base64 (checked when the cluster starts, not by Parse).
	// Required unless Insecure.
	SecretKeyFile string `toml:"secret_key_file"`
	// Insecure allows gossip without encryption or authentication. Default false.
	Insecure bool `toml:"insecure"`
	// StateDir holds the persisted votes and routing records. Required.
	StateDir string `toml:"state_dir"`
	// LeaseTimeout is how long a lease lasts from the moment its request was
	// sent. Default 2s; 3s with Network "wan". Must be positive.
	LeaseTimeout time.Duration `toml:"lease_timeout"`
	// ClockDrift is the assumed bound rho on clock-rate difference between
	// proxies (0.01 = 1%); 0 <= rho < 0.5. Default 0.01.
	ClockDrift float64 `toml:"clock_drift"`
	// OnQuorumLoss is what a proxy does when its lease expires: "close"
	// (default: hold new connections up to SwitchHold, then refuse, and close
	// existing sessions) or "keep" (route on; voids the split-brain guarantee).
	OnQuorumLoss Action `toml:"on_quorum_loss"`
	// SwitchHold is how long new connections are held while a switch is in
	// progress, and the default for each service's SwitchHold. Default 2s.
	// Zero refuses them at once.
	SwitchHold time.Duration `toml:"switch_hold"`
	// Label is the gossip label; proxies with another label are ignored.
	// Default "quorumproxy". At most 255 bytes.
	Label string `toml:"label"`
	// GossipInterval is how often queued gossip (health observations, which
	// also go straight to every peer when they change) is sent. Default
	// 200ms. Must be positive.
	GossipInterval time.Duration `toml:"gossip_interval"`
	// ProbeInterval is memberlist's failure-detection period: a peer is
	// probed this often, the probe times out after half of it, and a full
	// state sync runs every 30 of them. Default 1s. Must be positive.
	ProbeInterval time.Duration `toml:"probe_interval"`
	// RejoinInterval is how often configured peers that memberlist does not
	// list as alive are joined again (it stops probing a dead node, so
	// without this a long partition would never heal). Default 10s. Must be
	// positive.
	RejoinInterval time.Duration `toml:"rejoin_interval"`
	// Network is "lan" (default) or "wan": proxies spread over regions.
	// "wan" takes memberlist's WAN timings: gossip_interval and
	// probe_interval default to 500ms and 5s, lease_timeout to 3s, and a
	// peer is suspected for longer before it is declared dead.
	Network Network `toml:"network"`
}

// Network says how far apart a cluster's proxies are.
type Network string

// Networks.
const (
	NetworkLAN Network = "lan" // one site: memberlist's LAN timings
	NetworkWAN Network = "wan" // across regions: memberlist's WAN timings
)

// Timings of the agreement derived from lease_timeout. They are not keys:
// the protocol's argument ties each to the lease (see docs/design.md).

// ObservationTTL is how long a peer's report about a backend counts after
// it was received: one and a half leases, so that a report outlives a lost
// gossip round yet a proxy cut off for a lease is not counted on.
func (c *Cluster) ObservationTTL() time.Duration { return c.LeaseTimeout * 3 / 2 }

// VoteTimeout is how long a proposer gathers votes before it gives an
// epoch up: one lease, the time a voter that stopped routing waits anyway.
func (c *Cluster) VoteTimeout() time.Duration { return c.LeaseTimeout }

// FailedPromoteHold is how long a backend whose promote failed is no
// failover candidate: thirty leases, long enough for an operator to look,
// short enough that a transient failure does not exclude it for good.
func (c *Cluster) FailedPromoteHold() time.Duration { return 30 * c.LeaseTimeout }

// Service returns the service called name, or nil.
func (c *Config) Service(name string) *Service {
	for i := range c.Services {
		if c.Services[i].Name == name {
			return &c.Services[i]
		}
	}
	return nil
}

// Peer is one [[cluster.peer]] entry.
type Peer struct {
	Name    string `toml:"name"`    // unique, required
	Address string `toml:"address"` // gossip host:port, unique, required
	Region  string `toml:"region"`  // a label shown in status; default ""
}

// ProxyPrefixes parses AcceptProxy (valid after Parse); a single address is
// a prefix of its full length.
func (s *Service) ProxyPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, n := range s.AcceptProxy {
		p, err := parsePrefix(n)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePrefix(n string) (netip.Prefix, error) {
	if strings.Contains(n, "/") {
		p, err := netip.ParsePrefix(n)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(n)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// selfAddress is the address of the peer named NodeName ("" when none is).
func (c *Cluster) selfAddress() string {
	for _, p := range c.Peers {
		if p.Name == c.NodeName {
			return p.Address
		}
	}
	return ""
}

// Quorum returns the number of distinct peers a decision needs: N/2+1.
func (c *Cluster) Quorum() int { return len(c.Peers)/2 + 1 }

// PeersHash returns a hex SHA-256 of the peer list (names and addresses, in
// name order), so that proxies with different peer lists can tell.
func (c *Cluster) PeersHash() string {
	ps := slices.Clone(c.Peers)
	slices.SortFunc(ps, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	h := sha256.New()
	for _, p := range ps {
		writeField(h, p.Name)
		writeField(h, p.Address)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Mode is how a service spreads connections over its backends.
type Mode string

// Modes.
const (
	ModeActivePassive Mode = "active-passive" // one target at a time
	ModeActiveActive  Mode = "active-active"  // balance over all healthy backends
)

// Balance is the active-active balancing algorithm. Weights apply to both.
type Balance string

// Balancing algorithms.
const (
	BalanceRoundRobin Balance = "round-robin"
	BalanceLeastConn  Balance = "least-conn"
)

// Role says which backends a service routes to, by the role its health
// checks report.
type Role string

// Roles.
const (
	RoleAny     Role = "any"     // whatever role
	RolePrimary Role = "primary" // only a backend that reports itself primary
	RoleReplica Role = "replica" // only replicas within the lag bound
)

// Failback says whether an active-passive service moves back to a recovered
// higher-priority backend.
type Failback string

// Failback policies.
const (
	FailbackManual Failback = "manual" // stay on the current target until an operator acts
	FailbackAuto   Failback = "auto"   // move back on recovery
)

// RPO is how much of the acknowledged writes a failover may lose.
type RPO string

// RPO settings.
const (
	RPOAny  RPO = "any"  // the best candidate, however far behind it is
	RPOZero RPO = "zero" // only a synchronous standby, or no failover
)

// Service is one [[service]] table: a listener and the backends behind it.
type Service struct {
	// Name identifies the service: [A-Za-z0-9_.-]+, unique. Required.
	Name string `toml:"name"`
	// Listen is the host:port clients connect to; unique. Port 0 picks a free
	// port. Required.
	Listen string `toml:"listen"`
	// Mode is "active-passive" (default) or "active-active".
	Mode Mode `toml:"mode"`
	// Balance is "round-robin" (default) or "least-conn"; used by active-active.
	Balance Balance `toml:"balance"`
	// Role is "any" (default), "primary" or "replica". "primary" and "replica"
	// need health checks that report roles: kind postgres, redis, mysql or
	// exec, or http with roles = "patroni".
	Role Role `toml:"role"`
	// MaxConnections caps concurrent client sessions. Default 0: unlimited.
	MaxConnections int `toml:"max_connections"`
	// AcceptProxy lists networks ("10.0.0.0/24", or one address) whose
	// connections must start with a PROXY protocol header, v1 or v2: a load
	// balancer in front. The client address it carries is what backends
	// with send_proxy get. Connections from other addresses are taken as
	// they are. Default none. Linux only.
	AcceptProxy []string `toml:"accept_proxy"`
	// ConnectTimeout bounds dialing backends for one client, all attempts
	// together. Default 3s. Must be positive.
	ConnectTimeout time.Duration `toml:"connect_timeout"`
	// IdleTimeout closes a session with no bytes either way for this long.
	// Default 0: never.
	IdleTimeout time.Duration `toml:"idle_timeout"`
	// OnBackendDown is "close" (default: close sessions to a backend that is
	// down or no longer the target) or "keep".
	OnBackendDown Action `toml:"on_backend_down"`
	// Failback is "manual" (default) or "auto".
	Failback Failback `toml:"failback"`
	// SwitchHold is how long new connections wait while a switch is in
	// progress. Default: [cluster] switch_hold if a cluster is configured,
	// else 2s. Zero refuses them at once.
	SwitchHold time.Duration `toml:"switch_hold"`
	// MaxLag bounds the replication lag (time) of replicas used by role =
	// "replica". Default 0: unbounded.
	MaxLag time.Duration `toml:"max_lag"`
	// MaxLagBytes bounds the replication lag (bytes) of replicas used by
	// role = "replica". Default 0: unbounded.
	MaxLagBytes int64 `toml:"max_lag_bytes"`
	// MaxLagOnFailover: a standby lagging more than this (time) is never made
	// the target. Default 0: unbounded.
	MaxLagOnFailover time.Duration `toml:"max_lag_on_failover"`
	// MaxLagBytesOnFailover: a standby lagging more than this (bytes) is never
	// made the target. Default 0: unbounded.
	MaxLagBytesOnFailover int64 `toml:"max_lag_bytes_on_failover"`
	// AlertLag and AlertLagBytes raise the lag alert for a replica whose
	// replication lag (time, bytes) crosses them, and run notify once per
	// crossing each way. Default 0: no alert.
	AlertLag      time.Duration `toml:"alert_lag"`
	AlertLagBytes int64         `toml:"alert_lag_bytes"`
	// RPO is "any" (default: fail over to the best candidate) or "zero":
	// an automatic failover goes only to a standby that the primary
	// reported synchronous at its last good check (postgres checks:
	// pg_stat_replication.sync_state), and otherwise the service stays
	// unrouted with an alert; an operator's switchover still goes ahead.
	RPO RPO `toml:"rpo"`
	// RegionOrder: a failover prefers a standby in the failed primary's
	// region (backends' region labels), then in these regions in this
	// order, then any other. Default none.
	RegionOrder []string `toml:"region_order"`

	Health   Health    `toml:"health"`
	Hooks    Hooks     `toml:"hooks"`
	Backends []Backend `toml:"backend"` // at least one
}

// BackendsHash returns a hex SHA-256 of the service name and its backends
// (names and addresses, in name order), so that proxies whose configs
// disagree about a service can tell.
func (s *Service) BackendsHash() string {
	bs := slices.Clone(s.Backends)
	slices.SortFunc(bs, func(a, b Backend) int { return strings.Compare(a.Name, b.Name) })
	h := sha256.New()
	writeField(h, s.Name)
	for _, b := range bs {
		writeField(h, b.Name)
		writeField(h, b.Address)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writeField writes a length-prefixed string so that field boundaries are unambiguous.
func writeField(h interface{ Write([]byte) (int, error) }, s string) {
	var n [8]byte
	l := uint64(len(s))
	for i := range n {
		n[i] = byte(l >> (8 * i))
	}
	h.Write(n[:])
	h.Write([]byte(s))
}

// Kind is a health check kind.
type Kind string

// Health check kinds.
const (
	KindTCP      Kind = "tcp"      // a TCP connect
	KindPostgres Kind = "postgres" // role and lag through pgx
	KindRedis    Kind = "redis"    // ROLE / INFO replication
	KindMySQL    Kind = "mysql"    // @@read_only and replica status
	KindHTTP     Kind = "http"     // status code and optional body substring
	KindExec     Kind = "exec"     // a command; exit 0 = up
)

// RoleAware reports whether the service's checks report roles: the one
// place that decides it, for a proxy alone and for a cluster alike. A
// failover then picks only a backend that reports replica, and the old
// primary needs no fence to be kept out.
func (s *Service) RoleAware() bool { return s.Health.RoleAware() }

// RoleAware reports whether checks of this kind report a backend's role
// (http checks do with roles set: see Health.RoleAware).
func (k Kind) RoleAware() bool {
	return k == KindPostgres || k == KindRedis || k == KindMySQL || k == KindExec
}

// RoleAware reports whether these checks report a backend's role: a kind
// that does, or an http check that reads roles.
func (h *Health) RoleAware() bool {
	return h.Kind.RoleAware() || h.Kind == KindHTTP && h.Roles == RolesPatroni
}

// RoleSource says where an http check reads a backend's role.
type RoleSource string

// Role sources of http checks.
const (
	RolesNone    RoleSource = ""        // an http check reports no role
	RolesPatroni RoleSource = "patroni" // Patroni's REST API: its status document and code
)

// Health is a service's [service.health] table.
type Health struct {
	// Kind is "tcp" (default), "postgres", "redis", "mysql", "http" or "exec".
	Kind Kind `toml:"kind"`
	// Interval between checks of a backend whose state is steady. Default 1s.
	// Must be positive.
	Interval time.Duration `toml:"interval"`
	// Timeout bounds one check. Default 900ms, or half the Interval when
	// that is set alone to 900ms or less. Must be positive and below
	// Interval.
	Timeout time.Duration `toml:"timeout"`
	// Rise is how many consecutive successes mark a backend up. Default 2, >= 1.
	Rise int `toml:"rise"`
	// Fall is how many consecutive failures mark a backend down. Default 5, >= 1.
	Fall int `toml:"fall"`
	// FastInterval is the interval while a backend is changing state (a
	// streak has begun). Default Interval/20, at least 50ms and at most
	// Interval. Must be positive. Checks never overlap: a slow check delays
	// the next one.
	FastInterval time.Duration `toml:"fast_interval"`
	// DownInterval is the interval while a backend is down. Default Interval.
	// Must be positive.
	DownInterval time.Duration `toml:"down_interval"`
	// Port is the port checks connect to on each backend's host when it is
	// not the port the traffic goes to (HAProxy's "check port"): Patroni's
	// REST API, an exporter, a sidecar. Default 0: each backend's own port.
	// 1 to 65535. A backend's check_address overrides it.
	Port int `toml:"port"`

	// User to log in as (postgres, redis ACL user, mysql). Default "".
	User string `toml:"user"`
	// Database to connect to (postgres, mysql). Default "".
	Database string `toml:"database"`
	// PasswordFile names a file whose content (trailing newline removed) is
	// the password (postgres, redis, mysql). Default "". A plain password key
	// is not accepted, so that configs can be shared and logged.
	PasswordFile string `toml:"password_file"`
	// PasswordEnv names an environment variable holding the password
	// (postgres, redis, mysql). Default "". At most one of PasswordFile and
	// PasswordEnv.
	PasswordEnv string `toml:"password_env"`
	// TLS makes postgres, redis, mysql and http checks use TLS and verify
	// the server's certificate (chain and name, as PostgreSQL's
	// sslmode=verify-full) before sending anything. Default false.
	TLS bool `toml:"tls"`
	// TLSCAFile names a PEM file of the CA certificates to trust. Default
	// "": the system's roots. Needs tls = true.
	TLSCAFile string `toml:"tls_ca_file"`
	// TLSServerName is the name the server's certificate must carry.
	// Default "": the host part of each backend's address (an IP address
	// must be among the certificate's IP addresses). Needs tls = true.
	TLSServerName string `toml:"tls_server_name"`
	// TLSCertFile and TLSKeyFile name a PEM client certificate and its key,
	// for servers that ask for one. Default "": none. Both or neither.
	TLSCertFile string `toml:"tls_cert_file"`
	TLSKeyFile  string `toml:"tls_key_file"`
	// TLSSkipVerify accepts any server certificate, so that anyone on the
	// path can pose as the backend and receive the check's credentials.
	// Default false; check-config warns when it is set.
	TLSSkipVerify bool `toml:"tls_skip_verify"`

	// Method is the http check's request method. Default "GET".
	Method string `toml:"method"`
	// Path is the http check's request path. Default "/".
	Path string `toml:"path"`
	// ExpectStatus is the http status that means up. Default 200.
	ExpectStatus int `toml:"expect_status"`
	// ExpectBody, if not empty, must occur in the http response body.
	ExpectBody string `toml:"expect_body"`
	// Roles makes an http check read the backend's role: "" (default: it
	// reports none) or "patroni" (Patroni's REST API: role, replication
	// positions and the leader lock from one GET; path "/" or "/primary",
	// or "/patroni"). With "patroni", expect_status and expect_body are not
	// used and method is GET.
	Roles RoleSource `toml:"roles"`

	// Command is the exec check's argv, run without a shell under Timeout;
	// exit 0 = up. Required for kind "exec".
	Command []string `toml:"command"`
}

// Password reads the checks' password from PasswordFile (its trailing
// newline removed) or PasswordEnv; "" when neither is set. Errors name the
// key.
func (h *Health) Password() (string, error) {
	switch {
	case h.PasswordFile != "":
		b, err := os.ReadFile(h.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("password_file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case h.PasswordEnv != "":
		v, ok := os.LookupEnv(h.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("password_env: variable %s is not set", h.PasswordEnv)
		}
		return v, nil
	}
	return "", nil
}

// Hooks is a service's [service.hooks] table. Each hook is an argv run
// without a shell, with QP_SERVICE, QP_OLD_BACKEND, QP_OLD_ADDRESS,
// QP_NEW_BACKEND, QP_NEW_ADDRESS and QP_EPOCH in its environment. An empty
// argv means no hook.
type Hooks struct {
	// Promote runs on the committing proxy when a backend becomes the target.
	Promote []string `toml:"promote"`
	// Fence runs on the committing proxy when the old target is fenced.
	Fence []string `toml:"fence"`
	// Notify runs on every proxy after a switch.
	Notify []string `toml:"notify"`
	// Repoint runs on the proxy that promoted a new primary, once per
	// other backend, to make it replicate from the new primary (Redis
	// needs none: the proxy sends REPLICAOF itself unless this is set).
	Repoint []string `toml:"repoint"`
	// Timeout bounds each hook run. Default 30s. Must be positive.
	Timeout time.Duration `toml:"timeout"`
}

// Backend is one [[service.backend]] entry.
type Backend struct {
	// Name identifies the backend in its service: [A-Za-z0-9_.-]+, unique. Required.
	Name string `toml:"name"`
	// Address is the backend's host:port. Required.
	Address string `toml:"address"`
	// Priority: among healthy candidates the highest wins. Default 0.
	Priority int `toml:"priority"`
	// Weight is the backend's share of new connections relative to the
	// others in active-active mode. Default 1. Parse rejects values below 1:
	// a backend leaves the rotation by being removed (and a reload).
	Weight int `toml:"weight"`
	// MaxConnections caps concurrent sessions to this backend. Default 0: unlimited.
	MaxConnections int `toml:"max_connections"`
	// SendProxy is "v1" or "v2": each connection to this backend starts
	// with a PROXY protocol header carrying the client's address (MariaDB's
	// proxy_protocol_networks, pgbouncer, HAProxy-aware servers). Default
	// "": none. Linux only.
	SendProxy string `toml:"send_proxy"`
	// ReplicationName is the name this backend's standby connects to its
	// primary with (PostgreSQL's application_name in primary_conninfo, as
	// pg_stat_replication lists it), so that rpo = "zero" knows which
	// backend is a synchronous standby. Default: Name.
	ReplicationName string `toml:"replication_name"`
	// Region is a label (a data centre, a cloud region): a failover
	// prefers a standby in the failed primary's region; status and metrics
	// carry it. Default "".
	Region string `toml:"region"`
	// CheckAddress is the host:port this backend's health checks connect
	// to instead of Address (HAProxy's "addr" and "port" together): another
	// interface, another port. Default "": Address, on [service.health]
	// port when that is set.
	CheckAddress string `toml:"check_address"`
}

// Replication returns the name the backend's standby replicates under.
func (b *Backend) Replication() string {
	if b.ReplicationName != "" {
		return b.ReplicationName
	}
	return b.Name
}

// DefaultAdminListen is the admin API's address when [admin] listen is
// left out, and where the commands that talk to it look by default:
// loopback, because the API can change routing; port 7654, which no common
// service uses (9090, the first choice, is Prometheus's own port, and
// 9100-9999 its exporters').
const DefaultAdminListen = "127.0.0.1:7654"

// Defaults, written once. Parse applies them to keys the file leaves out.
const (
	defaultAdminListen  = DefaultAdminListen
	defaultLogLevel     = "info"
	defaultLogFormat    = "text"
	defaultDrainTimeout = 10 * time.Second // long enough for short queries to finish
	defaultIOURing      = "auto"           // measured: a third less proxy CPU per small request (README, Performance)
	// A cut-off proxy stops routing within a lease. 2s (was 3s): a failover
	// whose commit must wait out a proxy that did not vote, and the rank
	// delay of lease/8 per higher-named proxy, shrink with it, while a
	// lease still outlives a lost renewal round or two (renewed every
	// lease/4) under 5% loss and 50ms±50ms delay (internal/defaultsbench).
	defaultLeaseTimeout   = 2 * time.Second
	defaultClockDrift     = 0.01                   // ordinary crystals drift far less than 1%
	defaultSwitchHold     = 2 * time.Second        // covers a typical agreed switch
	defaultLabel          = "quorumproxy"          // one cluster per network unless told otherwise
	defaultGossipInterval = 200 * time.Millisecond // memberlist's LAN value: five rounds a second
	defaultProbeInterval  = 1 * time.Second        // memberlist's LAN value
	defaultRejoinInterval = 10 * time.Second       // a healed partition is noticed within seconds, without a join storm
	wanGossipInterval     = 500 * time.Millisecond // memberlist's WAN value
	wanProbeInterval      = 5 * time.Second        // memberlist's WAN value
	// A proposal's two phases must fit in one lease: about ten round trips.
	// Measured between regions 120-200 ms apart, 3s worked and 1s did not.
	wanLeaseTimeout       = 3 * time.Second
	defaultConnectTimeout = 3 * time.Second // above a SYN retransmit (1s) plus a retry
	// Health checks, chosen by measurement (internal/defaultsbench, make
	// soak; the README's "Failover times with the default settings"). A
	// killed server refuses connections: the first check after the kill,
	// within an interval, fails at once, and fall-1 more checks
	// fast_interval apart confirm it. A frozen one costs fall timeouts back
	// to back. Loss and a saturated server make checks time out one at a
	// time, so fall counts against loss, and fast_interval does not.
	//
	// 1s (was 2s): a dead server is seen within a second; a check a second
	// costs a database nothing.
	defaultInterval = 1 * time.Second
	// 900ms (was 1s): as long as the interval allows. Under 5% loss and
	// 50ms±50ms delay a Redis check (a new connection: three round trips,
	// and a lost SYN is sent again only after 1s) failed 12.5% of the time
	// at 900ms, 23% at 800ms; a PostgreSQL check on its kept connection
	// none of 595. Under pgbench saturating the machine the slowest
	// PostgreSQL check took under 0.5s.
	defaultTimeout = 900 * time.Millisecond
	defaultRise    = 2 // one lucky success is not recovery
	// 5 (was 3): at 12.5% five Redis checks fail in a row once in about
	// 33,000 (a lone proxy's false failover every nine hours or so); three,
	// once in 500: measured, fall 3 failed a lone proxy over once in five
	// minutes, fall 5 never. A kill still costs only four fast checks
	// (0.2s). The price: a frozen server is down after five timeouts,
	// about 4.5s.
	defaultFall = 5
	// fast_interval is interval/20 (was /4): the fall-1 confirming checks
	// of a kill take 0.2s at the default interval (with /10, 0.4s: the
	// median kill took 0.25s longer). A server must refuse connections
	// that long to be failed over.
	fastIntervalDivisor = 20
	minFastInterval     = 50 * time.Millisecond
	defaultMethod       = "GET"
	defaultPath         = "/"
	defaultExpectStatus = 200
	defaultHookTimeout  = 30 * time.Second // a promotion can take a while
	defaultWeight       = 1
)

// The setDefaults methods fill in every default that does not depend on
// other keys; Parse calls them before decoding a table over them.

func (c *Config) setDefaults() {
	c.Admin.Listen = defaultAdminListen
	c.Log.Level = defaultLogLevel
	c.Log.Format = defaultLogFormat
	c.Proxy.DrainTimeout = defaultDrainTimeout
	c.Proxy.IOURing = defaultIOURing
}

func (c *Cluster) setDefaults() {
	c.LeaseTimeout = defaultLeaseTimeout
	c.ClockDrift = defaultClockDrift
	c.OnQuorumLoss = ActionClose
	c.SwitchHold = defaultSwitchHold
	c.Label = defaultLabel
	c.GossipInterval = defaultGossipInterval
	c.ProbeInterval = defaultProbeInterval
	c.RejoinInterval = defaultRejoinInterval
	c.Network = NetworkLAN
}

func (s *Service) setDefaults() {
	s.Mode = ModeActivePassive
	s.Balance = BalanceRoundRobin
	s.Role = RoleAny
	s.ConnectTimeout = defaultConnectTimeout
	s.OnBackendDown = ActionClose
	s.Failback = FailbackManual
	s.RPO = RPOAny
	s.Health.setDefaults()
	s.Hooks.setDefaults()
}

func (h *Health) setDefaults() {
	h.Kind = KindTCP
	h.Interval = defaultInterval
	h.Timeout = defaultTimeout
	h.Rise = defaultRise
	h.Fall = defaultFall
	h.Method = defaultMethod
	h.Path = defaultPath
	h.ExpectStatus = defaultExpectStatus
}

func (h *Hooks) setDefaults() { h.Timeout = defaultHookTimeout }

func (b *Backend) setDefaults() { b.Weight = defaultWeight }

// defaultFastInterval derives fast_interval from interval.
func defaultFastInterval(interval time.Duration) time.Duration {
	return min(max(interval/fastIntervalDivisor, minFastInterval), interval)
}
