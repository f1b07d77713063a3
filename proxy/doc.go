// Package proxy is quorumproxy's data path: the services' listeners, the
// backend pool, the choice of a backend (active-passive target or
// active-active balancing, role- and lag-aware), moving bytes with
// half-close, limits, idle timeout, fencing (closing a backend's
// sessions), drain, reload and the PROXY protocol.
//
// It imports nothing else of quorumproxy: it is told what to route to.
// Health arrives through SetHealth; a cluster that owns an active-passive
// service's target (ServiceConfig.External) sets it with SetRoute and a
// Lease; local target changes are reported through Options.OnTarget.
//
// # The data plane on Linux: event loops
//
// Options.Loops event loops (default one per CPU) each own an
// edge-triggered epoll set. Every service listens with one SO_REUSEPORT
// socket per loop, so the kernel spreads new connections over the loops
// (with the default count, a BPF program on the group sends them to half
// of the loops until accepting keeps those busy) and a loop accepts its own: both fds of a session live on the loop that
// accepted it, and only that loop touches the session. The data path
// takes no lock and no goroutine per session; other goroutines reach a
// session only by posting a task to its loop (fencing, removal, Close).
//
// A readable source is read into the loop's one 64 KiB buffer and written
// to the peer at once. Only bytes the peer cannot take are kept, in a
// pooled buffer, and the source is not read again until they drained, so a
// session holds at most one buffer per direction and none when idle. A
// direction whose reads keep filling the buffer is a bulk stream: it moves
// to splice(2) through a pipe from the loop's pool and gives the pipe back
// when it drains, so an idle session holds exactly two fds. A short read
// without a hang-up ends the reads of a wake-up (the socket is drained;
// a later arrival raises a new edge), saving the read that would only
// return EAGAIN.
//
// Each loop keeps a timer heap, one entry per session holding its next
// deadline (connect, switch_hold, idle timeout, lease end), not a timer per
// session in the runtime. Dials are nonblocking connects from the loop;
// the lease is checked before each dial and before every write to the
// backend, and a session whose lease ran out is reset. Accept errors such
// as EMFILE pause that listener with a back-off doubling to 50ms, after
// refusing the queued connections cleanly through spare fds shared by the
// loops (see spareFDs), so a lack of fds never spins a core; a loop whose
// backend socket failed for want of fds closes new clients at once for a
// while (shedFor). New raises the soft RLIMIT_NOFILE to
// the hard limit and logs both.
//
// The loops are goroutines that wait in a raw epoll_pwait bounded to 10ms
// and yield every millisecond (see epollWait): measured, that makes fewer
// context switches than a wait the runtime hands off, or a locked thread.
//
// Connections from ServiceConfig.AcceptProxy networks must start with a
// PROXY protocol header (v1 or v2), taken off with MSG_PEEK so that no
// payload byte is consumed; backends with Backend.SendProxy get a header
// with the client's address first.
//
// # Other platforms
//
// Elsewhere a goroutine per direction copies bytes (plane_goroutine.go,
// copy.go); the PROXY protocol is refused there.
//
//	p := proxy.New(proxy.Options{Logger: log})
//	err := p.Apply([]proxy.ServiceConfig{{
//		Name: "pg", Listen: "127.0.0.1:6432", Want: proxy.RolePrimary,
//		Backends: []proxy.Backend{{Name: "a", Address: "10.0.0.1:5432", Priority: 2},
//			{Name: "b", Address: "10.0.0.2:5432", Priority: 1}},
//	}})
//	p.SetHealth("pg", "a", proxy.Health{Known: true, Up: true, Role: proxy.RolePrimary, LagBytes: -1, Lag: -1})
package proxy
