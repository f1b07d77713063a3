//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"
)

// proxyHeaderTimeout bounds the wait for the PROXY header of a connection
// from an AcceptProxy network (HAProxy bounds it by timeout client).
const proxyHeaderTimeout = 5 * time.Second

// maxProxyHeader is the longest header accepted: v1 is at most 107 bytes;
// v2 carries addresses and TLVs, which a load balancer keeps short.
const maxProxyHeader = 16 + 2048

var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

var errBadProxyHeader = errors.New("connection from an accept_proxy network without a valid PROXY header")

// planeSupports checks what the event loops cannot do.
func planeSupports(c *ServiceConfig) error {
	for _, b := range c.Backends {
		if b.SendProxy < ProxyNone || b.SendProxy > ProxyV2 {
			return fmt.Errorf("backend %q: PROXY protocol version %d unknown", b.Name, b.SendProxy)
		}
	}
	return nil
}

// wantsProxyHeader reports whether a client from peer must send a header.
func (s *service) wantsProxyHeader(peer unix.Sockaddr) bool {
	nets := s.acceptProxy.Load()
	if nets == nil || len(*nets) == 0 {
		return false
	}
	ta := sockaddrTCP(peer)
	if ta == nil {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, n := range *nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// headerLen returns the length of the complete header at the start of b,
// 0 if more bytes are needed, or an error if b cannot start a header.
func headerLen(b []byte) (int, error) {
	switch {
	case len(b) == 0:
		return 0, nil
	case bytes.HasPrefix(b, sigV1) || bytes.HasPrefix(sigV1, b):
		if i := bytes.Index(b, []byte("\r\n")); i >= 0 {
			return i + 2, nil
		}
		if len(b) >= 107 {
			return 0, errBadProxyHeader
		}
		return 0, nil
	case bytes.HasPrefix(b, sigV2):
		if len(b) < 16 {
			return 0, nil
		}
		n := 16 + int(binary.BigEndian.Uint16(b[14:16]))
		if n > maxProxyHeader {
			return 0, errBadProxyHeader
		}
		if len(b) < n {
			return 0, nil
		}
		return n, nil
	case bytes.HasPrefix(sigV2, b):
		return 0, nil
	}
	return 0, errBadProxyHeader
}

// readHeader takes the PROXY header off a client's socket without reading
// past it (MSG_PEEK, then a read of its exact length), then routes.
func (s *session) readHeader() {
	l := s.l
	var n int
	var err error
	for {
		n, _, err = unix.Recvfrom(s.cfd, l.buf[:maxProxyHeader], unix.MSG_PEEK)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == unix.EAGAIN:
		return // wait for more
	case err != nil || n == 0:
		s.refuse()
		return
	}
	hl, err := headerLen(l.buf[:n])
	if err != nil {
		s.badHeader(err)
		return
	}
	if hl == 0 {
		if n >= maxProxyHeader {
			s.badHeader(errBadProxyHeader)
		}
		return // incomplete: the rest raises a new edge
	}
	h, err := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(l.buf[:hl]), hl))
	if err != nil {
		s.badHeader(err)
		return
	}
	if _, err := unix.Read(s.cfd, l.buf[:hl]); err != nil {
		s.refuse()
		return
	}
	if h.Command.IsProxy() {
		if src, dst, ok := h.TCPAddrs(); ok {
			s.hdrSrc, s.hdrDst = src, dst
		}
	} // LOCAL (a balancer's own check) and UNSPEC keep the socket's addresses
	s.state = stHeld
	s.tryEnd = 0
	s.route()
}

func (s *session) badHeader(err error) {
	s.l.p.log.Debug("PROXY header refused", "service", s.svc.name, "peer", sockaddrTCP(s.peer), "err", err)
	s.end("PROXY header refused: " + err.Error())
	s.refuse()
}

// proxyHeader builds the header sent first to a backend that wants one: the
// client's address as received (or as the load balancer in front said).
func (s *session) proxyHeader(v ProxyVersion) ([]byte, error) {
	var src, dst net.Addr = s.hdrSrc, s.hdrDst
	if src == nil {
		src = sockaddrTCP(s.peer)
		if sa, err := unix.Getsockname(s.cfd); err == nil {
			dst = sockaddrTCP(sa)
		}
	}
	// Addresses it cannot use give a LOCAL header, which a backend takes
	// as "use the connection's own addresses".
	return proxyproto.HeaderProxyFromAddrs(byte(v), src, dst).Format()
}
