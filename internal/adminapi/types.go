// Package adminapi is the admin API's wire format and its one client: the
// /status document, the answer of a state-changing endpoint, and a Client
// that reads the one and posts to the other. The daemon serves these types;
// the CLI, the drill, the demo and the tests read them through Client, so a
// field is declared once.
package adminapi

import (
	"fmt"
	"time"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/internal/journal"
)

// Status is the /status document: what the proxy routes and why.
type Status struct {
	Version    string         `json:"version"`
	Started    time.Time      `json:"started"`
	Config     string         `json:"config"`
	LastReload ReloadResult   `json:"last_reload"`
	Services   []Service      `json:"services"`
	Cluster    *ClusterStatus `json:"cluster,omitempty"` // nil: a proxy alone
}

// Service returns the named service, or nil.
func (st *Status) Service(name string) *Service {
	for i := range st.Services {
		if st.Services[i].Name == name {
			return &st.Services[i]
		}
	}
	return nil
}

// ClusterService returns the cluster's view of the named service, or nil
// (no cluster, or the cluster does not route it).
func (st *Status) ClusterService(name string) *ClusterService {
	if st.Cluster == nil {
		return nil
	}
	for i := range st.Cluster.Services {
		if st.Cluster.Services[i].Service == name {
			return &st.Cluster.Services[i]
		}
	}
	return nil
}

// ReloadResult is how the last reload (or the start) went.
type ReloadResult struct {
	At    time.Time `json:"at"`
	OK    bool      `json:"ok"`
	Error string    `json:"error,omitempty"`
}

// Service is one service as this proxy routes it.
type Service struct {
	Name     string    `json:"name"`
	Listen   string    `json:"listen"`
	Mode     string    `json:"mode"`
	Role     string    `json:"role,omitempty"`
	Target   string    `json:"target"`
	Why      string    `json:"why,omitempty"`
	Alerts   []string  `json:"alerts,omitempty"`
	Active   int64     `json:"active"`
	Accepted uint64    `json:"accepted"`
	Refused  uint64    `json:"refused"`
	Backends []Backend `json:"backends"`
	// TargetSince is when Target last changed (zero: never).
	TargetSince time.Time `json:"target_since,omitzero"`
	// Routes are the backends a new connection would be forwarded to now:
	// the target, or every eligible backend of a balanced service. Empty:
	// the service routes nowhere (Why says why).
	Routes []string `json:"routes,omitempty"`
}

// Backend is one backend of a service: its health as this proxy checks
// it and its traffic.
type Backend struct {
	Name         string  `json:"name"`
	Address      string  `json:"address"`
	Priority     int     `json:"priority"`
	Weight       int     `json:"weight"`
	Region       string  `json:"region,omitempty"`
	CheckAddress string  `json:"check_address,omitempty"` // where its checks go, when not Address
	Health       string  `json:"health"`                  // unknown | up | down
	Draining     bool    `json:"draining,omitempty"`
	Fenced       bool    `json:"fenced,omitempty"` // by this proxy alone (a cluster's fencing is in cluster)
	Role         string  `json:"role"`
	LagBytes     int64   `json:"lag_bytes"`   // -1: unknown
	LagSeconds   float64 `json:"lag_seconds"` // -1: unknown
	// Position is how far a replica holds the primary's log (PostgreSQL's
	// received LSN as bytes, Redis's offset; -1: unknown); PositionFresh:
	// read after the primary fell silent, so a failover ranks by it.
	Position      int64 `json:"position"`
	PositionFresh bool  `json:"position_fresh,omitempty"`
	// SyncStandbys: on a primary, the standbys it reported synchronous at
	// its last good check (by the name they replicate under).
	SyncStandbys []string `json:"sync_standbys,omitempty"`
	// Upstream: on a replica, what it replicates from as its server says
	// (the backend's name when it is one of the service's, else its
	// address): a replica of a replica shows a cascade.
	Upstream       string    `json:"upstream,omitempty"`
	CheckLatencyMS float64   `json:"check_latency_ms"`
	LastError      string    `json:"last_error,omitempty"`
	LastCheck      time.Time `json:"last_check"`
	LastChange     time.Time `json:"last_change"`
	Reason         string    `json:"reason,omitempty"` // why the last transition
	Active         int64     `json:"active"`
	Refused        uint64    `json:"refused"`
	DialFailures   uint64    `json:"dial_failures"`
	BytesIn        uint64    `json:"bytes_in"`  // client -> backend
	BytesOut       uint64    `json:"bytes_out"` // backend -> client
	// Failing is the streak of consecutive failed checks of a backend
	// still up (Fall of them bring it down); Rising that of good checks of
	// one still down (Rise bring it up): a change under way that Health
	// does not show yet (a frozen primary stays "up" until its Fall-th
	// failed check). Zero when none is. Health has been what it is since
	// LastChange.
	Failing int `json:"failing,omitempty"`
	Rising  int `json:"rising,omitempty"`
	Rise    int `json:"rise,omitempty"`
	Fall    int `json:"fall,omitempty"`
}

// ClusterStatus is the cluster part of /status.
type ClusterStatus struct {
	Node       string           `json:"node"`
	Peers      int              `json:"peers"`
	Quorum     int              `json:"quorum"`
	Recovering bool             `json:"recovering"`
	Reachable  []string         `json:"reachable"`
	Members    []cluster.Member `json:"members"`
	Services   []ClusterService `json:"services"`
	Counters   cluster.Counters `json:"counters"`
	Error      string           `json:"error,omitempty"`
	// StoreError is set while state_dir cannot be written: this proxy
	// then neither votes, proposes nor routes.
	StoreError string `json:"store_error,omitempty"`
}

// ClusterService is one service as the cluster decides it and this proxy
// routes it.
type ClusterService struct {
	Service string `json:"service"`
	Epoch   uint64 `json:"epoch"`
	Primary string `json:"primary"`
	// Fenced lists the backends no failover may pick until an operator
	// unfences them; Fencing is an operator's fence or unfence in flight.
	Fenced  []string `json:"fenced,omitempty"`
	Fencing string   `json:"fencing,omitempty"`
	// Paused: an operator paused automatic decisions (no failover) at
	// this epoch; switchovers, fences and unfences still work.
	Paused bool `json:"paused,omitempty"`
	// Routing is the backend this proxy forwards new clients to now: the
	// cluster's leased route, unless the proxy holds it back locally
	// (Held says why: quarantined, awaiting promotion, lease expired).
	Routing   string  `json:"routing"`
	Held      string  `json:"held,omitempty"`
	LeaseMS   float64 `json:"lease_ms"` // remaining; <= 0: no lease
	MaxVoted  uint64  `json:"max_voted"`
	Proposing uint64  `json:"proposing,omitempty"`
	Votes     int     `json:"votes,omitempty"`
	Decision  string  `json:"decision,omitempty"`
	// PromoteFailed lists backends held out after a failed promote hook.
	PromoteFailed []string `json:"promote_failed,omitempty"`
	// Alerts say what needs an operator (dual_primary, no_primary,
	// promote_held).
	Alerts []string `json:"alerts,omitempty"`
	// Operation is the last switchover, fence or unfence asked of this
	// proxy and how it ended.
	Operation *Operation `json:"operation,omitempty"`
}

// Operation is an operator's request as /status shows it.
type Operation struct {
	ID      uint64 `json:"id"`
	Kind    string `json:"kind"`
	Backend string `json:"backend"`
	State   string `json:"state"` // pending, committed, done, failed
	Epoch   uint64 `json:"epoch,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// ControlAnswer is the 202 answer of a state-changing endpoint. Operation
// is the id of the cluster operation it started (0: done at once, on this
// proxy); its outcome shows in /status under cluster.services[].operation.
type ControlAnswer struct {
	Service   string `json:"service"`
	Operation uint64 `json:"operation,omitempty"`
	Message   string `json:"message"`
}

// Readiness is the answer of GET /health (the whole proxy) and GET
// /health/SERVICE, for a load balancer or probe in front of the proxy:
// status 200 when Ready, 503 (404 for an unknown service) otherwise.
type Readiness struct {
	Ready bool `json:"ready"`
	// Service is the service asked about ("" for the whole proxy).
	Service string `json:"service,omitempty"`
	// Backends are where a new connection of the service goes now: the
	// target, or every eligible backend of a balanced service.
	Backends []string `json:"backends,omitempty"`
	// Reason says why not ready ("" when ready).
	Reason string `json:"reason,omitempty"`
	// Paused: the service's automatic failover is paused by an operator.
	Paused bool `json:"paused,omitempty"`
	// For the whole proxy: how many services it has and how many of them
	// route now, and the first few that do not, with why.
	Services   int               `json:"services,omitempty"`
	Routing    int               `json:"routing,omitempty"`
	NotRouting map[string]string `json:"not_routing,omitempty"`
	// RoutingTo counts, for each backend name, the services whose new
	// connections go to it now (a balanced service counts for each of its
	// eligible backends): where traffic stands at a glance, and during a
	// mass failover how far it has moved, without /status's whole document.
	RoutingTo map[string]int `json:"routing_to,omitempty"`
}

// HealthText is the backend's health with what is under way ("up,
// failing 2/5" while checks fail that have not yet taken it down), and
// whether it drains or is fenced: the CLI's table and the status page.
func (b Backend) HealthText() string {
	s := b.Health
	switch {
	case b.Health == "up" && b.Failing > 0:
		s += fmt.Sprintf(", failing %d/%d", b.Failing, b.Fall)
	case b.Health == "down" && b.Rising > 0:
		s += fmt.Sprintf(", rising %d/%d", b.Rising, b.Rise)
	}
	if b.Draining {
		s += ", draining"
	}
	if b.Fenced {
		s += ", fenced"
	}
	return s
}

// ReasonRecovering is the reason /health gives while a clustered proxy
// recovers its state from its peers after a start.
const ReasonRecovering = "recovering: learning the cluster's state from its peers"

// History is the answer of GET /api/v1/history: the proxy's decisions and
// actions, oldest first.
type History struct {
	Entries []journal.Entry `json:"entries"`
}
