package proxy

import (
	"io"
	"log/slog"
	"net"
	"testing"
)

// benchTargets starts an echo backend and a proxy in front of it and
// returns both addresses, so each benchmark runs direct and proxied.
func benchTargets(b *testing.B, handler func(*net.TCPConn)) map[string]string {
	be := startServer(b, "bench", handler)
	p := newProxy(b, Options{Logger: slog.New(slog.DiscardHandler), parkAfter: DefaultParkAfter}, oneBackend("svc", be.addr()))
	p.SetHealth("svc", "a", upAny)
	return map[string]string{"direct": be.addr(), "proxy": p.addrOf(b, "svc")}
}

// BenchmarkProxyEcho: request/response of 64 bytes, parallel clients, each
// on its own connection (the redis-benchmark / pgbench -S shape).
func BenchmarkProxyEcho(b *testing.B) {
	for _, via := range []string{"direct", "proxy"} {
		b.Run(via, func(b *testing.B) {
			addr := benchTargets(b, echo)[via]
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				msg := make([]byte, 64)
				buf := make([]byte, 64)
				for pb.Next() {
					if _, err := c.Write(msg); err != nil {
						b.Error(err)
						return
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkProxyBulk: one stream to a discarding backend, 1 MiB writes.
func BenchmarkProxyBulk(b *testing.B) {
	sink := func(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) }
	for _, via := range []string{"direct", "proxy"} {
		b.Run(via, func(b *testing.B) {
			addr := benchTargets(b, sink)[via]
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			chunk := make([]byte, 1<<20)
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkProxyConnect: connection churn, connect + 1 round trip + close.
func BenchmarkProxyConnect(b *testing.B) {
	for _, via := range []string{"direct", "proxy"} {
		b.Run(via, func(b *testing.B) {
			addr := benchTargets(b, echo)[via]
			b.ReportAllocs()
			buf := make([]byte, 1)
			for i := 0; i < b.N; i++ {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				_ = c.Close()
			}
		})
	}
}
