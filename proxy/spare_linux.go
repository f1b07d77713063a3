//go:build linux

package proxy

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// spareFDs are reserved fds shared by all loops: a loop whose accept
// fails for want of fds closes one, accepts a queued connection into the
// freed slot and closes it, so the client sees a clean close at once
// instead of waiting in the queue. One pool, not one fd per loop: another
// loop (or thread) may take the slot between the close and the accept,
// and a loop left without its own spare could then never refuse its queue
// again while a neighbour kept one. A spare lost that way (the slot went
// to a session) is taken back from the next session that closes.
type spareFDs struct {
	mu    sync.Mutex
	fds   []int
	want  int
	short atomic.Bool // fewer than want: refill when a session closes
}

func openSpare() int {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// topUp opens spares until the pool holds want, or fds run out.
// Called with mu held.
func (s *spareFDs) topUp() {
	defer func() { s.short.Store(len(s.fds) < s.want) }()
	for len(s.fds) < s.want {
		fd := openSpare()
		if fd < 0 {
			return
		}
		s.fds = append(s.fds, fd)
	}
}

// fill tops the pool up; called when fds have just been freed.
func (s *spareFDs) fill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.topUp()
}

// add reserves one more spare (one per loop).
func (s *spareFDs) add() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want++
	s.topUp()
}

// drop gives back the spare of a loop that stopped.
func (s *spareFDs) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want--
	for len(s.fds) > max(s.want, 0) {
		n := len(s.fds) - 1
		_ = unix.Close(s.fds[n])
		s.fds = s.fds[:n]
	}
	s.short.Store(len(s.fds) < s.want)
}

// refuse frees a spare slot for each of up to n calls of acceptClose (which
// accepts one queued connection and closes it, reporting false when the
// queue is empty or the accept failed) and takes the slot back after it.
func (s *spareFDs) refuse(n int, acceptClose func() bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.topUp()
	for i := 0; i < n && len(s.fds) > 0; i++ {
		last := len(s.fds) - 1
		_ = unix.Close(s.fds[last])
		s.fds = s.fds[:last]
		s.short.Store(true)
		ok := acceptClose()
		s.topUp()
		if !ok {
			return
		}
	}
}
