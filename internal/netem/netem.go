// Package netem emulates the delay, jitter and loss of the netem qdisc in
// user space, for kernels built without sch_netem.
//
// An iptables rule sends packets to an NFQUEUE queue (e.g.
// `iptables -A INPUT -j NFQUEUE --queue-num 1 --queue-bypass`); Run binds
// that queue over nfnetlink and holds each packet for Delay±Jitter before
// letting it through, or drops it with probability Loss. Verdicts are issued
// in deadline order, not arrival order, so jitter reorders packets just as
// netem does.
package netem

import (
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Config describes one emulated link direction: the packets that the
// iptables rule sends to queue Queue.
type Config struct {
	// Queue is the NFQUEUE number of the iptables rule (--queue-num).
	Queue uint16
	// Delay is how long each packet is held, before jitter.
	Delay time.Duration
	// Jitter widens Delay to uniform [Delay-Jitter, Delay+Jitter], never
	// below 0.
	Jitter time.Duration
	// Loss is the probability, in [0,1), that a packet is dropped.
	Loss float64
	// Seed seeds the PCG generator behind loss and jitter, so that a run
	// is reproducible for the same packet sequence.
	Seed uint64
	// NetNS is the path of a network namespace file such as
	// /var/run/netns/NAME whose queue to bind; "" means the namespace of
	// the calling thread. Only the netlink socket enters it, never the
	// process.
	NetNS string
	// MaxQueued bounds the packets the kernel holds for us (held plus not
	// yet read); beyond it the kernel drops, like netem's limit. 0 means
	// DefaultMaxQueued.
	MaxQueued uint32
	// Ready, if set, is called once the queue is bound: packets that hit
	// the rule before that bypass it (--queue-bypass) or are dropped.
	// It runs on Run's goroutine and must not block.
	Ready func()
}

// DefaultMaxQueued is the kernel queue length used when Config.MaxQueued is
// 0; generous so that 50ms of delay does not turn into loss at test rates.
const DefaultMaxQueued = 8192

// Stats counts what Run did. After a nil-error return,
// Seen = Dropped + Accepted.
type Stats struct {
	Seen     uint64 // packets the kernel queued to us
	Dropped  uint64 // DROP verdicts (emulated loss)
	Accepted uint64 // ACCEPT verdicts, including those issued at shutdown
	// VerdictErrors counts verdicts the kernel rejected, typically because
	// the packet was already gone (its interface went down meanwhile).
	VerdictErrors uint64
}

// Constants from include/uapi/linux/netfilter/nfnetlink{,_queue}.h.
const (
	nfnlSubsysQueue = 3

	nfqnlMsgPacket  = 0
	nfqnlMsgVerdict = 1
	nfqnlMsgConfig  = 2

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2

	nfqaCfgCmd         = 1
	nfqaCfgParams      = 2
	nfqaCfgQueueMaxlen = 3
	nfqaCfgMask        = 4
	nfqaCfgFlags       = 5

	nfqaCfgFFailOpen = 1 << 0

	nfqnlCfgCmdBind   = 1
	nfqnlCfgCmdUnbind = 2

	nfqnlCopyMeta = 1

	nfDrop   = 0
	nfAccept = 1
)

const (
	// rcvBuf is the netlink receive buffer we ask for: when it overflows
	// the kernel drops the packet it could not deliver, which would be
	// loss we did not ask for.
	rcvBuf = 8 << 20
	// drainTimeout bounds the shutdown handshake with the kernel, which
	// normally completes in microseconds.
	drainTimeout = 2 * time.Second
)

// Run binds cfg.Queue and applies delay, jitter and loss to every queued
// packet until ctx is done. On the way out it switches the queue to
// fail-open, accepts every packet still held or queued (nothing is left
// stuck or flushed as dropped by the unbind), unbinds and closes. It returns
// a nil error when it stopped because ctx was done.
func Run(ctx context.Context, cfg Config) (Stats, error) {
	if err := cfg.validate(); err != nil {
		return Stats{}, err
	}
	conn, err := dial(cfg.NetNS)
	if err != nil {
		return Stats{}, err
	}
	defer conn.Close()

	r := &runner{
		cfg:  cfg,
		conn: conn,
		rng:  rand.New(rand.NewPCG(cfg.Seed, 0x6e6574656d)),
		in:   make(chan held, 256),
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.cancel = cancel

	// Interrupt the blocking Receive when ctx is done; we still need the
	// socket afterwards, so expire the read instead of closing.
	unblocked := make(chan struct{})
	stopWatch := context.AfterFunc(ctx, func() {
		defer close(unblocked)
		_ = conn.SetReadDeadline(time.Unix(1, 0))
	})

	r.wg.Add(1)
	go r.releaser()

	runErr := r.loop(ctx)

	if !stopWatch() {
		<-unblocked
	}
	r.shutdown()

	st := r.stats
	st.Accepted += r.relAccepted
	if runErr == nil {
		runErr = r.relErr
	}
	return st, runErr
}

func (c Config) validate() error {
	switch {
	case c.Delay < 0, c.Jitter < 0:
		return fmt.Errorf("netem: negative delay %v or jitter %v", c.Delay, c.Jitter)
	case !(c.Loss >= 0 && c.Loss < 1):
		return fmt.Errorf("netem: loss %v not in [0,1)", c.Loss)
	}
	return nil
}

// dial opens the nfnetlink socket inside netns (if given) and enlarges its
// receive buffer.
func dial(netns string) (*netlink.Conn, error) {
	nc := &netlink.Config{}
	if netns != "" {
		fd, err := unix.Open(netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("netem: open netns %s: %w", netns, err)
		}
		defer unix.Close(fd)
		nc.NetNS = fd
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nc)
	if err != nil {
		return nil, fmt.Errorf("netem: dial nfnetlink: %w", err)
	}
	// We handle lost messages as emulated loss; an ENOBUFS error would
	// only tell us the same thing and abort the read.
	if err := conn.SetOption(netlink.NoENOBUFS, true); err != nil {
		conn.Close()
		return nil, fmt.Errorf("netem: set NETLINK_NO_ENOBUFS: %w", err)
	}
	// SO_RCVBUFFORCE (root) lifts the net.core.rmem_max cap; fall back to
	// the capped SO_RCVBUF.
	forced := false
	if rc, err := conn.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			forced = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) == nil
		})
	}
	if !forced {
		_ = conn.SetReadBuffer(rcvBuf)
	}
	return conn, nil
}

// held is a packet waiting for its ACCEPT verdict.
type held struct {
	at time.Time
	n  uint64 // arrival order, to keep equal deadlines FIFO
	id uint32
}

type runner struct {
	cfg    Config
	conn   *netlink.Conn
	rng    *rand.Rand // used by loop only
	cancel context.CancelFunc

	in chan held // loop -> releaser; closed at shutdown
	wg sync.WaitGroup

	bindSeq uint32
	bound   bool
	arrived uint64
	stats   Stats // owned by loop/shutdown

	relAccepted uint64 // owned by releaser until wg.Wait
	relErr      error
}

// loop binds the queue and reads packets until ctx is done or a fatal
// error occurs.
func (r *runner) loop(ctx context.Context) error {
	maxQ := r.cfg.MaxQueued
	if maxQ == 0 {
		maxQ = DefaultMaxQueued
	}
	// One message binds and configures, so no packet is ever delivered
	// with the default (full payload) copy mode. Its ack is awaited in
	// the read loop below, since packets may arrive ahead of it.
	seq, err := r.config(true, func(ae *netlink.AttributeEncoder) {
		ae.Bytes(nfqaCfgCmd, []byte{nfqnlCfgCmdBind, 0, 0, 0})
		// copy_range 0xffff is what libnetfilter_queue sends; with
		// NFQNL_COPY_META it is unused.
		ae.Bytes(nfqaCfgParams, []byte{0, 0, 0xff, 0xff, nfqnlCopyMeta})
		ae.Bytes(nfqaCfgQueueMaxlen, be32(maxQ))
	})
	if err != nil {
		return fmt.Errorf("netem: bind queue %d: %w", r.cfg.Queue, err)
	}
	r.bindSeq = seq

	for {
		msgs, err := r.conn.Receive()
		if err != nil {
			var oe *netlink.OpError
			switch {
			case errors.As(err, &oe) && oe.Sequence == r.bindSeq:
				return fmt.Errorf("netem: bind queue %d: %w", r.cfg.Queue, err)
			case errors.As(err, &oe) && oe.Sequence != 0:
				// The kernel refused a verdict (sent without
				// ack, so only failures come back).
				r.stats.VerdictErrors++
				continue
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, unix.ENOBUFS):
				continue
			}
			return fmt.Errorf("netem: receive: %w", err)
		}
		for _, m := range msgs {
			if err := r.handle(m); err != nil {
				return err
			}
		}
	}
}

func (r *runner) handle(m netlink.Message) error {
	switch m.Header.Type {
	case netlink.Error:
		// An ack (errors were already returned by Receive).
		if m.Header.Sequence == r.bindSeq && !r.bound {
			r.bound = true
			if r.cfg.Ready != nil {
				r.cfg.Ready()
			}
		}
		return nil
	case nfnlSubsysQueue<<8 | nfqnlMsgPacket:
	default:
		return nil
	}
	id, ok := packetID(m.Data)
	if !ok {
		return nil
	}
	r.stats.Seen++
	if r.cfg.Loss > 0 && r.rng.Float64() < r.cfg.Loss {
		r.stats.Dropped++
		return r.verdict(id, nfDrop)
	}
	d := r.cfg.Delay
	if r.cfg.Jitter > 0 {
		d += time.Duration(r.rng.Int64N(2*int64(r.cfg.Jitter)+1)) - r.cfg.Jitter
	}
	if d <= 0 {
		r.stats.Accepted++
		return r.verdict(id, nfAccept)
	}
	r.arrived++
	r.in <- held{at: time.Now().Add(d), n: r.arrived, id: id}
	return nil
}

// packetID extracts packet_id from NFQA_PACKET_HDR of an NFQNL_MSG_PACKET
// payload (nfgenmsg followed by attributes).
func packetID(b []byte) (uint32, bool) {
	if len(b) < 4 {
		return 0, false
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return 0, false
	}
	for ad.Next() {
		if ad.Type() == nfqaPacketHdr {
			if h := ad.Bytes(); len(h) >= 4 {
				return binary.BigEndian.Uint32(h), true
			}
		}
	}
	return 0, false
}

// releaser issues ACCEPT verdicts in deadline order. It is the only
// goroutine Run starts; when r.in is closed it accepts everything still held
// and returns.
func (r *runner) releaser() {
	defer r.wg.Done()
	var h heldHeap
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	accept := func(p held) {
		if r.relErr != nil {
			return
		}
		if err := r.verdict(p.id, nfAccept); err != nil {
			r.relErr = err
			r.cancel()
			return
		}
		r.relAccepted++
	}
	for {
		var due <-chan time.Time
		if len(h) > 0 {
			t.Reset(time.Until(h[0].at))
			due = t.C
		}
		select {
		case p, ok := <-r.in:
			if !ok {
				for len(h) > 0 {
					accept(heap.Pop(&h).(held))
				}
				return
			}
			heap.Push(&h, p)
		case <-due:
			now := time.Now()
			for len(h) > 0 && !h[0].at.After(now) {
				accept(heap.Pop(&h).(held))
			}
		}
	}
}

// shutdown hands every packet back to the kernel and unbinds. Unbinding
// flushes the kernel queue with DROP, so first make the queue fail-open
// (max length 0: new packets are accepted by the kernel without queueing),
// then release the held packets and accept those queued before fail-open
// took effect: they precede the fail-open ack on the socket.
func (r *runner) shutdown() {
	_ = r.conn.SetReadDeadline(time.Now().Add(drainTimeout))
	seq, err := r.config(true, func(ae *netlink.AttributeEncoder) {
		ae.Bytes(nfqaCfgQueueMaxlen, be32(0))
		ae.Bytes(nfqaCfgMask, be32(nfqaCfgFFailOpen))
		ae.Bytes(nfqaCfgFlags, be32(nfqaCfgFFailOpen))
	})

	close(r.in)
	r.wg.Wait()

	for err == nil {
		var msgs []netlink.Message
		msgs, err = r.conn.Receive()
		var oe *netlink.OpError
		if errors.As(err, &oe) && oe.Sequence != 0 && oe.Sequence != seq {
			r.stats.VerdictErrors++
			err = nil
			continue
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case netlink.Error:
				if m.Header.Sequence == seq {
					err = errDrained
				}
			case nfnlSubsysQueue<<8 | nfqnlMsgPacket:
				if id, ok := packetID(m.Data); ok {
					r.stats.Seen++
					if r.verdict(id, nfAccept) == nil {
						r.stats.Accepted++
					}
				}
			}
		}
	}
	_, _ = r.config(false, func(ae *netlink.AttributeEncoder) {
		ae.Bytes(nfqaCfgCmd, []byte{nfqnlCfgCmdUnbind, 0, 0, 0})
	})
}

var errDrained = errors.New("drained")

// config sends an NFQNL_MSG_CONFIG message and returns its sequence number.
func (r *runner) config(ack bool, attrs func(*netlink.AttributeEncoder)) (uint32, error) {
	flags := netlink.Request
	if ack {
		flags |= netlink.Acknowledge
	}
	return r.send(nfqnlMsgConfig, flags, attrs)
}

// verdict sends an NFQNL_MSG_VERDICT without ack: the kernel reports only
// failures, which loop counts as VerdictErrors.
func (r *runner) verdict(id, v uint32) error {
	_, err := r.send(nfqnlMsgVerdict, netlink.Request, func(ae *netlink.AttributeEncoder) {
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, v)
		binary.BigEndian.PutUint32(b[4:], id)
		ae.Bytes(nfqaVerdictHdr, b)
	})
	if err != nil {
		return fmt.Errorf("netem: verdict: %w", err)
	}
	return nil
}

func (r *runner) send(typ uint8, flags netlink.HeaderFlags, attrs func(*netlink.AttributeEncoder)) (uint32, error) {
	ae := netlink.NewAttributeEncoder()
	attrs(ae)
	b, err := ae.Encode()
	if err != nil {
		return 0, err
	}
	// nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id = queue.
	hdr := []byte{unix.AF_UNSPEC, 0, byte(r.cfg.Queue >> 8), byte(r.cfg.Queue)}
	m, err := r.conn.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nfnlSubsysQueue<<8 | uint16(typ)), Flags: flags},
		Data:   append(hdr, b...),
	})
	if err != nil {
		return 0, err
	}
	return m.Header.Sequence, nil
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// heldHeap orders held packets by deadline, then arrival.
type heldHeap []held

func (h heldHeap) Len() int { return len(h) }
func (h heldHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].n < h[j].n
}
func (h heldHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *heldHeap) Push(x any)   { *h = append(*h, x.(held)) }
func (h *heldHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	*h = old[:len(old)-1]
	return p
}
