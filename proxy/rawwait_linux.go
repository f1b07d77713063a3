//go:build linux

package proxy

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxWait bounds one epoll_wait of a loop (see epollWait).
const maxWait = 10 * time.Millisecond

const maxWaitMS = int(maxWait / time.Millisecond)

// epollWait is epoll_pwait (with no signal mask it is epoll_wait, which
// arm64 lacks) through a raw syscall: the runtime is not told that the
// thread may block, so the loop keeps its P. Through an ordinary syscall,
// sysmon takes the P of a thread blocked for more than ~20µs and hands it
// to another thread, and the loop must win a P back on every wake-up,
// which measured more context switches per request and per connection
// (docs/design.md has the figures). The price:
// while a loop waits, its P runs nothing else. The wait is therefore
// bounded by maxWait, and the loop yields at least every yieldEvery, so
// the proxy's other goroutines (health checks, the admin API) and a
// stop-the-world of the garbage collector never wait longer than that.
func epollWait(epfd int, events []unix.EpollEvent, msec int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// epollWaitBlocking is epoll_pwait as an ordinary system call: the runtime
// hands the loop's P on while it blocks (see epollWait for the price).
func epollWaitBlocking(epfd int, events []unix.EpollEvent, msec int) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
