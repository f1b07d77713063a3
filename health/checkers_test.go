package health

import (
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTCPChecker(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	spec := Spec{Kind: "tcp", Timeout: time.Second}
	wantUp(t, checkOnce(t, spec, addr), RoleUnknown)
	ln.Close()
	r := checkOnce(t, spec, addr)
	wantDown(t, r, ErrRefused)
	if got := r.Err.Error(); got != "connection refused" {
		t.Errorf("error %q, want %q", got, "connection refused")
	}
}

func TestNewCheckerErrors(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		addr string
	}{
		{Spec{Kind: "carrier-pigeon"}, "127.0.0.1:1"},
		{Spec{Kind: "tcp"}, "no-port"},
		{Spec{Kind: "exec"}, "127.0.0.1:1"},
		{Spec{Kind: "http", Path: "health"}, "127.0.0.1:1"},
	} {
		if c, err := NewChecker(tc.spec, tc.addr); err == nil {
			c.Close()
			t.Errorf("NewChecker(%+v, %q) succeeded, want an error", tc.spec, tc.addr)
		}
	}
	if _, err := NewChecker(Spec{Kind: "carrier-pigeon"}, "127.0.0.1:1"); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("unknown kind: %v, want ErrUnknownKind", err)
	}
}

func TestHTTPChecker(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/primary":
			if r.Method != http.MethodHead {
				fmt.Fprint(w, `{"role": "primary", "state": "running"}`)
			}
		case "/replica":
			http.Error(w, "not a replica", http.StatusServiceUnavailable)
		case "/moved":
			http.Redirect(w, r, "/primary", http.StatusFound)
		case "/hang":
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	base := Spec{Kind: "http", Timeout: 2 * time.Second}
	with := func(f func(*Spec)) Spec { s := base; f(&s); return s }

	wantUp(t, checkOnce(t, with(func(s *Spec) { s.Path = "/primary" }), addr), RoleUnknown)
	wantUp(t, checkOnce(t, with(func(s *Spec) { s.Path = "/primary"; s.Method = "HEAD"; s.ExpectStatus = 200 }), addr), RoleUnknown)
	wantUp(t, checkOnce(t, with(func(s *Spec) { s.Path = "/primary"; s.ExpectBody = `"role": "primary"` }), addr), RoleUnknown)
	wantUp(t, checkOnce(t, with(func(s *Spec) { s.Path = "/replica"; s.ExpectStatus = 503 }), addr), RoleUnknown)
	wantUp(t, checkOnce(t, with(func(s *Spec) { s.Path = "/moved" }), addr), RoleUnknown)

	r := checkOnce(t, with(func(s *Spec) { s.Path = "/replica" }), addr)
	wantDown(t, r, ErrUnexpected)
	if !strings.Contains(r.Err.Error(), "status 503") {
		t.Errorf("error %q does not name the status", r.Err)
	}
	r = checkOnce(t, with(func(s *Spec) { s.Path = "/moved"; s.ExpectStatus = 200 }), addr)
	wantDown(t, r, ErrUnexpected)
	r = checkOnce(t, with(func(s *Spec) { s.Path = "/primary"; s.ExpectBody = "replica" }), addr)
	wantDown(t, r, ErrUnexpected)

	r = checkOnce(t, with(func(s *Spec) { s.Path = "/hang" }), addr)
	wantDown(t, r, ErrTimeout)
	if got := r.Err.Error(); got != "timeout after 2s" {
		t.Errorf("error %q, want %q", got, "timeout after 2s")
	}
	wantDown(t, checkOnce(t, base, fakeServer(t, silent)), ErrTimeout)
	wantDown(t, checkOnce(t, base, fakeServer(t, garbage)), ErrProtocol)
	wantDown(t, checkOnce(t, base, closedPort(t)), ErrRefused)
}

func TestExecChecker(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Generous: the machine may be loaded; only the hanging command runs into it.
	spec := func(argv ...string) Spec { return Spec{Kind: "exec", Command: argv, Timeout: 10 * time.Second} }
	const addr = "127.0.0.1:5432"

	wantUp(t, checkOnce(t, spec(script("ok", "exit 0")), addr), RoleUnknown)
	wantUp(t, checkOnce(t, spec(script("primary", "echo starting; echo role=primary")), addr), RolePrimary)
	wantUp(t, checkOnce(t, spec(script("replica", "echo replica")), addr), RoleReplica)
	// The address reaches the command through its environment and its argv is not a shell line.
	wantUp(t, checkOnce(t, spec(script("env", `[ "$QP_ADDRESS" = 127.0.0.1:5432 ] && [ "$QP_PORT" = 5432 ] && [ "$1" = 'a b;c' ]`), "a b;c"), addr), RoleUnknown)

	r := checkOnce(t, spec(script("fail", "echo 'replication broken' >&2; exit 3")), addr)
	wantDown(t, r, ErrUnexpected)
	if !strings.Contains(r.Err.Error(), "exit status 3") || !strings.Contains(r.Err.Error(), "replication broken") {
		t.Errorf("error %q should give the exit status and the last stderr line", r.Err)
	}
	wantDown(t, checkOnce(t, spec(filepath.Join(dir, "missing")), addr), ErrUnexpected)

	// A command that hangs, and a child of it holding stdout, are killed at the timeout.
	start := time.Now()
	hang := spec(script("hang", "sleep 30 & sleep 30"))
	hang.Timeout = 500 * time.Millisecond
	r = checkOnce(t, hang, addr)
	wantDown(t, r, ErrTimeout)
	if got := r.Err.Error(); got != "timeout after 500ms" {
		t.Errorf("error %q, want %q", got, "timeout after 500ms")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("hanging command took %v to give up", took)
	}
}

func TestParseRole(t *testing.T) {
	for out, want := range map[string]Role{
		"":                           RoleUnknown,
		"ok\n":                       RoleUnknown,
		"role=primary\n":             RolePrimary,
		"  MASTER  \n":               RolePrimary,
		"x\nrole=replica\nprimary\n": RoleReplica,
		"standby":                    RoleReplica,
		"role=leader":                RoleUnknown,
	} {
		if got := parseRole(out); got != want {
			t.Errorf("parseRole(%q) = %v, want %v", out, got, want)
		}
	}
}

func TestSpecStringRedactsPassword(t *testing.T) {
	spec := Spec{Kind: "postgres", User: "qp", Password: "hunter2"}
	tgt := Target{Service: "pg", Backend: "a", Address: "127.0.0.1:5432", Spec: spec}
	for _, s := range []string{spec.String(), fmt.Sprint(spec), fmt.Sprintf("%+v", tgt), fmt.Sprintf("%v", []Target{tgt})} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password shown: %s", s)
		}
		if !strings.Contains(s, "[redacted]") || !strings.Contains(s, "postgres") {
			t.Errorf("spec not shown field by field: %s", s)
		}
	}
}

func TestHTTPCheckerTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	spec := Spec{Kind: "http", TLS: true, TLSCA: ca, ExpectBody: "ok", Timeout: 2 * time.Second}
	wantUp(t, checkOnce(t, spec, addr), RoleUnknown)
	untrusted := spec
	untrusted.TLSCA = nil // the system's roots do not know httptest's certificate
	wantDown(t, checkOnce(t, untrusted, addr), ErrTLS)
	spec.TLS = false // plain HTTP to a TLS port: the server answers 400
	wantDown(t, checkOnce(t, spec, addr), ErrUnexpected)
}
