//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A loop's socket reads and writes cost one system call each, and on the
// machines measured a system call, not the bytes moved, is most of a
// small request's price. The uring batches them: the reads that one
// epoll_wait made ready go to the kernel in one io_uring_enter, and the
// writes of what they read in a second. Readiness, backpressure and
// every other decision stay with epoll and the loop (see batch). Only
// plain recv and send are used, marked MSG_DONTWAIT, so the kernel runs
// each at once and answers EAGAIN rather than waiting: every operation is
// complete when io_uring_enter returns.

// io_uring ABI (include/uapi/linux/io_uring.h); golang.org/x/sys/unix
// has the system call numbers but not these.
const (
	ioringOpSend = 26
	ioringOpRecv = 27

	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	ioringFeatSingleMmap = 1 << 0
	// Keep submitting after an op fails at submission. It came with Linux
	// 5.18, so a kernel without it, which might also lack recv and send
	// or MSG_DONTWAIT's answer, refuses the setup and the loop goes on
	// without the uring.
	ioringSetupSubmitAll = 1 << 7
)

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32 // msg_flags for send and recv
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	_           uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// uring is one io_uring, used by one loop only.
type uring struct {
	fd      int
	sqTail  *uint32
	sqHead  *uint32
	sqMask  uint32
	sqArray []uint32
	sqes    []uringSQE
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    []uringCQE
	maps    [][]byte
	queued  uint32 // SQEs filled since the last submit
}

// errNoURing: io_uring is refused here (an old kernel, a seccomp filter,
// kernel.io_uring_disabled); the loop then makes one system call per
// read and write.
var errNoURing = errors.New("io_uring unavailable")

func newURing(entries uint32) (*uring, error) {
	var p uringParams
	p.flags = ioringSetupSubmitAll
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("%w: io_uring_setup: %v", errNoURing, e)
	}
	r := &uring{fd: int(fd)}
	sqSize := int(p.sqOff.array + p.sqEntries*4)
	cqSize := int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(uringCQE{})))
	single := p.features&ioringFeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	sq, err := r.mmap(ioringOffSQRing, sqSize)
	if err != nil {
		return nil, err
	}
	cq := sq
	if !single {
		if cq, err = r.mmap(ioringOffCQRing, cqSize); err != nil {
			return nil, err
		}
	}
	sqeMem, err := r.mmap(ioringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(uringSQE{})))
	if err != nil {
		return nil, err
	}
	r.sqHead = (*uint32)(unsafe.Pointer(&sq[p.sqOff.head]))
	r.sqTail = (*uint32)(unsafe.Pointer(&sq[p.sqOff.tail]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&sq[p.sqOff.ringMask]))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&sq[p.sqOff.array])), p.sqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&sqeMem[0])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&cq[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&cq[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&cq[p.cqOff.ringMask]))
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&cq[p.cqOff.cqes])), p.cqEntries)
	return r, nil
}

func (r *uring) mmap(off int64, size int) ([]byte, error) {
	b, err := unix.Mmap(r.fd, off, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("%w: mmap: %v", errNoURing, err)
	}
	r.maps = append(r.maps, b)
	return b, nil
}

func (r *uring) close() {
	for _, b := range r.maps {
		_ = unix.Munmap(b)
	}
	r.maps = nil
	if r.fd >= 0 {
		_ = unix.Close(r.fd)
		r.fd = -1
	}
}

// prep queues a send or recv of b on fd; it is run by the next submit.
// The caller queues at most len(sqes) between submits.
func (r *uring) prep(op uint8, fd int, b []byte, flags uint32, tag uint64) {
	r.push(uringSQE{
		opcode:   op,
		fd:       int32(fd),
		addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))),
		len:      uint32(len(b)),
		opFlags:  flags,
		userData: tag,
	})
}

// push queues one SQE after those queued since the last submit.
func (r *uring) push(e uringSQE) {
	i := (*r.sqTail + r.queued) & r.sqMask
	r.sqes[i] = e
	r.sqArray[i] = i
	r.queued++
}

// submit runs the queued operations and stores each result (bytes moved,
// or a negative errno) in res at the index of its tag. An op the kernel
// did not finish at once (not expected: MSG_DONTWAIT answers EAGAIN
// instead of waiting) is canceled, its result -ECANCELED unless it
// completed first, and submit reports it with async, so the loop never
// waits on a socket here.
func (r *uring) submit(res []int32) (async bool, err error) {
	n := r.queued
	if n == 0 {
		return false, nil
	}
	for i := range n {
		res[i] = pendingRes
	}
	atomic.StoreUint32(r.sqTail, *r.sqTail+n)
	r.queued = 0
	if err := r.enter(n, 0); err != nil {
		return false, err
	}
	reaped := r.reap(res)
	if reaped == n {
		return false, nil
	}
	// Cancel each op still out, by its tag, and wait for them all: a
	// canceled op completes at once.
	for i := range n {
		if res[i] == pendingRes {
			r.prepCancel(uint64(i))
		}
	}
	cancels := r.queued
	atomic.StoreUint32(r.sqTail, *r.sqTail+cancels)
	r.queued = 0
	if err := r.enter(cancels, 0); err != nil {
		return true, err
	}
	for reaped < n {
		if err := r.enter(0, n-reaped); err != nil {
			return true, err
		}
		reaped += r.reap(res)
	}
	return true, nil
}

// pendingRes marks an op whose completion has not been reaped.
const pendingRes = math.MinInt32

// cancelTag marks the completions of cancel requests, which submit skips.
const cancelTag = 1 << 63

const (
	ioringOpAsyncCancel  = 14
	ioringEnterGetEvents = 1
)

func (r *uring) prepCancel(tag uint64) {
	r.push(uringSQE{opcode: ioringOpAsyncCancel, fd: -1, addr: tag, userData: cancelTag | tag})
}

// enter submits toSubmit queued SQEs and, with wait > 0, waits until that
// many completions are there.
func (r *uring) enter(toSubmit, wait uint32) error {
	for toSubmit > 0 || wait > 0 {
		var got uintptr
		var e unix.Errno
		if wait == 0 {
			// A raw call, as for epoll_wait: nothing here blocks.
			got, _, e = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), 0, 0, 0, 0)
		} else {
			got, _, e = unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit), uintptr(wait), ioringEnterGetEvents, 0, 0)
		}
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("io_uring_enter: %w", e)
		}
		toSubmit -= uint32(got)
		if wait > 0 {
			return nil // the caller reaps and asks again if short
		}
	}
	return nil
}

// reap stores the completions there are and returns how many of the
// caller's ops they were.
func (r *uring) reap(res []int32) uint32 {
	var n uint32
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail)
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		if c.userData&cancelTag == 0 {
			res[c.userData] = c.res
			n++
		}
	}
	atomic.StoreUint32(r.cqHead, head)
	return n
}
