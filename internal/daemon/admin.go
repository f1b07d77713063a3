package daemon

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
)

// The admin API listens on loopback by default. Reads are open; anything that
// changes state needs the token from [admin] token_file.
func (d *Daemon) startAdmin(c config.Admin) error {
	if c.Listen == "" {
		return nil
	}
	var token []byte
	if c.TokenFile != "" {
		var err error
		if token, err = readToken(c.TokenFile); err != nil {
			return fmt.Errorf("admin.token_file: %w", err)
		}
	}
	ln := d.adminInherited // handed over by the process this one replaces
	d.adminInherited = nil
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", c.Listen); err != nil {
			return fmt.Errorf("admin.listen: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", d.handleStatus)
	mux.HandleFunc("GET /health", d.handleHealth)
	mux.HandleFunc("GET /health/{service}", d.handleServiceHealth)
	mux.HandleFunc("GET /api/v1/history", d.handleHistory)
	mux.Handle("GET /metrics", d.metrics.handler())
	mux.HandleFunc("GET /{$}", d.handlePage)
	mux.Handle("POST /api/v1/reload", requireToken(token, http.HandlerFunc(d.handleReload)))
	mux.Handle("POST /api/v1/switchover", requireToken(token, d.knownTarget("to", http.HandlerFunc(d.handleSwitchover))))
	mux.Handle("POST /api/v1/fence", requireToken(token, d.knownTarget("backend", d.handleFence(true))))
	mux.Handle("POST /api/v1/unfence", requireToken(token, d.knownTarget("backend", d.handleFence(false))))
	mux.Handle("POST /api/v1/drain", requireToken(token, d.knownTarget("backend", d.handleDrain(true))))
	mux.Handle("POST /api/v1/undrain", requireToken(token, d.knownTarget("backend", d.handleDrain(false))))
	mux.Handle("POST /api/v1/pause", requireToken(token, d.knownTarget("", d.handlePause(true))))
	mux.Handle("POST /api/v1/resume", requireToken(token, d.knownTarget("", d.handlePause(false))))
	mux.Handle("POST /api/v1/upgrade", requireToken(token, http.HandlerFunc(d.handleUpgrade)))
	d.admin = &http.Server{
		Handler: mux,
		// Slow or stuck clients (slowloris) must not pile up on the admin port.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	d.adminLn, d.adminListen = ln, c.Listen
	d.adminWG.Add(1)
	go func() {
		defer d.adminWG.Done()
		err := d.admin.Serve(ln)
		if d.handedOver.Load() && errors.Is(err, net.ErrClosed) {
			return // HandOver closed the listener: the new process accepts
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("admin API stopped", "err", err)
		}
	}()
	d.log.Info("admin API listening", "addr", ln.Addr().String())
	return nil
}

func (d *Daemon) stopAdmin() {
	if d.admin == nil {
		return
	}
	d.admin.Close()
	d.adminWG.Wait()
}

func requireToken(token []byte, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(token) == 0 {
			http.Error(w, "state-changing endpoints are disabled: set [admin] token_file", http.StatusForbidden)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !tokenMatches([]byte(got), token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="quorumproxy"`)
			http.Error(w, "missing or wrong token: send the token of [admin] token_file as the header "+
				"'Authorization: Bearer TOKEN' (the quorumproxy commands: -token-file FILE, or -config with the proxy's config file)",
				http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// tokenMatches compares in time that depends on neither token: both are
// hashed first, because subtle.ConstantTimeCompare returns at once on a
// length mismatch and so tells the token's length.
func tokenMatches(got, token []byte) bool {
	a, b := sha256.Sum256(got), sha256.Sum256(token)
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// knownTarget answers 404 for a service, or a backend of it (the form
// value key names; "": a service alone), that the running config does not
// have.
func (d *Daemon) knownTarget(key string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		service, backend := r.FormValue("service"), ""
		if key != "" {
			backend = r.FormValue(key)
		}
		d.mu.Lock()
		svc := d.cfg.Service(service)
		d.mu.Unlock()
		switch {
		case service == "" || (key != "" && backend == ""):
			// the handler says what is missing
		case svc == nil:
			http.Error(w, fmt.Sprintf("unknown service %q", service), http.StatusNotFound)
			return
		case key != "" && !slices.ContainsFunc(svc.Backends, func(b config.Backend) bool { return b.Name == backend }):
			http.Error(w, fmt.Sprintf("service %q has no backend %q", service, backend), http.StatusNotFound)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	if r.URL.Query().Has("pretty") {
		// Indenting costs twice the encoding: at 1,000 services a
		// poller's reads took a third of the proxy's CPU.
		enc.SetIndent("", "  ")
	}
	enc.Encode(d.status())
}

func (d *Daemon) handleReload(w http.ResponseWriter, r *http.Request) {
	d.Reload()
	d.mu.Lock()
	res := d.lastReload
	d.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if !res.OK {
		w.WriteHeader(http.StatusUnprocessableEntity)
	}
	json.NewEncoder(w).Encode(res)
}

// handleSwitchover asks the cluster to move a service to another backend,
// through the vote like any other decision.
func (d *Daemon) handleSwitchover(w http.ResponseWriter, r *http.Request) {
	service, to := r.FormValue("service"), r.FormValue("to")
	if service == "" || to == "" {
		http.Error(w, "need service and to", http.StatusBadRequest)
		return
	}
	if !d.clustered(w, service, "switchover") {
		return
	}
	id, err := d.cluster.rt.Switchover(service, to)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	d.log.Info("switchover requested", "service", service, "to", to, "operation", id, "remote", r.RemoteAddr)
	d.note(journal.Entry{Service: service, Kind: "operator", Remote: r.RemoteAddr,
		Summary: fmt.Sprintf("switchover to %s requested (operation %d)", to, id)})
	writeAccepted(w, adminapi.ControlAnswer{Service: service, Operation: id,
		Message: fmt.Sprintf("switchover of %q to %q proposed (operation %d)", service, to, id)})
}

func writeAccepted(w http.ResponseWriter, a adminapi.ControlAnswer) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	json.NewEncoder(w).Encode(a)
}

// clustered answers 409 and false unless the cluster routes service.
func (d *Daemon) clustered(w http.ResponseWriter, service, what string) bool {
	if d.cluster == nil || !d.cluster.owned[service] {
		http.Error(w, fmt.Sprintf("service %q is not routed by a cluster: %s needs [cluster] and an active-passive service", service, what), http.StatusConflict)
		return false
	}
	return true
}

// backendControl is a state-changing endpoint about one backend of one
// service: do returns an error (409 with it) or the 202 answer.
func (d *Daemon) backendControl(verb string, do func(service, backend string) (adminapi.ControlAnswer, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		service, backend := r.FormValue("service"), r.FormValue("backend")
		if service == "" || backend == "" {
			http.Error(w, "need service and backend", http.StatusBadRequest)
			return
		}
		answer, err := do(service, backend)
		if err != nil {
			http.Error(w, fmt.Sprintf("%s of %q in %q: %v", verb, backend, service, err), http.StatusConflict)
			return
		}
		d.log.Info(verb+" requested", "service", service, "backend", backend, "operation", answer.Operation, "remote", r.RemoteAddr)
		d.note(journal.Entry{Service: service, Kind: "operator", Remote: r.RemoteAddr, Summary: fmt.Sprintf("%s of %s: %s", verb, backend, answer.Message)})
		answer.Service = service
		writeAccepted(w, answer)
	})
}

// handleFence fences a backend (or unfences it): a fenced backend is no
// failover candidate until unfenced, and fencing the primary moves the
// service. In a cluster both are voted epochs; a proxy alone does it at once.
func (d *Daemon) handleFence(fence bool) http.Handler {
	verb := map[bool]string{true: "fence", false: "unfence"}[fence]
	return d.backendControl(verb, func(service, backend string) (adminapi.ControlAnswer, error) {
		if d.cluster == nil || !d.cluster.owned[service] {
			if err := d.px.SetFence(service, backend, fence); err != nil {
				return adminapi.ControlAnswer{}, err
			}
			d.repoint.poke(service) // an unfenced backend may be repointed now
			return adminapi.ControlAnswer{Message: fmt.Sprintf("%s of %q in %q done on this proxy (no cluster routes it; kept until a restart)", verb, backend, service)}, nil
		}
		id, err := d.cluster.rt.Fence(service, backend, fence)
		if err != nil {
			return adminapi.ControlAnswer{}, err
		}
		return adminapi.ControlAnswer{Operation: id, Message: fmt.Sprintf("%s of %q in %q proposed (operation %d)", verb, backend, service, id)}, nil
	})
}

// handlePause pauses a clustered service's automatic decisions (or
// resumes them), by a vote: Patroni's pause, per service.
func (d *Daemon) handlePause(on bool) http.Handler {
	verb := map[bool]string{true: "pause", false: "resume"}[on]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		service := r.FormValue("service")
		if service == "" {
			http.Error(w, "need service", http.StatusBadRequest)
			return
		}
		if !d.clustered(w, service, verb) {
			return
		}
		id, err := d.cluster.rt.Pause(service, on)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		d.log.Info(verb+" requested", "service", service, "operation", id, "remote", r.RemoteAddr)
		d.note(journal.Entry{Service: service, Kind: "operator", Remote: r.RemoteAddr, Summary: fmt.Sprintf("%s requested (operation %d)", verb, id)})
		writeAccepted(w, adminapi.ControlAnswer{Service: service, Operation: id,
			Message: fmt.Sprintf("%s of %q proposed (operation %d)", verb, service, id)})
	})
}

// handleDrain takes a backend out of this proxy's new connections (or
// puts it back); its open sessions run on. Local to this proxy: a cluster
// does not vote on it.
func (d *Daemon) handleDrain(on bool) http.Handler {
	verb := map[bool]string{true: "drain", false: "undrain"}[on]
	return d.backendControl(verb, func(service, backend string) (adminapi.ControlAnswer, error) {
		if err := d.px.SetDrain(service, backend, on); err != nil {
			return adminapi.ControlAnswer{}, err
		}
		if on {
			return adminapi.ControlAnswer{Message: fmt.Sprintf("%q of %q takes no new connections on this proxy; its open sessions run on (watch ACTIVE in quorumproxy status)", backend, service)}, nil
		}
		return adminapi.ControlAnswer{Message: fmt.Sprintf("%q of %q takes new connections again on this proxy", backend, service)}, nil
	})
}
