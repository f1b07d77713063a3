package proxy

import (
	"log/slog"
	"net/netip"
	"time"
)

// Mode says how a service spreads connections over its backends.
type Mode int

const (
	// ActivePassive sends every new connection to one current target.
	ActivePassive Mode = iota
	// ActiveActive balances new connections over every healthy backend.
	ActiveActive
)

// String returns the config spelling of m.
func (m Mode) String() string {
	switch m {
	case ActivePassive:
		return "active-passive"
	case ActiveActive:
		return "active-active"
	}
	return "unknown"
}

// Balance is the balancing algorithm of an active-active (or replica) service.
type Balance int

const (
	// RoundRobin is smooth weighted round-robin.
	RoundRobin Balance = iota
	// LeastConn picks the backend with the fewest active connections per weight.
	LeastConn
)

// String returns the config spelling of b.
func (b Balance) String() string {
	switch b {
	case RoundRobin:
		return "round-robin"
	case LeastConn:
		return "least-conn"
	}
	return "unknown"
}

// Role is what a backend reports itself to be, or what a service wants to reach.
type Role int

const (
	// RoleUnknown: a backend whose checker does not report a role.
	RoleUnknown Role = iota
	// RolePrimary: a backend that takes writes.
	RolePrimary
	// RoleReplica: a read-only standby.
	RoleReplica
)

// RoleAny, as a service's Want, routes without regard to role.
const RoleAny = RoleUnknown

// String returns the config spelling of r.
func (r Role) String() string {
	switch r {
	case RoleUnknown:
		return "unknown"
	case RolePrimary:
		return "primary"
	case RoleReplica:
		return "replica"
	}
	return "invalid"
}

// Backend is one server behind a service.
type Backend struct {
	// Name identifies the backend within its service.
	Name string
	// Address is the host:port dialled for each proxied connection.
	Address string
	// Priority orders backends in active-passive mode: a larger value is
	// preferred; equal priorities keep the order of ServiceConfig.Backends.
	Priority int
	// Weight is the relative share in balancing. Zero or negative means 1.
	Weight int
	// MaxConns caps concurrent sessions to this backend; zero or negative
	// means no limit. A connection that finds no backend below its cap is
	// refused and counted.
	MaxConns int
	// SendProxy sends a PROXY protocol header with the client's address
	// first on each connection to this backend. Zero: none.
	SendProxy ProxyVersion
	// Region is a label: a failover prefers a standby in the failed
	// target's region, then ServiceConfig.RegionOrder.
	Region string
}

// ProxyVersion is a PROXY protocol version (HAProxy's send-proxy and
// send-proxy-v2).
type ProxyVersion int

const (
	// ProxyNone sends no header.
	ProxyNone ProxyVersion = iota
	// ProxyV1 is the text header.
	ProxyV1
	// ProxyV2 is the binary header.
	ProxyV2
)

// String returns the config spelling of v.
func (v ProxyVersion) String() string {
	switch v {
	case ProxyNone:
		return ""
	case ProxyV1:
		return "v1"
	case ProxyV2:
		return "v2"
	}
	return "invalid"
}

// DefaultConnectTimeout bounds dialling where a ServiceConfig leaves
// ConnectTimeout at zero, for direct users of this package: above a SYN
// retransmit (1s) plus a retry. quorumproxy itself always passes the
// config's connect_timeout, whose default is the same.
const DefaultConnectTimeout = 3 * time.Second

// NoLeaseEnd is what Lease.Remaining returns for a lease without an end
// (a cluster that routes on without a quorum, on_quorum_loss = "keep"):
// longer than any dial or write, and small enough to add to a clock
// reading. The data path re-reads it when it runs out.
const NoLeaseEnd = 24 * time.Hour

// DefaultParkAfter is how long a direction of the goroutine data plane
// (platforms other than Linux) waits for data before it would be parked
// with no goroutine, where the platform offers a poller for that. The Linux
// event loops hold no goroutine per session and do not use it.
const DefaultParkAfter = time.Second

// ServiceConfig describes one proxied service. The zero value of each
// optional field works.
type ServiceConfig struct {
	// Name identifies the service.
	Name string
	// Listen is the TCP address the service accepts clients on.
	Listen string
	// Mode is active-passive (default) or active-active.
	Mode Mode
	// Balance picks among backends in active-active mode and for
	// Want == RoleReplica. Default round-robin.
	Balance Balance
	// Want is the role traffic must reach: RoleAny (default), RolePrimary
	// (only a backend that reports primary; writes) or RoleReplica
	// (balanced over replicas within MaxLag/MaxLagBytes; reads).
	Want Role
	// RoleAware says that the service's checks report roles: an
	// active-passive failover then picks only a backend that reports
	// replica, and a backend it fails over from needs no fence (it must
	// report replica to be picked again). Want == RolePrimary implies it.
	// The cluster decides the same way (cluster.ServiceConfig.RoleAware).
	RoleAware bool
	// MaxConns caps the service's concurrent client connections (held
	// ones included). Zero or negative: no limit.
	MaxConns int
	// ConnectTimeout bounds dialling a backend, all retries on the next
	// eligible backend included. Zero: DefaultConnectTimeout. Negative:
	// no timeout.
	ConnectTimeout time.Duration
	// IdleTimeout closes a session idle in both directions this long.
	// Zero or negative: sessions never time out.
	IdleTimeout time.Duration
	// SwitchHold is how long a new connection waits (accepted, not
	// dialled) for a usable target before it is closed. Zero or
	// negative: no hold, closed at once.
	SwitchHold time.Duration
	// CloseOnDown closes a backend's sessions when it goes down or stops
	// being the active-passive target.
	CloseOnDown bool
	// FailbackAuto moves the active-passive target back to a better
	// backend when it recovers; false (default) keeps the current one.
	FailbackAuto bool
	// MaxLag and MaxLagBytes bound the replicas used for Want ==
	// RoleReplica. Zero or negative: unbounded. A bound excludes
	// replicas whose lag of that kind is unknown.
	MaxLag      time.Duration
	MaxLagBytes int64
	// RPOZero: a failover from a primary that is down goes only to a
	// backend it reported synchronous (Health.SyncMask), or nowhere.
	RPOZero bool
	// RegionOrder ranks regions after the failed target's own (Backend.Region).
	RegionOrder []string
	// MaxLagOnFailover and MaxLagBytesOnFailover bound which standby may
	// become the active-passive target. Zero or negative: unbounded.
	MaxLagOnFailover      time.Duration
	MaxLagBytesOnFailover int64
	// External: the active-passive target is set from outside (the
	// cluster) with SetRoute and never chosen locally.
	External bool
	// AcceptProxy lists the networks (a load balancer in front) whose
	// connections must start with a PROXY protocol header, v1 or v2; the
	// address it carries is then the client's (for backends with
	// SendProxy). Connections from elsewhere are taken as they are. Linux
	// data plane only.
	AcceptProxy []netip.Prefix
	// Backends are the servers behind the service.
	Backends []Backend
}

func (c *ServiceConfig) connectTimeout() time.Duration {
	if c.ConnectTimeout == 0 {
		return DefaultConnectTimeout
	}
	return c.ConnectTimeout
}

func (c *ServiceConfig) switchHold() time.Duration { return max(c.SwitchHold, 0) }

// balanced reports whether the service spreads connections over a set of
// backends rather than following one target.
func (c *ServiceConfig) balanced() bool {
	return c.Mode == ActiveActive || c.Want == RoleReplica
}

// roleAware reports whether the service's checks report roles.
func (c *ServiceConfig) roleAware() bool { return c.RoleAware || c.Want == RolePrimary }

// Health is what the health checker last said about a backend.
type Health struct {
	// Known is false until the first report; unknown backends get no
	// traffic.
	Known bool
	// Up is the rise/fall verdict.
	Up bool
	// Role the backend reports (RoleUnknown for checkers without roles).
	Role Role
	// LagBytes is the replication lag in bytes, -1 if unknown.
	LagBytes int64
	// Lag is the replication lag in time, -1 if unknown.
	Lag time.Duration
	// Position is how far a replica holds the primary's log (-1: its
	// check reports none); PositionFresh: read after the primary's last
	// sign of life, so that a failover ranks replicas by it (see
	// health.State).
	Position      int64
	PositionFresh bool
	// ReplicasUnread, on a primary that fails: a replica is still to be
	// read since it began to (see health.State); a failover waits for it.
	ReplicasUnread bool
	// SyncMask, on a primary, says which backends of the service (bit i:
	// the i-th of ServiceConfig.Backends) it reported as synchronous
	// standbys at its last good check; it outlives the primary going down
	// (ServiceConfig.RPOZero).
	SyncMask uint64
	// Upstream is the backend of the service this replica replicates from
	// ("" when unknown): a cascaded replica is a failover's last resort.
	Upstream string
	// Rising: the backend is not up but its last checks succeeded (it is
	// up after rise of them). A service with no target waits for a
	// better-ranked backend that is rising rather than settle elsewhere.
	Rising bool
}

// Lease bounds how long an External service may still forward.
type Lease interface {
	// Remaining is the time left; zero or negative means stop, and
	// NoLeaseEnd means no end. It is called on the data path and under
	// the service's lock: it must be cheap (an atomic load) and must not
	// call back into the Proxy.
	Remaining() time.Duration
}

// TargetChange reports that an active-passive service's target changed.
// Old or New is the zero Backend when there was or is no target.
type TargetChange struct {
	Service string
	Old     Backend
	New     Backend
	Reason  string
}

// Options configure a Proxy.
type Options struct {
	// Logger receives the proxy's logs; nil means slog.Default().
	Logger *slog.Logger
	// OnTarget, if set, is called in order, from one goroutine, never under
	// a lock of the proxy and never on the data path, whenever an
	// active-passive service's target changes by the proxy's own choice
	// (not for External services).
	OnTarget func(TargetChange)

	// Loops is the number of event loops of the Linux data plane. Zero or
	// negative: one per CPU (DefaultLoops), with new connections steered
	// to half of them until accepting keeps those busy; a number set here
	// takes new connections on every loop. Other platforms ignore it.
	Loops int

	// steer (tests): steer new connections with Loops set, and with
	// steerByHand no controller moves the count (the test does).
	steer, steerByHand bool

	// NoIOURing makes the Linux loops read and write with one system call
	// each instead of batching them through io_uring.
	NoIOURing bool

	// AccessLog writes one INFO line per client connection when it ends
	// (service, client, backend, duration, bytes each way, why): Linux's
	// event loops only. SetAccessLog changes it later.
	AccessLog bool

	// Inherited are listening sockets handed over by the process this
	// one replaces (a restart that drops nothing), by the listen address
	// as configured (ServiceConfig.Listen) to the fds of its group. A
	// service listening on that address accepts on them instead of
	// binding; the Proxy owns them, and the first Apply closes those no
	// service took. Linux only: elsewhere they are closed unused.
	Inherited map[string][]int

	// parkAfter overrides DefaultParkAfter (tests); negative disables
	// parking.
	parkAfter time.Duration
}

// LoopStatus is a snapshot of one event loop of the Linux data plane.
type LoopStatus struct {
	Busy     time.Duration // time spent serving, not waiting for events, ever
	Accepted uint64        // connections the loop accepted, ever
	// Steered: new connections are sent to this loop now (with the
	// default number of loops, only to some while accepting is not the
	// bottleneck; see the README's data-path notes).
	Steered bool
}

// ServiceStatus is a snapshot of one service.
type ServiceStatus struct {
	Name   string
	Listen string
	// Addr is the bound listen address ("" when not listening).
	Addr string
	// ListenError says why the service is not listening, if it is not.
	ListenError string
	Mode        Mode
	Want        Role
	// Target is the active-passive target ("" when none or balanced).
	Target string
	// Reason says why the target is what it is.
	Reason string
	// TargetSince is when the target last changed.
	TargetSince time.Time
	// DualPrimary is raised while two or more backends report primary.
	DualPrimary bool
	// Primaries lists the backends reporting primary while DualPrimary.
	Primaries []string
	// Accepted and Refused count client connections since the service
	// started; Refused covers limits, no target and expired holds.
	Accepted, Refused uint64
	// Active is the number of client connections now open (held ones
	// included); Held is how many of them wait for a target.
	Active, Held int64
	Backends     []BackendStatus
}

// BackendStatus is a snapshot of one backend of a service.
type BackendStatus struct {
	Backend
	Health Health
	// Eligible says whether new connections may go to this backend now.
	Eligible bool
	// Draining says an operator took it out of new connections (Drain).
	Draining bool
	// Fenced says no failover picks it until it is unfenced (SetFence).
	Fenced bool
	// Active is the number of open sessions to this backend.
	Active int64
	// Sessions counts sessions ever established to this backend.
	Sessions uint64
	// BytesIn counts bytes from clients to this backend; BytesOut bytes
	// from this backend to clients.
	BytesIn, BytesOut uint64
	// DialFailures counts failed connects; Refused counts connections
	// refused because this backend was at MaxConns.
	DialFailures, Refused uint64
}
