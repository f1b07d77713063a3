package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
)

const drillUsage = `usage: quorumproxy drill -config FILE -service S [flags] -- FAIL-COMMAND [ARGS...]
       quorumproxy drill -config FILE -service S -switchover-to B [flags]

A failover drill: writes unique ids through the proxy, fails the primary
(by running FAIL-COMMAND, an argv run without a shell, or by a voted
switchover of a clustered service), and reports the timeline read from the
proxy's admin API (primary seen down, decision, routing to the new primary,
first acknowledged write = RTO) and the acknowledged writes that a read-back
through the proxy no longer finds (RPO). Writes go to the table
quorumproxy_drill (postgres, mysql; created if missing, this run's rows
deleted at the end) or to keys quorumproxy:drill:RUN:ID that expire after an
hour (redis). Credentials default to the service's [service.health] ones; the
user must be allowed to write.
`

// drillOptions is one drill, ready to run.
type drillOptions struct {
	svc      *config.Service
	admin    string // host:port of the admin API ("" = no timeline)
	token    string
	kind     config.Kind
	user     string
	password string
	database string
	warmup   time.Duration // writes before the failure
	after    time.Duration // writes after the first good one
	timeout  time.Duration // from the failure to the first good write
	switchTo string
	fail     []string
}

// drillReport is what a drill measured; times are from the failure.
type drillReport struct {
	Service   string `json:"service"`
	Kind      string `json:"kind"`
	Listen    string `json:"listen"`
	Run       string `json:"run"`
	Failure   string `json:"failure"`
	OldTarget string `json:"old_target"`
	NewTarget string `json:"new_target,omitempty"`
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

func cmdDrill(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("drill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, drillUsage, "\nflags:\n"); fs.PrintDefaults() }
	cfgPath := fs.String("config", "", "the proxy's configuration file (required)")
	service := fs.String("service", "", "active-passive service to drill (required)")
	admin := fs.String("admin", "", "admin API address (default: [admin] listen of the config)")
	user := fs.String("user", "", "user to write as (default: the service's health user)")
	pwFile := fs.String("password-file", "", "file holding the password (default: the service's health password)")
	database := fs.String("database", "", "database (default: the service's health database)")
	warmup := fs.Duration("warmup", 2*time.Second, "writes before the failure")
	after := fs.Duration("after", 2*time.Second, "writes after the first good write")
	timeout := fs.Duration("timeout", 60*time.Second, "give up when no write succeeds this long after the failure")
	switchTo := fs.String("switchover-to", "", "fail by a voted switchover to this backend (clustered services)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *cfgPath == "" || *service == "" || (*switchTo == "") == (fs.NArg() == 0) {
		fs.Usage()
		return 2
	}
	cfg, _, err := loadConfig(*cfgPath, true) // the drill reads what it needs itself
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy drill: %v\n", err)
		return 1
	}
	svc := findService(cfg, *service)
	if svc == nil {
		fmt.Fprintf(stderr, "quorumproxy drill: %s: no service %q\n", *cfgPath, *service)
		return 1
	}
	o := drillOptions{svc: svc, admin: cfg.Admin.Listen, kind: svc.Health.Kind, user: svc.Health.User,
		database: svc.Health.Database, warmup: *warmup, after: *after, timeout: *timeout, switchTo: *switchTo, fail: fs.Args()}
	if *admin != "" {
		o.admin = *admin
	}
	if cfg.Admin.TokenFile != "" {
		if b, err := os.ReadFile(cfg.Admin.TokenFile); err == nil {
			o.token = strings.TrimSpace(string(b))
		} else if o.switchTo != "" {
			fmt.Fprintf(stderr, "quorumproxy drill: admin token_file: %v\n", err)
			return 1
		}
	}
	if *user != "" {
		o.user = *user
	}
	if *database != "" {
		o.database = *database
	}
	if *pwFile != "" {
		b, err := os.ReadFile(*pwFile)
		if err != nil {
			fmt.Fprintf(stderr, "quorumproxy drill: -password-file: %v\n", err)
			return 1
		}
		o.password = strings.TrimRight(string(b), "\r\n")
	} else if o.password, err = servicePassword(svc); err != nil {
		fmt.Fprintf(stderr, "quorumproxy drill: service %q health %v\n", svc.Name, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := runDrill(ctx, o, stderr)
	if rep != nil {
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(rep)
		} else {
			rep.print(stdout)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "quorumproxy drill: %v\n", err)
		return 1
	}
	if !rep.Recovered {
		return 1
	}
	return 0
}

// drillClient writes ids through the proxy and reads them back.
type drillClient interface {
	setup(ctx context.Context) error
	write(ctx context.Context, id int64) error
	readBack(ctx context.Context, ids []int64) (map[int64]bool, error)
	cleanup(ctx context.Context) error
	close()
}

// digits folds numbers out of error messages, so that one kind of error
// is reported once.
var digits = regexp.MustCompile(`[0-9]+`)

// drillWriteTimeout bounds one write, connecting included: a connection the
// proxy holds during a switch gets its chance.
const drillWriteTimeout = 5 * time.Second

func newDrillClient(o drillOptions, run string) (drillClient, error) {
	switch o.kind {
	case config.KindPostgres:
		return &pgDrill{o: o, run: run}, nil
	case config.KindRedis:
		return newRedisDrill(o, run), nil
	case config.KindMySQL:
		return newMySQLDrill(o, run)
	}
	return nil, fmt.Errorf("service %q: health kind %q: a drill writes with the postgres, redis or mysql protocol", o.svc.Name, o.kind)
}

type drillAck struct {
	id         int64
	sent, done time.Time
}

// outage finds, among the acknowledgements, the longest pause that ends
// after t0: its length and when it ended. The writer writes back to back,
// so outside a failure the pauses are one round trip long.
func outage(acked []drillAck, t0 time.Time) (window time.Duration, end time.Time) {
	prev := t0
	for _, a := range acked {
		if !a.done.After(t0) {
			prev = a.done
			continue
		}
		if gap := a.done.Sub(prev); gap > window {
			window, end = gap, a.done
		}
		prev = a.done
	}
	return window, end
}

// runDrill runs one drill; log gets progress lines.
func runDrill(ctx context.Context, o drillOptions, log io.Writer) (*drillReport, error) {
	if o.svc.Mode != "" && o.svc.Mode != config.ModeActivePassive {
		return nil, fmt.Errorf("service %q is %s: a drill fails over an active-passive service", o.svc.Name, o.svc.Mode)
	}
	run := fmt.Sprintf("qpd%d", time.Now().UnixMilli())
	rep := &drillReport{Service: o.svc.Name, Kind: string(o.kind), Listen: o.svc.Listen, Run: run, DownAt: -1, DecidedAt: -1, RoutedAt: -1, RTO: -1}
	c, err := newDrillClient(o, run)
	if err != nil {
		return nil, err
	}
	defer c.close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.setup(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("before the drill, through %s: %w", o.svc.Listen, err)
	}
	st := &drillStatus{o: o}
	if o.admin != "" {
		if err := st.start(ctx); err != nil {
			return nil, err
		}
		defer st.stop()
		rep.OldTarget, rep.EpochFrom = st.first.target, st.first.epoch
	}

	// The writer: one write at a time, each id once.
	var mu sync.Mutex
	var acked []drillAck
	// Recovered: a write sent after the proxy was seen forwarding to the
	// new primary (without the admin API: sent after a failed write) was
	// acknowledged. The RTO itself is read from the acknowledgements.
	var failedAt, firstFail time.Time
	recovered := make(chan struct{})
	isRecovered := false
	errKinds := map[string]bool{}
	wctx, wstop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for id := int64(1); wctx.Err() == nil; id++ {
			sent := time.Now()
			cctx, cancel := context.WithTimeout(wctx, drillWriteTimeout)
			err := c.write(cctx, id)
			cancel()
			now := time.Now()
			mu.Lock()
			switch {
			case err == nil:
				acked = append(acked, drillAck{id, sent, now})
				if !isRecovered && !failedAt.IsZero() {
					mark := firstFail
					if o.admin != "" {
						mark = st.routed()
					}
					if !mark.IsZero() && !sent.Before(mark) {
						isRecovered = true
						close(recovered)
					}
				}
			case wctx.Err() == nil:
				rep.Failed++
				if !failedAt.IsZero() && firstFail.IsZero() {
					firstFail = sent
				}
				if msg := digits.ReplaceAllString(err.Error(), "N"); len(errKinds) < 8 && !errKinds[msg] {
					errKinds[msg] = true
					rep.Errors = append(rep.Errors, err.Error())
				}
			}
			mu.Unlock()
			if err != nil {
				select { // failures during a switch come fast: do not spin
				case <-wctx.Done():
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}()
	stopWriter := func() { wstop(); <-done }

	select {
	case <-ctx.Done():
		stopWriter()
		return rep, ctx.Err()
	case <-time.After(o.warmup):
	}
	mu.Lock()
	warm := len(acked)
	t0 := time.Now()
	failedAt = t0
	mu.Unlock()
	if warm == 0 {
		stopWriter()
		return rep, fmt.Errorf("no write succeeded in the %s warm-up: %v", o.warmup, rep.Errors)
	}
	st.mark(t0)
	fmt.Fprintf(log, "drill %s: %d writes acknowledged; failing the primary %q now\n", run, warm, rep.OldTarget)
	if err := o.doFail(ctx, rep); err != nil {
		stopWriter()
		return rep, err
	}
	select {
	case <-recovered:
		rep.Recovered = true
		select {
		case <-ctx.Done():
		case <-time.After(o.after):
		}
	case <-time.After(o.timeout):
	case <-ctx.Done():
	}
	stopWriter()

	mu.Lock()
	if rep.Recovered {
		w, end := outage(acked, t0)
		rep.Window, rep.RTO = w.Seconds(), end.Sub(t0).Seconds()
	}
	ids := make([]int64, len(acked))
	for i, a := range acked {
		ids[i] = a.id
	}
	rep.Acked = len(acked)
	mu.Unlock()
	if o.admin != "" {
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
		if found[a.id] {
			rep.Found++
			continue
		}
		rep.Lost++
		if len(rep.LostIDs) < 20 {
			rep.LostIDs = append(rep.LostIDs, a.id)
		}
		if oldest.IsZero() {
			oldest = a.done
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
func (o drillOptions) doFail(ctx context.Context, rep *drillReport) error {
	if o.switchTo != "" {
		rep.Failure = "switchover to " + o.switchTo
		return adminSwitchover(o.admin, o.token, o.svc.Name, o.switchTo)
	}
	rep.Failure = strings.Join(o.fail, " ")
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, o.fail[0], o.fail[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fail command %q: %v: %s", rep.Failure, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// drillStatus polls the admin API and notes when the primary was seen
// down, when a new target (or epoch) was decided, and when the proxy
// forwarded to it.
type drillStatus struct {
	o     drillOptions
	first struct {
		target string
		epoch  uint64
	}
	mu                  sync.Mutex
	t0                  time.Time
	down, decided, rout time.Time
	newTarget           string
	epoch               uint64
	cancel              context.CancelFunc
	done                chan struct{}
}

func (s *drillStatus) get(ctx context.Context) (*serviceView, *clusterServiceView, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.o.admin+"/status", nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := (&http.Client{Timeout: time.Second}).Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	var v statusView
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&v); err != nil {
		return nil, nil, fmt.Errorf("admin /status: %w", err)
	}
	var sv *serviceView
	for i := range v.Services {
		if v.Services[i].Name == s.o.svc.Name {
			sv = &v.Services[i]
		}
	}
	if sv == nil {
		return nil, nil, fmt.Errorf("admin %s does not serve %q: is it this config's proxy?", s.o.admin, s.o.svc.Name)
	}
	var cv *clusterServiceView
	if v.Cluster != nil {
		for i := range v.Cluster.Services {
			if v.Cluster.Services[i].Service == s.o.svc.Name {
				cv = &v.Cluster.Services[i]
			}
		}
	}
	return sv, cv, nil
}

func (s *drillStatus) start(ctx context.Context) error {
	sv, cv, err := s.get(ctx)
	if err != nil {
		return err
	}
	if sv.Target == "" {
		return fmt.Errorf("service %q has no target now (%s): nothing to fail over", s.o.svc.Name, sv.Why)
	}
	s.first.target = sv.Target
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

func (s *drillStatus) observe(now time.Time, sv *serviceView, cv *clusterServiceView) {
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

func (s *drillStatus) fill(rep *drillReport) {
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

func (r *drillReport) print(w io.Writer) {
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
func adminSwitchover(admin, token, service, to string) error {
	if admin == "" {
		return errors.New("a switchover drill needs the admin API: the config has no [admin] listen")
	}
	return postSwitchover(admin, token, service, to, io.Discard)
}
