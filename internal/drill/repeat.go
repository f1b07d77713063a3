package drill

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// RepeatOptions make a series of drills out of one.
type RepeatOptions struct {
	Runs int // how many drills, one after another (at least 1)
	// Alternate: each run is a voted switchover to another healthy
	// backend, the one switched to least recently (with two backends:
	// back and forth). With Options.SwitchTo set instead, runs alternate
	// between that backend and the primary at the start.
	Alternate bool
	// Settle bounds the wait between runs for the service to be routed
	// again with every backend up (see Settled).
	Settle time.Duration
}

// Series is what a series of drills measured, with what an operator files
// along with it (see Markdown).
type Series struct {
	Service  string    `json:"service"`
	Kind     string    `json:"kind"`
	Listen   string    `json:"listen"`
	Failure  string    `json:"failure"` // the fail command, or the switchovers
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Filled by the caller for the record: this quorumproxy's version,
	// the host the drill ran on, the configuration, and the servers'
	// versions by backend name (those that could be read).
	Version        string            `json:"quorumproxy_version,omitempty"`
	Host           string            `json:"host,omitempty"`
	Config         *ConfigSummary    `json:"config,omitempty"`
	ServerVersions map[string]string `json:"server_versions,omitempty"`

	Runs      []*Report `json:"runs"`
	Aggregate Aggregate `json:"aggregate"`
	// Stopped says why the series ended before its last run ("" when it
	// ran them all).
	Stopped string `json:"stopped,omitempty"`
}

// Aggregate sums up a series. Percentiles are nearest-rank over the runs
// that recovered; -1 when none did.
type Aggregate struct {
	Runs      int     `json:"runs"`
	Recovered int     `json:"recovered"`
	RTOP50    float64 `json:"rto_p50_s"`
	RTOP90    float64 `json:"rto_p90_s"`
	RTOMax    float64 `json:"rto_max_s"`
	Acked     int     `json:"writes_acknowledged"`
	Failed    int     `json:"writes_failed"`
	Lost      int     `json:"lost"`      // acknowledged writes lost, all runs together
	RPOMax    float64 `json:"rpo_max_s"` // the largest RPO of one run, in seconds
}

// Summarize computes the aggregate of runs.
func Summarize(runs []*Report) Aggregate {
	a := Aggregate{Runs: len(runs), RTOP50: -1, RTOP90: -1, RTOMax: -1}
	var rtos []float64
	for _, r := range runs {
		a.Acked += r.Acked
		a.Failed += r.Failed
		a.Lost += r.Lost
		a.RPOMax = max(a.RPOMax, r.RPOSeconds)
		if r.Recovered {
			a.Recovered++
			rtos = append(rtos, r.RTO)
		}
	}
	if len(rtos) > 0 {
		slices.Sort(rtos)
		a.RTOP50, a.RTOP90, a.RTOMax = Percentile(rtos, 50), Percentile(rtos, 90), rtos[len(rtos)-1]
	}
	return a
}

// Percentile is the nearest-rank p-th percentile of sorted (not empty).
func Percentile(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Repeat runs ro.Runs drills one after another against o's service and
// sums them up; between runs it waits until the service has settled. It
// stops at the first run that fails or does not recover: the series then
// comes back with what was measured, and with an error for a failure.
func Repeat(ctx context.Context, o Options, ro RepeatOptions, log io.Writer) (*Series, error) {
	if ro.Runs < 1 {
		return nil, fmt.Errorf("a series needs at least one run, not %d", ro.Runs)
	}
	if (ro.Alternate || o.SwitchTo != "") && o.Admin == "" {
		return nil, errors.New("a switchover drill needs the admin API: the config has no [admin] listen")
	}
	s := &Series{Service: o.Service.Name, Kind: string(o.Service.Health.Kind), Listen: o.Service.Listen, Started: time.Now().UTC()}
	switch {
	case ro.Alternate:
		s.Failure = "switchover to another healthy backend at each run (alternating)"
	case o.SwitchTo != "" && ro.Runs > 1:
		s.Failure = "switchover to " + o.SwitchTo + ", then back to the first primary, alternating"
	case o.SwitchTo != "":
		s.Failure = "switchover to " + o.SwitchTo
	default:
		s.Failure = strings.Join(o.Fail, " ")
	}
	var err error
	primary := map[string]int{} // backend -> the last run it was the primary at the start of
	origin := ""
	for i := 1; i <= ro.Runs; i++ {
		if i > 1 {
			fmt.Fprintf(log, "drill: run %d of %d done; waiting up to %s for service %q to settle\n", i-1, ro.Runs, ro.Settle, o.Service.Name)
			if err = Settle(ctx, o, ro.Settle); err != nil {
				s.Stopped = fmt.Sprintf("before run %d: %v", i, err)
				break
			}
		}
		ri := o
		ri.RunIndex = i
		if ro.Alternate || (o.SwitchTo != "" && ro.Runs > 1) {
			st, serr := adminClient(o.Admin).Status(ctx)
			if serr != nil {
				err = fmt.Errorf("admin /status: %w", serr)
				s.Stopped = fmt.Sprintf("before run %d: %v", i, err)
				break
			}
			if sv := st.Service(o.Service.Name); sv != nil && sv.Target != "" {
				origin = cmp.Or(origin, sv.Target)
				primary[sv.Target] = i
			}
			if ri.SwitchTo, err = switchTarget(st, o.Service.Name, o.SwitchTo, origin, ro.Alternate, primary); err != nil {
				s.Stopped = fmt.Sprintf("before run %d: %v", i, err)
				break
			}
		}
		fmt.Fprintf(log, "drill: run %d of %d\n", i, ro.Runs)
		var rep *Report
		rep, err = Run(ctx, ri, log)
		if rep != nil {
			s.Runs = append(s.Runs, rep)
			if s.Failure == "" {
				s.Failure = rep.Failure
			}
		}
		if err != nil {
			s.Stopped = fmt.Sprintf("run %d: %v", i, err)
			break
		}
		if !rep.Recovered && i < ro.Runs {
			s.Stopped = fmt.Sprintf("run %d did not recover within the timeout: the runs after it would measure nothing", i)
			break
		}
	}
	s.Finished = time.Now().UTC()
	s.Aggregate = Summarize(s.Runs)
	return s, err
}

func adminClient(addr string) *adminapi.Client {
	return &adminapi.Client{Addr: addr, HTTP: &http.Client{Timeout: 2 * time.Second}}
}

// switchTarget chooses the backend a run switches over to: with fixed set,
// fixed unless it is the primary already (then the first primary, origin);
// alternating, the healthy backend other than the primary that was the
// primary least recently (by primary: the last run each was the primary
// at; never first), the one of highest priority among equals. Runs so go
// round every healthy backend; with two, back and forth.
func switchTarget(st *adminapi.Status, service, fixed, origin string, alternate bool, primary map[string]int) (string, error) {
	sv := st.Service(service)
	if sv == nil {
		return "", fmt.Errorf("the admin API does not serve %q", service)
	}
	if sv.Target == "" {
		return "", fmt.Errorf("service %q has no target (%s): nothing to switch over from", service, sv.Why)
	}
	if !alternate {
		if sv.Target != fixed {
			return fixed, nil
		}
		if origin == "" || origin == fixed {
			return "", fmt.Errorf("%q is already the primary of %q and there is no other to switch back to", fixed, service)
		}
		return origin, nil
	}
	var fenced []string
	if cv := st.ClusterService(service); cv != nil {
		fenced = cv.Fenced
	}
	var cands []adminapi.Backend
	for _, b := range sv.Backends {
		if b.Name != sv.Target && b.Health == "up" && !b.Draining && !b.Fenced && !slices.Contains(fenced, b.Name) {
			cands = append(cands, b)
		}
	}
	if len(cands) == 0 {
		return "", fmt.Errorf("service %q: no healthy backend other than %q to switch over to", service, sv.Target)
	}
	slices.SortStableFunc(cands, func(a, b adminapi.Backend) int {
		if d := primary[a.Name] - primary[b.Name]; d != 0 {
			return d
		}
		if a.Priority != b.Priority {
			return b.Priority - a.Priority
		}
		return strings.Compare(a.Name, b.Name)
	})
	return cands[0].Name, nil
}

// Settled reports whether a service is ready for the next run of a
// series, and if not, why: it has a target that is up (and, with role =
// "primary", the only backend that reports primary), every backend that is
// neither draining nor fenced is up, and in a cluster the record's primary
// is routed under a lease, with no decision or operator's operation in
// flight.
func Settled(st *adminapi.Status, service string) (bool, string) {
	sv := st.Service(service)
	if sv == nil {
		return false, fmt.Sprintf("the admin API does not serve %q", service)
	}
	if sv.Target == "" {
		return false, fmt.Sprintf("no target (%s)", sv.Why)
	}
	cv := st.ClusterService(service)
	var primaries []string
	for _, b := range sv.Backends {
		if b.Draining || b.Fenced || (cv != nil && slices.Contains(cv.Fenced, b.Name)) {
			continue
		}
		if b.Health != "up" {
			return false, fmt.Sprintf("backend %q is %s", b.Name, b.Health)
		}
		if b.Role == "primary" {
			primaries = append(primaries, b.Name)
		}
	}
	if sv.Role == "primary" && (len(primaries) != 1 || primaries[0] != sv.Target) {
		return false, fmt.Sprintf("target %q, backends that report primary: %v", sv.Target, primaries)
	}
	if cv != nil {
		switch {
		case cv.Routing != cv.Primary || cv.Routing != sv.Target:
			return false, fmt.Sprintf("the cluster's primary is %q, this proxy routes to %q (%s)", cv.Primary, cv.Routing, cv.Held)
		case cv.LeaseMS <= 0:
			return false, "no lease"
		case cv.Proposing != 0:
			return false, fmt.Sprintf("epoch %d in flight", cv.Proposing)
		case cv.Operation != nil && (cv.Operation.State == "pending" || cv.Operation.State == "committed"):
			return false, fmt.Sprintf("operation %d (%s to %s) is %s", cv.Operation.ID, cv.Operation.Kind, cv.Operation.Backend, cv.Operation.State)
		}
	}
	return true, ""
}

// Settle waits, polling the admin API, until the service has stayed
// Settled for a second and at least one health-check interval (a backend
// that came back is checked again, and a replica that has just rejoined
// gets going: a Redis replica streams only after it first acknowledges its
// sync), or fails after timeout saying where things stand.
func Settle(ctx context.Context, o Options, timeout time.Duration) error {
	stable := max(o.Service.Health.Interval, time.Second)
	if o.Admin == "" {
		// Nothing to ask: give the servers that time and a check more.
		return sleep(ctx, stable+o.Service.Health.Interval)
	}
	c := adminClient(o.Admin)
	deadline := time.Now().Add(timeout)
	var since time.Time
	why := "no answer from the admin API yet"
	for {
		st, err := c.Status(ctx)
		ok := false
		if err != nil {
			why = fmt.Sprintf("admin /status: %v", err)
		} else if ok, why = Settled(st, o.Service.Name); ok {
			if since.IsZero() {
				since = time.Now()
			}
			if time.Since(since) >= stable {
				return nil
			}
		}
		if !ok {
			since = time.Time{}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("service %q did not settle within %s: %s", o.Service.Name, timeout, why)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Print writes the series for a person to read: a line per run, then the
// aggregate.
func (s *Series) Print(w io.Writer) {
	fmt.Fprintf(w, "drill series of service %q (%s) through %s: %s\n", s.Service, s.Kind, s.Listen, s.Failure)
	for _, r := range s.Runs {
		fmt.Fprintf(w, "  run %d: %s -> %s: down %s, decided %s, routed %s, RTO %s; %d acknowledged, %d lost\n",
			r.Index, orDash(r.OldTarget), orDash(r.NewTarget), seconds(r.DownAt, "+"), seconds(r.DecidedAt, "+"), seconds(r.RoutedAt, "+"),
			rtoText(r), r.Acked, r.Lost)
	}
	a := s.Aggregate
	fmt.Fprintf(w, "  %d runs, %d recovered; RTO p50 %s, p90 %s, max %s\n", a.Runs, a.Recovered, seconds(a.RTOP50, ""), seconds(a.RTOP90, ""), seconds(a.RTOMax, ""))
	if a.Lost == 0 {
		fmt.Fprintf(w, "  RPO: 0 of %d acknowledged writes lost\n", a.Acked)
	} else {
		fmt.Fprintf(w, "  RPO: %d of %d acknowledged writes LOST (at most %.3fs of writes in one run)\n", a.Lost, a.Acked, a.RPOMax)
	}
	if s.Stopped != "" {
		fmt.Fprintf(w, "  stopped early: %s\n", s.Stopped)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// seconds formats a time in seconds, or "-" when not seen (negative).
func seconds(v float64, sign string) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%s%.3fs", sign, v)
}

func rtoText(r *Report) string {
	if !r.Recovered {
		return "not recovered"
	}
	return fmt.Sprintf("%.3fs", r.RTO)
}
