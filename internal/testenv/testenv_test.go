package testenv

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

func TestFreePortDistinctAndBindable(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d not bindable: %v", p, err)
		}
		_ = l.Close()
	}
}

func TestCheck(t *testing.T) {
	if err := Check("sh"); err != nil {
		t.Fatalf("sh: %v", err)
	}
	if err := Check("qp-no-such-program"); err == nil {
		t.Fatal("missing program reported present")
	}
}

func TestSweepStale(t *testing.T) {
	Need(t, "sleep")
	dir, err := os.MkdirTemp(Root(), dirPrefix+"sweeptest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	// A "server" of a harness process that no longer exists.
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := os.WriteFile(filepath.Join(dir, serverFile), []byte(procID(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte("2147483000 1"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory of a live owner (us) stays.
	live, err := makeBaseDir("sweeplive", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(live) })

	sweepStale()

	if err := <-done; err == nil {
		t.Error("orphaned server was not killed")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale dir %s not removed: %v", dir, err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("live dir removed: %v", err)
	}
}
