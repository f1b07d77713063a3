package health

import (
	"net"
	"strconv"
)

// CheckAddress returns the host:port that checks of s connect to for a backend whose traffic
// goes to address: s.Address when set, else address with its port replaced by s.Port when
// that is set (HAProxy's "check port"), else address itself. An address without a port is
// returned as it is (NewChecker reports it).
func (s Spec) CheckAddress(address string) string {
	if s.Address != "" {
		return s.Address
	}
	if s.Port == 0 {
		return address
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return address
	}
	return net.JoinHostPort(host, strconv.Itoa(s.Port))
}

// checked returns the address checks of s connect to for a backend at address, and s without
// the fields that chose it: two targets whose checks are the same whatever the way they name
// the checked address share one probe.
func (s Spec) checked(address string) (string, Spec) {
	a := s.CheckAddress(address)
	s.Address, s.Port = "", 0
	return a, s
}
