// Package drill is quorumproxy's failover drill: it writes unique ids
// through the proxy, fails the primary (an operator's command, or a voted
// switchover), follows the proxy's admin API, and reports the measured
// timeline (primary seen down, decision, routing, RTO) and the acknowledged
// writes a read-back no longer finds (RPO). Its Writer also serves the demo.
package drill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
)

// Options is one drill, ready to run.
type Options struct {
	Service  *config.Service
	Admin    string // host:port of the admin API ("" = no timeline)
	Token    string // the admin token (a switchover needs it)
	User     string
	Password string
	Database string
	Warmup   time.Duration // writes before the failure
	After    time.Duration // writes after the first good one
	Timeout  time.Duration // from the failure to the first good write
	SwitchTo string        // fail by a voted switchover to this backend
	Fail     []string      // or by this command (an argv, no shell)
	// RunIndex is the run's number in a series (0: a drill alone, 1 for
	// the fail command's QP_DRILL_RUN).
	RunIndex int
}

// Report is what a drill measured; times are from the failure.
type Report struct {
	Service string `json:"service"`
	Kind    string `json:"kind"`
	Listen  string `json:"listen"`
	Run     string `json:"run"`
	// Index is the run's number in a series (0: a drill alone).
	Index int `json:"index,omitempty"`
	// Started is the moment of the failure (UTC).
	Started    time.Time `json:"started"`
	Failure    string    `json:"failure"`
	OldTarget  string    `json:"old_target"`
	OldAddress string    `json:"old_target_address,omitempty"`
	NewTarget  string    `json:"new_target,omitempty"`
	// Timeline, in seconds after the failure; -1 when not seen.
	DownAt    float64 `json:"primary_down_s"`
	DecidedAt float64 `json:"decided_s"`
	RoutedAt  float64 `json:"routed_s"`
	// RTO is from the failure to the acknowledgement that ended the
	// longest pause in acknowledgements after it; Window is that pause
	// (the write-unavailable window a client saw).
	RTO        float64  `json:"rto_s"`
	Window     float64  `json:"write_unavailable_s"`
	Recovered  bool     `json:"recovered"`
	EpochFrom  uint64   `json:"epoch_from,omitempty"`
	EpochTo    uint64   `json:"epoch_to,omitempty"`
	Acked      int      `json:"writes_acknowledged"`
	Failed     int      `json:"writes_failed"`
	Found      int      `json:"read_back_found"`
	Lost       int      `json:"lost"`
	LostIDs    []int64  `json:"lost_ids,omitempty"`
	RPOSeconds float64  `json:"rpo_s"` // from the oldest lost acknowledgement to the failure
	Errors     []string `json:"errors,omitempty"`
}

// drillClient writes ids through the proxy and reads them back.
type drillClient interface {
	setup(ctx context.Context) error
	write(ctx context.Context, id int64) error
	readBack(ctx context.Context, ids []int64) (map[int64]bool, error)
	cleanup(ctx context.Context) error
	close()
}

// drillWriteTimeout bounds one write, connecting included: a connection the
// proxy holds during a switch gets its chance.
const drillWriteTimeout = 5 * time.Second

func newDrillClient(o Options, run string) (drillClient, error) {
	switch o.Service.Health.Kind {
	case config.KindPostgres:
		return &pgDrill{o: o, run: run}, nil
	case config.KindRedis:
		return newRedisDrill(o, run), nil
	case config.KindMySQL:
		return newMySQLDrill(o, run)
	}
	return nil, fmt.Errorf("service %q: health kind %q: a drill writes with the postgres, redis or mysql protocol", o.Service.Name, o.Service.Health.Kind)
}

// Run runs one drill; log gets progress lines. A report comes back with
// an error when the drill got far enough to measure something.
func Run(ctx context.Context, o Options, log io.Writer) (*Report, error) {
	if o.Service.Mode != "" && o.Service.Mode != config.ModeActivePassive {
		return nil, fmt.Errorf("service %q is %s: a drill fails over an active-passive service", o.Service.Name, o.Service.Mode)
	}
	run := fmt.Sprintf("qpd%d", time.Now().UnixMilli())
	rep := &Report{Service: o.Service.Name, Kind: string(o.Service.Health.Kind), Listen: o.Service.Listen, Run: run, Index: o.RunIndex,
		DownAt: -1, DecidedAt: -1, RoutedAt: -1, RTO: -1}
	c, err := newDrillClient(o, run)
	if err != nil {
		return nil, err
	}
	defer c.close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.setup(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("before the drill, through %s: %w", o.Service.Listen, err)
	}
	st := &drillStatus{o: o}
	if o.Admin != "" {
		if err := st.start(ctx); err != nil {
			return nil, err
		}
		defer st.stop()
		rep.OldTarget, rep.OldAddress, rep.EpochFrom = st.first.target, st.first.address, st.first.epoch
	}

	// Recovered: a write sent after the proxy was seen forwarding to the
	// new primary (without the admin API: sent after a failed write) was
	// acknowledged. The RTO itself is read from the acknowledgements.
	w := NewWriter(c.write, drillWriteTimeout)
	w.RecoveredFrom = w.FirstFailure
	if o.Admin != "" {
		w.RecoveredFrom = st.routed
	}
	wctx, wstop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(wctx)
	}()
	stopWriter := func() {
		wstop()
		<-done
		rep.Errors = w.Errors()
		_, rep.Failed = w.Counts()
	}

	select {
	case <-ctx.Done():
		stopWriter()
		return rep, ctx.Err()
	case <-time.After(o.Warmup):
	}
	t0 := time.Now()
	rep.Started = t0.UTC()
	w.Mark(t0)
	if warm, _ := w.Counts(); warm == 0 {
		stopWriter()
		return rep, fmt.Errorf("no write succeeded in the %s warm-up: %v", o.Warmup, rep.Errors)
	}
	st.mark(t0)
	fmt.Fprintf(log, "drill %s: %d writes acknowledged; failing the primary %q now\n", run, len(w.Acked()), rep.OldTarget)
	if err := o.doFail(ctx, rep); err != nil {
		stopWriter()
		return rep, err
	}
	select {
	case <-w.Recovered():
		rep.Recovered = true
		select {
		case <-ctx.Done():
		case <-time.After(o.After):
		}
	case <-time.After(o.Timeout):
	case <-ctx.Done():
	}
	stopWriter()

	acked := w.Acked()
	if rep.Recovered {
		win, end := Outage(acked, t0)
		rep.Window, rep.RTO = win.Seconds(), end.Sub(t0).Seconds()
	}
	ids := w.IDs()
	rep.Acked = len(acked)
	if o.Admin != "" {
		st.stop()
		st.fill(rep)
	}

	// Read back through the proxy: the new primary must hold every
	// acknowledged id.
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	found, err := c.readBack(rctx, ids)
	if err != nil {
		return rep, fmt.Errorf("reading back %d acknowledged writes: %w", len(ids), err)
	}
	var oldest time.Time
	for _, a := range acked {
		if found[a.ID] {
			rep.Found++
			continue
		}
		rep.Lost++
		if len(rep.LostIDs) < 20 {
			rep.LostIDs = append(rep.LostIDs, a.ID)
		}
		if oldest.IsZero() {
			oldest = a.Done
		}
	}
	if !oldest.IsZero() {
		rep.RPOSeconds = t0.Sub(oldest).Seconds()
	}
	if err := c.cleanup(rctx); err != nil {
		fmt.Fprintf(log, "drill %s: cleaning up: %v\n", run, err)
	}
	return rep, nil
}

// doFail fails the primary: the operator's command, or a switchover.
func (o Options) doFail(ctx context.Context, rep *Report) error {
	if o.SwitchTo != "" {
		rep.Failure = "switchover to " + o.SwitchTo
		return adminSwitchover(ctx, o.Admin, o.Token, o.Service.Name, o.SwitchTo)
	}
	rep.Failure = strings.Join(o.Fail, " ")
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, o.Fail[0], o.Fail[1:]...)
	cmd.Env = append(os.Environ(), FailEnv(o, rep)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("fail command %q: %v: %s", rep.Failure, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// FailEnv is what the fail command finds in its environment besides the
// drill's own: the run's number in the series (1 for a drill alone), the
// service, and the backend the proxy targets now with its address (empty
// without the admin API), so that one command can fail whichever backend
// is the primary at each run.
func FailEnv(o Options, rep *Report) []string {
	return []string{
		"QP_DRILL_RUN=" + strconv.Itoa(max(o.RunIndex, 1)),
		"QP_DRILL_SERVICE=" + o.Service.Name,
		"QP_DRILL_TARGET=" + rep.OldTarget,
		"QP_DRILL_TARGET_ADDRESS=" + rep.OldAddress,
	}
}

// drillStatus polls the admin API and notes when the primary was seen
// down, when a new target (or epoch) was decided, and when the proxy
// forwarded to it.
type drillStatus struct {
	o      Options
	client *adminapi.Client
	first  struct {
		target, address string
		epoch           uint64
	}
	mu                  sync.Mutex
	t0                  time.Time
	down, decided, rout time.Time
	newTarget           string
	epoch               uint64
	cancel              context.CancelFunc
	done                chan struct{}
}

func (s *drillStatus) get(ctx context.Context) (*adminapi.Service, *adminapi.ClusterService, error) {
	st, err := s.client.Status(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("admin /status: %w", err)
	}
	sv := st.Service(s.o.Service.Name)
	if sv == nil {
		return nil, nil, fmt.Errorf("admin %s does not serve %q: is it this config's proxy?", s.o.Admin, s.o.Service.Name)
	}
	return sv, st.ClusterService(s.o.Service.Name), nil
}

func (s *drillStatus) start(ctx context.Context) error {
	s.client = &adminapi.Client{Addr: s.o.Admin, HTTP: &http.Client{Timeout: time.Second}}
	sv, cv, err := s.get(ctx)
	if err != nil {
		return err
	}
	if sv.Target == "" {
		return fmt.Errorf("service %q has no target now (%s): nothing to fail over", s.o.Service.Name, sv.Why)
	}
	s.first.target = sv.Target
	for _, b := range sv.Backends {
		if b.Name == sv.Target {
			s.first.address = b.Address
		}
	}
	if cv != nil {
		s.first.epoch = cv.Epoch
	}
	pctx, cancel := context.WithCancel(ctx)
	s.cancel, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		for pctx.Err() == nil {
			if sv, cv, err := s.get(pctx); err == nil {
				s.observe(time.Now(), sv, cv)
			}
			select {
			case <-pctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return nil
}

// routed is when the proxy was first seen forwarding to a new target.
func (s *drillStatus) routed() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rout
}

func (s *drillStatus) mark(t0 time.Time) {
	s.mu.Lock()
	s.t0 = t0
	s.mu.Unlock()
}

func (s *drillStatus) observe(now time.Time, sv *adminapi.Service, cv *adminapi.ClusterService) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.t0.IsZero() {
		return
	}
	old := s.first.target
	if s.down.IsZero() {
		for _, b := range sv.Backends {
			if b.Name == old && b.Health == "down" {
				s.down = now
			}
		}
	}
	target := sv.Target
	if cv != nil {
		target = cv.Primary
		if cv.Epoch > s.first.epoch && s.decided.IsZero() {
			s.decided, s.epoch = now, cv.Epoch
		}
	} else if target != old && target != "" && s.decided.IsZero() {
		s.decided = now
	}
	if target != old && target != "" {
		s.newTarget = target
	}
	// Forwarding: the cluster's route not held back here, or for a proxy
	// alone a target that is up and (role = primary) reports primary.
	if s.rout.IsZero() && target != old && target != "" {
		fwd := false
		if cv != nil {
			fwd = cv.Routing == target
		} else {
			for _, b := range sv.Backends {
				if b.Name == target && b.Health == "up" && (sv.Role != "primary" || b.Role == "primary") {
					fwd = true
				}
			}
		}
		if fwd {
			s.rout = now
		}
	}
}

func (s *drillStatus) stop() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
		s.cancel = nil
	}
}

func (s *drillStatus) fill(rep *Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	since := func(t time.Time) float64 {
		if t.IsZero() {
			return -1
		}
		return t.Sub(s.t0).Seconds()
	}
	rep.DownAt, rep.DecidedAt, rep.RoutedAt = since(s.down), since(s.decided), since(s.rout)
	rep.NewTarget, rep.EpochTo = s.newTarget, s.epoch
}

// Print writes the report for a person to read.
func (r *Report) Print(w io.Writer) {
	at := func(v float64) string {
		if v < 0 {
			return "not seen"
		}
		return fmt.Sprintf("+%.3fs", v)
	}
	fmt.Fprintf(w, "drill %s of service %q (%s) through %s\n", r.Run, r.Service, r.Kind, r.Listen)
	fmt.Fprintf(w, "  failure:                        %s (primary was %q)\n", r.Failure, r.OldTarget)
	fmt.Fprintf(w, "  primary seen down:              %s\n", at(r.DownAt))
	decided := at(r.DecidedAt)
	if r.EpochTo > 0 {
		decided += fmt.Sprintf(" (epoch %d -> %d)", r.EpochFrom, r.EpochTo)
	}
	fmt.Fprintf(w, "  new primary decided:            %s %s\n", decided, r.NewTarget)
	fmt.Fprintf(w, "  proxy forwards to it:           %s\n", at(r.RoutedAt))
	if r.Recovered {
		fmt.Fprintf(w, "  RTO (writes acknowledged again): +%.3fs; write-unavailable window %.3fs\n", r.RTO, r.Window)
	} else {
		fmt.Fprintf(w, "  RTO:                            not recovered: no write reached a new primary in time\n")
	}
	fmt.Fprintf(w, "  writes: %d acknowledged, %d failed; read back through the proxy: %d found\n", r.Acked, r.Failed, r.Found)
	if r.Lost == 0 {
		fmt.Fprintf(w, "  RPO: 0 acknowledged writes lost\n")
	} else {
		fmt.Fprintf(w, "  RPO: %d acknowledged writes LOST (the oldest acknowledged %.3fs before the failure); ids %v\n", r.Lost, r.RPOSeconds, r.LostIDs)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "  write error seen: %s\n", e)
	}
}

// adminSwitchover asks the admin API for a voted switchover.
func adminSwitchover(ctx context.Context, admin, token, service, to string) error {
	if admin == "" {
		return errors.New("a switchover drill needs the admin API: the config has no [admin] listen")
	}
	c := &adminapi.Client{Addr: admin, Token: token, HTTP: &http.Client{Timeout: 10 * time.Second}}
	_, err := c.Switchover(ctx, service, to)
	return err
}
