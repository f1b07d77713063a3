package mesh

import (
	"bytes"
	"encoding/base64"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metrics "github.com/hashicorp/go-metrics"

	"github.com/quorumproxy/quorumproxy/internal/testenv"
)

func TestEnvelopeRoundTripAndTruncation(t *testing.T) {
	payload := []byte("payload bytes")
	buf, err := encodeEnvelope(nil, kindMessage, "lbl", "node-a", 0x0102030405060708, "hash", payload)
	if err != nil {
		t.Fatal(err)
	}
	e, r := decodeEnvelope(buf)
	if r != dropNone || e.kind != kindMessage || e.label != "lbl" || e.sender != "node-a" ||
		e.bootID != 0x0102030405060708 || e.configHash != "hash" || !bytes.Equal(e.payload, payload) {
		t.Fatalf("round trip: %+v, %v", e, r)
	}
	if len(buf) != envelopeHeaderLen("lbl", "node-a", "hash")+len(payload) {
		t.Errorf("header length mismatch")
	}
	for n := 0; n < len(buf); n++ {
		if _, r := decodeEnvelope(buf[:n]); r != dropGarbage {
			t.Errorf("truncated to %d bytes: %v, want garbage", n, r)
		}
	}
	if _, err := encodeEnvelope(nil, kindMessage, strings.Repeat("x", 256), "a", 1, "h", nil); err == nil {
		t.Error("256-byte label encoded")
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	good, _ := encodeEnvelope(nil, kindMessage, "l", "n", 1, "h", []byte("p"))
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{envelopeVersion, kindState, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, r := decodeEnvelope(b)
		if r != dropNone {
			return
		}
		// Whatever decodes must re-encode to the same bytes.
		again, err := encodeEnvelope(nil, e.kind, e.label, e.sender, e.bootID, e.configHash, e.payload)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("decode/encode mismatch: %x vs %x (%v)", b, again, err)
		}
	})
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key32 := bytes.Repeat([]byte{7}, 32)
	for _, tc := range []struct {
		name string
		data []byte
		want []byte
	}{
		{"b64-32", []byte(base64.StdEncoding.EncodeToString(key32) + "\n"), key32},
		{"b64-16", []byte(" " + base64.StdEncoding.EncodeToString(key32[:16])), key32[:16]},
		{"raw-24", bytes.Repeat([]byte{0xFE}, 24), bytes.Repeat([]byte{0xFE}, 24)},
	} {
		got, err := LoadKey(write(tc.name, tc.data))
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: %x, %v", tc.name, got, err)
		}
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"b64-wrong-len", []byte(base64.StdEncoding.EncodeToString(key32[:20])), "decodes to 20 bytes"},
		{"raw-wrong-len", bytes.Repeat([]byte{0xFE}, 17), "neither base64 nor a raw key"},
	} {
		_, err := LoadKey(write(tc.name, tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s: error %v, want one naming the file and saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	peers := []Peer{{"a", "127.0.0.1:7001"}, {"b", "127.0.0.1:7002"}}
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"no key", Config{NodeName: "a", Peers: peers}, []string{"no secret key"}},
		{"bad key", Config{NodeName: "a", Peers: peers, SecretKey: []byte("short")}, []string{"secret key"}},
		{"not a peer", Config{NodeName: "z", Peers: peers, Insecure: true}, []string{`node name "z" is not among the peers`}},
		{"duplicates", Config{NodeName: "a", Insecure: true, Peers: []Peer{{"a", "127.0.0.1:7001"}, {"a", "127.0.0.1:7003"}, {"b", "127.0.0.1:7001"}}},
			[]string{`peer "a": listed twice`, `already used by peer "a"`}},
		{"bad address", Config{NodeName: "a", Insecure: true, Peers: []Peer{{"a", "127.0.0.1"}, {"b", "127.0.0.1:0"}}},
			[]string{`peer "a": address "127.0.0.1"`, `peer "b": address "127.0.0.1:0": bad port`}},
		{"hash too long", Config{NodeName: "a", Insecure: true, Peers: peers, ConfigHash: strings.Repeat("h", 300)}, []string{"at most 255 bytes"}},
		{"no timings or addresses", Config{NodeName: "a", Insecure: true, Peers: peers, RejoinInterval: -time.Second},
			[]string{"gossip interval is 0s", "probe interval is 0s", "rejoin interval is -1s", "no advertise address", "no bind address"}},
	} {
		_, err := New(tc.cfg, &recorder{})
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
	}
}

// memberlist's own metrics and the mesh's reach go-metrics' global sink,
// labelled with the node and the cluster.
func TestMetricsReachGlobalSink(t *testing.T) {
	sink := metrics.NewInmemSink(time.Hour, time.Hour)
	conf := metrics.DefaultConfig("qp")
	conf.EnableHostname, conf.EnableRuntimeMetrics = false, false
	if _, err := metrics.NewGlobal(conf, sink); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = metrics.NewGlobal(conf, &metrics.BlackholeSink{}) })

	c := newCluster(t, 2, nil)
	c.startAll()
	waitFor(t, "both alive", c.allSee)
	if err := c.meshes["n1"].Send("n2", []byte("m")); err != nil {
		t.Fatal(err)
	}
	has := func(name string, labels ...string) bool {
		for _, iv := range sink.Data() {
			iv.RLock()
			for k := range iv.Counters {
				if strings.HasPrefix(k, name+";") && containsAll(k, labels) {
					iv.RUnlock()
					return true
				}
			}
			iv.RUnlock()
		}
		return false
	}
	waitFor(t, "memberlist and mesh counters", func() bool {
		return has("qp.memberlist.udp.sent", "node=n1", "cluster="+testLabel) &&
			has("qp.mesh.sent", "node=n1", "cluster="+testLabel)
	})
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// memberlist's errors about a peer it could not reach are warnings (the
// cluster says the peer is unreachable); other errors stay errors.
func TestPeerAwayIsAWarning(t *testing.T) {
	logs := &testenv.Buffer{}
	l := newLimitedStdLogger(slog.New(slog.NewTextHandler(logs, nil)), time.Millisecond)
	l.Printf("[ERR] memberlist: Push/Pull with qp4 failed: dial tcp 127.0.0.1:30999: connect: connection refused")
	l.Printf("[ERR] memberlist: Failed to send gossip to 127.0.0.1:7946: write: connection refused")
	l.Printf("[ERR] memberlist: Error reading UDP packet: boom")
	out := logs.String()
	if strings.Count(out, "level=WARN") != 2 || strings.Count(out, "level=ERROR") != 1 || !strings.Contains(out, `level=ERROR msg="memberlist: Error reading UDP packet`) {
		t.Errorf("levels:\n%s", out)
	}
}
