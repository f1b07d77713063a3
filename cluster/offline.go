package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/quorumproxy/quorumproxy/cluster/internal/mesh"
	"golang.org/x/sys/unix"
)

// LoadKey reads a gossip key file as Start does: 16, 24 or 32 bytes, raw
// or base64. check-config uses it to find what Start would refuse.
func LoadKey(path string) ([]byte, error) { return mesh.LoadKey(path) }

// CheckStateDir reports what would keep Start from using dir as its
// state_dir: a path that is not a directory, or one this process cannot
// write (or, when dir does not exist yet, create). It takes no lock and
// writes nothing, so it may run beside the proxy that uses dir.
func CheckStateDir(dir string) error {
	if dir == "" {
		return errors.New("state_dir: empty")
	}
	d := dir
	for {
		fi, err := os.Stat(d)
		if errors.Is(err, fs.ErrNotExist) && filepath.Dir(d) != d {
			d = filepath.Dir(d) // Start creates the missing part
			continue
		}
		if err != nil {
			return fmt.Errorf("state_dir %q: %w", dir, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("state_dir %q: %s is not a directory", dir, d)
		}
		break
	}
	if err := unix.Access(d, unix.W_OK|unix.X_OK); err != nil {
		if d != dir {
			return fmt.Errorf("state_dir %q: cannot create it in %s: %w", dir, d, err)
		}
		return fmt.Errorf("state_dir %q: not writable: %w", dir, err)
	}
	return nil
}
