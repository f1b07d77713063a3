package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// check-config makes every check run makes without the network, through
// the same code: what it passes, run takes, and what run refuses, it
// reports, every problem at once.
func TestCheckConfigMakesRunsChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	shortKey := write("short.key", "0123456789", 0o600)
	emptyToken := write("token", "\n", 0o600)
	notExec := write("hook.sh", "#!/bin/sh\n", 0o644)
	aFile := write("file", "x", 0o600)
	badCA := write("ca.pem", "not a certificate", 0o600)
	cfg := fmt.Sprintf(`[admin]
listen = "127.0.0.1:0"
token_file = %q

[cluster]
node_name = "qp1"
secret_key_file = %q
state_dir = %q

[[cluster.peer]]
name = "qp1"
address = "127.0.0.1:17946"

[[service]]
name = "pg"
listen = "127.0.0.1:0"

  [service.health]
  kind = "postgres"
  password_file = %q
  tls = true
  tls_ca_file = %q

  [service.hooks]
  promote = [%q]
  notify = ["/nonexistent/notify"]

  [[service.backend]]
  name = "a"
  address = "127.0.0.1:5432"

  [[service.backend]]
  name = "b"
  address = "127.0.0.1:5433"
  weight = 99999999999999999999
`, emptyToken, shortKey, filepath.Join(aFile, "state"), filepath.Join(dir, "missing.pass"), badCA, notExec)
	path := write("qp.toml", cfg, 0o600)

	want := []string{
		"qp.toml:3:1: admin: token_file: " + emptyToken + ": empty token",
		"qp.toml:7:1: cluster: secret_key_file: gossip key",
		"qp.toml:8:1: cluster: state_dir",
		"qp.toml:20:3: service \"pg\" health: password_file: open ",
		"qp.toml:22:3: service \"pg\" health: tls_ca_file " + badCA + ": no PEM certificate in it",
		"qp.toml:25:3: service \"pg\" hooks: promote: \"" + notExec + "\" is not an executable file",
		"qp.toml:26:3: service \"pg\" hooks: notify: \"/nonexistent/notify\" is not an executable file",
		"qp.toml:35:3: service \"pg\" backend \"b\": weight: 99999999999999999999 is out of range",
	}
	_, errOut, code := runBin(t, "check-config", path)
	if code != 1 {
		t.Fatalf("check-config: exit %d\n%s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != len(want)+1 {
		t.Errorf("want %d problems, got:\n%s", len(want), errOut)
	}
	for i, w := range want {
		if i >= len(lines) || !strings.Contains(lines[i], w) {
			t.Errorf("problem %d: want %q in\n%s", i+1, w, errOut)
		}
	}
	// run refuses the same file with the same problems, before it listens,
	// given as a flag or, like check-config, as the argument.
	for _, args := range [][]string{{"run", "-config", path}, {"run", path}} {
		_, runErr, code := runBin(t, args...)
		if code != 1 {
			t.Fatalf("%v: exit %d\n%s", args, code, runErr)
		}
		for _, w := range want {
			if !strings.Contains(runErr, strings.TrimPrefix(w, "qp.toml")) {
				t.Errorf("%v does not report %q:\n%s", args, w, runErr)
			}
		}
	}
	// -skip-files checks the file alone.
	if _, errOut, _ := runBin(t, "check-config", "-skip-files", path); strings.Count(strings.TrimSpace(errOut), "\n") != 1 {
		t.Errorf("-skip-files: want only the overflow:\n%s", errOut)
	}
}
