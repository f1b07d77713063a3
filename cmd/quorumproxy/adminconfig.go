package main

import (
	"errors"
	"flag"
	"fmt"
	"net"

	"github.com/quorumproxy/quorumproxy/config"
)

// configFlag adds -config to the flags of a command that talks to a running
// proxy: the admin address and the token file come from that proxy's
// config file. -admin and -token-file given after it, or set to anything
// but their defaults before it, win. tokenFile may be nil (status needs
// no token).
func configFlag(fs *flag.FlagSet, admin, tokenFile *string) {
	fs.Var(&adminConfig{admin: admin, tokenFile: tokenFile}, "config",
		"the proxy's config file: find the admin address and token file there")
}

// adminConfig is the -config flag's value.
type adminConfig struct {
	path             string
	admin, tokenFile *string
}

func (c *adminConfig) String() string { return c.path }

func (c *adminConfig) Set(path string) error {
	cfg, _, err := config.Load(path)
	if err != nil {
		return err
	}
	addr, err := dialAddr(cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("%s: [admin] listen: %w", path, err)
	}
	c.path = path
	if *c.admin == config.DefaultAdminListen {
		*c.admin = addr
	}
	if c.tokenFile != nil && *c.tokenFile == "" {
		*c.tokenFile = cfg.Admin.TokenFile
	}
	return nil
}

// dialAddr is where a client on this machine reaches a listen address: a
// wildcard host means loopback.
func dialAddr(listen string) (string, error) {
	if listen == "" {
		return "", errors.New("empty: the admin API is off")
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", err
	}
	if port == "0" {
		return "", errors.New("port 0: the admin API's port is chosen at start; give -admin")
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port), nil
}
