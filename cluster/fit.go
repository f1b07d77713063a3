package cluster

// Sizes: every payload about a service must fit its transport.

import (
	"fmt"
	"strings"
)

// widestValue is a value as long as any the backends allow: a primary and
// every other backend fenced (whichever is primary, that is every name once).
func widestValue(bs []BackendConfig) Value {
	var w Value
	for _, b := range bs {
		if len(b.Name) > len(w.Primary) {
			w.Primary = b.Name
		}
	}
	for _, b := range bs {
		if b.Name != w.Primary {
			w.Fenced = w.Fenced.With(b.Name)
		}
	}
	return w
}

// wider is whichever of a and b takes more bytes on the wire.
func wider(a, b Value) Value {
	if valueSize(b) > valueSize(a) {
		return b
	}
	return a
}

// checkServiceFits rejects names the wire format cannot carry and services
// whose full observation would not fit one payload.
func checkServiceFits(sc ServiceConfig) error {
	if sc.Name == "" || len(sc.Name) > 255 {
		return fmt.Errorf("cluster: service name %q: want 1 to 255 bytes", sc.Name)
	}
	msg := obsMsg{Service: sc.Name}
	seen := map[string]bool{}
	for _, b := range sc.Backends {
		if b.Name == "" || len(b.Name) > 255 {
			return fmt.Errorf("cluster: service %q: backend name %q: want 1 to 255 bytes", sc.Name, b.Name)
		}
		if strings.Contains(b.Name, ",") {
			// the fenced set joins names with commas
			return fmt.Errorf("cluster: service %q: backend name %q: no commas", sc.Name, b.Name)
		}
		if seen[b.Name] {
			return fmt.Errorf("cluster: service %q: backend %q listed twice", sc.Name, b.Name)
		}
		seen[b.Name] = true
		msg.Entries = append(msg.Entries, obsEntry{Backend: b.Name})
	}
	if len(msg.Entries) > 255 {
		return fmt.Errorf("cluster: service %q has %d backends, at most 255", sc.Name, len(msg.Entries))
	}
	if _, err := encodeObs(msg); err != nil {
		return fmt.Errorf("cluster: service %q: its backends' names are too long for one gossip packet: %w", sc.Name, err)
	}
	w := widestValue(sc.Backends)
	wb := Ballot{Epoch: 1, Value: w}
	if _, err := encodeVote(voteMsg{Service: sc.Name, Value: w, Prev: wb, Accepted: wb, Record: Record{Value: w}}); err != nil {
		return fmt.Errorf("cluster: service %q: its backends' names are too long for a vote (which may name them all four times): %w", sc.Name, err)
	}
	if _, err := encodeLeaseAck(leaseAckMsg{Entries: []leaseAckEntry{{Service: sc.Name, Record: Record{Value: w}, Accepted: wb}}}); err != nil {
		return fmt.Errorf("cluster: service %q: its backends' names are too long for a lease answer in one packet (which may name them all twice): %w", sc.Name, err)
	}
	return nil
}
