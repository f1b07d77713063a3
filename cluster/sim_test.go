package cluster

import (
	"container/heap"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The simulation drives the real Machine code with a fake clock per proxy
// (each running at its own rate within the configured margin), a fake
// network (partitions, also one-way and non-transitive, loss, delay,
// duplication, reordering), crashes and restarts (with kept, wiped or
// corrupted state), disks that fail for a while, pauses, backends failing
// as each proxy sees them, operator switchovers, fences and unfences, and
// databases with roles: backends that restart as primary, and fence and
// promote hooks whose promotes succeed, fail before promoting, promote
// and then report failure, hang past their timeout, or land late. It
// checks the protocol's invariants after every event, at the proxies
// (one value per epoch, no split brain, nothing answered that is not on
// disk) and at the databases (no promote starts while another backend may
// be primary; a new cluster routes only to a backend that reports
// primary). Each seed is deterministic: a failure prints the seed and a
// trace.

var (
	flagSeeds = flag.Int("sim.seeds", 0, "number of simulation seeds (default 10000, 1000 with -short; env QP_SIM_SEEDS)")
	flagSeed  = flag.Int64("sim.seed", -1, "run only this seed, with a trace")
)

const (
	simLease   = time.Second
	simService = "db"
)

type simOpts struct {
	seed  uint64
	n     int // 0: chosen by the seed among 3, 4, 5
	knobs knobs
	// mixed: each start runs the proxy as an older build of wire format 5
	// (speaking 5 only, advertising no range) or as this build, half and
	// half: rolling upgrades and downgrades at random. The others are
	// told its gossip meta at once, as the mesh tells them of a restart.
	mixed bool
	keep  bool // on_quorum_loss = keep
	trace bool
	// safetyOnly skips the progress check at the end: a broken rule must
	// be caught by a safety invariant.
	safetyOnly bool
	// faults is how long faults are injected, heal how long the healed
	// cluster then has to converge.
	faults, heal time.Duration
	// promoteFail is the chance that a promote hook fails while faults
	// are injected; failOn names a backend whose promote always fails.
	promoteFail float64
	failOn      string
	// script replaces the random faults with one: the primary of a warm
	// cluster goes down a second in, on a healthy network; each proxy's
	// check sees it down at a random moment within spread of that.
	script bool
	spread time.Duration
	// roles: 0 lets the seed choose whether the service's checks report
	// roles (three in four do), 1 always, 2 never. fence likewise chooses
	// whether a fence hook is configured (0: seven in ten, 1 yes, 2 no).
	roles, fence int
	// twins adds that many services over the same backends, seen the same
	// way, without hooks or roles: hundreds of services that one failure
	// hits at once. Each is checked for the agreement's invariants (no
	// epoch goes back, one value per epoch, never two backends routed).
	twins int
	// batch: 0 lets the seed choose (odd seeds) whether a proxy takes the
	// deliveries queued for it within simBatchWindow in one step (one
	// save, one payload per peer), as a Node drains its inbox; 1 always,
	// 2 never.
	batch int
}

// simGrace is how long past the heal a run that has not converged yet may
// go on before the progress check fails.
const simGrace = 2 * simLease

// simBatchWindow is how far ahead a batching proxy takes deliveries
// already on their way to it into the current step.
const simBatchWindow = 5 * time.Millisecond

// defaultOpts gives the length of each run: short enough that 10,000
// seeds run under -race in the test budget; QP_SIM_LONG=1 (make soak)
// makes each seed longer.
func defaultOpts() simOpts {
	if os.Getenv("QP_SIM_LONG") != "" {
		return simOpts{faults: 40 * simLease, heal: 20 * simLease, promoteFail: 0.3}
	}
	return simOpts{faults: 10 * simLease, heal: 10 * simLease, promoteFail: 0.3}
}

type evKind uint8

const (
	evDeliver evKind = iota
	evTick
	evFunc
)

type simEvent struct {
	at      time.Duration
	seq     uint64
	kind    evKind
	node    int
	from    int
	payload []byte
	fn      func()
	idx     int
}

type eventQueue []*simEvent

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int)     { q[i], q[j] = q[j], q[i]; q[i].idx = i; q[j].idx = j }
func (q *eventQueue) Push(x any)       { e := x.(*simEvent); e.idx = len(*q); *q = append(*q, e) }
func (q *eventQueue) Pop() any         { old := *q; e := old[len(old)-1]; *q = old[:len(old)-1]; return e }
func (q *eventQueue) push(e *simEvent) { heap.Push(q, e) }

// memStore is the simulated disk: Save is atomic and durable at once,
// or fails while failing is set (a disk gone read-only).
type memStore struct {
	st      State
	written bool
	corrupt bool
	failing bool
}

var errCorrupt = errors.New("state file: checksum mismatch")

func (s *memStore) Load() (State, error) {
	if s.corrupt {
		return State{}, errCorrupt
	}
	return s.st.clone(), nil
}

var errDiskFailing = errors.New("state_dir: read-only file system")

func (s *memStore) Save(st State) error {
	if s.failing {
		return errDiskFailing
	}
	for name, n := range st.Services {
		o := s.st.Services[name]
		if n.Record.Epoch < o.Record.Epoch || n.MaxVoted < o.MaxVoted || n.Accepted.Epoch < o.Accepted.Epoch {
			return fmt.Errorf("service %q: refusing to lower an epoch", name)
		}
	}
	s.st = st.clone()
	s.written = true
	return nil
}

type simNode struct {
	idx     int
	name    string
	rate    float64
	offset  time.Duration
	m       *Machine
	store   *memStore
	alive   bool
	paused  bool
	held    []*simEvent
	view    map[string]bool // backend -> up, as this proxy's checks see it
	lastRec Record
	lastPro uint64
	lastAcc Ballot
	amnesic bool // lost its state and has not finished recovering
	routes  string
	until   time.Duration // on its own clock: when its last route ends
	phase2  uint64        // last epoch seen entering phase 2
	lost    bool          // kept crashed or cut off after the heal
	old     bool          // runs as a build of wire format 5 (simOpts.mixed)
	// silentUntil keeps this node's outgoing links cut across partition
	// changes: a proposer that went quiet after gathering its votes.
	silentUntil time.Duration
	twinEpoch   []uint64    // the last record epoch seen per twin service
	twinRoute   []twinRoute // the last route seen per twin service
}

// traceHandler writes a traced run's log lines into its trace.
type traceHandler struct {
	s     *sim
	node  string
	attrs []slog.Attr
}

func (h *traceHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *traceHandler) WithGroup(string) slog.Handler            { return h }
func (h *traceHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &traceHandler{s: h.s, node: h.node, attrs: append(slices.Clip(h.attrs), as...)}
}
func (h *traceHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.s.logf("%s log %s: %s%s", h.node, r.Level, r.Message, b.String())
	return nil
}

type simClock struct {
	s *sim
	n *simNode
}

func (c simClock) Now() time.Duration {
	return c.n.offset + time.Duration(float64(c.s.now)*c.n.rate)
}

type simTransport struct {
	s    *sim
	from int
}

func (t simTransport) Send(to string, msg []byte) error {
	t.s.checkAnswer(t.from, to, msg)
	t.s.sendMsg(t.from, t.s.byName[to], msg)
	return nil
}

func (t simTransport) Broadcast(_ string, msg []byte) error {
	for i := range t.s.nodes {
		if i != t.from {
			t.s.sendMsg(t.from, i, msg)
		}
	}
	return nil
}

type sim struct {
	o        simOpts
	rng      *rand.Rand
	now      time.Duration
	seq      uint64
	q        eventQueue
	nodes    []*simNode
	byName   map[string]int
	peers    []string
	backends []BackendConfig
	n, quor  int

	cut      [][]bool // cut[a][b]: a's messages do not reach b
	drop     float64
	dup      float64
	maxDelay time.Duration

	truth    map[string]bool
	lastDown [][]time.Duration // [node][backend index] last time seen down
	switchAt map[string]time.Duration

	// The databases: whether checks report roles, whether a fence hook
	// exists, each backend's role, whether a fence hook stopped it (until
	// it restarts), and when a promote of it that is under way lands (0:
	// none).
	roleAware, fenceHook bool
	role                 map[string]Role
	hookFenced           map[string]bool
	landAt               map[string]time.Duration
	proposed             map[[2]uint64]bool // (node, epoch) of proposals sent
	follows              map[Value]bool     // values proposed because their primary reported primary

	twins      []ServiceConfig
	twinValues map[twinEpoch]Value // the value of each twin's epochs
	values     map[uint64]Value
	firstSeen  map[uint64]time.Duration
	votes      map[Ballot]map[int]bool
	accepted   map[uint64]Value // the value first accepted at each epoch
	// fenceAt and unfenceAt: when an operator last asked to fence or
	// unfence each backend; fencedAt: when a commit last added it.
	fenceAt, unfenceAt, fencedAt map[string]time.Duration
	// pauseAskedAt: when an operator last asked to pause; pausedFrom: the
	// pauseAskedAt of the paused record in force (a primary may move while
	// paused only by an operator's request since then).
	pauseAskedAt, pausedFrom time.Duration
	// promoteFailed holds the epochs whose promote hook failed (and whose
	// failure the committing proxy took).
	promoteFailed map[uint64]bool

	events int
	pool   []*simEvent
	trace  []string
	failed string
	stats  *simStats
}

type simStats struct {
	events, commits, failovers, bareQuorum atomic.Int64
	promoteFails, movesOn                  atomic.Int64
	fences, unfences                       atomic.Int64 // commits that grew or shrank the fenced set
	// the databases: promotes that landed after their hook reported a
	// failure, moves to the backend that reports primary, disk failures
	late, follows, disks atomic.Int64
}

func (s *sim) logf(format string, args ...any) {
	if !s.o.trace {
		return
	}
	s.trace = append(s.trace, fmt.Sprintf("%9.3fs ", s.now.Seconds())+fmt.Sprintf(format, args...))
}

func (s *sim) fail(format string, args ...any) {
	if s.failed == "" {
		s.failed = fmt.Sprintf("t=%.3fs: ", s.now.Seconds()) + fmt.Sprintf(format, args...)
		s.logf("VIOLATION: %s", s.failed)
	}
}

func (s *sim) at(d time.Duration, e *simEvent) {
	s.seq++
	e.at, e.seq = s.now+d, s.seq
	s.q.push(e)
}

func (s *sim) after(d time.Duration, fn func()) { s.at(d, &simEvent{kind: evFunc, fn: fn}) }

// event and free recycle events: the simulation allocates millions.
func (s *sim) event(k evKind, node, from int, payload []byte) *simEvent {
	var e *simEvent
	if n := len(s.pool); n > 0 {
		e = s.pool[n-1]
		s.pool = s.pool[:n-1]
	} else {
		e = &simEvent{}
	}
	e.kind, e.node, e.from, e.payload = k, node, from, payload
	return e
}

func (s *sim) free(e *simEvent) {
	e.payload, e.fn = nil, nil
	s.pool = append(s.pool, e)
}

func (s *sim) sendMsg(from, to int, msg []byte) {
	if s.cut[from][to] || s.rng.Float64() < s.drop {
		return
	}
	copies := 1
	if s.rng.Float64() < s.dup {
		copies = 2
	}
	for range copies {
		d := time.Millisecond + time.Duration(s.rng.Int64N(int64(s.maxDelay)))
		if s.rng.IntN(200) == 0 {
			d += time.Duration(s.rng.Int64N(int64(3 * simLease))) // a straggler
		}
		s.at(d, s.event(evDeliver, to, from, msg))
	}
}

func newSim(o simOpts) *sim {
	rng := rand.New(rand.NewPCG(o.seed, 0x5eed))
	n := o.n
	if n == 0 {
		n = 3 + int(o.seed%3)
	}
	s := &sim{o: o, rng: rng, n: n, quor: n/2 + 1, byName: map[string]int{},
		truth: map[string]bool{}, switchAt: map[string]time.Duration{},
		values: map[uint64]Value{}, twinValues: map[twinEpoch]Value{}, firstSeen: map[uint64]time.Duration{}, votes: map[Ballot]map[int]bool{}, accepted: map[uint64]Value{},
		fenceAt: map[string]time.Duration{}, unfenceAt: map[string]time.Duration{}, fencedAt: map[string]time.Duration{},
		promoteFailed: map[uint64]bool{}, maxDelay: 20 * time.Millisecond}
	s.backends = []BackendConfig{{Name: "pg-a", Priority: 30}, {Name: "pg-b", Priority: 20}, {Name: "pg-c", Priority: 10}}
	for _, b := range s.backends {
		s.truth[b.Name] = true
	}
	s.role, s.hookFenced, s.landAt = map[string]Role{}, map[string]bool{}, map[string]time.Duration{}
	s.proposed, s.follows = map[[2]uint64]bool{}, map[Value]bool{}
	s.roleAware = o.roles == 1 || (o.roles == 0 && rng.IntN(4) != 0)
	s.fenceHook = o.fence == 1 || (o.fence == 0 && rng.IntN(10) < 7)
	s.cut = make([][]bool, n)
	s.lastDown = make([][]time.Duration, n)
	for i := range n {
		s.cut[i] = make([]bool, n)
		s.lastDown[i] = make([]time.Duration, len(s.backends))
		name := "proxy-" + strconv.Itoa(i)
		s.peers = append(s.peers, name)
		s.byName[name] = i
	}
	margin := withLease(Config{}, simLease).ClockMargin
	warm := rng.IntN(2) == 0 || o.script
	// The databases' roles: a warm cluster routes to its primary pg-a; a
	// new one finds one primary (any of the three, whatever its priority),
	// now and then none or two.
	for _, b := range s.backends {
		s.role[b.Name] = RoleReplica
	}
	switch r := rng.IntN(10); {
	case warm || !s.roleAware:
		// without roles, the proxies pick by priority: the operator's
		// highest-priority backend is the primary
		s.role["pg-a"] = RolePrimary
	case r == 0: // no primary yet
	case r == 1:
		s.role["pg-a"], s.role[s.backends[1+rng.IntN(2)].Name] = RolePrimary, RolePrimary
	default:
		s.role[s.backends[rng.IntN(3)].Name] = RolePrimary
	}
	for i := range n {
		rate := 1 + margin*(2*rng.Float64()-1)
		switch rng.IntN(4) {
		case 0:
			rate = 1 - margin
		case 1:
			rate = 1 + margin
		}
		nd := &simNode{idx: i, name: s.peers[i], rate: rate, offset: time.Duration(1+rng.IntN(100)) * time.Second,
			store: &memStore{}, view: map[string]bool{}}
		if warm {
			// a cluster that has run before: epoch 1 committed everywhere
			nd.store.st = State{Synced: true, Services: map[string]ServiceState{simService: {
				Record: Record{Epoch: 1, Value: Value{Primary: "pg-a"}}, MaxVoted: 1, Accepted: Ballot{Epoch: 1, Value: Value{Primary: "pg-a"}}}}}
		}
		for _, b := range s.backends {
			nd.view[b.Name] = true
		}
		s.nodes = append(s.nodes, nd)
	}
	if warm {
		b := Ballot{Epoch: 1, Value: Value{Primary: "pg-a"}}
		s.votes[b] = map[int]bool{}
		for i := range n {
			s.votes[b][i] = true
		}
	}
	return s
}

// simHookTimeout is the hooks' timeout in the simulation.
const simHookTimeout = simLease

func (s *sim) start(nd *simNode) {
	cfg := Config{
		Name: nd.name, Peers: s.peers, BootID: uint64(s.now) + 1, Seed: s.rng.Uint64() | 1,
		Services: append([]ServiceConfig{{Name: simService, Backends: s.backends, RoleAware: s.roleAware,
			Hooks: HookConfig{Fence: s.fenceHook, Promote: true, Timeout: simHookTimeout}}}, s.twinConfigs()...),
		knobs: s.o.knobs, FailedPromoteHold: time.Duration(1+s.rng.IntN(3)) * simLease,
	}
	cfg = withLease(cfg, simLease)
	if s.o.keep {
		cfg.OnQuorumLoss = QuorumLossKeep
	}
	if s.o.mixed {
		nd.old = s.rng.IntN(2) == 0
		if nd.old {
			cfg.knobs.wireHi = 5
		}
	}
	clk := simClock{s, nd}
	cfg.OnAction = func(svc string, a Action) { s.runAction(nd, svc, a) }
	if s.o.trace {
		cfg.Logger = slog.New(&traceHandler{s: s, node: nd.name})
	}
	m, err := NewMachine(cfg, clk, simTransport{s, nd.idx}, nd.store)
	if err != nil {
		if !nd.store.corrupt {
			s.fail("%s failed to start: %v", nd.name, err)
		}
		s.logf("%s refuses to start: %v", nd.name, err)
		nd.alive = false
		// The operator finds the error, wipes state_dir and starts again.
		s.after(time.Duration(1+s.rng.IntN(3))*time.Second, func() {
			if nd.alive || nd.lost || !nd.store.corrupt {
				return // the heal already did it, or the node stays lost
			}
			nd.store.corrupt = false
			nd.store.st = State{}
			nd.lastRec, nd.lastPro, nd.lastAcc = Record{}, 0, Ballot{}
			nd.twinEpoch, nd.twinRoute = nil, nil
			s.logf("%s state wiped by the operator", nd.name)
			s.start(nd)
		})
		return
	}
	nd.m, nd.alive, nd.paused = m, true, false
	s.logf("%s started (recovering=%v)", nd.name, m.Recovering())
	if s.o.mixed {
		s.logf("%s runs wire format %d", nd.name, map[bool]int{true: 5, false: wireMax}[nd.old])
		meta := func(n *simNode) []byte {
			if n.old {
				return nil // an older build advertises no range
			}
			return WireMeta()
		}
		for _, o := range s.nodes {
			if o == nd || o.m == nil {
				continue
			}
			if !nd.old {
				nd.m.peerMeta(o.name, meta(o))
			}
			if !o.old {
				o.m.peerMeta(nd.name, meta(nd))
			}
		}
	}
	for _, b := range s.backends {
		s.observe(nd, b.Name)
	}
}

// observe hands nd's machine its view of backend b: up or down, and the
// role the database reports when the checks know roles.
func (s *sim) observe(nd *simNode, b string) {
	if !nd.alive || nd.paused {
		return // a paused proxy checks nothing; it looks again on resume
	}
	o := Observation{Up: nd.view[b]}
	if o.Up && s.roleAware {
		o.Role = s.role[b]
	}
	step := func() {
		_ = nd.m.Observe(simService, b, o)
		for _, tw := range s.twinConfigs() {
			_ = nd.m.Observe(tw.Name, b, Observation{Up: o.Up})
		}
	}
	if !s.batching() {
		step()
		return
	}
	nd.m.Batch(func() {
		step()
		nd.m.TickDue()
	})
}

// twinConfigs are the twin services (simOpts.twins).
func (s *sim) twinConfigs() []ServiceConfig {
	if s.o.twins == 0 {
		return nil
	}
	if s.twins == nil {
		for i := range s.o.twins {
			s.twins = append(s.twins, ServiceConfig{Name: fmt.Sprintf("twin-%03d", i), Backends: s.backends})
		}
	}
	return s.twins
}

// checkTwins checks every twin service on nd: its epochs never go back,
// one value per epoch across the cluster, and no other proxy routes it
// to another backend when nd starts routing it.
func (s *sim) checkTwins(nd *simNode) {
	twins := s.twinConfigs()
	if len(twins) == 0 {
		return
	}
	if nd.twinEpoch == nil {
		nd.twinEpoch, nd.twinRoute = make([]uint64, len(twins)), make([]twinRoute, len(twins))
	}
	local := simClock{s, nd}.Now()
	for i, tw := range twins {
		if rec := nd.m.svcState(tw.Name).Record; rec.Epoch != nd.twinEpoch[i] {
			if rec.Epoch < nd.twinEpoch[i] {
				s.fail("%s: %s went back from epoch %d to %d", tw.Name, nd.name, nd.twinEpoch[i], rec.Epoch)
				return
			}
			nd.twinEpoch[i] = rec.Epoch
			k := twinEpoch{i, rec.Epoch}
			if v, ok := s.twinValues[k]; ok && v != rec.Value {
				s.fail("%s: two values at epoch %d: %s and %s (%s)", tw.Name, rec.Epoch, v, rec.Value, nd.name)
				return
			}
			s.twinValues[k] = rec.Value
		}
		if nd.paused || s.o.keep {
			continue
		}
		// Checked when nd starts routing (a new backend, or again after
		// its lease ended): a split brain begins at someone's start.
		b, rem := nd.m.Route(tw.Name)
		prev := nd.twinRoute[i]
		nd.twinRoute[i] = twinRoute{b, local + rem}
		if b == "" || b == prev.backend && local < prev.until {
			continue
		}
		for _, o := range s.nodes {
			if o == nd || !o.alive || o.paused {
				continue
			}
			if ob, _ := o.m.Route(tw.Name); ob != "" && ob != b {
				s.fail("%s: split brain: %s forwards to %s while %s forwards to %s", tw.Name, o.name, ob, nd.name, b)
				return
			}
		}
	}
}

type twinRoute struct {
	backend string
	until   time.Duration // on the node's own clock
}

type twinEpoch struct {
	twin  int
	epoch uint64
}

// setRole changes what database b reports; every proxy's check sees it.
func (s *sim) setRole(b string, r Role) {
	if s.role[b] == r {
		return
	}
	s.role[b] = r
	s.logf("%s is now %s", b, r)
	for _, nd := range s.nodes {
		s.observe(nd, b)
	}
}

// runAction is the hook runner: it acts on the simulated database (after
// the check that the action is safe), then reports back to the machine of
// the run that handed it out, if that run still goes on.
func (s *sim) runAction(nd *simNode, svc string, a Action) {
	ss := nd.m.svcState(svc)
	if rem := nd.m.leaseRemaining(svc, nd.m.svcs[svc], ss); rem <= 0 || ss.Record.Epoch != a.Epoch {
		s.fail("%s acted (%s %s) for epoch %d without a lease at it", nd.name, a.Kind, a.Backend, a.Epoch)
	}
	m := nd.m
	b := a.Backend
	faulty := s.now < s.o.faults
	var res ActionResult
	took := time.Duration(s.rng.Int64N(int64(simHookTimeout / 2)))
	var effect func()
	switch a.Kind {
	case ActionFence:
		res.Ran = s.fenceHook
		ok := res.Ran && !(faulty && s.rng.IntN(3) == 0)
		if !s.truth[b] && faulty && s.rng.IntN(2) == 0 {
			ok = false // the host is gone and the fence cannot reach it
		}
		res.OK = ok
		if ok {
			effect = func() {
				s.hookFenced[b] = true
				delete(s.landAt, b)
				s.logf("%s fenced %s (stopped)", nd.name, b)
				s.setTruth(s.backendIndex(b), false)
			}
		}
	case ActionPromote:
		if s.truth[b] && s.role[b] == RolePrimary {
			res.Skipped = true
			took = time.Millisecond
			break
		}
		res.Ran = true
		s.checkPromoteStart(nd, a)
		s.logf("%s promotes %s at epoch %d", nd.name, b, a.Epoch)
		mode := 0
		if b == s.o.failOn {
			mode = 1
		} else if faulty && s.rng.Float64() < s.o.promoteFail {
			mode = 1 + s.rng.IntN(4)
		}
		land := func(at time.Duration) {
			s.landAt[b] = s.now + at
			s.after(at, func() {
				if s.landAt[b] != 0 && s.truth[b] && !s.hookFenced[b] {
					s.setRole(b, RolePrimary)
					if at > took {
						s.stats.late.Add(1)
					}
				}
				delete(s.landAt, b)
			})
		}
		switch mode {
		case 0: // promotes
			res.OK = s.truth[b]
			if res.OK {
				land(took / 2)
			}
		case 1: // fails before promoting
		case 2: // promotes, then reports failure
			land(took / 2)
		case 3: // hangs past its timeout; half the time it promoted meanwhile or will
			took = simHookTimeout
			if s.rng.IntN(2) == 0 {
				land(time.Duration(s.rng.Int64N(int64(simHookTimeout))))
			}
		case 4: // fails now, and its promotion lands later, within the timeout
			land(took + time.Duration(s.rng.Int64N(int64(simHookTimeout-took))))
		}
		if !s.truth[b] {
			delete(s.landAt, b) // a stopped server promotes nothing
		}
		res.Timeout = simHookTimeout
		if mode != 0 || !s.truth[b] {
			res.Detail = fmt.Sprintf("simulated failure %d", mode)
			s.promoteFailed[a.Epoch] = true
			s.stats.promoteFails.Add(1)
		}
	}
	var report func()
	report = func() {
		if effect != nil {
			effect()
			effect = nil
		}
		if nd.m != m {
			return
		}
		if nd.paused {
			s.after(simLease/4, report)
			return
		}
		r := res
		r.Up = s.truth[b] && nd.view[b]
		if r.Up && s.roleAware {
			r.Role = s.role[b]
		}
		_ = m.ActionDone(svc, a, r)
	}
	s.after(took, report)
}

func (s *sim) backendIndex(name string) int {
	for i, b := range s.backends {
		if b.Name == name {
			return i
		}
	}
	panic("unknown backend " + name)
}

// checkPromoteStart is the invariant at the databases: a promote starts
// only while no other backend may be primary (reports primary, or has a
// promote under way) unless a fence hook stopped it, or the promoting
// proxy sees it down with a quorum (it is then fenced from all traffic;
// one that is alive but cut off from the proxies is what a fence hook is
// for).
func (s *sim) checkPromoteStart(nd *simNode, a Action) {
	for _, b := range s.backends {
		y := b.Name
		if y == a.Backend || !s.truth[y] || s.hookFenced[y] {
			continue
		}
		pending := s.landAt[y] > s.now
		if s.role[y] != RolePrimary && !pending {
			continue
		}
		if !nd.view[y] && nd.m.objectivelyDown(nd.m.svcs[simService], y) {
			continue
		}
		what := "is primary"
		if pending {
			what = "has a promote under way"
		}
		s.fail("%s starts a promote of %s at epoch %d while %s %s and was not fenced", nd.name, a.Backend, a.Epoch, y, what)
		return
	}
}

// checkAnswer is the rule that nothing is answered that is not on disk: a
// proposal, a granted vote or an acknowledged acceptance leaves only once
// the vote it depends on is saved.
func (s *sim) checkAnswer(from int, to string, msg []byte) {
	if len(msg) > 0 && msgType(msg[0]) == msgBatch {
		if _, d, err := header(msg); err == nil {
			for _, p := range decBatch(d) {
				s.checkAnswer(from, to, p)
			}
		}
		return
	}
	if len(msg) == 0 || (msgType(msg[0]) != msgVote && msgType(msg[0]) != msgAccepted && msgType(msg[0]) != msgPropose) {
		return
	}
	x, err := decode(msg)
	if err != nil {
		return
	}
	nd := s.nodes[from]
	// Whatever leaves is on disk, for every service (twins too); the
	// checks below that model the databases are the simulated service's.
	switch x := x.(type) {
	case voteMsg:
		if disk := nd.store.st.Services[x.Service]; x.Granted && disk.MaxVoted < x.Epoch {
			s.fail("%s: %s granted its vote at epoch %d to %s, but its disk holds a vote at %d", x.Service, nd.name, x.Epoch, to, disk.MaxVoted)
		}
	case acceptedMsg:
		if disk := nd.store.st.Services[x.Service]; x.OK && disk.Accepted.Epoch < x.Epoch {
			s.fail("%s: %s acknowledged %s at epoch %d to %s, but its disk holds an acceptance at %d", x.Service, nd.name, x.Value, x.Epoch, to, disk.Accepted.Epoch)
		}
	case proposeMsg:
		if disk := nd.store.st.Services[x.Service]; disk.MaxVoted < x.Epoch {
			s.fail("%s: %s proposes epoch %d, but its disk holds its vote at %d", x.Service, nd.name, x.Epoch, disk.MaxVoted)
		}
		if x.Service != simService {
			return
		}
		// A new cluster routes only to a backend that reports primary: a
		// bootstrap proposes one (a forced value finishes such a proposal).
		first := !s.proposed[[2]uint64{uint64(from), x.Epoch}]
		s.proposed[[2]uint64{uint64(from), x.Epoch}] = true
		if first && x.Kind == kindBootstrap && s.roleAware {
			if s.role[x.Value.Primary] != RolePrimary {
				s.fail("%s proposes to bootstrap to %q at epoch %d, which does not report primary", nd.name, x.Value.Primary, x.Epoch)
			}
			for _, b := range s.backends {
				if b.Name != x.Value.Primary && s.role[b.Name] == RolePrimary && nd.view[b.Name] && s.truth[b.Name] {
					s.fail("%s proposes to bootstrap to %q at epoch %d while it sees %q report primary too", nd.name, x.Value.Primary, x.Epoch, b.Name)
				}
			}
		}
		if first && x.Kind == kindReaffirm && x.From != x.Value.Primary && s.roleAware &&
			s.role[x.Value.Primary] == RolePrimary && s.role[x.From] != RolePrimary {
			s.follows[x.Value] = true // a move to the backend that reports primary
		}
	}
}

func (s *sim) crash(nd *simNode) {
	nd.alive, nd.m, nd.paused, nd.held = false, nil, false, nil
	s.logf("%s crashed", nd.name)
}

func (s *sim) setView(nd *simNode, b int, up bool) {
	name := s.backends[b].Name
	if nd.view[name] == up {
		return
	}
	if !up || !nd.view[name] {
		s.lastDown[nd.idx][b] = s.now
	}
	nd.view[name] = up
	s.logf("%s sees %s %s", nd.name, name, map[bool]string{true: "up", false: "down"}[up])
	s.observe(nd, name)
}

// setTruth stops or starts backend b. A stopped server loses a promote
// under way; one that starts again comes back in the role it had (an old
// primary restarts as a primary) and whatever a fence did is undone.
func (s *sim) setTruth(b int, up bool) {
	name := s.backends[b].Name
	if s.truth[name] != up {
		s.logf("%s %s", name, map[bool]string{true: "starts", false: "stops"}[up])
	}
	s.truth[name] = up
	if up {
		delete(s.hookFenced, name)
	} else {
		delete(s.landAt, name)
	}
	for _, nd := range s.nodes {
		s.setView(nd, b, up)
	}
}

// run executes the seed and returns the first violation ("" if none).
func (s *sim) run() string {
	for _, nd := range s.nodes {
		s.start(nd)
		s.at(time.Duration(s.rng.Int64N(int64(simLease/8))), &simEvent{kind: evTick, node: nd.idx})
	}
	faultEnd, end := s.o.faults, s.o.faults+s.o.heal
	// faults
	for t := time.Duration(0); !s.o.script; {
		t += time.Duration(s.rng.ExpFloat64() * float64(700*time.Millisecond))
		if t >= faultEnd {
			break
		}
		s.at(t, &simEvent{kind: evFunc, fn: s.fault})
	}
	if s.o.script {
		s.after(simLease, func() {
			s.truth[s.backends[0].Name] = false
			for _, nd := range s.nodes {
				s.after(time.Duration(s.rng.Int64N(int64(s.o.spread)+1)), func() { s.setView(nd, 0, false) })
			}
		})
	}
	s.at(faultEnd, &simEvent{kind: evFunc, fn: s.heal})
	s.at(faultEnd+simLease/4, &simEvent{kind: evFunc, fn: s.operatorAfterHeal})
	// Once the healed cluster has stayed converged for a few lease
	// periods, the rest of the heal budget is not needed. A change after
	// convergence (a move after a failed promote) restarts the count.
	var watch func()
	since := time.Duration(-1)
	watch = func() {
		switch {
		case s.converged() != "" || s.movePending():
			since = -1
		case since < 0:
			since = s.now
		case s.now-since >= 3*simLease:
			end = min(end, s.now)
			return
		}
		s.after(simLease/2, watch)
	}
	s.at(faultEnd+simLease/2, &simEvent{kind: evFunc, fn: watch})
	for s.q.Len() > 0 && s.failed == "" {
		e := heap.Pop(&s.q).(*simEvent)
		if e.at > end {
			// Not converged at the end: a grace of two leases for what
			// is still in its vote (an operator's late request).
			if end == s.o.faults+s.o.heal && !s.o.safetyOnly && s.converged() != "" {
				end += simGrace
			} else {
				break
			}
		}
		s.now = e.at
		s.events++
		switch e.kind {
		case evTick:
			nd := s.nodes[e.node]
			s.at(simLease/8, s.event(evTick, nd.idx, 0, nil))
			if nd.alive && !nd.paused {
				nd.m.Tick()
				s.checkNode(nd)
			}
			s.free(e)
		case evDeliver:
			nd := s.nodes[e.node]
			if !nd.alive || s.cut[e.from][e.node] {
				s.free(e)
				continue
			}
			if nd.paused {
				nd.held = append(nd.held, e)
				continue
			}
			if s.o.trace {
				msg, _ := decode(e.payload)
				switch msg.(type) {
				case obsMsg, leaseReqMsg, leaseAckMsg:
					// too many to read; the routing state is traced instead
				default:
					s.logf("%s <- %s %T%+v", nd.name, s.nodes[e.from].name, msg, msg)
				}
			}
			if s.batching() {
				nd.m.Batch(func() {
					nd.m.Step(s.nodes[e.from].name, e.payload)
					s.free(e)
					// Deliveries next in line for the same proxy join the step.
					for s.q.Len() > 0 {
						x := s.q[0]
						if x.kind != evDeliver || x.node != nd.idx || x.at > s.now+simBatchWindow || x.at > end ||
							s.cut[x.from][x.node] {
							break
						}
						heap.Pop(&s.q)
						s.events++
						nd.m.Step(s.nodes[x.from].name, x.payload)
						s.free(x)
					}
					nd.m.TickDue() // as a Node does at the end of a step
				})
			} else {
				nd.m.Step(s.nodes[e.from].name, e.payload)
				s.free(e)
			}
			s.checkNode(nd)
		case evFunc:
			e.fn()
			for _, nd := range s.nodes {
				s.checkNode(nd)
			}
		}
	}
	if s.failed == "" && !s.o.safetyOnly {
		s.checkEnd()
	}
	return s.failed
}

// movePending reports whether a proxy that runs holds a failed promote it
// may still move on from (its fence hook is retried, or the settle period
// runs): a run does not end early then.
func (s *sim) movePending() bool {
	for _, nd := range s.nodes {
		if nd.alive && !nd.lost && nd.m.svcs[simService].act.failed != nil {
			return true
		}
	}
	return false
}

func (s *sim) batching() bool {
	switch s.o.batch {
	case 1:
		return true
	case 2:
		return false
	}
	return s.o.seed%2 == 1
}

func (s *sim) amnesic() int {
	n := 0
	for _, nd := range s.nodes {
		if nd.amnesic {
			n++
		}
	}
	return n
}

// allSynced reports whether every proxy's state has been initialised (a
// new cluster needs every peer once to start: see the package doc).
func (s *sim) allSynced() bool {
	for _, nd := range s.nodes {
		if !nd.store.st.Synced {
			return false
		}
	}
	return true
}

func (s *sim) randomNode() *simNode { return s.nodes[s.rng.IntN(s.n)] }

func (s *sim) fault() {
	switch r := s.rng.IntN(100); {
	case r < 22: // partitions
		for a := range s.n {
			for b := range s.n {
				s.cut[a][b] = false
			}
		}
		defer s.keepSilent()
		switch s.rng.IntN(5) {
		case 0:
			s.logf("network healed")
		case 1: // random one-way cuts
			p := s.rng.Float64() * 0.6
			for a := range s.n {
				for b := range s.n {
					s.cut[a][b] = a != b && s.rng.Float64() < p
				}
			}
			s.logf("random one-way cuts p=%.2f: %v", p, s.cut)
		case 2: // isolate one
			x := s.rng.IntN(s.n)
			for o := range s.n {
				if o != x {
					s.cut[x][o], s.cut[o][x] = true, true
				}
			}
			s.logf("%s isolated", s.nodes[x].name)
		case 3: // two sides
			side := make([]bool, s.n)
			for i := range side {
				side[i] = s.rng.IntN(2) == 0
			}
			for a := range s.n {
				for b := range s.n {
					s.cut[a][b] = side[a] != side[b]
				}
			}
			s.logf("split %v", side)
		case 4: // non-transitive: a ring where only neighbours talk
			for a := range s.n {
				for b := range s.n {
					d := (a - b + s.n) % s.n
					s.cut[a][b] = d != 0 && d != 1 && d != s.n-1
				}
			}
			s.logf("ring partition")
		}
	case r < 30:
		s.drop = []float64{0, 0, 0.05, 0.2, 0.5}[s.rng.IntN(5)]
		s.dup = []float64{0, 0.02, 0.1}[s.rng.IntN(3)]
		s.maxDelay = []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 200 * time.Millisecond, 800 * time.Millisecond}[s.rng.IntN(4)]
		s.logf("network drop=%.2f dup=%.2f delay<%v", s.drop, s.dup, s.maxDelay)
	case r < 42: // crash and restart later
		nd := s.randomNode()
		if !nd.alive {
			return
		}
		s.crash(nd)
		mode := s.rng.IntN(10)
		if mode <= 1 && s.amnesic()+1 > s.n-s.quor {
			mode = 2 // more lost state than N-Q proxies is beyond the promise
		}
		if mode <= 1 {
			nd.amnesic = true
		}
		s.after(time.Duration(100+s.rng.IntN(5000))*time.Millisecond, func() {
			if nd.alive || nd.lost {
				return
			}
			switch {
			case mode == 0:
				nd.store.st, nd.store.written = State{}, false
				nd.lastRec, nd.lastPro, nd.lastAcc = Record{}, 0, Ballot{}
				nd.twinEpoch, nd.twinRoute = nil, nil
				s.logf("%s state_dir wiped", nd.name)
			case mode == 1:
				nd.store.corrupt = true
				s.logf("%s state file corrupted", nd.name)
			}
			s.start(nd)
		})
	case r < 50: // pause
		nd := s.randomNode()
		if !nd.alive || nd.paused {
			return
		}
		nd.paused = true
		m := nd.m
		s.logf("%s paused", nd.name)
		s.after(time.Duration(50+s.rng.IntN(3000))*time.Millisecond, func() {
			if nd.m != m || !nd.paused {
				return
			}
			nd.paused = false
			s.logf("%s resumed with %d held messages", nd.name, len(nd.held))
			for _, b := range s.backends {
				s.observe(nd, b.Name)
			}
			held := nd.held
			nd.held = nil
			for _, e := range held {
				e.at = s.now
				s.seq++
				e.seq = s.seq
				s.q.push(e)
			}
		})
	case r < 80: // backends
		b := s.rng.IntN(len(s.backends))
		if s.rng.IntN(2) == 0 {
			// most failures hit the current primary
			if p := s.globalPrimary(); p != "" {
				for i, be := range s.backends {
					if be.Name == p {
						b = i
					}
				}
			}
		}
		if s.rng.IntN(3) == 0 {
			nd := s.randomNode()
			s.setView(nd, b, !nd.view[s.backends[b].Name])
		} else {
			s.setTruth(b, !s.truth[s.backends[b].Name])
		}
	case r < 81:
		s.operatorFence(s.randomNode(), s.backends[s.rng.IntN(len(s.backends))].Name, s.rng.IntN(2) == 0)
	case r < 84:
		s.operatorPause(s.randomNode(), s.rng.IntN(2) == 0)
	case r < 90:
		nd := s.randomNode()
		if !nd.alive || nd.paused {
			return
		}
		to := s.backends[s.rng.IntN(len(s.backends))].Name
		if _, err := nd.m.Switchover(simService, to); err != nil {
			s.logf("%s switchover to %s refused: %v", nd.name, to, err)
			return
		}
		s.switchAt[to] = s.now
		s.logf("%s switchover to %s requested", nd.name, to)
	case r < 94: // a disk that fails for a while (read-only state_dir)
		nd := s.randomNode()
		if nd.store.failing {
			return
		}
		nd.store.failing = true
		s.stats.disks.Add(1)
		s.logf("%s disk fails", nd.name)
		s.after(time.Duration(200+s.rng.IntN(4000))*time.Millisecond, func() {
			nd.store.failing = false
			s.logf("%s disk works again", nd.name)
		})
	}
}

// operatorFence is an operator's fence or unfence of backend b through nd.
func (s *sim) operatorFence(nd *simNode, b string, fence bool) {
	if !nd.alive || nd.paused {
		return
	}
	verb := map[bool]string{true: "fence", false: "unfence"}[fence]
	if !fence && s.globalFenced().Has(b) {
		// An operator unfences a backend once it is rebuilt as a replica.
		s.setRole(b, RoleReplica)
	}
	if _, err := nd.m.Fence(simService, b, fence); err != nil {
		s.logf("%s %s of %s refused: %v", nd.name, verb, b, err)
		return
	}
	if fence {
		s.fenceAt[b] = s.now
	} else {
		s.unfenceAt[b] = s.now
	}
	s.logf("%s %s of %s requested", nd.name, verb, b)
}

// operatorPause is an operator's pause or resume through nd.
func (s *sim) operatorPause(nd *simNode, on bool) {
	if !nd.alive || nd.paused {
		return
	}
	verb := map[bool]string{true: "pause", false: "resume"}[on]
	if _, err := nd.m.Pause(simService, on); err != nil {
		s.logf("%s %s refused: %v", nd.name, verb, err)
		return
	}
	if on {
		s.pauseAskedAt = s.now
	}
	s.logf("%s %s requested", nd.name, verb)
}

// operatorAfterHeal is the operator after the heal, through one proxy
// that runs, asking again (as an operator would, after looking at the
// status) only once that proxy has nothing in flight: a backend that is up
// but fenced could be the only one left, so it is unfenced; and a new
// cluster whose databases report no primary gets one by a switchover.
func (s *sim) operatorAfterHeal() {
	fenced := s.globalFenced()
	for _, nd := range s.nodes {
		if !nd.alive || nd.lost || nd.paused {
			continue
		}
		sv := nd.m.svcs[simService]
		if sv.fenceOp != nil || sv.pauseOp != nil || sv.prop != nil || sv.switchTo != "" {
			break
		}
		if s.globalValue().Paused {
			s.operatorPause(nd, false) // maintenance is over
			break
		}
		anyUp := false
		for _, b := range s.backends {
			anyUp = anyUp || s.truth[b.Name]
		}
		if !anyUp {
			// every server was stopped (fences land late): one is started
			b := s.rng.IntN(len(s.backends))
			s.logf("operator: nothing runs: starting %s", s.backends[b].Name)
			s.setTruth(b, true)
			break
		}
		for _, b := range s.backends {
			if s.truth[b.Name] && fenced.Has(b.Name) {
				s.operatorFence(nd, b.Name, false)
				break
			}
		}
		if len(s.values) == 0 && s.roleAware {
			primary := false
			var up []string
			for _, b := range s.backends {
				primary = primary || (s.truth[b.Name] && s.role[b.Name] == RolePrimary)
				if s.truth[b.Name] {
					up = append(up, b.Name)
				}
			}
			if !primary && len(up) > 0 {
				to := up[s.rng.IntN(len(up))]
				if _, err := nd.m.Switchover(simService, to); err == nil {
					s.switchAt[to] = s.now
					s.logf("operator: no primary: switchover to %s through %s", to, nd.name)
				}
			}
		}
		break
	}
	s.after(simLease, s.operatorAfterHeal)
}

// maybeSilence aims at the schedules the phase-1 rule and the commit wait
// answer: a proposer that gathered its votes goes silent before or after
// it commits (its commit is lost), and the old primary may come back.
func (s *sim) maybeSilence(nd *simNode, p *proposal) {
	if s.o.script || s.rng.IntN(2) != 0 {
		return
	}
	m := nd.m
	mode := max(0, s.rng.IntN(4)-1) // half the time the proposer goes silent
	victim := (nd.idx + 1 + s.rng.IntN(s.n-1)) % s.n
	delay := time.Duration(s.rng.Int64N(int64(simLease * 6 / 5)))
	if s.rng.IntN(3) == 0 {
		delay = 0
	}
	s.after(delay, func() {
		if nd.m != m || s.now >= s.o.faults {
			return
		}
		switch mode {
		case 0: // the proposer goes silent for a while
			nd.silentUntil = s.now + time.Duration(3000+s.rng.IntN(3000))*time.Millisecond
			s.keepSilent()
			s.logf("%s (proposer of epoch %d) silent until %v", nd.name, p.epoch, nd.silentUntil)
		case 1: // its commit to one peer is lost
			s.cut[nd.idx][victim] = true
			s.logf("%s (proposer of epoch %d) cut from %s", nd.name, p.epoch, s.nodes[victim].name)
		case 2: // one peer hears nobody, but is still heard
			for o := range s.n {
				if o != victim {
					s.cut[o][victim] = true
				}
			}
			s.logf("%s hears nobody (during epoch %d)", s.nodes[victim].name, p.epoch)
		}
	})
	if p.from != "" && s.rng.IntN(4) != 0 {
		for i, b := range s.backends {
			if b.Name == p.from {
				s.after(time.Duration(s.rng.Int64N(int64(2*simLease))), func() {
					if s.now < s.o.faults {
						s.setTruth(i, true)
					}
				})
			}
		}
	}
}

func (s *sim) keepSilent() {
	for _, nd := range s.nodes {
		if nd.silentUntil > s.now {
			for o := range s.n {
				if o != nd.idx {
					s.cut[nd.idx][o] = true
				}
			}
		}
	}
}

func (s *sim) globalPrimary() string {
	var best uint64
	p := ""
	for e, v := range s.values {
		if e > best {
			best, p = e, v.Primary
		}
	}
	return p
}

// globalFenced is the fenced set of the highest committed record.
func (s *sim) globalFenced() Fenced { return s.globalValue().Fenced }

// globalValue is the value of the highest committed record.
func (s *sim) globalValue() Value {
	var best uint64
	for e := range s.values {
		best = max(best, e)
	}
	return s.values[best]
}

// heal ends the faults: the network is whole again, every proxy runs, all
// views agree with the truth and at least one backend is up.
func (s *sim) heal() {
	s.logf("HEAL")
	for a := range s.n {
		for b := range s.n {
			s.cut[a][b] = false
		}
	}
	s.drop, s.dup, s.maxDelay = 0, 0, 20*time.Millisecond
	// Sometimes only a bare quorum comes back: N-Q proxies stay crashed
	// or cut off, and the Q others must make progress alone. Lost state
	// counts against the same budget, so not while a proxy is amnesic.
	if s.rng.IntN(10) < 3 && s.amnesic() == 0 && s.allSynced() && !s.o.script {
		s.stats.bareQuorum.Add(1)
		for _, i := range s.rng.Perm(s.n)[:s.n-s.quor] {
			nd := s.nodes[i]
			nd.lost = true
			if s.rng.IntN(2) == 0 {
				if nd.alive {
					s.crash(nd)
				}
				s.logf("%s stays down", nd.name)
				continue
			}
			for o := range s.n {
				if o != i {
					s.cut[i][o], s.cut[o][i] = true, true
				}
			}
			s.logf("%s stays cut off", nd.name)
		}
	}
	anyUp := false
	for _, b := range s.backends {
		anyUp = anyUp || s.truth[b.Name]
	}
	if !anyUp {
		b := s.backends[s.rng.IntN(len(s.backends))].Name
		s.truth[b] = true
		delete(s.hookFenced, b)
	}
	// The operator sets the databases right: of several up primaries only
	// the one the cluster routes to (or one) stays; the others are
	// rewound into replicas.
	keep := s.globalPrimary()
	if !s.truth[keep] || s.role[keep] != RolePrimary {
		keep = ""
	}
	for _, b := range s.backends {
		if s.truth[b.Name] && s.role[b.Name] == RolePrimary {
			if keep == "" {
				keep = b.Name
			} else if b.Name != keep {
				s.logf("operator rewinds %s into a replica", b.Name)
				s.role[b.Name] = RoleReplica
			}
		}
	}
	for _, nd := range s.nodes {
		nd.store.failing = false
		for i, b := range s.backends {
			s.setView(nd, i, s.truth[b.Name])
			s.observe(nd, b.Name)
		}
		if nd.paused {
			nd.paused = false
			for _, b := range s.backends {
				s.observe(nd, b.Name)
			}
			for _, e := range nd.held {
				e.at = s.now
				s.seq++
				e.seq = s.seq
				s.q.push(e)
			}
			nd.held = nil
		}
		if !nd.alive && !nd.lost {
			if nd.store.corrupt {
				nd.store.corrupt = false
				nd.store.st = State{}
				nd.lastRec, nd.lastPro, nd.lastAcc = Record{}, 0, Ballot{}
				nd.twinEpoch, nd.twinRoute = nil, nil
				s.logf("%s state wiped by the operator", nd.name)
			}
			s.start(nd)
		}
	}
}

// checkNode verifies the invariants after an event on nd. Forwarding sets
// only shrink as time passes, so two proxies can forward to different
// backends only from the moment one of them starts (or resumes)
// forwarding, which is always an event on that proxy: that is when every
// other proxy is compared with it.
func (s *sim) checkNode(nd *simNode) {
	if !nd.alive || s.failed != "" {
		return
	}
	s.checkTwins(nd)
	if s.failed != "" {
		return
	}
	ss := nd.m.svcState(simService)
	rec, acc := ss.Record, ss.Accepted
	if rec.Epoch < nd.lastRec.Epoch || ss.MaxVoted < nd.lastPro || acc.Epoch < nd.lastAcc.Epoch {
		s.fail("%s went back: record %d->%d voted %d->%d accepted %d->%d", nd.name, nd.lastRec.Epoch, rec.Epoch,
			nd.lastPro, ss.MaxVoted, nd.lastAcc.Epoch, acc.Epoch)
		return
	}
	if acc != nd.lastAcc && acc.Epoch > 0 {
		// One proposal per epoch reaches phase 2, so every proxy that
		// accepts at an epoch accepts the same value.
		if v, ok := s.accepted[acc.Epoch]; ok && v != acc.Value {
			s.fail("two values accepted at epoch %d: %s and %s (%s)", acc.Epoch, v, acc.Value, nd.name)
			return
		}
		s.accepted[acc.Epoch] = acc.Value
		vs := s.votes[acc]
		if vs == nil {
			vs = map[int]bool{}
			s.votes[acc] = vs
		}
		vs[nd.idx] = true
	}
	nd.lastRec, nd.lastPro, nd.lastAcc = rec, ss.MaxVoted, acc
	if p := nd.m.svcs[simService].prop; p != nil && p.phase2 && p.epoch != nd.phase2 && s.now < s.o.faults {
		nd.phase2 = p.epoch
		s.maybeSilence(nd, p)
	}
	if nd.amnesic && !nd.m.Recovering() {
		nd.amnesic = false
	}
	if rec.Epoch > 0 {
		if v, ok := s.values[rec.Epoch]; ok {
			if v != rec.Value {
				s.fail("two values at epoch %d: %s and %s (%s)", rec.Epoch, v, rec.Value, nd.name)
				return
			}
		} else {
			s.firstCommit(rec, nd)
		}
	}
	if nd.paused {
		nd.routes = ""
		return
	}
	b, rem := nd.m.Route(simService)
	local := simClock{s, nd}.Now()
	started := b != "" && (b != nd.routes || local >= nd.until)
	if s.o.trace && (b != nd.routes || started) {
		s.logf("%s routes to %q (record %+v promised %d)", nd.name, b, rec, ss.MaxVoted)
	}
	nd.routes, nd.until = b, local+rem
	if rem <= 0 {
		nd.until = 1 << 62 // on_quorum_loss=keep: no end
	}
	if !started {
		return
	}
	for _, o := range s.nodes {
		if o == nd || !o.alive || o.paused {
			continue
		}
		if ob, _ := o.m.Route(simService); ob != "" && ob != b {
			s.fail("split brain: %s forwards to %s while %s forwards to %s", o.name, ob, nd.name, b)
			return
		}
	}
}

func (s *sim) firstCommit(rec Record, nd *simNode) {
	s.values[rec.Epoch] = rec.Value
	s.firstSeen[rec.Epoch] = s.now
	s.stats.commits.Add(1)
	s.logf("COMMIT epoch %d %s (first seen at %s)", rec.Epoch, rec.Value, nd.name)
	if n := len(s.votes[Ballot{Epoch: rec.Epoch, Value: rec.Value}]); n < s.quor {
		s.fail("epoch %d %s committed with %d voters, quorum is %d", rec.Epoch, rec.Value, n, s.quor)
		return
	}
	var pe uint64
	for e := range s.values {
		if e < rec.Epoch && e > pe {
			pe = e
		}
	}
	pv := s.values[pe]
	// Fencing: a fenced backend never becomes primary, and only an
	// operator's unfence takes one out of the set.
	if pv.Fenced.Has(rec.Primary) {
		s.fail("epoch %d made %q primary while epoch %d has it fenced", rec.Epoch, rec.Primary, pe)
		return
	}
	for _, b := range pv.Fenced.List() {
		if !rec.Fenced.Has(b) && s.unfenceAt[b] < s.fencedAt[b] {
			s.fail("epoch %d unfenced %q with no operator's unfence since it was fenced", rec.Epoch, b)
			return
		}
	}
	for _, b := range rec.Fenced.List() {
		if !pv.Fenced.Has(b) {
			s.fencedAt[b] = s.now
		}
	}
	switch {
	case len(rec.Fenced) > len(pv.Fenced):
		s.stats.fences.Add(1)
	case len(rec.Fenced) < len(pv.Fenced):
		s.stats.unfences.Add(1)
	}
	if rec.Paused && !pv.Paused {
		s.pausedFrom = s.pauseAskedAt
	}
	prev := pv.Primary
	if pv.Paused && prev != rec.Primary && prev != "" {
		// Paused: only an operator moves the primary.
		sw, okS := s.switchAt[rec.Primary]
		fe, okF := s.fenceAt[prev]
		if !(okS && sw >= s.pausedFrom) && !(okF && fe >= s.pausedFrom) {
			s.fail("epoch %d moved the primary from %q to %q while epoch %d had the service paused, with no operator's switchover or fence since the pause", rec.Epoch, prev, rec.Primary, pe)
			return
		}
	}
	if pe == 0 {
		if !s.roleAware {
			// Without roles the cluster's first choice is the primary:
			// the operator's databases follow it (nothing else could).
			for _, b := range s.backends {
				s.setRole(b.Name, map[bool]Role{true: RolePrimary, false: RoleReplica}[b.Name == rec.Primary])
			}
		}
		return // with roles, checked when the bootstrap was proposed (checkAnswer)
	}
	if prev == rec.Primary {
		return
	}
	s.stats.failovers.Add(1)
	since := s.firstSeen[pe] - (3*simLease + simLease*3/2)
	if t, ok := s.switchAt[rec.Primary]; ok && t >= since {
		return
	}
	if s.follows[rec.Value] {
		s.stats.follows.Add(1)
		return // roles are facts: it moved to the backend that reported primary
	}
	if t, ok := s.fenceAt[prev]; ok && t >= since {
		return // an operator fenced the primary: the move needs no one to see it down
	}
	if s.promoteFailedRun(pe, prev) {
		// moving on after a failed promote of prev: no one needs to see it down
		s.stats.movesOn.Add(1)
		return
	}
	bi := -1
	for i, b := range s.backends {
		if b.Name == prev {
			bi = i
		}
	}
	saw := 0
	for _, o := range s.nodes {
		if !o.view[prev] || s.lastDown[o.idx][bi] >= since {
			saw++
		}
	}
	if saw < s.quor {
		s.fail("epoch %d moved %q -> %q with only %d proxies seeing %q down and no switchover", rec.Epoch, prev, rec.Primary, saw, prev)
	}
}

// promoteFailedRun reports whether the promote of prev failed at some epoch
// up to pe from which every committed epoch kept prev as primary.
func (s *sim) promoteFailedRun(pe uint64, prev string) bool {
	for e := range s.promoteFailed {
		if e > pe || s.values[e].Primary != prev {
			continue
		}
		run := true
		for x, v := range s.values {
			if x > e && x <= pe && v.Primary != prev {
				run = false
				break
			}
		}
		if run {
			return true
		}
	}
	return false
}

// checkEnd requires progress: after the heal every proxy forwards to one
// backend that is up.
func (s *sim) checkEnd() {
	if why := s.converged(); why != "" {
		s.fail("no progress within %v of the heal (and %v of grace): %s", s.o.heal, simGrace, why)
	}
}

// converged says why the cluster has not converged ("" if it has): every
// proxy runs and forwards to one backend that is up.
func (s *sim) converged() string {
	want := ""
	for _, nd := range s.nodes {
		if nd.lost {
			continue
		}
		if !nd.alive {
			return nd.name + " is down"
		}
		b, _ := nd.m.Route(simService)
		if b == "" {
			sv := nd.m.svcs[simService]
			return fmt.Sprintf("%s does not route (status: %s; state %+v prop %+v next %v leaseAt %v now %v paused %v)",
				nd.name, sv.decision, nd.m.svcState(simService), sv.prop, sv.next, sv.leaseAt, simClock{s, nd}.Now(), nd.paused)
		}
		if !s.truth[b] {
			return fmt.Sprintf("%s routes to %s, which is down", nd.name, b)
		}
		if want != "" && b != want {
			return fmt.Sprintf("%s routes to %s, another to %s", nd.name, b, want)
		}
		if s.roleAware && s.role[b] != RolePrimary {
			sv := nd.m.svcs[simService]
			return fmt.Sprintf("%s routes to %s, which does not report primary (status: %s; intent %+v)",
				nd.name, b, sv.decision, nd.m.svcState(simService).Intent)
		}
		want = b
		// A failed promote must lead to another candidate when one exists.
		if sv := nd.m.svcs[simService]; sv.retry != nil && sv.retry.backend == b {
			if c, _ := nd.m.candidate(sv, b); c != "" {
				return fmt.Sprintf("%s has not moved on from %s, whose promote failed, to %s", nd.name, b, c)
			}
		}
	}
	return ""
}

// seedBase shifts the seeds run (QP_SIM_SEED_BASE), to explore new ones.
var seedBase = func() uint64 {
	n, _ := strconv.ParseUint(os.Getenv("QP_SIM_SEED_BASE"), 10, 64)
	return n
}()

func simSeedCount(t *testing.T) int {
	if *flagSeeds > 0 {
		return *flagSeeds
	}
	if v := os.Getenv("QP_SIM_SEEDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("QP_SIM_SEEDS=%q: want a positive integer", v)
		}
		return n
	}
	if testing.Short() {
		return 1000
	}
	return 10000
}

// runSeeds runs seeds [0,count) in parallel and returns the first failing
// seed and its message, or -1.
func runSeeds(count int, base simOpts, stats *simStats) (int, string) {
	var next atomic.Int64
	var mu sync.Mutex
	failSeed, failMsg := -1, ""
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= count {
					return
				}
				mu.Lock()
				stop := failSeed >= 0 && failSeed < i
				mu.Unlock()
				if stop {
					return
				}
				o := base
				o.seed = uint64(i) + seedBase
				s := newSim(o)
				s.stats = stats
				msg := s.run()
				stats.events.Add(int64(s.events))
				if msg != "" {
					mu.Lock()
					if failSeed < 0 || i < failSeed {
						failSeed, failMsg = i, msg
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return failSeed, failMsg
}

func traceSeed(seed int, base simOpts) string {
	o := base
	o.seed, o.trace = uint64(seed), true
	s := newSim(o)
	s.stats = &simStats{}
	msg := s.run()
	tr := s.trace
	if len(tr) > 400 {
		tr = tr[len(tr)-400:]
	}
	return fmt.Sprintf("seed %d (N=%d): %s\nlast %d trace lines:\n%s", seed, s.n, msg, len(tr), strings.Join(tr, "\n"))
}

func TestSimulation(t *testing.T) {
	if *flagSeed >= 0 {
		t.Log(traceSeed(int(*flagSeed), defaultOpts()))
		return
	}
	count := simSeedCount(t)
	stats := &simStats{}
	start := time.Now()
	seed, msg := runSeeds(count, defaultOpts(), stats)
	t.Logf("%d seeds (%d healed to a bare quorum), %d events, %d commits, %d primary changes (%d moving on after %d failed promotes) in %v",
		count, stats.bareQuorum.Load(), stats.events.Load(), stats.commits.Load(), stats.failovers.Load(),
		stats.movesOn.Load(), stats.promoteFails.Load(), time.Since(start).Round(time.Millisecond))
	if stats.promoteFails.Load() == 0 || stats.movesOn.Load() == 0 {
		t.Errorf("no failed promote moved the cluster on: the simulation did not exercise that rule")
	}
	t.Logf("%d commits grew the fenced set, %d shrank it", stats.fences.Load(), stats.unfences.Load())
	t.Logf("%d promotes landed after their hook reported a failure, %d moves to the backend that reports primary, %d disk failures",
		stats.late.Load(), stats.follows.Load(), stats.disks.Load())
	if stats.late.Load() == 0 || stats.follows.Load() == 0 || stats.disks.Load() == 0 {
		t.Errorf("the simulation did not exercise late promotes, moves to a reported primary and failing disks")
	}
	if stats.fences.Load() == 0 || stats.unfences.Load() == 0 {
		t.Errorf("no commit fenced or unfenced a backend: the simulation did not exercise fencing")
	}
	if seed >= 0 {
		t.Fatalf("invariant violated: %s\nreproduce with: go test ./cluster -run TestSimulation -sim.seed=%d -v\n%s", msg, uint64(seed)+seedBase, traceSeed(int(uint64(seed)+seedBase), defaultOpts()))
	}
}

// TestSimulationMixedWireFormats runs the simulation with every start of a
// proxy choosing at random between an older build of wire format 5 and
// this one: the invariants hold and the healed cluster makes progress
// whatever the mix.
func TestSimulationMixedWireFormats(t *testing.T) {
	o := defaultOpts()
	o.mixed = true
	if *flagSeed >= 0 {
		t.Log(traceSeed(int(*flagSeed), o))
		return
	}
	count := max(simSeedCount(t)/5, 200)
	stats := &simStats{}
	start := time.Now()
	seed, msg := runSeeds(count, o, stats)
	t.Logf("%d seeds with proxies of wire formats 5 and %d mixed at random, %d events, %d commits, %d primary changes in %v",
		count, wireMax, stats.events.Load(), stats.commits.Load(), stats.failovers.Load(), time.Since(start).Round(time.Millisecond))
	if seed >= 0 {
		t.Fatalf("invariant violated: %s\nreproduce with: go test ./cluster -run TestSimulationMixedWireFormats -sim.seed=%d -v\n%s", msg, uint64(seed)+seedBase, traceSeed(int(uint64(seed)+seedBase), o))
	}
}

// TestSimulationDeterministic replays seeds and requires the same run each
// time: a seed that a failure prints must reproduce it, and a checker
// that finds a broken rule on one machine must find it on every machine.
// Map order in the protocol code once made a seed pass or fail by chance.
func TestSimulationDeterministic(t *testing.T) {
	once := func(o simOpts) (string, int) {
		o.trace = true
		s := newSim(o)
		s.stats = &simStats{}
		msg := s.run()
		return msg + "\n" + strings.Join(s.trace, "\n"), s.events
	}
	d := defaultOpts()
	for _, base := range []simOpts{
		{faults: d.faults, heal: d.heal, promoteFail: d.promoteFail},
		{faults: d.faults, heal: d.heal, promoteFail: d.promoteFail, safetyOnly: true, n: 5, knobs: knobs{anyVoteYields: true}},
	} {
		for i := range 60 {
			o := base
			o.seed = uint64(i) + seedBase
			a, ea := once(o)
			b, eb := once(o)
			if a != b || ea != eb {
				t.Fatalf("seed %d (knobs %+v) ran two ways: %d and %d events", o.seed, base.knobs, ea, eb)
			}
		}
	}
}

// TestSimulationFailoverTime measures, in simulated time, how long a
// failover takes from the primary's death (each proxy's check seeing it
// within 200ms) to the commit of its successor, with and without the rank
// delay, and requires the delay to help: when proxies propose at once the
// votes split and the winner waits out the commit wait. (The delay costs a
// little in the median and saves a commit wait in the tail.)
func TestSimulationFailoverTime(t *testing.T) {
	const seeds = 300
	for _, n := range []int{3, 5} {
		fastBy := map[bool]int{}
		for _, noDelay := range []bool{false, true} {
			var times []time.Duration
			fast := 0
			for i := range seeds {
				o := simOpts{seed: uint64(i) + seedBase, n: n, faults: 3 * simLease, heal: 5 * simLease, script: true,
					spread: 200 * time.Millisecond, knobs: knobs{noRankDelay: noDelay}}
				s := newSim(o)
				s.stats = &simStats{}
				if msg := s.run(); msg != "" {
					t.Fatalf("seed %d: %s", o.seed, msg)
				}
				first := time.Duration(-1)
				for e, v := range s.values {
					if v.Primary != "pg-a" && e > 0 && (first < 0 || s.firstSeen[e] < first) {
						first = s.firstSeen[e]
					}
				}
				if first < 0 {
					t.Fatalf("seed %d (N=%d): no failover", o.seed, n)
				}
				d := first - simLease
				times = append(times, d)
				if d < simLease/2 {
					fast++
				}
			}
			slices.Sort(times)
			fastBy[noDelay] = fast
			t.Logf("FIGURE N=%d rank delay %v: failover (primary dies -> successor committed) median %v p90 %v max %v; %d of %d without the commit wait",
				n, !noDelay, times[len(times)/2], times[len(times)*9/10], times[len(times)-1], fast, seeds)
		}
		if fastBy[false] < fastBy[true] {
			t.Errorf("N=%d: with the rank delay %d failovers avoided the commit wait, without it %d", n, fastBy[false], fastBy[true])
		}
	}
}

// TestSimulationFindsBrokenRules checks the checker: with each rule of the
// protocol switched off in turn, the simulation must find a violation
// within a thousand seeds. A simulation that cannot fail proves nothing.
func TestSimulationFindsBrokenRules(t *testing.T) {
	cases := []struct {
		name   string
		opts   simOpts
		budget int // seeds; rarer schedules get more
	}{
		{"no lease wait before commit", simOpts{knobs: knobs{noLeaseWait: true}}, 1000},
		{"voter keeps routing", simOpts{knobs: knobs{voterKeepsRouting: true}}, 1000},
		{"votes not persisted", simOpts{knobs: knobs{noVotePersist: true}}, 1000},
		{"on_quorum_loss keep", simOpts{keep: true}, 1000},
		{"no phase-1 rule", simOpts{knobs: knobs{noPhase1: true}}, 1000},
		// Needs three proposals racing at one epoch, hence N=5.
		{"any vote yields to a higher name", simOpts{knobs: knobs{anyVoteYields: true}, n: 5}, 1000},
		{"fenced backends are candidates", simOpts{knobs: knobs{ignoreFenced: true}}, 1000},
		// The rules about the databases and the disk.
		{"a new cluster bootstraps by priority", simOpts{knobs: knobs{bootstrapByPriority: true}}, 1000},
		{"a failed promote moves on at once", simOpts{knobs: knobs{moveOnAtOnce: true}}, 1000},
		{"promote without looking for other primaries", simOpts{knobs: knobs{promoteBlind: true}}, 1000},
		{"promote right after a pause, on old views", simOpts{knobs: knobs{promoteAfterPause: true}}, 10000},
		{"a paused service fails over anyway", simOpts{knobs: knobs{ignorePause: true}}, 10000},
		{"an unsaved vote is answered from memory", simOpts{knobs: knobs{answerUnpersisted: true}}, 1000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := c.opts
			d := defaultOpts()
			o.faults, o.heal, o.safetyOnly, o.promoteFail = d.faults, d.heal, true, d.promoteFail
			seed, msg := runSeeds(c.budget, o, &simStats{})
			if seed < 0 {
				t.Fatalf("no violation found in %d seeds with %q: the simulation cannot see what this rule prevents", c.budget, c.name)
			}
			t.Logf("found at seed %d: %s", uint64(seed)+seedBase, msg)
		})
	}
}

// TestSimulationPromoteFailureMovesOn runs one schedule over many seeds:
// the primary of a warm cluster goes down, the promote of the first
// candidate (pg-b) always fails, and the cluster must move on to the next
// one (pg-c) through the vote once pg-b is known not to be primary, with
// every invariant checked on the way.
func TestSimulationPromoteFailureMovesOn(t *testing.T) {
	d := defaultOpts()
	const seeds = 100
	for i := range seeds {
		// With roles the move waits for pg-b to be fenced or to report
		// replica for the settle period; without, for a fence hook.
		o := simOpts{seed: uint64(i) + seedBase, faults: 5 * simLease, heal: d.heal, failOn: "pg-b", script: true, roles: 1 + i%2}
		if o.roles == 2 {
			o.fence = 1
		}
		s := newSim(o)
		s.stats = &simStats{}
		msg := s.run()
		if msg == "" {
			switch {
			case s.globalPrimary() != "pg-c":
				msg = fmt.Sprintf("the cluster ended on %q, want pg-c", s.globalPrimary())
			case s.stats.promoteFails.Load() == 0 || s.stats.movesOn.Load() == 0:
				msg = fmt.Sprintf("%d failed promotes, %d moves on: want the promote of pg-b to fail and the cluster to move on",
					s.stats.promoteFails.Load(), s.stats.movesOn.Load())
			}
		}
		if msg != "" {
			o.trace = true
			tr := newSim(o)
			tr.stats = &simStats{}
			tr.run()
			lines := tr.trace
			if len(lines) > 300 {
				lines = lines[len(lines)-300:]
			}
			t.Fatalf("seed %d (N=%d): %s\n%s", o.seed, s.n, msg, strings.Join(lines, "\n"))
		}
	}
}

// TestSimulationManyServices: hundreds of services over the same backends
// (twins of the simulated one, without hooks or roles), every invariant
// checked for each. Scripted, the primary every service uses dies at once
// and every proxy must end with every service on a backend that runs;
// with random faults, only safety is judged for the twins.
func TestSimulationManyServices(t *testing.T) {
	d := defaultOpts()
	scripted, random, twins := 10, 20, 200
	if testing.Short() {
		scripted, random, twins = 3, 5, 100
	}
	if v := os.Getenv("QP_SIM_TWIN_SEEDS"); v != "" { // make soak runs more
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("QP_SIM_TWIN_SEEDS=%q: want a positive integer", v)
		}
		scripted, random = n, 2*n
	}
	for i := range scripted {
		o := simOpts{seed: uint64(i) + seedBase, faults: 3 * simLease, heal: 5 * simLease, script: true,
			spread: 200 * time.Millisecond, twins: twins}
		s := newSim(o)
		s.stats = &simStats{}
		msg := s.run()
		if msg == "" {
			msg = s.twinsConverged()
		}
		if msg != "" {
			t.Fatalf("seed %d (N=%d, %d twins, scripted): %s", o.seed, s.n, twins, msg)
		}
	}
	for i := range random {
		o := simOpts{seed: uint64(i) + seedBase, faults: d.faults, heal: d.heal, promoteFail: d.promoteFail, twins: twins / 8}
		s := newSim(o)
		s.stats = &simStats{}
		if msg := s.run(); msg != "" {
			t.Fatalf("seed %d (N=%d, %d twins, random faults): %s", o.seed, s.n, twins/8, msg)
		}
	}
}

// The twins' checks find a broken rule: without the lease wait before a
// commit, some twin is routed to two backends at once.
func TestSimulationManyServicesFindsSplitBrain(t *testing.T) {
	d := defaultOpts()
	for i := range 100 {
		o := simOpts{seed: uint64(i) + seedBase, faults: d.faults, heal: d.heal, twins: 25, safetyOnly: true,
			roles: 2, fence: 2, knobs: knobs{noLeaseWait: true}}
		s := newSim(o)
		s.stats = &simStats{}
		if msg := s.run(); strings.Contains(msg, "twin-") && strings.Contains(msg, "split brain") {
			t.Logf("found at seed %d: %s", o.seed, msg)
			return
		}
	}
	t.Fatal("no split brain of a twin in 100 seeds without the lease wait")
}

// twinsConverged says why the twins have not all moved to a backend that
// runs on every proxy that runs ("" if they have).
func (s *sim) twinsConverged() string {
	for _, nd := range s.nodes {
		if !nd.alive || nd.lost {
			continue
		}
		for _, tw := range s.twinConfigs() {
			b, _ := nd.m.Route(tw.Name)
			if b == "" || !s.truth[b] {
				return fmt.Sprintf("%s routes %s to %q at the end (runs: %v)", nd.name, tw.Name, b, s.truth[b])
			}
		}
	}
	return ""
}
