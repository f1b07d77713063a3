package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quorumproxy/quorumproxy/config"
)

// A proxy alone runs no promote while another backend reports primary (an
// old primary back, or one promoted elsewhere): it would make a second one.
func TestPromoteNotRunWhileAnotherIsPrimary(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "ran")
	svc := config.Service{Name: "pg", Health: config.Health{Kind: config.KindPostgres},
		Backends: []config.Backend{{Name: "a"}, {Name: "b"}, {Name: "c"}},
		Hooks:    config.Hooks{Promote: []string{"/bin/sh", "-c", "echo ran >> " + ran}, Timeout: 10 * time.Second}}
	for _, tc := range []struct {
		name    string
		primary string // the backend that reports primary ("" none)
		want    bool
	}{{"another is primary", "c", false}, {"none is primary", "", true}} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(ran)
			h := newHookRunner(slog.New(slog.DiscardHandler))
			defer h.wait()
			h.check = func(service, backend string) (bool, bool) { return true, backend == tc.primary }
			h.promote(svc, "b", hookEnv(&svc, "a", "b", "test"), time.Second)
			_, err := os.Stat(ran)
			if got := err == nil; got != tc.want {
				t.Fatalf("promote hook ran: %v, want %v", got, tc.want)
			}
		})
	}
}
