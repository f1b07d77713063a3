// Package defaultsbench measures what quorumproxy's default timings give
// (make soak): real PostgreSQL and Redis servers, real proxy processes
// built from this tree with configs that set no timing at all, and
//
//   - kills: a series of kill -9 of the primary's server (the postmaster
//     and its children at once, or redis-server), each measured by the
//     drill (internal/drill: writes through the proxy, RTO until writes
//     are acknowledged again), for PostgreSQL and Redis, through a proxy
//     alone and through a cluster of three; the killed server comes back
//     as a replica of the new primary before the next run, so the series
//     goes back and forth. RTO p50/p90/p99/max per configuration.
//   - freezes: the same with SIGSTOP instead (a frozen host: the kernel
//     still accepts connections, nothing answers), which the checks see
//     only as timeouts.
//   - false failovers under load: pgbench -c 16 -j 2 through the proxy
//     (for Redis, redis-benchmark pipelined straight at the primary) with
//     a healthy primary; every failover counted (there must be none), with
//     the checks' margin.
//   - false failovers on a degraded network: 5% loss and 50ms±50ms delay
//     on every packet of every connection a proxy opens (to the backends
//     and to its peers: checks, the data path, hooks and gossip), by
//     internal/netem over NFQUEUE; failovers, lost leases and unreachable
//     peers counted.
//
// It is a measurement, not a unit test: it runs only when
// QP_DEFAULTS_RUNS is set, and fails only on a false failover, a kill that
// did not recover, or a harness error, never on a time. Knobs:
//
//	QP_DEFAULTS_RUNS=N      kills per configuration (p99 needs N >= 100 to be more than the max)
//	QP_DEFAULTS_SECONDS=S   length of each false-failover run (default 60)
//	QP_DEFAULTS_OUT=FILE    also write the results as Markdown to FILE
//	QP_DEFAULTS_FREEZES=N   freezes (SIGSTOP) per configuration (default max(3, N/3))
//	QP_DEFAULTS_PARTS=...   which parts run: kill,freeze,load,netem (default all)
//	QP_DEFAULTS_LOGDIR=DIR  keep every proxy's log there (QP_DEFAULTS_LOGS=1: print them)
//	QP_DEFAULTS_HEALTH=...  extra [service.health] lines, QP_DEFAULTS_CLUSTER=... extra
//	                        [cluster] lines: to measure other settings than the defaults
//	                        (the report names the effective settings either way)
//
// The netem part needs root and nfnetlink_queue; it skips without them.
package defaultsbench
