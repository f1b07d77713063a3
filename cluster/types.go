package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// Clock is a monotonic clock that keeps counting while the machine is
// suspended (CLOCK_BOOTTIME on Linux). Now returns the time since an
// arbitrary fixed origin; it never goes backwards.
type Clock interface {
	Now() time.Duration
}

// Transport carries protocol payloads to peers. The envelope (cluster label,
// sender name, boot id, config hash, encryption) is the transport's business.
type Transport interface {
	// Send delivers msg to the named peer, retried by the transport; an
	// error means it was not delivered and the protocol retries later. It
	// must not block for long (the state machine calls it from its only
	// goroutine): hand the payload to a per-peer sender and return. A
	// transport may also offer SendBestEffort(to, msg) (UDP, no retries),
	// which lease traffic then uses.
	Send(to string, msg []byte) error
	// Broadcast gossips msg to every peer; a newer message with the same key
	// replaces a queued older one.
	Broadcast(key string, msg []byte) error
}

// Store persists a proxy's agreement state. Save must be atomic and durable
// when it returns (the protocol sends the messages that depend on it only
// afterwards) and must refuse to lower any epoch it holds.
type Store interface {
	// Load returns the saved state. A store that has never been written
	// returns a zero State with Synced false, and an error only when the
	// saved state is unreadable.
	Load() (State, error)
	// Save replaces the saved state.
	Save(State) error
}

// Value is what one epoch decides: the primary, and the backends fenced
// off, which no failover may pick until an operator unfences them. Since
// is the epoch that made Primary the primary (a re-affirmation or a fence
// of a standby keeps it): a failed promote is about that decision only.
type Value struct {
	Primary string
	Fenced  Fenced
	Since   uint64
	// Paused: an operator paused the service's automatic decisions (no
	// failover, first primary or move after a failed promote); operators'
	// switchovers, fences and unfences still go through, and keep it.
	Paused bool
}

// String reads as `primary "b"`, with the fenced set when there is one
// and ", paused" when paused.
func (v Value) String() string {
	s := fmt.Sprintf("primary %q", v.Primary)
	if v.Fenced != "" {
		s += fmt.Sprintf(", fenced %s", v.Fenced)
	}
	if v.Paused {
		s += ", paused"
	}
	return s
}

// less orders values, only to break ties the same way on every run.
func (v Value) less(w Value) bool {
	if v.Primary != w.Primary {
		return v.Primary < w.Primary
	}
	if v.Fenced != w.Fenced {
		return v.Fenced < w.Fenced
	}
	return v.Since < w.Since
}

// Record is a committed routing decision: from Epoch on, Primary is the
// backend the service routes to. Epoch 0 with no primary is the start.
type Record struct {
	Epoch uint64
	Value
}

// Ballot is a vote: the epoch voted in and the value voted for.
type Ballot struct {
	Epoch uint64
	Value Value
}

// Fenced is a set of backend names in one canonical form, sorted and
// joined by commas (a backend name cannot hold one), so that two Values
// compare with ==.
type Fenced string

// Has reports whether b is in the set.
func (f Fenced) Has(b string) bool { return slices.Contains(f.List(), b) }

// List returns the names in order.
func (f Fenced) List() []string {
	if f == "" {
		return nil
	}
	return strings.Split(string(f), ",")
}

// With returns the set with b added.
func (f Fenced) With(b string) Fenced {
	l := f.List()
	if b == "" || slices.Contains(l, b) {
		return f
	}
	l = append(l, b)
	slices.Sort(l)
	return Fenced(strings.Join(l, ","))
}

// Without returns the set with b removed.
func (f Fenced) Without(b string) Fenced {
	l := slices.DeleteFunc(f.List(), func(x string) bool { return x == b })
	return Fenced(strings.Join(l, ","))
}

// HookIntent is a persisted promise to act on the databases for a decision
// this proxy committed (fence the old primary, promote the new one), so
// that a crash acts again. Done is set once the promote is verified (the
// backend reports primary, or no promote hook acts) or nothing is to be
// promoted.
type HookIntent struct {
	Epoch   uint64
	Fence   string // backend to fence (the old primary); empty for none
	Promote string // backend to promote; empty for none
	Done    bool
}

// ActionKind is what a hook does to a database.
type ActionKind uint8

// The actions a committing proxy hands to its hook runner.
const (
	ActionFence   ActionKind = iota + 1 // run the fence hook on Backend
	ActionPromote                       // run the promote hook on Backend, unless it already reports primary
)

func (k ActionKind) String() string {
	switch k {
	case ActionFence:
		return "fence"
	case ActionPromote:
		return "promote"
	}
	return fmt.Sprintf("action(%d)", uint8(k))
}

// Action is one hook run on one backend, handed out by the proxy that
// committed Epoch while it holds a lease at Epoch (QP_EPOCH, the fencing
// token). Old and New are the decision's old and new primary.
type Action struct {
	Kind     ActionKind
	Epoch    uint64
	Backend  string
	Old, New string
}

// ActionResult is how an Action ended, as the runner saw it.
type ActionResult struct {
	// Ran is false when no hook of that kind is configured: nothing acted.
	Ran bool
	// OK: the hook exited 0. A promote is judged by Role, not by this.
	OK bool
	// NotStarted: the hook could not be started (a wrong path, no
	// permission): it did nothing, so nothing of it can land later.
	NotStarted bool
	// Skipped: a promote that did not run because Backend already
	// reported primary.
	Skipped bool
	// Up and Role are what a check of Backend reported right after the
	// hook (the runner checks at once, not at the next interval).
	Up   bool
	Role Role
	// Timeout is the hook's timeout: a promote that failed or timed out
	// may still land until about this long after it started.
	Timeout time.Duration
	// Detail says how it ended (exit status, output tail) for the log.
	Detail string
}

// HookConfig says which hooks a service has: the actions a proxy takes on
// the databases depend on it.
type HookConfig struct {
	Fence, Promote bool
	// Timeout bounds one hook run; required when a hook is on.
	Timeout time.Duration
}

// ServiceState is the persisted agreement state of one service. A vote is
// cast in two steps, as in Paxos: a promise for an epoch (MaxVoted) and
// then the acceptance of the value the proposer sends.
type ServiceState struct {
	Record Record
	// MaxVoted is the highest epoch voted in (a Paxos promise); VotedFor is the
	// proposer that vote went to.
	MaxVoted uint64
	VotedFor string
	// Accepted is the highest epoch whose value this proxy accepted.
	Accepted Ballot
	// PrevAccepted is what Accepted was when MaxVoted was granted; a
	// duplicate proposal gets it again.
	PrevAccepted Ballot
	Intent       HookIntent
}

// State is everything a proxy persists.
type State struct {
	NodeID string
	// Synced is false in a store that was never written: the proxy then
	// starts recovering and learns its state from its peers first.
	Synced   bool
	Services map[string]ServiceState
}

func (s State) clone() State {
	c := s
	c.Services = make(map[string]ServiceState, len(s.Services))
	for k, v := range s.Services {
		c.Services[k] = v
	}
	return c
}

// Role is what a backend says it is.
type Role uint8

// Roles a health check can report.
const (
	RoleUnknown Role = iota
	RolePrimary
	RoleReplica
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleReplica:
		return "replica"
	}
	return "unknown"
}

// Observation is one proxy's current view of one backend.
type Observation struct {
	Up       bool
	Role     Role
	LagBytes int64
	// Lag is how far behind in time it replays; negative: unknown.
	Lag time.Duration
	// Position is how far a replica holds the primary's log, -1 when its
	// check reports none; PositionFresh: read after the primary's last
	// sign of life (health.State), so that a failover ranks by it.
	Position      int64
	PositionFresh bool
	// SyncMask, for a primary, is the backends (bit i: the service's i-th)
	// it reported as synchronous standbys at its last good check, kept
	// while it is down (ServiceConfig.RPOZero).
	SyncMask uint64
	// Upstream is the backend this replica replicates from ("" when
	// unknown): a cascaded replica is a failover's last resort.
	Upstream string
	// ReplicasUnread, for a failing primary in this proxy's own view: a
	// replica's check since the failure began is under way (health.State),
	// so a failover this proxy proposes waits for fresh positions. Local:
	// not sent to peers.
	ReplicasUnread bool
	// Rising, in this proxy's own view: a backend not up whose last checks
	// succeeded. A new cluster's first primary chosen by priority waits
	// for a better-ranked one that is rising. Local: not sent to peers.
	Rising bool
}

// QuorumLoss says what a proxy does when its lease expires.
type QuorumLoss uint8

// Values of Config.OnQuorumLoss.
const (
	// QuorumLossClose stops routing the service (the default, and the only
	// mode under which the one-backend guarantee holds).
	QuorumLossClose QuorumLoss = iota
	// QuorumLossKeep routes on to the last primary without a lease; it
	// voids the guarantee.
	QuorumLossKeep
)

// BackendConfig is one backend of a service as the agreement sees it.
type BackendConfig struct {
	Name string
	// Priority orders candidates: the higher value is preferred.
	Priority int
	// Region is a label: a failover prefers a standby in the failed
	// primary's region, then ServiceConfig.RegionOrder.
	Region string
}

// ServiceConfig is one active-passive service.
type ServiceConfig struct {
	Name     string
	Backends []BackendConfig
	// RoleAware requires a failover candidate to report itself a replica.
	RoleAware bool
	// RPOZero: an automatic failover goes only to a backend that the old
	// primary reported synchronous at its last good check, in every fresh
	// view that knows (Observation.SyncMask); a voter refuses another.
	RPOZero bool
	// RegionOrder ranks regions after the failed primary's own.
	RegionOrder []string
	// MaxLagOnFailover and MaxLagBytesOnFailover exclude candidates
	// lagging more than this in time or in bytes (in any fresh report);
	// zero or negative means no bound, and a bound excludes an unknown lag
	// of its kind (the one failover policy, package failover).
	MaxLagOnFailover      time.Duration
	MaxLagBytesOnFailover int64
	// Hooks are the service's fence and promote hooks.
	Hooks HookConfig
}

// Config configures a Machine. Every duration is required: the package has
// no defaults of its own (the daemon fills them from package config, which
// owns them and their reasons).
type Config struct {
	// Name is this proxy's name; it must be one of Peers.
	Name string
	// Peers names every proxy of the cluster, this one included. N is
	// len(Peers) and the quorum is N/2+1, whoever is alive.
	Peers    []string
	Services []ServiceConfig
	// BootID identifies this run of the process; it must grow from one run
	// to the next (wall-clock nanoseconds at start do).
	BootID uint64
	// LeaseTimeout is how long a lease lasts from the sending of its
	// request.
	LeaseTimeout time.Duration
	// ClockMargin is the bound ρ on the rate error of any proxy's clock
	// (0.05 = 5%), from 0 to below 1; zero is taken literally.
	ClockMargin float64
	// ObservationTTL is how long a peer's report about a backend counts
	// after it was received.
	ObservationTTL time.Duration
	// VoteTimeout is how long a proposer collects votes before it gives an
	// epoch up.
	VoteTimeout  time.Duration
	OnQuorumLoss QuorumLoss
	// Seed seeds the random backoff; zero takes BootID.
	Seed uint64
	// OnRecord is called when this proxy commits or adopts a new record:
	// close sessions to any backend other than new.Primary and notify.
	OnRecord func(service string, old, new Record)
	// OnAction is called when this proxy, holding a lease at the epoch it
	// committed, acts on a database: run the hook (QP_EPOCH = a.Epoch),
	// check the backend at once, then call Machine.ActionDone. At most one
	// action per service is out at a time.
	OnAction func(service string, a Action)
	// FailedPromoteHold is how long a backend whose promote failed is no
	// failover candidate on this proxy (and on the proxies that vote on
	// the move away from it).
	FailedPromoteHold time.Duration
	Logger            *slog.Logger

	knobs knobs // test-only switches that disable one rule each
}

// knobs switch rules off so the simulation can show that it catches the
// violation each rule prevents.
type knobs struct {
	// wireHi, when set, is the highest wire format this proxy speaks: an
	// in-process stand-in for an older build (which also advertises no
	// range: tests give its peers no meta).
	wireHi            uint8
	noLeaseWait       bool // commit right after Q votes
	voterKeepsRouting bool // a vote does not stop the voter's routing
	noVotePersist     bool // votes are not saved
	noPhase1          bool // ignore earlier votes when choosing and voting
	anyVoteYields     bool // a higher-named proposer takes any vote at its epoch, not only a proposer's own
	ignoreFenced      bool // failover candidates are picked without regard to the fenced set
	noRankDelay       bool // every proxy proposes a failover as soon as it sees the primary down
	// Actions on databases and the store (the rules of issue "promotion safety").
	bootstrapByPriority bool // a new cluster picks the highest-priority backend up, whatever it reports
	moveOnAtOnce        bool // a failed promote moves on at once, as if the backend could not be primary
	promoteBlind        bool // promote without checking that no other backend may be primary
	promoteAfterPause   bool // promote right after a pause, on views from before it
	ignorePause         bool // proxies propose and voters grant automatic decisions of a paused service
	ignorePositions     bool // voters grant a failover to a replica their own fresh view shows behind another
	ignoreRPO           bool // voters grant a failover of an rpo = zero service to a standby their check did not see synchronous
	answerUnpersisted   bool // a vote whose save failed is kept in memory and answered from there
}

// check says which required field of c is missing or out of range; Seed
// and Logger, which change nothing a user sees, take BootID and a
// discarding logger when unset.
func (c *Config) check() error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"LeaseTimeout", c.LeaseTimeout}, {"ObservationTTL", c.ObservationTTL}, {"VoteTimeout", c.VoteTimeout},
		{"FailedPromoteHold", c.FailedPromoteHold}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("cluster: %s is %v, want a positive duration", d.name, d.v))
		}
	}
	if !(c.ClockMargin >= 0 && c.ClockMargin < 1) {
		errs = append(errs, fmt.Errorf("cluster: ClockMargin is %v, want 0 to below 1", c.ClockMargin))
	}
	for _, sc := range c.Services {
		if (sc.Hooks.Fence || sc.Hooks.Promote) && sc.Hooks.Timeout <= 0 {
			errs = append(errs, fmt.Errorf("cluster: service %q: hook Timeout is %v, want a positive duration", sc.Name, sc.Hooks.Timeout))
		}
	}
	if c.Seed == 0 {
		c.Seed = c.BootID
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}
