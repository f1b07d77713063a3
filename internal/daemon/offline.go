package daemon

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/quorumproxy/quorumproxy/cluster"
	"github.com/quorumproxy/quorumproxy/config"
)

// LoadConfig is config.Load plus every check `run` makes before it touches
// the network: the files and programs the config names. run, a reload and
// check-config all come through here, so check-config passes only what run
// takes; skipFiles (check-config -skip-files) leaves those checks out for
// a config checked away from its proxy's machine.
func LoadConfig(path string, skipFiles bool) (*config.Config, []config.Problem, error) {
	if skipFiles {
		return config.Load(path)
	}
	return config.Load(path, offlineChecks)
}

// offlineChecks is a config.Check: the token, key, password and TLS files
// are readable and well-formed, exec checks and hooks name executable
// files, and state_dir is writable.
func offlineChecks(cfg *config.Config, report func(table, key, msg string, warn bool)) {
	if f := cfg.Admin.TokenFile; f != "" {
		if _, err := readToken(f); err != nil {
			report("admin", "token_file", "token_file: "+err.Error(), false)
		}
	}
	if c := cfg.Cluster; c != nil {
		if c.SecretKeyFile != "" {
			if _, err := cluster.LoadKey(c.SecretKeyFile); err != nil {
				report("cluster", "secret_key_file", "secret_key_file: "+err.Error(), false)
			}
		}
		if c.StateDir != "" {
			if err := cluster.CheckStateDir(c.StateDir); err != nil {
				report("cluster", "state_dir", err.Error(), false)
			}
		}
	}
	for i := range cfg.Services {
		s := &cfg.Services[i]
		hp, kp := fmt.Sprintf("service[%d].health", i), fmt.Sprintf("service[%d].hooks", i)
		if _, err := s.Health.Password(); err != nil {
			key := "password_file"
			if s.Health.PasswordEnv != "" {
				key = "password_env"
			}
			report(hp, key, err.Error(), false)
		}
		if _, err := serviceTLS(s); err != nil {
			key, _, _ := strings.Cut(err.Error(), ":")
			report(hp, strings.Fields(key)[0], err.Error(), false)
		}
		if s.Health.Kind == config.KindExec {
			if err := executable(s.Health.Command); err != nil {
				report(hp, "command", "command: "+err.Error(), false)
			}
		}
		for _, h := range []struct {
			key  string
			argv []string
		}{{"promote", s.Hooks.Promote}, {"fence", s.Hooks.Fence}, {"notify", s.Hooks.Notify}, {"repoint", s.Hooks.Repoint}} {
			if err := executable(h.argv); err != nil {
				report(kp, h.key, h.key+": "+err.Error(), false)
			}
		}
	}
}

// executable checks that argv's program is a file this process may run,
// found as exec would find it; an empty argv is no command and passes.
func executable(argv []string) error {
	if len(argv) == 0 || argv[0] == "" {
		return nil // no command, or one the schema already refused
	}
	if _, err := exec.LookPath(argv[0]); err != nil {
		return fmt.Errorf("%q is not an executable file: %w", argv[0], unwrapExec(err))
	}
	return nil
}

// unwrapExec drops exec.Error's repetition of the name.
func unwrapExec(err error) error {
	if ee, ok := err.(*exec.Error); ok {
		return ee.Err
	}
	return err
}

// readToken reads the admin token file: the token, surrounding whitespace
// removed; an empty one is an error.
func readToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	token := []byte(strings.TrimSpace(string(b)))
	if len(token) == 0 {
		return nil, fmt.Errorf("%s: empty token", path)
	}
	return token, nil
}
