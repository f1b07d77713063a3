// Package proxy is quorumproxy's data path: one TCP listener per service,
// the backend pool, the choice of a backend (active-passive target or
// active-active balancing, role- and lag-aware), byte copying with
// half-close, limits, idle timeout, fencing (closing a backend's
// sessions), drain and reload.
//
// It imports nothing else of quorumproxy: it is told what to route to.
// Health arrives through SetHealth; a cluster that owns an active-passive
// service's target (ServiceConfig.External) sets it with SetRoute and a
// Lease; local target changes are reported through Options.OnTarget.
//
// An idle proxied connection holds two file descriptors, no buffer and,
// on Linux, no goroutine: each direction waits for readability through
// RawConn.Read and borrows a pooled buffer only for the read that found
// data; a direction idle for DefaultParkAfter is parked in an epoll set of
// the proxy's own and its goroutine exits, to be started afresh when data
// arrives. io.Copy is not used because between two TCP conns it splices,
// and a splice blocked on an idle connection holds a pipe (two more
// descriptors).
//
//	p := proxy.New(proxy.Options{Logger: log})
//	err := p.Apply([]proxy.ServiceConfig{{
//		Name: "pg", Listen: "127.0.0.1:6432", Want: proxy.RolePrimary,
//		Backends: []proxy.Backend{{Name: "a", Address: "10.0.0.1:5432", Priority: 2},
//			{Name: "b", Address: "10.0.0.2:5432", Priority: 1}},
//	}})
//	p.SetHealth("pg", "a", proxy.Health{Known: true, Up: true, Role: proxy.RolePrimary, LagBytes: -1, Lag: -1})
package proxy
