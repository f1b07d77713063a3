package daemon

// Metrics by Prometheus's conventions: counters end in _total, values are
// in base units (bytes, seconds), every metric says in its HELP what it
// counts and which way bytes go, and every series is there from the first
// scrape (they are read from the proxy's state at scrape time, not created
// by the first event). The data path only bumps its own atomic counters.
// memberlist's own metrics come through go-metrics, under
// quorumproxy_memberlist_.

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gometrics "github.com/hashicorp/go-metrics"
	promsink "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quorumproxy/quorumproxy/health"
)

// One registry per process: go-metrics' global instance (memberlist
// reports through it) feeds one sink, and the collector below reads
// whichever Daemon runs (tests start several in one process, one after
// another).
var (
	globalOnce sync.Once
	globalReg  *prometheus.Registry
	globalErr  error
	current    atomic.Pointer[Daemon]

	// Events, counted as they happen; their series are made at start
	// (zero) for every service the config names.
	healthTransitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quorumproxy_health_transitions_total",
		Help: "Health state changes of a backend as this proxy's checks saw them, by the state entered (up, down).",
	}, []string{"service", "backend", "to"})
	hookRuns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quorumproxy_hook_runs_total",
		Help: "Runs of a service's fence, promote, notify and repoint hooks on this proxy, by result (ok, error: a non-zero exit, a timeout or no start).",
	}, []string{"service", "hook", "result"})
	failovers = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quorumproxy_failovers_total",
		Help: "Times the service's primary (in a cluster: the record's primary; alone: the target) moved from one backend to another, failovers and switchovers alike.",
	}, []string{"service"})
	failoverDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "quorumproxy_failover_duration_seconds",
		Help:    "Failovers as this proxy saw them: from its checks reporting the backend it routed to down to routing another one.",
		Buckets: []float64{.1, .25, .5, 1, 2, 3, 5, 10, 20, 30, 60},
	}, []string{"service"})
	checkDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "quorumproxy_health_check_duration_seconds",
		Help:    "How long each health check took, per checked address and kind (services that check an address the same way share one check).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"address", "kind"})
)

func metricsRegistry() (*prometheus.Registry, error) {
	globalOnce.Do(func() {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
			stateCollector{}, healthTransitions, hookRuns, failovers, failoverDuration, checkDuration)
		// Expiration 0: a counter that stops moving must not vanish from /metrics.
		sink, err := promsink.NewPrometheusSinkFrom(promsink.PrometheusOpts{Registerer: reg, Name: "quorumproxy_sink"})
		if err != nil {
			globalErr = err
			return
		}
		conf := gometrics.DefaultConfig("quorumproxy")
		conf.EnableHostname = false
		conf.EnableHostnameLabel = false
		conf.EnableRuntimeMetrics = false // the Go collector above has them
		conf.EnableTypePrefix = false
		if _, err := gometrics.NewGlobal(conf, sink); err != nil {
			globalErr = err
			return
		}
		globalReg = reg
	})
	return globalReg, globalErr
}

// metricsExporter serves /metrics for one Daemon.
type metricsExporter struct {
	reg *prometheus.Registry

	mu         sync.Mutex
	lastStatus map[[2]string]health.Status // service, backend -> last status seen
}

func newMetricsExporter() (*metricsExporter, error) {
	reg, err := metricsRegistry()
	if err != nil {
		return nil, err
	}
	return &metricsExporter{reg: reg, lastStatus: map[[2]string]health.Status{}}, nil
}

func (m *metricsExporter) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// serviceSeries makes the event series of every configured service exist
// at zero, so that rate() and increase() see them from the start.
func serviceSeries(d *Daemon) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.cfg.Services {
		failovers.WithLabelValues(s.Name)
		for _, h := range []string{"fence", "promote", "notify", "repoint"} {
			for _, r := range []string{"ok", "error"} {
				hookRuns.WithLabelValues(s.Name, h, r)
			}
		}
		for _, b := range s.Backends {
			for _, to := range []string{"up", "down"} {
				healthTransitions.WithLabelValues(s.Name, b.Name, to)
			}
		}
	}
}

// healthChanged counts a state report from the health monitor.
func (m *metricsExporter) healthChanged(s health.State) {
	key := [2]string{s.Service, s.Backend}
	m.mu.Lock()
	prev, seen := m.lastStatus[key]
	m.lastStatus[key] = s.Status
	m.mu.Unlock()
	if seen && prev != s.Status {
		healthTransitions.WithLabelValues(s.Service, s.Backend, s.Status.String()).Inc()
	}
}

func countHook(service, kind string, ok bool) {
	result := "ok"
	if !ok {
		result = "error"
	}
	hookRuns.WithLabelValues(service, kind, result).Inc()
}

func observeCheck(address, kind string, d time.Duration) {
	checkDuration.WithLabelValues(address, kind).Observe(d.Seconds())
}

// failoverClock times failovers as this proxy saw them, for
// quorumproxy_failover_duration_seconds: from its checks first reporting
// the backend it routes to down, to routing a different one. A planned
// switchover (the old primary up) is not timed.
type failoverClock struct {
	mu     sync.Mutex
	routed map[string]string    // service -> the last backend routed to
	downAt map[string]time.Time // service -> when that backend was seen down
}

func newFailoverClock() *failoverClock {
	return &failoverClock{routed: map[string]string{}, downAt: map[string]time.Time{}}
}

// health notes a check's report about a backend.
func (f *failoverClock) health(service, backend string, up bool, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.routed[service] != backend {
		return
	}
	if _, ok := f.downAt[service]; !up && !ok {
		f.downAt[service] = now
	} else if up {
		delete(f.downAt, service)
	}
}

// routedTo notes that the service now routes to backend ("" none): a move
// to another backend after the last one was seen down is a failover.
func (f *failoverClock) routedTo(service, backend string, now time.Time) {
	if backend == "" {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	last := f.routed[service]
	f.routed[service] = backend
	if last == backend {
		return
	}
	if t, ok := f.downAt[service]; ok {
		failoverDuration.WithLabelValues(service).Observe(now.Sub(t).Seconds())
	}
	delete(f.downAt, service)
}

// metric describes one series family read at scrape time.
type metric struct {
	name, help string
	desc       *prometheus.Desc
	typ        prometheus.ValueType
}

func newMetric(name, help string, typ prometheus.ValueType, labels ...string) metric {
	return metric{name: name, help: help, desc: prometheus.NewDesc(name, help, labels, nil), typ: typ}
}

var (
	svc = []string{"service"}
	be  = []string{"service", "backend"}

	mAccepted  = newMetric("quorumproxy_connections_accepted_total", "Client connections the service's listener accepted.", prometheus.CounterValue, svc...)
	mRefused   = newMetric("quorumproxy_connections_refused_total", "Client connections the service closed without a backend: a limit, no target, or a hold (switch_hold) that ended.", prometheus.CounterValue, svc...)
	mActive    = newMetric("quorumproxy_connections_active", "Client connections open now, held ones included.", prometheus.GaugeValue, svc...)
	mHeld      = newMetric("quorumproxy_connections_held", "Client connections waiting for a target now (switch_hold).", prometheus.GaugeValue, svc...)
	mRouting   = newMetric("quorumproxy_service_routing", "1 while a new connection of the service would be forwarded now (GET /health/SERVICE answers 200), else 0.", prometheus.GaugeValue, svc...)
	mDual      = newMetric("quorumproxy_alert_dual_primary", "1 while two or more backends of the service report primary.", prometheus.GaugeValue, svc...)
	mPromote   = newMetric("quorumproxy_alert_promote_held", "1 while the promote of the cluster's decision is held because another backend may be primary.", prometheus.GaugeValue, svc...)
	mNoPrimary = newMetric("quorumproxy_alert_no_primary", "1 while a new cluster waits for a backend that reports primary.", prometheus.GaugeValue, svc...)

	mSessions  = newMetric("quorumproxy_backend_sessions_total", "Sessions this proxy opened to the backend.", prometheus.CounterValue, be...)
	mDialFail  = newMetric("quorumproxy_backend_dial_failures_total", "Failed connects to the backend (refused, timed out, reset).", prometheus.CounterValue, be...)
	mBeRefused = newMetric("quorumproxy_backend_refused_total", "Client connections not sent to the backend because of its max_connections.", prometheus.CounterValue, be...)
	mSent      = newMetric("quorumproxy_backend_sent_bytes_total", "Bytes from clients written to the backend (client to backend).", prometheus.CounterValue, be...)
	mReceived  = newMetric("quorumproxy_backend_received_bytes_total", "Bytes read from the backend and passed to clients (backend to client).", prometheus.CounterValue, be...)
	mBeActive  = newMetric("quorumproxy_backend_active_sessions", "Sessions open to the backend now.", prometheus.GaugeValue, be...)
	mTarget    = newMetric("quorumproxy_backend_target", "1 for the backend an active-passive service sends new connections to.", prometheus.GaugeValue, be...)
	mDraining  = newMetric("quorumproxy_backend_draining", "1 while the backend is drained on this proxy (no new connections).", prometheus.GaugeValue, be...)
	mFencedLoc = newMetric("quorumproxy_backend_fenced", "1 while this proxy keeps the backend out of new connections because it is fenced.", prometheus.GaugeValue, be...)
	mUp        = newMetric("quorumproxy_backend_up", "1 while this proxy's checks see the backend up.", prometheus.GaugeValue, be...)
	mLagBytes  = newMetric("quorumproxy_backend_replication_lag_bytes", "Replication lag of the backend in bytes as its last check read it (-1: not known).", prometheus.GaugeValue, be...)
	mLagSecs   = newMetric("quorumproxy_backend_replication_lag_seconds", "Replication lag of the backend in seconds as its last check read it (-1: not known).", prometheus.GaugeValue, be...)
	mChecks    = newMetric("quorumproxy_health_checks_total", "Health checks of the backend for the service.", prometheus.CounterValue, be...)
	mCheckFail = newMetric("quorumproxy_health_check_failures_total", "Health checks of the backend that failed.", prometheus.CounterValue, be...)
	mInfo      = newMetric("quorumproxy_backend_info", "1 for each backend, with its address and region label (join on service and backend).", prometheus.GaugeValue, "service", "backend", "address", "region")
	mLagAlert  = newMetric("quorumproxy_alert_replication_lag", "1 while the replica's lag, as this proxy's check reads it, is above the service's alert_lag or alert_lag_bytes.", prometheus.GaugeValue, be...)

	mEpoch     = newMetric("quorumproxy_cluster_epoch", "Epoch of the service's record on this proxy.", prometheus.GaugeValue, svc...)
	mMaxVoted  = newMetric("quorumproxy_cluster_max_voted_epoch", "Highest epoch this proxy voted in for the service.", prometheus.GaugeValue, svc...)
	mLease     = newMetric("quorumproxy_cluster_lease_remaining_seconds", "Time left on this proxy's lease to route the service (0: none).", prometheus.GaugeValue, svc...)
	mPaused    = newMetric("quorumproxy_cluster_paused", "1 while an operator has paused the service's automatic failover.", prometheus.GaugeValue, svc...)
	mFenced    = newMetric("quorumproxy_cluster_fenced", "1 while the cluster's record has the backend fenced (no failover picks it).", prometheus.GaugeValue, be...)
	mRecov     = newMetric("quorumproxy_cluster_recovering", "1 while this proxy is learning the cluster's state from its peers (neither votes nor routes).", prometheus.GaugeValue)
	mStore     = newMetric("quorumproxy_cluster_store_failed", "1 while this proxy cannot write its state_dir (neither votes nor routes).", prometheus.GaugeValue)
	mPeers     = newMetric("quorumproxy_cluster_peers", "Proxies in the cluster, this one included.", prometheus.GaugeValue)
	mQuorum    = newMetric("quorumproxy_cluster_quorum", "Proxies that make a quorum.", prometheus.GaugeValue)
	mReachable = newMetric("quorumproxy_cluster_reachable_proxies", "Proxies this one heard from within a lease, itself included.", prometheus.GaugeValue)
	mDropped   = newMetric("quorumproxy_cluster_dropped_messages_total", "Cluster messages dropped, by reason: garbage, stranger, unknown_service, stale, queue_full, wire_version (a wire format this proxy does not speak, or a peer that speaks none it does).", prometheus.CounterValue, "reason")
	mDupes     = newMetric("quorumproxy_cluster_duplicate_messages_total", "Copies of a view already heard (direct and gossip carry each change): expected, not a fault.", prometheus.CounterValue)
	mVotes     = newMetric("quorumproxy_cluster_votes_total", "Votes this proxy answered, by result (granted, refused).", prometheus.CounterValue, "result")
	mProposals = newMetric("quorumproxy_cluster_proposals_total", "Proposals this proxy made.", prometheus.CounterValue)
	mGivenUp   = newMetric("quorumproxy_cluster_proposals_given_up_total", "Proposals this proxy gave up (refused, no quorum in time, yielded).", prometheus.CounterValue)
	mCommits   = newMetric("quorumproxy_cluster_commits_total", "Records this proxy committed.", prometheus.CounterValue)
	mAdoptions = newMetric("quorumproxy_cluster_adoptions_total", "Records this proxy adopted from others.", prometheus.CounterValue)
	mSaves     = newMetric("quorumproxy_cluster_saves_total", "Saves (fsyncs) of this proxy's state_dir.", prometheus.CounterValue)
	mNoCand    = newMetric("quorumproxy_cluster_no_candidate_total", "Times a failover found no backend that could take over.", prometheus.CounterValue)
	mLoopBusy  = newMetric("quorumproxy_loop_busy_seconds_total", "Time the event loop spent serving rather than waiting for events (Linux): its rate is the share of a CPU the loop keeps busy.", prometheus.CounterValue, "loop")
	mLoopAcc   = newMetric("quorumproxy_loop_accepted_total", "Client connections the event loop accepted, all services (Linux).", prometheus.CounterValue, "loop")
	mLoopNew   = newMetric("quorumproxy_loop_steered", "1 if new connections are sent to the event loop now (Linux). With the default loops (one per CPU) only half of them take new connections until accepting keeps those busy.", prometheus.GaugeValue, "loop")
	mPersist   = newMetric("quorumproxy_cluster_persist_errors_total", "Saves of the state_dir that failed.", prometheus.CounterValue)

	allMetrics = []metric{mAccepted, mRefused, mActive, mHeld, mRouting, mDual, mPromote, mNoPrimary,
		mSessions, mDialFail, mBeRefused, mSent, mReceived, mBeActive, mTarget, mDraining, mFencedLoc, mUp,
		mLagBytes, mLagSecs, mChecks, mCheckFail, mLagAlert, mInfo,
		mEpoch, mMaxVoted, mLease, mPaused, mFenced, mRecov, mStore, mPeers, mQuorum, mReachable,
		mDropped, mDupes, mVotes, mProposals, mGivenUp, mCommits, mAdoptions, mSaves, mNoCand, mPersist,
		mLoopBusy, mLoopAcc, mLoopNew}
)

// stateCollector reads the running Daemon's state at scrape time.
type stateCollector struct{}

func (stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range allMetrics {
		ch <- m.desc
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (stateCollector) Collect(ch chan<- prometheus.Metric) {
	d := current.Load()
	if d == nil {
		return
	}
	put := func(m metric, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, v, labels...)
	}
	for _, ps := range d.px.Status() {
		put(mAccepted, float64(ps.Accepted), ps.Name)
		put(mRefused, float64(ps.Refused), ps.Name)
		put(mActive, float64(ps.Active), ps.Name)
		put(mHeld, float64(ps.Held), ps.Name)
		bs, _ := routesOf(ps)
		put(mRouting, b2f(len(bs) > 0), ps.Name)
		put(mDual, b2f(ps.DualPrimary), ps.Name)
		if sc := d.serviceConfig(ps.Name); sc != nil {
			for _, b := range sc.Backends {
				put(mInfo, 1, ps.Name, b.Name, b.Address, b.Region)
			}
		}
		for _, b := range ps.Backends {
			put(mSessions, float64(b.Sessions), ps.Name, b.Name)
			put(mDialFail, float64(b.DialFailures), ps.Name, b.Name)
			put(mBeRefused, float64(b.Refused), ps.Name, b.Name)
			put(mSent, float64(b.BytesIn), ps.Name, b.Name)
			put(mReceived, float64(b.BytesOut), ps.Name, b.Name)
			put(mBeActive, float64(b.Active), ps.Name, b.Name)
			put(mTarget, b2f(b.Name == ps.Target), ps.Name, b.Name)
			put(mDraining, b2f(b.Draining), ps.Name, b.Name)
			put(mFencedLoc, b2f(b.Fenced), ps.Name, b.Name)
		}
	}
	for i, l := range d.px.Loops() {
		put(mLoopBusy, l.Busy.Seconds(), strconv.Itoa(i))
		put(mLoopAcc, float64(l.Accepted), strconv.Itoa(i))
		put(mLoopNew, b2f(l.Steered), strconv.Itoa(i))
	}
	for _, s := range d.mon.States() {
		put(mUp, b2f(s.Status == health.StatusUp), s.Service, s.Backend)
		put(mLagBytes, float64(s.LagBytes), s.Service, s.Backend)
		lag := -1.0
		if s.Lag >= 0 {
			lag = s.Lag.Seconds()
		}
		put(mLagSecs, lag, s.Service, s.Backend)
		put(mChecks, float64(s.Checks), s.Service, s.Backend)
		put(mCheckFail, float64(s.Failures), s.Service, s.Backend)
		put(mLagAlert, b2f(d.lag.raised(s.Service, s.Backend)), s.Service, s.Backend)
	}
	if d.cluster == nil {
		return
	}
	cv := d.cluster.view()
	for _, s := range cv.Services {
		put(mEpoch, float64(s.Epoch), s.Service)
		put(mMaxVoted, float64(s.MaxVoted), s.Service)
		put(mLease, s.LeaseMS/1000, s.Service)
		put(mPaused, b2f(s.Paused), s.Service)
		put(mPromote, b2f(hasAlert(s.Alerts, "promote_held")), s.Service)
		put(mNoPrimary, b2f(hasAlert(s.Alerts, "no_primary")), s.Service)
		if sc := d.serviceConfig(s.Service); sc != nil {
			for _, b := range sc.Backends {
				put(mFenced, b2f(slices.Contains(s.Fenced, b.Name)), s.Service, b.Name)
			}
		}
	}
	put(mRecov, b2f(cv.Recovering))
	put(mStore, b2f(cv.StoreError != ""))
	put(mPeers, float64(cv.Peers))
	put(mQuorum, float64(cv.Quorum))
	put(mReachable, float64(len(cv.Reachable)+1))
	c := cv.Counters
	for reason, v := range map[string]uint64{"garbage": c.Garbage, "stranger": c.Stranger, "unknown_service": c.UnknownService,
		"stale": c.Stale, "queue_full": c.QueueFull, "wire_version": c.WireVersion} {
		put(mDropped, float64(v), reason)
	}
	put(mDupes, float64(c.Replay))
	put(mVotes, float64(c.VotesGranted), "granted")
	put(mVotes, float64(c.VotesRefused), "refused")
	put(mProposals, float64(c.Proposals))
	put(mGivenUp, float64(c.GivenUp))
	put(mCommits, float64(c.Commits))
	put(mAdoptions, float64(c.Adoptions))
	put(mSaves, float64(c.Saves))
	put(mNoCand, float64(c.NoCandidate))
	put(mPersist, float64(c.PersistErrors))
}

func hasAlert(alerts []string, kind string) bool {
	return slices.ContainsFunc(alerts, func(a string) bool { return strings.HasPrefix(a, kind) })
}
