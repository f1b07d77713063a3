package mesh

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrPartitioned is the cause of a dial refused by a FaultyTransport.
var ErrPartitioned = errors.New("link cut by mesh.Faults")

// Faults is a switchboard of simulated network faults shared by the
// transports of an in-process cluster. Links are directed: Block(a, b)
// loses every packet a sends to b. A stream (TCP) needs both directions,
// so it is refused when either direction is blocked.
//
// It exists for tests (this package's and the cluster protocol's): real
// memberlist over real loopback sockets, with partitions that can be cut
// and healed without root or network namespaces.
type Faults struct {
	mu      sync.Mutex
	names   map[string]string // bound "ip:port" -> node name
	blocked map[link]bool
	loss    map[link]float64
}

type link struct{ from, to string }

// NewFaults returns a switchboard with every link up.
func NewFaults() *Faults {
	return &Faults{names: make(map[string]string), blocked: make(map[link]bool), loss: make(map[link]float64)}
}

// Block loses everything from node "from" to node "to" from now on.
func (f *Faults) Block(from, to string) {
	f.mu.Lock()
	f.blocked[link{from, to}] = true
	f.mu.Unlock()
}

// Unblock restores the link from "from" to "to".
func (f *Faults) Unblock(from, to string) {
	f.mu.Lock()
	delete(f.blocked, link{from, to})
	f.mu.Unlock()
}

// Partition cuts every link, both ways, between a node in a and a node in b.
func (f *Faults) Partition(a, b []string) {
	f.mu.Lock()
	for _, x := range a {
		for _, y := range b {
			f.blocked[link{x, y}] = true
			f.blocked[link{y, x}] = true
		}
	}
	f.mu.Unlock()
}

// SetLoss makes the link from "from" to "to" lose each packet, and fail
// each dial, with probability p (0 restores it).
func (f *Faults) SetLoss(from, to string, p float64) {
	f.mu.Lock()
	if p <= 0 {
		delete(f.loss, link{from, to})
	} else {
		f.loss[link{from, to}] = p
	}
	f.mu.Unlock()
}

// Heal restores every link: no cuts, no loss.
func (f *Faults) Heal() {
	f.mu.Lock()
	clear(f.blocked)
	clear(f.loss)
	f.mu.Unlock()
}

// cut reports whether one item from "from" to "to" is lost now.
func (f *Faults) cut(from, to string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := link{from, to}
	if f.blocked[l] {
		return true
	}
	p, ok := f.loss[l]
	return ok && rand.Float64() < p
}

func (f *Faults) nameOf(addr string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.names[addr]
}

// Transport binds a real memberlist NetTransport for node name on addr
// ("127.0.0.1:0" picks a free port; the host must be an IP) and wraps it so
// the links in f apply to it. Pass it as Config.Transport and use Addr() as
// the node's address in Config.Peers.
func (f *Faults) Transport(name, addr string, logger *slog.Logger) (*FaultyTransport, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("faulty transport %q: %w", name, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("faulty transport %q: port %q: %w", name, portStr, err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	inner, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{host},
		BindPort:  port,
		Logger:    newStdLogger(logger),
	})
	if err != nil {
		return nil, fmt.Errorf("faulty transport %q: %w", name, err)
	}
	bound := net.JoinHostPort(host, strconv.Itoa(inner.GetAutoBindPort()))
	f.mu.Lock()
	f.names[bound] = name
	f.mu.Unlock()
	t := &FaultyTransport{
		faults:    f,
		name:      name,
		addr:      bound,
		inner:     inner,
		packetCh:  make(chan *memberlist.Packet),
		streamCh:  make(chan net.Conn),
		stopping:  make(chan struct{}),
		innerDone: make(chan struct{}),
	}
	t.wg.Add(2)
	go t.forwardPackets()
	go t.forwardStreams()
	return t, nil
}

// FaultyTransport is a memberlist transport over real sockets whose links
// to other nodes of the same Faults can be cut. See Faults.Transport.
type FaultyTransport struct {
	faults *Faults
	name   string
	addr   string
	inner  *memberlist.NetTransport

	// Channels are unbuffered, like NetTransport's: when a send returns,
	// memberlist has taken the item.
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn

	stopping  chan struct{}
	innerDone chan struct{}
	stopOnce  sync.Once
	wg        sync.WaitGroup

	// For tests: inbound items handed to memberlist, inbound streams
	// memberlist has finished with (closed), packets lost to a cut link.
	packetsIn   atomic.Uint64
	streamsDone atomic.Uint64
	lost        atomic.Uint64
}

var _ memberlist.NodeAwareTransport = (*FaultyTransport)(nil)

// Addr is the "ip:port" the transport is bound to (TCP and UDP).
func (t *FaultyTransport) Addr() string { return t.addr }

// Lost is how many packets and dials this transport lost to cut links.
func (t *FaultyTransport) Lost() uint64 { return t.lost.Load() }

// FinalAdvertiseAddr implements memberlist.Transport.
func (t *FaultyTransport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	return t.inner.FinalAdvertiseAddr(ip, port)
}

// WriteTo implements memberlist.Transport.
func (t *FaultyTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress implements memberlist.NodeAwareTransport; a packet on a
// cut link is lost silently, as on a real network.
func (t *FaultyTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.faults.cut(t.name, t.faults.nameOf(a.Addr)) {
		t.lost.Add(1)
		return time.Now(), nil
	}
	return t.inner.WriteToAddress(b, a)
}

// PacketCh implements memberlist.Transport.
func (t *FaultyTransport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// DialTimeout implements memberlist.Transport.
func (t *FaultyTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// DialAddressTimeout implements memberlist.NodeAwareTransport; a dial
// across a cut link fails at once.
func (t *FaultyTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	peer := t.faults.nameOf(a.Addr)
	if t.faults.cut(t.name, peer) || t.faults.cut(peer, t.name) {
		t.lost.Add(1)
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: ErrPartitioned}
	}
	return t.inner.DialAddressTimeout(a, timeout)
}

// StreamCh implements memberlist.Transport.
func (t *FaultyTransport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown implements memberlist.Transport: it closes the sockets and
// waits for its goroutines.
func (t *FaultyTransport) Shutdown() (err error) {
	t.stopOnce.Do(func() {
		close(t.stopping)
		// The forwarders keep draining the inner channels so the inner
		// listeners can finish a blocked send and exit.
		err = t.inner.Shutdown()
		close(t.innerDone)
		t.wg.Wait()
	})
	return err
}

func (t *FaultyTransport) forwardPackets() {
	defer t.wg.Done()
	for {
		select {
		case p := <-t.inner.PacketCh():
			if t.faults.cut(t.faults.nameOf(p.From.String()), t.name) {
				t.lost.Add(1)
				continue
			}
			select {
			case t.packetCh <- p:
				t.packetsIn.Add(1)
			case <-t.stopping:
			}
		case <-t.innerDone:
			return
		}
	}
}

func (t *FaultyTransport) forwardStreams() {
	defer t.wg.Done()
	for {
		select {
		case c := <-t.inner.StreamCh():
			select {
			case t.streamCh <- &trackedConn{Conn: c, done: &t.streamsDone}:
			case <-t.stopping:
				_ = c.Close()
			}
		case <-t.innerDone:
			return
		}
	}
}

// trackedConn counts the inbound streams memberlist has finished with.
type trackedConn struct {
	net.Conn
	done *atomic.Uint64
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.done.Add(1) })
	return err
}
