//go:build !linux

package proxy

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// bufSize is the copy buffer; 32 KiB moves bulk data in few syscalls.
const bufSize = 32 << 10

// bufPool holds copy buffers. A direction borrows one only once its source
// is readable and returns it before it waits again, so an idle session
// holds none. Pointers avoid an allocation per Put.
var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// leaseSlack is how much a lease may extend before the write deadline is
// moved; a shorter deadline only errs on the safe side.
const leaseSlack = time.Millisecond

// Direction states; a parked direction has no goroutine.
const (
	dirRunning int32 = iota
	dirParked
	dirDone
)

// session is one proxied client connection and its backend connection.
type session struct {
	svc    *service
	b      *backend
	client *net.TCPConn
	server *net.TCPConn
	idle   time.Duration
	timer  atomic.Pointer[time.Timer] // idle timeout, nil without one

	last     atomic.Int64 // unix nanos of the last read, either way; idle only
	finished atomic.Int32 // directions done
	aborted  atomic.Bool

	up, down direction // client→backend, backend→client
}

// direction is the state of one copy direction, allocated with the session
// so that the read callback (a method value bound once) does not allocate
// per packet. Its fields belong to whichever goroutine runs it; the state
// CAS hands it over between the pump, the poller and abort.
type direction struct {
	s      *session
	dst    *net.TCPConn
	src    *net.TCPConn
	rc     syscall.RawConn
	count  *atomic.Uint64
	lease  Lease     // bounds writes when set
	wdl    time.Time // write deadline now in force
	readFn func(uintptr) bool
	buf    *[]byte
	n      int
	err    error

	state   atomic.Int32
	token   uint64 // poller token, 0 before the first park
	reads   uint64 // successful reads, to tell idleness at a deadline
	armedAt uint64 // reads when the park deadline was set
}

func newSession(svc *service, b *backend, client, server *net.TCPConn, idle time.Duration, lease Lease) (*session, error) {
	s := &session{svc: svc, b: b, client: client, server: server, idle: idle}
	crc, err := client.SyscallConn()
	if err != nil {
		return nil, err
	}
	src, err := server.SyscallConn()
	if err != nil {
		return nil, err
	}
	s.up = direction{s: s, dst: server, src: client, rc: crc, count: &b.bytesIn, lease: lease}
	s.down = direction{s: s, dst: client, src: server, rc: src, count: &b.bytesOut}
	s.up.readFn = s.up.read
	s.down.readFn = s.down.read
	return s, nil
}

// start arms the park deadlines and the idle timer of a registered session.
func (s *session) start() {
	if s.svc.p.poller != nil {
		dl := time.Now().Add(s.svc.p.parkAfter)
		_ = s.client.SetReadDeadline(dl)
		_ = s.server.SetReadDeadline(dl)
	}
	if s.idle > 0 {
		s.last.Store(time.Now().UnixNano())
		s.timer.Store(time.AfterFunc(s.idle, s.idleCheck))
	}
}

// idleCheck runs when the idle timer fires: it closes the session if
// nothing was read either way for the idle timeout, else re-arms.
func (s *session) idleCheck() {
	left := s.idle - time.Since(time.Unix(0, s.last.Load()))
	if left <= 0 {
		s.abort(false)
		return
	}
	t := s.timer.Load()
	for t == nil { // fired before newSession stored it (a tiny timeout)
		runtime.Gosched()
		t = s.timer.Load()
	}
	t.Reset(left)
}

// read is the RawConn.Read callback: it borrows a buffer, reads, and gives
// the buffer back if nothing was there, so waiting holds no buffer.
func (d *direction) read(fd uintptr) bool {
	b := bufPool.Get().(*[]byte)
	var n int
	var err error
	for {
		n, err = unix.Read(int(fd), *b)
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.EAGAIN {
		bufPool.Put(b)
		return false
	}
	d.buf, d.n, d.err = b, n, err
	return true
}

// copyClientToBackend copies client bytes to the backend.
func (s *session) copyClientToBackend() {
	defer s.svc.p.wg.Done()
	s.up.pump()
}

// copyBackendToClient copies backend bytes to the client.
func (s *session) copyBackendToClient() {
	s.down.pump()
}

// resume runs a direction the poller found readable again.
func (d *direction) resume() {
	defer d.s.svc.p.wg.Done()
	d.armedAt = d.reads
	_ = d.src.SetReadDeadline(time.Now().Add(d.s.svc.p.parkAfter))
	d.pump()
}

// pump copies until EOF (then half-closes), an error (then aborts the
// session) or idleness (then parks and returns, leaving no goroutine).
func (d *direction) pump() {
	for {
		err := d.rc.Read(d.readFn)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && d.s.svc.p.poller != nil {
				if d.reads != d.armedAt {
					// Data flowed since the deadline was set: not idle.
					d.armedAt = d.reads
					_ = d.src.SetReadDeadline(time.Now().Add(d.s.svc.p.parkAfter))
					continue
				}
				switch d.park() {
				case parkOK, parkTaken:
					return
				case parkStay:
					// The poller is gone: wait here, without deadline.
					_ = d.src.SetReadDeadline(time.Time{})
					continue
				}
			}
			d.s.abort(false)
			d.end()
			return
		}
		buf, n, rerr := d.buf, d.n, d.err
		d.buf = nil
		if rerr != nil || n <= 0 {
			if buf != nil {
				bufPool.Put(buf)
			}
			if rerr != nil {
				d.s.abort(errors.Is(rerr, unix.ECONNRESET))
				d.end()
				return
			}
			// EOF: pass the half-close on and stop reading this side.
			_ = d.dst.CloseWrite()
			_ = d.src.CloseRead()
			d.end()
			return
		}
		d.reads++
		if d.s.idle > 0 {
			d.s.last.Store(time.Now().UnixNano())
		}
		if d.lease != nil && !d.boundWrite() {
			bufPool.Put(buf)
			d.s.abort(false)
			d.end()
			return
		}
		_, werr := d.dst.Write((*buf)[:n])
		bufPool.Put(buf)
		if werr != nil {
			d.s.abort(errors.Is(werr, unix.ECONNRESET) || errors.Is(werr, unix.EPIPE))
			d.end()
			return
		}
		d.count.Add(uint64(n))
	}
}

type parkResult int

const (
	parkOK     parkResult = iota // parked; the poller owns the direction
	parkTaken                    // abort ended it meanwhile and owns it
	parkClosed                   // could not park (closed): the caller ends it
	parkStay                     // the poller refused: keep running
)

// park hands the direction to the poller. The state is set before the fd is
// armed, since the poller may resume it on another goroutine at once.
func (d *direction) park() parkResult {
	if !d.state.CompareAndSwap(dirRunning, dirParked) {
		return parkTaken
	}
	pl := d.s.svc.p.poller
	pl.parked.Add(1)
	var armErr error
	err := d.rc.Control(func(fd uintptr) { armErr = pl.arm(int(fd), d) })
	if err == nil && armErr == nil {
		return parkOK
	}
	if !d.state.CompareAndSwap(dirParked, dirRunning) {
		return parkTaken
	}
	pl.parked.Add(-1)
	if err != nil {
		return parkClosed
	}
	return parkStay
}

// end finishes a direction that its own goroutine was running.
func (d *direction) end() {
	d.state.Store(dirDone)
	if p := d.s.svc.p.poller; p != nil {
		p.forget(d)
	}
	d.s.directionDone()
}

// boundWrite keeps the destination's write deadline at the lease's end; it
// returns false once the lease has run out.
func (d *direction) boundWrite() bool {
	rem := d.lease.Remaining()
	if rem <= 0 {
		return false
	}
	dl := time.Now().Add(rem)
	if dl.Before(d.wdl) || dl.Sub(d.wdl) > leaseSlack {
		d.wdl = dl
		_ = d.dst.SetWriteDeadline(dl)
	}
	return true
}

// abort closes both connections; a running direction then fails and ends,
// a parked one is ended here. reset passes a reset on (SO_LINGER 0)
// instead of a clean close.
func (s *session) abort(reset bool, _ ...string) { // why: the access log is Linux-only
	if !s.aborted.CompareAndSwap(false, true) {
		return
	}
	if reset {
		_ = s.client.SetLinger(0)
		_ = s.server.SetLinger(0)
	}
	_ = s.client.Close()
	_ = s.server.Close()
	// After the closes, a direction that parks finds its conn closed, so
	// every direction is ended exactly once: by itself or here.
	for _, d := range []*direction{&s.up, &s.down} {
		if d.state.CompareAndSwap(dirParked, dirDone) {
			if p := s.svc.p.poller; p != nil {
				p.parked.Add(-1)
				p.forget(d)
			}
			s.directionDone()
		}
	}
}

// directionDone closes the session once both directions have ended.
func (s *session) directionDone() {
	if s.finished.Add(1) != 2 {
		return
	}
	if t := s.timer.Load(); t != nil {
		t.Stop()
	}
	_ = s.client.Close()
	_ = s.server.Close()
	s.b.removeSession(s)
	s.svc.release()
}
