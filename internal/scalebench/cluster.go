package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/testenv"
	"golang.org/x/sys/unix"
)

// backend is a TCP backend the benchmark owns: it accepts every connection
// and closes it at once, which is all a tcp check asks. It listens with
// backendQueues sockets on one port (SO_REUSEPORT), each with its own
// accept loop and queue: thousands of checks arrive in bursts, and one
// queue (somaxconn) overflowed, so SYNs were dropped and checks timed out
// waiting for the retransmission a second later.
type backend struct {
	lns     []net.Listener
	accepts atomic.Int64
	wg      sync.WaitGroup
}

const backendQueues = 4

// listenBackend listens on a free loopback port below the ephemeral range.
func listenBackend() (*backend, error) {
	p, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	b := &backend{}
	for range backendQueues {
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			b.close()
			return nil, err
		}
		b.lns = append(b.lns, ln)
		b.wg.Add(1)
		go b.acceptLoop(ln)
	}
	return b, nil
}

func (b *backend) acceptLoop(ln net.Listener) {
	defer b.wg.Done()
	delay := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(delay) // out of fds or the like: the checks retry
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		b.accepts.Add(1)
		c.Close()
	}
}

func (b *backend) addr() string { return b.lns[0].Addr().String() }

// close stops accepting (a backend that died: new connections are
// refused) and waits for the accept loops to end. Idempotent.
func (b *backend) close() {
	for _, ln := range b.lns {
		ln.Close()
	}
	b.wg.Wait()
}

// pollEvery is how often each proxy's /health is read while a phase waits
// for routing to change.
const pollEvery = 100 * time.Millisecond

// statusClient reads one proxy's /status; its timeout allows for a large
// document from a busy proxy.
func statusClient(addr string) *adminapi.Client {
	return &adminapi.Client{Addr: addr, HTTP: &http.Client{Timeout: 20 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true}}}
}

// fetchStats records how long admin API reads took (/health while a phase
// waits, /status for counters and diagnoses).
type fetchStats struct {
	mu    sync.Mutex
	durs  []time.Duration
	bytes int
}

func (f *fetchStats) add(d time.Duration, n int) {
	f.mu.Lock()
	f.durs = append(f.durs, d)
	f.bytes = max(f.bytes, n)
	f.mu.Unlock()
}

// summary is "median / max" of the reads, and the largest document.
func (f *fetchStats) summary() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.durs) == 0 {
		return "no reads"
	}
	d := slices.Clone(f.durs)
	slices.Sort(d)
	return fmt.Sprintf("%d reads, median %s, max %s; largest /status %.1f MB",
		len(d), d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond), float64(f.bytes)/1e6)
}

// readStatus reads and decodes a proxy's /status, timing it.
func readStatus(ctx context.Context, c *adminapi.Client, fs *fetchStats) (*adminapi.Status, error) {
	start := time.Now()
	body, err := c.StatusJSON(ctx)
	if err != nil {
		return nil, err
	}
	fs.add(time.Since(start), len(body))
	st := &adminapi.Status{}
	if err := json.Unmarshal(body, st); err != nil {
		return nil, fmt.Errorf("bad /status from %s: %w", c.Addr, err)
	}
	return st, nil
}

// routedTo counts the cluster services that this proxy routes to backend,
// or to any backend when backend is "".
func routedTo(st *adminapi.Status, backend string) int {
	if st == nil || st.Cluster == nil {
		return 0
	}
	n := 0
	for _, s := range st.Cluster.Services {
		if routesTo(s.Routing, backend) {
			n++
		}
	}
	return n
}

// routesTo reports whether routing names backend, or any backend when
// backend is "".
func routesTo(routing, backend string) bool {
	if backend == "" {
		return routing != ""
	}
	return routing == backend
}

// backendLabel names backend in messages.
func backendLabel(backend string) string {
	if backend == "" {
		return "any backend"
	}
	return strconv.Quote(backend)
}

// describeUnrouted says, for a proxy not yet routing every service to
// backend, how many are where, with one example of each state.
func describeUnrouted(st *adminapi.Status, backend string) string {
	if st == nil {
		return "no /status yet"
	}
	if st.Cluster == nil {
		return "no cluster in /status"
	}
	type key struct{ routing, held, decision string }
	counts := map[key]int{}
	example := map[key]adminapi.ClusterService{}
	for _, s := range st.Cluster.Services {
		if routesTo(s.Routing, backend) {
			continue
		}
		k := key{s.Routing, s.Held, s.Decision}
		if counts[k] == 0 {
			example[k] = s
		}
		counts[k]++
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return counts[keys[i]] > counts[keys[j]] })
	out := fmt.Sprintf("recovering=%v reachable=%v; %d of %d services not routed to %s",
		st.Cluster.Recovering, st.Cluster.Reachable, len(st.Cluster.Services)-routedTo(st, backend), len(st.Cluster.Services), backendLabel(backend))
	for i, k := range keys {
		if i == 3 {
			out += fmt.Sprintf("; %d more states", len(keys)-3)
			break
		}
		e := example[k]
		out += fmt.Sprintf("; %d with routing=%q held=%q epoch=%d primary=%q decision=%q (e.g. %s)",
			counts[k], k.routing, k.held, e.Epoch, e.Primary, k.decision, e.Service)
	}
	return out
}

// proxyWait is what one proxy showed while a phase waited for it.
type proxyWait struct {
	firstStatus  time.Duration // /status answered (cold start only)
	recoveryDone time.Duration // recovering went false (cold start only)
	first        time.Duration // first service routed to the backend
	median       time.Duration // half of them
	all          time.Duration // every service; 0 if not reached
	last         string        // where it stood when the wait ended unfinished
}

// waitRouted polls every proxy's /health until each routes all services
// to backend (any backend when ""), or timeout. Times are from start, each
// within one poll (pollEvery plus the read). /health counts the services
// routed to each backend: a few hundred bytes where /status is megabytes,
// so the polling costs the proxies little while they work; /status is read
// once at the end of a wait that did not finish, to say why.
func waitRouted(ctx context.Context, ps []*proc, clients []*adminapi.Client, services int, backend string,
	start time.Time, timeout time.Duration, fs *fetchStats) ([]proxyWait, error) {
	ctx, cancel := context.WithDeadline(ctx, start.Add(timeout))
	defer cancel()
	res := make([]proxyWait, len(ps))
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &res[i]
			seen := 0 // the most services seen routed to backend at once
			var lastErr error
			for {
				if ps[i].Exited() {
					errs[i] = ps[i].Failure()
					return
				}
				t0 := time.Now()
				rd, _, err := clients[i].Health(ctx, "")
				now := time.Since(start)
				if err == nil {
					fs.add(time.Since(t0), 0)
					lastErr = nil
					if w.firstStatus == 0 {
						w.firstStatus = now
					}
					if w.recoveryDone == 0 && !strings.HasPrefix(rd.Reason, adminapi.ReasonRecovering) {
						w.recoveryDone = now
					}
					n := routedCount(rd, backend)
					seen = max(seen, n)
					if n > 0 && w.first == 0 {
						w.first = now
					}
					if n >= (services+1)/2 && w.median == 0 {
						w.median = now
					}
					// Done when every service routes to backend at once,
					// not merely each at some time: a service may lose
					// its route again.
					if n >= services {
						w.all = now
						return
					}
				} else {
					lastErr = err
				}
				select {
				case <-ctx.Done():
					// One /status read, with time of its own, to say why.
					sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
					st, err := readStatus(sctx, clients[i], fs)
					scancel()
					w.last = describeUnrouted(st, backend)
					if err != nil {
						w.last += fmt.Sprintf(" (/status: %v)", err)
					}
					if lastErr != nil {
						w.last += fmt.Sprintf(" (last /health: %v)", lastErr)
					}
					errs[i] = fmt.Errorf("%s: at most %d of %d services routed to %s at once within %v: %s",
						ps[i].Name, seen, services, backendLabel(backend), timeout, w.last)
					return
				case <-time.After(pollEvery):
				}
			}
		}()
	}
	wg.Wait()
	return res, errors.Join(errs...)
}

// routedCount is how many services /health says route to backend, or to
// any backend when backend is "".
func routedCount(rd adminapi.Readiness, backend string) int {
	if backend == "" {
		return rd.Routing
	}
	return rd.RoutingTo[backend]
}

// readCounters reads every proxy's cluster counters.
func readCounters(ctx context.Context, clients []*adminapi.Client, fs *fetchStats) ([]cluster.Counters, error) {
	out := make([]cluster.Counters, len(clients))
	for i, c := range clients {
		st, err := readStatus(ctx, c, fs)
		if err != nil {
			return nil, err
		}
		if st.Cluster == nil {
			return nil, fmt.Errorf("%s: no cluster in /status", c.Addr)
		}
		out[i] = st.Cluster.Counters
	}
	return out, nil
}

// counterDelta is what one proxy counted during the failover.
type counterDelta struct {
	Proposals, GivenUp, Commits, Saves, QueueFull, VotesGranted, VotesRefused, Adoptions, Stale uint64
}

func deltaOf(before, after cluster.Counters) counterDelta {
	return counterDelta{
		Proposals: after.Proposals - before.Proposals, GivenUp: after.GivenUp - before.GivenUp,
		Commits: after.Commits - before.Commits, Saves: after.Saves - before.Saves,
		QueueFull: after.QueueFull - before.QueueFull, VotesGranted: after.VotesGranted - before.VotesGranted,
		VotesRefused: after.VotesRefused - before.VotesRefused, Adoptions: after.Adoptions - before.Adoptions,
		Stale: after.Stale - before.Stale,
	}
}

// writeFiles writes the key, the token and every proxy's config.
func writeFiles(s *clusterSpec) error {
	if err := os.WriteFile(s.keyFile, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(s.tokenFile, []byte("scalebench\n"), 0o600); err != nil {
		return err
	}
	for i, n := range s.nodes {
		if err := os.WriteFile(n.cfgPath, []byte(s.config(i)), 0o600); err != nil {
			return err
		}
	}
	return nil
}
