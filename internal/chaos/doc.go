// Package chaos holds real-partition tests of a quorumproxy cluster: every
// proxy and backend runs in its own network namespace on a private bridge,
// and the tests cut links with iptables, degrade them with delay, jitter
// and loss (the netem qdisc where the kernel has it; otherwise an NFQUEUE
// rule and internal/netem, the same in user space), and pause or kill
// processes, then check
// the agreement's safety properties from each proxy's /status and from
// which backend answers through it. The tests need root and skip without it.
//
// Knobs for longer runs (make soak):
//
//	QP_CHAOS_TRIALS=N   trials per measured scenario (default 2 or 3); set,
//	                    TestRegions also measures network = "lan"
//	QP_CHAOS_SECONDS=S  length of the flapping and degraded-network phases
//	QP_CHAOS_LOSS=P     packet loss percent on the degraded network (default 5)
//	QP_CHAOS_RACE=1     build the daemon with the race detector
//	QP_CHAOS_LOGS=1     print every daemon's log, even when a test passes
//
// Everything the tests create is named qpc<owner pid, base 36>-...; a run
// removes what killed earlier runs left behind.
package chaos
