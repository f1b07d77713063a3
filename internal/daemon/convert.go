package daemon

import (
	"crypto/tls"
	"fmt"
	"os"
	"slices"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/health"
	"github.com/quorumproxy/quorumproxy/proxy"
)

// healthTLS is the TLS material of a service's checks, read from its files.
type healthTLS struct{ ca, cert, key []byte }

// serviceTLS reads and checks the service's tls_ca_file, tls_cert_file and
// tls_key_file; errors name the key and the file.
func serviceTLS(s *config.Service) (healthTLS, error) {
	h := &s.Health
	var out healthTLS
	if !h.TLS {
		return out, nil
	}
	for _, f := range []struct {
		key, path string
		dst       *[]byte
	}{{"tls_ca_file", h.TLSCAFile, &out.ca}, {"tls_cert_file", h.TLSCertFile, &out.cert}, {"tls_key_file", h.TLSKeyFile, &out.key}} {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return out, fmt.Errorf("%s: %w", f.key, err)
		}
		*f.dst = b
	}
	if out.ca != nil {
		if _, err := health.ParseCA(out.ca); err != nil {
			return out, fmt.Errorf("tls_ca_file %s: %w", h.TLSCAFile, err)
		}
	}
	if out.cert != nil {
		if _, err := tls.X509KeyPair(out.cert, out.key); err != nil {
			return out, fmt.Errorf("tls_cert_file %s and tls_key_file %s: %w", h.TLSCertFile, h.TLSKeyFile, err)
		}
	}
	return out, nil
}

// proxyServices converts the services; those in clustered are routed by the
// cluster (External) and never choose a target locally.
func proxyServices(cfg *config.Config, clustered map[string]bool) []proxy.ServiceConfig {
	out := make([]proxy.ServiceConfig, 0, len(cfg.Services))
	for _, s := range cfg.Services {
		pc := proxy.ServiceConfig{
			Name:                  s.Name,
			Listen:                s.Listen,
			Mode:                  proxy.ActivePassive,
			Balance:               proxy.RoundRobin,
			Want:                  proxy.RoleAny,
			MaxConns:              s.MaxConnections,
			ConnectTimeout:        s.ConnectTimeout,
			IdleTimeout:           s.IdleTimeout,
			SwitchHold:            s.SwitchHold,
			CloseOnDown:           s.OnBackendDown != config.ActionKeep,
			FailbackAuto:          s.Failback == config.FailbackAuto,
			MaxLag:                s.MaxLag,
			MaxLagBytes:           s.MaxLagBytes,
			MaxLagOnFailover:      s.MaxLagOnFailover,
			MaxLagBytesOnFailover: s.MaxLagBytesOnFailover,
			RPOZero:               s.RPO == config.RPOZero,
			RegionOrder:           s.RegionOrder,
			External:              clustered[s.Name],
			RoleAware:             s.RoleAware(),
		}
		pc.AcceptProxy, _ = s.ProxyPrefixes() // validated by Parse
		if s.Mode == config.ModeActiveActive {
			pc.Mode = proxy.ActiveActive
		}
		if s.Balance == config.BalanceLeastConn {
			pc.Balance = proxy.LeastConn
		}
		switch s.Role {
		case config.RolePrimary:
			pc.Want = proxy.RolePrimary
		case config.RoleReplica:
			pc.Want = proxy.RoleReplica
		}
		for _, b := range s.Backends {
			pc.Backends = append(pc.Backends, proxy.Backend{
				Name: b.Name, Address: b.Address, Priority: b.Priority, Weight: b.Weight, MaxConns: b.MaxConnections,
				SendProxy: map[string]proxy.ProxyVersion{"v1": proxy.ProxyV1, "v2": proxy.ProxyV2}[b.SendProxy],
				Region:    b.Region,
			})
		}
		out = append(out, pc)
	}
	return out
}

func healthTargets(cfg *config.Config) []health.Target {
	var out []health.Target
	for i := range cfg.Services {
		s := &cfg.Services[i]
		pw, _ := s.Health.Password() // LoadConfig has checked it
		tlsFiles, _ := serviceTLS(s) // and this
		h := s.Health
		spec := health.Spec{
			Kind: string(h.Kind), Interval: h.Interval, Timeout: h.Timeout,
			FastInterval: h.FastInterval, DownInterval: h.DownInterval, Rise: h.Rise, Fall: h.Fall,
			User: h.User, Database: h.Database, Password: pw, TLS: h.TLS,
			TLSCA: tlsFiles.ca, TLSServerName: h.TLSServerName, TLSCert: tlsFiles.cert, TLSKey: tlsFiles.key,
			TLSSkipVerify: h.TLSSkipVerify,
			Method:        h.Method, Path: h.Path, ExpectStatus: h.ExpectStatus, ExpectBody: h.ExpectBody,
			Command: h.Command, Roles: string(h.Roles), Port: h.Port,
		}
		for _, b := range s.Backends {
			bs := spec
			bs.Address = b.CheckAddress // "": b.Address, on h.Port if set
			out = append(out, health.Target{Service: s.Name, Backend: b.Name, Address: b.Address, Spec: bs})
		}
	}
	return out
}

// syncMask maps the standbys a primary reported synchronous (by the name
// they replicate under) to the service's backends: bit i for the i-th.
func syncMask(svc *config.Service, names []string) uint64 {
	var m uint64
	if svc == nil {
		return 0
	}
	for i, b := range svc.Backends {
		if i < 64 && slices.Contains(names, b.Replication()) {
			m |= 1 << i
		}
	}
	return m
}

// upstreamName is the backend of svc at address (a replica's upstream as
// its server reports it), "" when none is.
func upstreamName(svc *config.Service, address string) string {
	if svc == nil || address == "" {
		return ""
	}
	for _, b := range svc.Backends {
		if b.Address == address {
			return b.Name
		}
	}
	return ""
}

func proxyHealth(s health.State, mask uint64, upstream string) proxy.Health {
	h := proxy.Health{
		Known:    s.Status != health.StatusUnknown,
		Up:       s.Status == health.StatusUp,
		Role:     proxy.RoleUnknown,
		LagBytes: s.LagBytes,
		Lag:      s.Lag,
		Position: s.Position, PositionFresh: s.PositionFresh, ReplicasUnread: s.ReplicasUnread,
		SyncMask: mask, Upstream: upstream,
		Rising: s.Rising > 0, // a streak toward up: zero once up
	}
	switch s.Role {
	case health.RolePrimary:
		h.Role = proxy.RolePrimary
	case health.RoleReplica:
		h.Role = proxy.RoleReplica
	}
	return h
}
