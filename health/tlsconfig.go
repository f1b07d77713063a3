package health

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
)

// ParseCA returns a pool of the certificates in PEM data, or an error when
// it holds none or a bad one.
func ParseCA(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, errors.New("no PEM certificate in it")
	}
	return pool, nil
}

// TLSConfig returns the TLS client configuration of a check of address, or
// nil when the spec does not ask for TLS: what an action on the backend
// with the check's login (repointing a replica) must use too.
func (s Spec) TLSConfig(address string) (*tls.Config, error) { return s.tlsConfig(address) }

// tlsConfig returns the TLS client configuration of a check of address, or
// nil when the spec does not ask for TLS.
func (s Spec) tlsConfig(address string) (*tls.Config, error) {
	if !s.TLS {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: s.TLSServerName}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fmt.Errorf("tls: address %q: %w", address, err)
		}
		cfg.ServerName = host
	}
	if len(s.TLSCA) > 0 {
		pool, err := ParseCA(s.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("tls CA: %w", err)
		}
		cfg.RootCAs = pool
	}
	if len(s.TLSCert) > 0 || len(s.TLSKey) > 0 {
		cert, err := tls.X509KeyPair(s.TLSCert, s.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	cfg.InsecureSkipVerify = s.TLSSkipVerify //nolint:gosec // an explicit, warned-about opt-in
	return cfg, nil
}
