package mesh

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
)

// LoadKey reads a gossip key from path. The file holds either the key in
// standard base64 (surrounding whitespace ignored, as written by
// `head -c 32 /dev/urandom | base64`) or the raw key bytes. The key must be
// 16, 24 or 32 bytes (AES-128, -192 or -256).
func LoadKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("gossip key %q: file is empty", path)
	}
	text := bytes.TrimSpace(raw)
	dec := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	if n, err := base64.StdEncoding.Decode(dec, text); err == nil {
		if validKeyLen(n) {
			return dec[:n], nil
		}
		return nil, fmt.Errorf("gossip key %q: base64 decodes to %d bytes, want 16, 24 or 32", path, n)
	}
	if validKeyLen(len(raw)) {
		return raw, nil
	}
	return nil, fmt.Errorf("gossip key %q: neither base64 nor a raw key: %d bytes, want 16, 24 or 32 raw bytes or their base64", path, len(raw))
}

func validKeyLen(n int) bool { return n == 16 || n == 24 || n == 32 }
