//go:build linux

package proxy

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestURingSubmit: a MSG_DONTWAIT recv completes within submit (bytes, or
// EAGAIN on an empty socket); a recv that would wait is canceled rather
// than waited for, and submit says so.
func TestURingSubmit(t *testing.T) {
	r, err := newURing(8)
	if err != nil {
		t.Skipf("io_uring is refused on this machine: %v", err)
	}
	defer r.close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	res := make([]int32, 8)
	buf := make([]byte, 64)

	r.prep(ioringOpRecv, fds[0], buf, unix.MSG_DONTWAIT, 0)
	if async, err := r.submit(res); err != nil || async || res[0] != -int32(unix.EAGAIN) {
		t.Fatalf("recv on an empty socket: async %v err %v res %d, want EAGAIN at once", async, err, res[0])
	}

	if _, err := unix.Write(fds[1], []byte("hello")); err != nil {
		t.Fatal(err)
	}
	r.prep(ioringOpRecv, fds[0], buf, unix.MSG_DONTWAIT, 0)
	r.prep(ioringOpSend, fds[0], []byte("back"), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 1)
	if async, err := r.submit(res); err != nil || async || res[0] != 5 || string(buf[:5]) != "hello" || res[1] != 4 {
		t.Fatalf("recv and send: async %v err %v res %v %q", async, err, res[:2], buf[:max(res[0], 0)])
	}

	if n, err := unix.Read(fds[1], buf); err != nil || string(buf[:n]) != "back" {
		t.Fatalf("the send's bytes: %q %v", buf[:max(n, 0)], err)
	}
	// Without MSG_DONTWAIT on a blocking socket the kernel would wait for
	// data: submit cancels instead.
	r.prep(ioringOpRecv, fds[1], buf, 0, 0)
	r.prep(ioringOpRecv, fds[0], buf[32:], unix.MSG_DONTWAIT, 1)
	async, err := r.submit(res)
	if err != nil || !async || res[0] != -int32(unix.ECANCELED) || res[1] != -int32(unix.EAGAIN) {
		t.Fatalf("a recv that would wait: async %v err %v res %v, want it canceled", async, err, res[:2])
	}
}
