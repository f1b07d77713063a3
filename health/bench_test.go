package health

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTCPCheck reports what one TCP check costs the process in CPU
// (user and system, from getrusage), connect and close included, against
// a listener in the same process that accepts and closes.
func BenchmarkTCPCheck(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	c, err := NewChecker(Spec{Kind: "tcp", Timeout: time.Second}, ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.ResetTimer()
	start := cpu()
	for b.Loop() {
		if r := c.Check(context.Background()); !r.Up {
			b.Fatal(r.Err)
		}
	}
	used := cpu() - start
	b.ReportMetric(float64(used.Microseconds())/float64(b.N), "cpu-µs/check")
}
