//go:build !linux

package proxy

import (
	"errors"
	"sync/atomic"
)

// poller is Linux-only; elsewhere idle directions wait in Go's poller.
type poller struct {
	parked  atomic.Int64
	resumed atomic.Uint64
}

func newPoller() (*poller, error)                 { return nil, errors.New("parking needs epoll") }
func (pl *poller) arm(fd int, d *direction) error { return errors.New("parking needs epoll") }
func (pl *poller) forget(d *direction)            {}
func (pl *poller) run(p *Proxy)                   { p.wg.Done() }
func (pl *poller) stop()                          {}
