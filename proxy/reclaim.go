//go:build !linux

package proxy

import (
	"runtime/debug"
	"time"
)

// Parking a direction ends its goroutine, but the Go runtime frees the
// stack only at the next garbage collection and returns the pages to the
// OS later still. An idle proxy allocates almost nothing, so that GC may not
// come for minutes (forced GCs run every two minutes) and RSS keeps the
// stacks of every connection that went idle: measured at ~14 KiB per idle
// connection instead of ~3 KiB. reclaimLoop gives that memory back once a
// large number of directions has parked since it last did.
const (
	reclaimEvery     = 5 * time.Second // how often the parked count is looked at
	reclaimMinParked = 1024            // below this, the stacks are not worth a GC
)

func (p *Proxy) reclaimLoop() {
	defer p.wg.Done()
	t := time.NewTicker(reclaimEvery)
	defer t.Stop()
	var last int64 // parked count at the last reclaim
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		n := p.poller.parked.Load()
		// Reclaim when many more directions sit parked than last time:
		// their goroutines have ended and their stacks are garbage. The
		// cost is one GC of the proxy's small heap, at most every 5s.
		if n >= reclaimMinParked && n-last >= n/4 {
			debug.FreeOSMemory()
			last = n
		} else if n < last {
			last = n
		}
	}
}
