package testenv

import (
	"fmt"
	"net"
	"strconv"
	"sync"
)

// server is what every engine's handle shares: its loopback port and the
// running process, under the lock that also guards the engine's own state.
type server struct {
	kind string // "postgres", "redis", "mariadb": for messages

	mu      sync.Mutex
	port    int
	proc    *proc // nil after Stop
	stopped bool
}

// Addr returns "127.0.0.1:port".
func (s *server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port returns the TCP port.
func (s *server) Port() int { return s.port }

// Pid returns the server's (for PostgreSQL the postmaster's) pid, or 0 when
// it is not running.
func (s *server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.exited() {
		return 0
	}
	return s.proc.pid()
}

// Kill SIGKILLs the server and every process it started, as a crash would;
// the data directory stays for Restart.
func (s *server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	if err := s.proc.kill(); err != nil {
		return fmt.Errorf("%s %s: kill: %w", s.kind, s.Addr(), err)
	}
	return nil
}

// Pause freezes the server and its children with SIGSTOP: the port still
// accepts TCP connections but nothing answers.
func (s *server) Pause() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return fmt.Errorf("%s %s: pause: not running", s.kind, s.Addr())
	}
	if err := s.proc.pause(); err != nil {
		return fmt.Errorf("%s %s: pause: %w", s.kind, s.Addr(), err)
	}
	return nil
}

// Resume undoes Pause with SIGCONT.
func (s *server) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return fmt.Errorf("%s %s: resume: not running", s.kind, s.Addr())
	}
	s.proc.resume()
	return nil
}
