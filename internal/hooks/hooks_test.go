package hooks

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunEnvironmentNoShell(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	// $QP_SERVICE must reach the hook as an argument literally: no shell expands it.
	res := Run(context.Background(), []string{"/bin/sh", "-c", `env > "$1"; echo "$2"`, "hook", out, "$QP_SERVICE"},
		map[string]string{"QP_SERVICE": "pg", "QP_NEW_BACKEND": "b2", "QP_NEW_ADDRESS": "127.0.0.1:5433"}, 5*time.Second)
	if res.Err != nil {
		t.Fatalf("hook failed: %v (%s)", res.Err, res.Output)
	}
	if strings.TrimSpace(res.Output) != "$QP_SERVICE" {
		t.Fatalf("argument was expanded: %q", res.Output)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"QP_SERVICE=pg", "QP_NEW_BACKEND=b2", "QP_NEW_ADDRESS=127.0.0.1:5433"} {
		if !strings.Contains(string(data), want+"\n") {
			t.Errorf("hook environment lacks %s", want)
		}
	}
}

func TestRunFailureAndMissing(t *testing.T) {
	if res := Run(context.Background(), []string{"/bin/false"}, nil, time.Second); res.Err == nil {
		t.Fatal("exit 1 reported as success")
	}
	if res := Run(context.Background(), []string{"/nonexistent/hook"}, nil, time.Second); res.Err == nil {
		t.Fatal("missing binary reported as success")
	}
	if res := Run(context.Background(), nil, nil, time.Second); res.Err == nil {
		t.Fatal("empty argv reported as success")
	}
}

func TestRunTimeoutKillsGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	// The hook starts a grandchild that would outlive a plain kill of the hook.
	res := Run(context.Background(), []string{"/bin/sh", "-c", `sleep 60 & echo $! > "$1"; wait`, "hook", pidFile}, nil, 300*time.Millisecond)
	if res.Err == nil || !strings.Contains(res.Err.Error(), "timed out") {
		t.Fatalf("want timeout error, got %v", res.Err)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	proc := "/proc/" + strings.TrimSpace(string(data))
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := os.ReadFile(proc + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			return // gone or a zombie: killed
		}
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %s still running after the hook timed out", proc)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
