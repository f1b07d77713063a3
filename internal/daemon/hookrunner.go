package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/hooks"
	"github.com/quorumproxy/quorumproxy/internal/journal"
	"github.com/quorumproxy/quorumproxy/proxy"
)

// hookRunner runs a service's fence, promote and notify hooks when its
// active-passive target moves. Hooks of one service run one event at a time,
// in order, so a promote never overtakes the fence before it; services do not
// wait for each other. Nothing here runs on the data path.
type hookRunner struct {
	log *slog.Logger
	wg  sync.WaitGroup
	// check checks a backend at once (the health monitor's CheckNow): a
	// promote is skipped when its backend already reports primary and
	// judged by the role it reports right after.
	check func(service, backend string) (up bool, primary bool)

	mu     sync.Mutex
	queues map[string]chan func() // service -> its serial queue
	seen   map[string]bool        // services that have had a target since start
	// note records each run in the history (nil: not recorded).
	note func(journal.Entry)
	// promoted is told, after a failover's promote step, which backend
	// the other backends are to follow now (nil: nobody is).
	promoted func(service, backend string)
	ctx      context.Context
	cancel   context.CancelFunc
}

func newHookRunner(log *slog.Logger) *hookRunner {
	ctx, cancel := context.WithCancel(context.Background())
	return &hookRunner{log: log, queues: map[string]chan func(){}, seen: map[string]bool{}, ctx: ctx, cancel: cancel}
}

func (h *hookRunner) targetChanged(svc config.Service, ev proxy.TargetChange) {
	env := hookEnv(&svc, ev.Old.Name, ev.New.Name, ev.Reason)
	timeout := svc.Hooks.Timeout
	// The first choice after start is not a failover: nothing to fence, and
	// promoting whatever was found first would be a switch nobody asked for.
	h.mu.Lock()
	initial := !h.seen[ev.Service]
	h.seen[ev.Service] = true
	h.mu.Unlock()
	h.enqueue(ev.Service, func() {
		if !initial && len(svc.Hooks.Fence) > 0 {
			_ = h.runOne(ev.Service, "fence", svc.Hooks.Fence, env, timeout)
		}
		if !initial && ev.New.Name != "" && len(svc.Hooks.Promote) > 0 {
			h.promote(svc, ev.New.Name, env, timeout)
		}
		// The other backends follow the new target once it reports
		// primary (the repointer waits for that).
		if !initial && ev.New.Name != "" && h.promoted != nil {
			h.promoted(ev.Service, ev.New.Name)
		}
		// Nor does it page anyone: every restart would.
		if !initial && len(svc.Hooks.Notify) > 0 {
			_ = h.runOne(ev.Service, "notify", svc.Hooks.Notify, env, timeout)
		}
	})
}

// promote runs the promote hook for a proxy alone: skipped when the backend
// already reports primary, and judged afterwards by the role it reports,
// not by the exit status. (A proxy alone never moves on to another
// candidate after a failed promote: it keeps the target and holds its
// connections until it reports primary.)
func (h *hookRunner) promote(svc config.Service, backend string, env map[string]string, timeout time.Duration) {
	if h.check != nil {
		if up, primary := h.check(svc.Name, backend); up && primary {
			h.log.Info("promote hook skipped: the backend already reports primary", "service", svc.Name, "backend", backend)
			return
		}
		if svc.RoleAware() {
			// No promote while another backend may be primary (the rule a
			// cluster keeps too): the old one back, or one promoted
			// elsewhere (Patroni, an operator) while this waited.
			for _, b := range svc.Backends {
				if b.Name == backend {
					continue
				}
				if up, primary := h.check(svc.Name, b.Name); up && primary {
					h.log.Error("promote hook not run: another backend reports primary; promoting would make a second one",
						"service", svc.Name, "backend", backend, "primary", b.Name)
					return
				}
			}
		}
	}
	err := h.runOne(svc.Name, "promote", svc.Hooks.Promote, env, timeout)
	if h.check == nil || !svc.RoleAware() {
		return
	}
	switch up, primary := h.check(svc.Name, backend); {
	case primary && err != nil:
		h.log.Warn("promote hook failed, but the backend reports primary: promoted", "service", svc.Name, "backend", backend)
	case !primary:
		h.log.Error("promote not verified: the backend does not report primary after the promote hook; connections stay held",
			"service", svc.Name, "backend", backend, "up", up)
	}
}

func (h *hookRunner) runOne(service, kind string, argv []string, env map[string]string, timeout time.Duration) error {
	// A hook in flight finishes (within its timeout) even during shutdown:
	// killing a promotion half way is worse than waiting for it.
	res := hooks.Run(context.Background(), argv, env, timeout)
	if h.note != nil {
		epoch, _ := strconv.ParseUint(env["QP_EPOCH"], 10, 64)
		result := "exit 0"
		if res.Err != nil {
			result = res.Err.Error()
		}
		from := env["QP_OLD_BACKEND"]
		if kind == "repoint" {
			from = env["QP_BACKEND"] // the backend that is to follow the new primary
		}
		h.note(journal.Entry{Service: service, Kind: "hook", Epoch: epoch, Hook: kind, Result: result, Output: res.Output,
			Summary: fmt.Sprintf("%s hook (%s -> %s) took %v: %s", kind, orNone(from), orNone(env["QP_NEW_BACKEND"]),
				res.Duration.Round(time.Millisecond), result)})
	}
	if res.Err != nil {
		h.log.Error("hook failed", "service", service, "hook", kind, "argv", argv, "took", res.Duration, "err", res.Err, "output", res.Output)
		countHook(service, kind, false)
		return res.Err
	}
	h.log.Info("hook ran", "service", service, "hook", kind, "argv", argv, "took", res.Duration, "output", res.Output)
	countHook(service, kind, true)
	return nil
}

// enqueue queues fn on the service's serial queue; false when it was
// dropped (shutting down, or the queue is full).
func (h *hookRunner) enqueue(service string, fn func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ctx.Err() != nil {
		return false
	}
	q, ok := h.queues[service]
	if !ok {
		q = make(chan func(), 64)
		h.queues[service] = q
		h.wg.Add(1)
		go h.serve(q)
	}
	select {
	case q <- fn:
		return true
	default:
		h.log.Error("hook queue full: event dropped", "service", service)
		return false
	}
}

func (h *hookRunner) serve(q chan func()) {
	defer h.wg.Done()
	for {
		select {
		case fn := <-q:
			fn()
		case <-h.ctx.Done():
			return
		}
	}
}

// wait stops the queues after the hook in flight, if any, and waits for them.
// Queued events that have not started are dropped.
func (h *hookRunner) wait() {
	h.mu.Lock()
	h.cancel()
	h.mu.Unlock()
	h.wg.Wait()
}

// hookNotStarted reports whether a hook failed because it could not be
// started at all (a wrong path, no permission to run it).
func hookNotStarted(err error) bool {
	var pe *fs.PathError
	var ee *exec.Error
	return (errors.As(err, &pe) && strings.HasPrefix(pe.Op, "fork/exec")) || errors.As(err, &ee)
}

// hookEnv is the environment of every hook: the service, the old and new
// backends with their addresses from the config, and why.
func hookEnv(svc *config.Service, oldName, newName, reason string) map[string]string {
	return map[string]string{
		"QP_SERVICE": svc.Name, "QP_OLD_BACKEND": oldName, "QP_OLD_ADDRESS": backendAddress(svc, oldName),
		"QP_NEW_BACKEND": newName, "QP_NEW_ADDRESS": backendAddress(svc, newName), "QP_REASON": reason,
		"QP_EVENT": "target",
	}
}

// backendAddress is the configured address of a service's backend ("" if none).
func backendAddress(svc *config.Service, name string) string {
	for _, b := range svc.Backends {
		if b.Name == name {
			return b.Address
		}
	}
	return ""
}
