package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Bringing a killed primary back as a replica of the server promoted in
// its place, on the same port, so that a series of failovers can go back
// and forth between the same two addresses (a proxy's backends).

// RejoinAsStandby makes p, a server that is no longer running (killed),
// a streaming standby of primary on its own port and name: its data
// directory is replaced by a fresh base backup of primary (the killed
// server may hold WAL that primary never received, and pg_rewind would
// need wal_log_hints), then it starts and streams. With sync it joins
// primary's synchronous_standby_names, as StartStandby(true) does.
func (p *Postgres) RejoinAsStandby(primary *Postgres, sync bool) error {
	p.mu.Lock()
	pr, stopped := p.proc, p.stopped
	p.mu.Unlock()
	if stopped {
		return fmt.Errorf("postgres %s: rejoin after Stop", p.Addr())
	}
	if pr != nil && !pr.exited() {
		return fmt.Errorf("postgres %s: rejoin: still running (kill it first)", p.Addr())
	}
	if primary == p {
		return fmt.Errorf("postgres %s: rejoin: cannot follow itself", p.Addr())
	}
	removePGShm(filepath.Join(p.dataDir(), "postmaster.pid"))
	if err := os.RemoveAll(p.dataDir()); err != nil {
		return fmt.Errorf("postgres %s: rejoin: %w", p.Addr(), err)
	}
	p.mu.Lock()
	p.primary = primary
	p.syncNames = nil // a standby has none of its own
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := startStandby(ctx, p, sync); err != nil {
		return fmt.Errorf("postgres %s: rejoin as a standby of %s: %w", p.Addr(), primary.Addr(), err)
	}
	return nil
}

// RejoinAsReplica starts r, killed or running, again on its own port as a
// replica of primary (empty: there is no persistence) and waits until its
// link to primary is up.
func (r *Redis) RejoinAsReplica(primary *Redis) error {
	if primary == r {
		return errors.New("redis: rejoin: cannot follow itself")
	}
	r.mu.Lock()
	pr, stopped := r.proc, r.stopped
	r.replicaOf = primary.port
	r.mu.Unlock()
	if stopped {
		return fmt.Errorf("redis %s: rejoin after Stop", r.Addr())
	}
	if pr != nil {
		if err := pr.kill(); err != nil {
			return fmt.Errorf("redis %s: rejoin: %w", r.Addr(), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return r.start(ctx, true)
}
