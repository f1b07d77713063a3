package daemon

import (
	"testing"

	"github.com/quorumproxy/quorumproxy/cluster"
)

// The notify hook's QP_REASON in a cluster says what the record changed,
// the same on every proxy.
func TestRecordReason(t *testing.T) {
	rec := func(epoch uint64, primary string, fenced ...string) cluster.Record {
		var f cluster.Fenced
		for _, b := range fenced {
			f = f.With(b)
		}
		return cluster.Record{Epoch: epoch, Value: cluster.Value{Primary: primary, Fenced: f}}
	}
	for _, c := range []struct {
		old, new cluster.Record
		want     string
	}{
		{rec(0, ""), rec(1, "a"), "first primary of the cluster: a, epoch 1"},
		{rec(1, "a"), rec(2, "b", "a"), "primary moved from a to b (a fenced), epoch 2"},
		{rec(2, "b", "a"), rec(3, "a"), "primary moved from b to a, epoch 3"},
		{rec(3, "a"), rec(4, "a", "c"), "c fenced; primary stays a, epoch 4"},
		{rec(4, "a", "c"), rec(5, "a"), "c unfenced; primary stays a, epoch 5"},
		{rec(5, "a"), rec(6, "a"), "primary a decided again, epoch 6"},
		{rec(6, "a"), cluster.Record{Epoch: 7, Value: cluster.Value{Primary: "a", Paused: true}}, "paused: no automatic failover until resumed; primary stays a, epoch 7"},
		{cluster.Record{Epoch: 7, Value: cluster.Value{Primary: "a", Paused: true}}, rec(8, "a"), "resumed: automatic failover again; primary stays a, epoch 8"},
	} {
		if got := recordReason(c.old, c.new); got != c.want {
			t.Errorf("recordReason(%v, %v) = %q, want %q", c.old, c.new, got, c.want)
		}
	}
}
