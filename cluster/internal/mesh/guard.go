package mesh

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Why a transport of our own: memberlist's NetTransport reads each UDP
// datagram into a fresh 64 KiB buffer and hands it, one at a time, to the
// single goroutine that also answers probes and takes lease traffic, which
// logs every bad packet at ERROR. Random UDP at ~16,000 packets/s (measured)
// saturates that goroutine, the socket's receive queue overflows, and lease
// requests and confirmations (UDP) are lost with the garbage: the proxy
// loses its lease and closes its sessions. guardTransport reads datagrams
// into one reused buffer, authenticates each (label, then AES-GCM with the
// gossip key) without allocating, counts and drops what fails, and hands
// memberlist only authentic packets.

const (
	// labelHeader is memberlist's hasLabelMsg: [244][len][label] before a
	// labelled packet.
	labelHeader = 244
	// udpReadBuf holds the largest datagram.
	udpReadBuf = 64 << 10
	// udpRecvBuf is the socket receive queue asked for (the kernel caps it
	// at net.core.rmem_max): room for bursts of authentic packets.
	udpRecvBuf = 4 << 20
	// Encryption layout (memberlist security.go): version byte, 12-byte
	// nonce, ciphertext, 16-byte tag; version 0 also pads by up to 16.
	encVersionMax = 1
	encNonce      = 12
	encTag        = 16
)

// packetAuth checks an incoming datagram the way memberlist will, so that
// only packets memberlist would accept reach it.
type packetAuth struct {
	label string
	aead  cipher.AEAD // nil: gossip in clear text, only the label is checked
	buf   []byte      // scratch for opening; one reader goroutine uses it
}

func newPacketAuth(label string, key []byte) (*packetAuth, error) {
	a := &packetAuth{label: label}
	if len(key) > 0 {
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		if a.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
		a.buf = make([]byte, 0, udpReadBuf)
	}
	return a, nil
}

// check returns dropNone for a packet memberlist would take.
func (a *packetAuth) check(p []byte) dropReason {
	if len(p) == 0 {
		return dropGarbage
	}
	if p[0] == labelHeader {
		if len(p) < 2 || p[1] == 0 || len(p) < 2+int(p[1]) {
			return dropGarbage
		}
		if string(p[2:2+int(p[1])]) != a.label { // no allocation for a comparison
			return dropWrongLabel
		}
		p = p[2+int(p[1]):]
	} else if a.label != "" {
		return dropGarbage // unlabelled in a labelled cluster (or random bytes)
	}
	if a.aead == nil {
		return dropNone
	}
	if len(p) < 1+encNonce+encTag || p[0] > encVersionMax {
		return dropUnauthenticated
	}
	if _, err := a.aead.Open(a.buf[:0], p[1:1+encNonce], p[1+encNonce:], []byte(a.label)); err != nil {
		return dropUnauthenticated
	}
	return dropNone
}

// guardTransport is memberlist's NetTransport with authenticated UDP
// intake (see above). TCP streams go to memberlist as they come: a stream
// costs its sender a connection, and memberlist checks it.
type guardTransport struct {
	tcp      *net.TCPListener
	udp      *net.UDPConn
	auth     *packetAuth
	drop     func(dropReason)
	logger   *log.Logger
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	stop     chan struct{}
	shutdown atomic.Bool
	wg       sync.WaitGroup
}

var _ memberlist.NodeAwareTransport = (*guardTransport)(nil)

// newGuardTransport listens on ip:port (TCP and UDP, one port; 0 picks a
// free one). drop is called for each datagram refused.
func newGuardTransport(ip net.IP, port int, auth *packetAuth, drop func(dropReason), logger *log.Logger) (*guardTransport, error) {
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, err
	}
	if port == 0 {
		port = tcp.Addr().(*net.TCPAddr).Port
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		tcp.Close()
		return nil, err
	}
	_ = udp.SetReadBuffer(udpRecvBuf) // best effort: capped, never refused
	t := &guardTransport{tcp: tcp, udp: udp, auth: auth, drop: drop, logger: logger,
		packetCh: make(chan *memberlist.Packet), streamCh: make(chan net.Conn), stop: make(chan struct{})}
	t.wg.Add(2)
	go t.readPackets()
	go t.acceptStreams()
	return t, nil
}

// readPackets reads datagrams into one buffer and passes on authentic ones.
func (t *guardTransport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, udpReadBuf)
	for {
		n, ap, err := t.udp.ReadFromUDPAddrPort(buf)
		ts := time.Now()
		if err != nil {
			if t.shutdown.Load() {
				return
			}
			t.logger.Printf("[ERR] memberlist: Error reading UDP packet: %v", err)
			continue
		}
		if r := t.auth.check(buf[:n]); r != dropNone {
			t.drop(r)
			continue
		}
		p := &memberlist.Packet{Buf: append([]byte(nil), buf[:n]...), From: net.UDPAddrFromAddrPort(ap), Timestamp: ts}
		select {
		case t.packetCh <- p:
		case <-t.stop:
			return
		}
	}
}

// acceptStreams hands accepted TCP connections to memberlist, backing off
// on errors (EMFILE) as NetTransport does.
func (t *guardTransport) acceptStreams() {
	defer t.wg.Done()
	var delay time.Duration
	for {
		c, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.shutdown.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			t.logger.Printf("[ERR] memberlist: Error accepting TCP connection: %v", err)
			select {
			case <-time.After(delay):
			case <-t.stop:
				return
			}
			continue
		}
		delay = 0
		select {
		case t.streamCh <- c:
		case <-t.stop:
			c.Close()
			return
		}
	}
}

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *guardTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip == "" {
		a := t.tcp.Addr().(*net.TCPAddr)
		if a.IP.IsUnspecified() {
			return nil, 0, errors.New("bound to a wildcard address: an advertise address is needed")
		}
		return a.IP, a.Port, nil
	}
	addr := net.ParseIP(ip)
	if addr == nil {
		return nil, 0, fmt.Errorf("failed to parse advertise address %q", ip)
	}
	if ip4 := addr.To4(); ip4 != nil {
		addr = ip4
	}
	return addr, port, nil
}

// WriteTo implements memberlist.Transport.
func (t *guardTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport.
func (t *guardTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	ua, err := net.ResolveUDPAddr("udp", a.Addr)
	if err != nil {
		return time.Time{}, err
	}
	_, err = t.udp.WriteTo(b, ua)
	return time.Now(), err
}

// PacketCh implements memberlist.Transport.
func (t *guardTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// StreamCh implements memberlist.Transport.
func (t *guardTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// DialTimeout implements memberlist.Transport.
func (t *guardTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport.
func (t *guardTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	return d.Dial("tcp", a.Addr)
}

// Shutdown implements memberlist.Transport.
func (t *guardTransport) Shutdown() error {
	if t.shutdown.Swap(true) {
		return nil
	}
	close(t.stop)
	t.tcp.Close()
	t.udp.Close()
	t.wg.Wait()
	return nil
}
