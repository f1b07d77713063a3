//go:build linux

package proxy

import "golang.org/x/sys/unix"

// slotSize is the most a batched read takes; a direction whose read fills
// its slot goes on with the loop's ordinary reads.
const slotSize = 8 << 10

// maxBatch bounds the reads of one batch (the uring's size); further
// ready directions of the same wake-up are served one by one.
const maxBatch = 128

// batch gathers the directions that one epoll_wait found readable, reads
// them all in one io_uring_enter and writes what they read in another:
// two system calls where there were two per direction. A direction takes
// part only in the plain case (established, nothing kept, no pipe, no
// hang-up in the event); every other case, and every decision after a
// read or a write, is the ordinary path's.
type batch struct {
	r    *uring
	slab []byte       // slot i is slab[i*slotSize:][:slotSize]
	q    []*direction // in the order the events came
	got  []int32      // bytes read into slot i (0: not sending)
	res  []int32
}

func newBatch() (*batch, error) {
	r, err := newURing(maxBatch)
	if err != nil {
		return nil, err
	}
	return &batch{
		r:    r,
		slab: make([]byte, maxBatch*slotSize),
		q:    make([]*direction, 0, maxBatch),
		got:  make([]int32, maxBatch),
		res:  make([]int32, maxBatch),
	}, nil
}

func (b *batch) slot(i int) []byte { return b.slab[i*slotSize:][:slotSize] }

// take queues the read of an established session's readable end; false:
// the event goes the ordinary way.
func (b *batch) take(e *endpoint, ev uint32) bool {
	s := e.s
	if s.closed || s.state != stEstablished || len(b.q) == maxBatch ||
		ev&unix.EPOLLIN == 0 || ev&hangup != 0 {
		return false
	}
	rd, wr := e.dirs()
	if ev&unix.EPOLLOUT != 0 && wr.kept() || rd.eof || rd.kept() || rd.pipe != nil || rd.queued {
		return false
	}
	b.q = append(b.q, rd)
	return true
}

// run reads and writes what take queued. Between preparing operations and
// submitting them nothing runs, and only directions of open sessions are
// prepared, so no fd can have been closed and reused in between.
func (l *loop) runBatch() {
	b := l.batch
	q := b.q
	defer func() {
		clear(b.q)
		b.q = b.q[:0]
	}()
	live := 0
	for _, d := range q {
		if !d.s.closed {
			live++
		}
	}
	if live <= 1 {
		// One read and one write: the uring would only add to them.
		for _, d := range q {
			if !d.s.closed {
				d.wake(true) // take saw no hang-up: a short read drains
			}
		}
		return
	}
	for i, d := range q {
		if d.s.closed {
			q[i] = nil
			continue
		}
		d.resume()
		b.r.prep(ioringOpRecv, d.src, b.slot(i), unix.MSG_DONTWAIT, uint64(i))
	}
	async, err := b.r.submit(b.res)
	if err != nil {
		l.batchFailed(err)
		return
	}
	defer func() {
		if async {
			l.batchAsync()
		}
	}()
	l.batched.Add(uint64(live))
	sends := 0
	for i, d := range q {
		b.got[i] = 0
		if d == nil || d.s.closed {
			continue
		}
		s, res := d.s, b.res[i]
		switch {
		case res > 0:
			s.last = l.now()
			if d.leaseOK() {
				b.got[i] = res
				sends++
			}
		case res == 0:
			d.ended()
		case res == -int32(unix.EAGAIN):
			d.full = 0
			d.park()
		case res == -int32(unix.EINTR) || res == -int32(unix.ECANCELED):
			d.pump() // nothing was read: the ordinary way
		default:
			err := unix.Errno(-res)
			s.end(d.side(true) + ": " + err.Error())
			s.abortNow(err == unix.ECONNRESET)
		}
	}
	if sends == 0 {
		return
	}
	for i, d := range q {
		if b.got[i] > 0 && !d.s.closed {
			b.r.prep(ioringOpSend, d.dst, b.slot(i)[:b.got[i]], unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, uint64(i))
		} else {
			b.got[i] = 0
		}
	}
	sendAsync, err := b.r.submit(b.res)
	async = async || sendAsync
	if err != nil {
		l.batchFailed(err)
		return
	}
	for i, d := range q {
		n := int(b.got[i])
		if n == 0 || d.s.closed {
			continue
		}
		data := b.slot(i)[:n]
		var sent bool
		switch res := b.res[i]; {
		case res >= 0:
			sent = d.wrote(data, int(res), nil)
		case res == -int32(unix.EAGAIN):
			sent = d.wrote(data, 0, nil) // kept; EPOLLOUT resumes it
		case res == -int32(unix.EINTR) || res == -int32(unix.ECANCELED):
			sent = d.wrote(data, 0, nil)
			d.pump() // nothing was sent and no edge may come: flush now
		default:
			sent = d.wrote(data, 0, unix.Errno(-res))
		}
		if !sent || d.s.closed {
			continue
		}
		if n < slotSize {
			d.full = 0 // a short read: the source is drained
			d.park()
		} else {
			d.pump()
		}
	}
}

// batchAsync turns batching off on a loop whose kernel did not finish a
// MSG_DONTWAIT op at once (submit canceled it): waiting there would stall
// every session of the loop.
func (l *loop) batchAsync() {
	if l.batch == nil {
		return
	}
	l.p.log.Warn("io_uring did not complete a nonblocking read or write at once; the loop goes on with one system call per read and write", "loop", l.id)
	l.stopBatching()
}

// stopBatching closes the loop's uring: from now on it reads and writes
// one system call at a time.
func (l *loop) stopBatching() {
	l.batch.r.close()
	l.batch = nil
}

// batchFailed turns batching off for good on a loop whose uring failed
// (not seen: the ops cannot fail at submission). Whether the queued reads
// and writes ran is unknown, so their sessions are reset rather than
// risk a lost or repeated byte.
func (l *loop) batchFailed(err error) {
	l.p.log.Error("io_uring failed; the loop's sessions in its batch are reset and it goes on with one system call per read and write", "loop", l.id, "err", err)
	q := l.batch.q
	l.stopBatching()
	for _, d := range q {
		if d != nil && !d.s.closed {
			d.s.end("io_uring failed: " + err.Error())
			d.s.abortNow(true)
		}
	}
}
