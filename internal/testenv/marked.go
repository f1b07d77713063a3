package testenv

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// MarkEnv is the environment variable Mark sets: every process started
// from the test after it inherits it, so Marked can find them again.
const MarkEnv = "QP_TEST_MARK"

// Mark sets MarkEnv to a value unique to t for the rest of t and returns it.
// Children, grandchildren and daemons of commands the test runs carry it.
func Mark(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	v := hex.EncodeToString(b)
	t.Setenv(MarkEnv, v)
	return v
}

// Marked returns the pids of live processes (not zombies) whose
// environment carries MarkEnv=mark, this process excluded.
func Marked(mark string) []int {
	want := []byte(MarkEnv + "=" + mark + "\x00")
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join(d, "environ"))
		if err != nil || !bytes.Contains(append([]byte{0}, env...), append([]byte{0}, want...)) {
			continue
		}
		if st, err := os.ReadFile(filepath.Join(d, "stat")); err != nil || bytes.Contains(st, []byte(") Z ")) {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// KillMarked kills every process Marked finds; for test cleanup.
func KillMarked(mark string) {
	for _, pid := range Marked(mark) {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
		}
	}
}
