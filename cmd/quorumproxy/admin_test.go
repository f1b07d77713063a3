package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/internal/testwait"
)

// adminDaemon starts a proxy alone with an active-passive service "web"
// (backends a, b) and an admin token; it returns the config path, the
// admin address, the token file and the daemon.
func adminDaemon(t *testing.T) (cfgPath, admin, tokenFile string, d *daemonProc) {
	t.Helper()
	dir := t.TempDir()
	a, b := startEcho(t, "a"), startEcho(t, "b")
	admin, listen := freeAddr(t), freeAddr(t)
	tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath = filepath.Join(dir, "qp.toml")
	cfg := fmt.Sprintf(`[admin]
listen = %q
token_file = %q

[[service]]
name = "web"
listen = %q

  [service.health]
  interval = "100ms"
  timeout = "50ms"

  [[service.backend]]
  name = "a"
  address = %q
  priority = 10

  [[service.backend]]
  name = "b"
  address = %q
`, admin, tokenFile, listen, a.Addr(), b.Addr())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, cfgPath, admin)
	testwait.For(t, "web routing to a", 20*time.Second, func() bool { s := d.service(t, "web"); return s != nil && s.Target == "a" })
	return cfgPath, admin, tokenFile, d
}

func post(t *testing.T, admin, path, token string, form url.Values) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+admin+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestSecurityAdminAuth: a state-changing request without the token, or
// with a wrong one, is refused with 401 and told how to pass the token; an
// unknown service or backend is 404, not 409; a refusal says what was
// refused once.
func TestSecurityAdminAuth(t *testing.T) {
	_, admin, _, _ := adminDaemon(t)
	drainB := url.Values{"service": {"web"}, "backend": {"b"}}
	for _, tc := range []struct{ name, token string }{{"missing", ""}, {"wrong", "s3cret-tokem"}, {"prefix", "s3cret"}, {"longer", "s3cret-token-and-more"}} {
		code, body := post(t, admin, "/api/v1/drain", tc.token, drainB)
		if code != http.StatusUnauthorized || !strings.Contains(body, "Authorization: Bearer") || !strings.Contains(body, "-token-file") {
			t.Errorf("%s token: %d %q, want 401 saying how to pass the token", tc.name, code, body)
		}
	}
	const token = "s3cret-token"
	for _, tc := range []struct {
		form url.Values
		path string
	}{
		{url.Values{"service": {"web"}, "backend": {"zz"}}, "/api/v1/drain"},
		{url.Values{"service": {"nope"}, "backend": {"a"}}, "/api/v1/fence"},
		{url.Values{"service": {"web"}, "to": {"zz"}}, "/api/v1/switchover"},
	} {
		if code, body := post(t, admin, tc.path, token, tc.form); code != http.StatusNotFound {
			t.Errorf("%s %v: %d %q, want 404", tc.path, tc.form, code, body)
		}
	}
	code, body := post(t, admin, "/api/v1/drain", token, url.Values{"service": {"web"}, "backend": {"a"}})
	if code != http.StatusConflict || strings.Count(body, `drain of "a" in "web"`) != 1 {
		t.Errorf("drain of the target: %d %q, want 409 naming it once", code, body)
	}
	if code, body := post(t, admin, "/api/v1/drain", token, drainB); code != http.StatusAccepted {
		t.Errorf("drain with the token: %d %q", code, body)
	}
}

// status, drain and the other commands find the admin address and token
// file in the proxy's config file (-config).
func TestAdminCommandsTakeConfig(t *testing.T) {
	cfgPath, admin, _, _ := adminDaemon(t)
	if out, errOut, code := runBin(t, "drain", "-config", cfgPath, "-service", "web", "-backend", "b"); code != 0 {
		t.Fatalf("drain -config: exit %d: %s%s", code, out, errOut)
	}
	out, errOut, code := runBin(t, "status", "-config", cfgPath)
	if code != 0 || !strings.Contains(out, "draining") {
		t.Fatalf("status -config: exit %d:\n%s%s", code, out, errOut)
	}
	// An explicit -admin still wins; an undrain through it needs the token from -config.
	if _, errOut, code := runBin(t, "undrain", "-config", cfgPath, "-admin", admin, "-service", "web", "-backend", "b"); code != 0 {
		t.Fatalf("undrain -config -admin: exit %d: %s", code, errOut)
	}
	if _, errOut, code := runBin(t, "status", "-config", "/nonexistent.toml"); code != 2 || !strings.Contains(errOut, "nonexistent.toml") {
		t.Fatalf("status with a missing config: exit %d: %s", code, errOut)
	}
}
