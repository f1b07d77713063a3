package health

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// maxBody is how much of an http answer (or exec output) a check reads.
const maxBody = 64 << 10

// httpChecker is up when METHOD scheme://address/path answers the expected status (and body).
// With Roles "patroni" it reads Patroni's status document instead (see patroni.go).
type httpChecker struct {
	spec    Spec
	url     string
	method  string
	client  *http.Client
	timeout time.Duration
	patroni bool // Roles "patroni"
	leader  bool // and the path's status code tells the leader lock
}

func newHTTPChecker(spec Spec, address string) (*httpChecker, error) {
	scheme := "http"
	if spec.TLS {
		scheme = "https"
	}
	path := spec.Path
	if path == "" {
		path = "/"
	}
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("http check %s: path %q must start with /", address, path)
	}
	method := spec.Method
	if method == "" {
		method = http.MethodGet
	}
	switch spec.Roles {
	case "":
	case "patroni":
		if method != http.MethodGet {
			return nil, fmt.Errorf("http check %s: roles \"patroni\" reads the body of a GET, not %s", address, method)
		}
	default:
		return nil, fmt.Errorf("http check %s: roles %q: want \"\" or \"patroni\"", address, spec.Roles)
	}
	tlsCfg, err := spec.tlsConfig(address)
	if err != nil {
		return nil, fmt.Errorf("http check %s: %w", address, err)
	}
	tr := &http.Transport{
		// A fresh connection per check: a kept one would hide a server that stopped accepting.
		DisableKeepAlives: true,
		TLSClientConfig:   tlsCfg,
		Proxy:             nil,
	}
	c := &httpChecker{
		spec:   spec,
		url:    scheme + "://" + address + path,
		method: method,
		client: &http.Client{
			Transport: tr,
			// A redirect is an answer of its own; ExpectStatus decides about it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		timeout: spec.Timeout,
		patroni: spec.Roles == "patroni",
		leader:  patroniLeaderPath(path),
	}
	if _, err := http.NewRequest(method, c.url, nil); err != nil {
		return nil, fmt.Errorf("http check %s: %w", address, err)
	}
	return c, nil
}

func (c *httpChecker) Check(ctx context.Context) Result {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, c.method, c.url, nil)
	if err != nil {
		return down(start, fmt.Errorf("%w: %w", ErrProtocol, err))
	}
	req.Header.Set("User-Agent", "quorumproxy-health")
	resp, err := c.client.Do(req)
	if err != nil {
		return down(start, c.classify(ctx, err))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	resp.Body.Close()
	if err != nil {
		return down(start, c.classify(ctx, err))
	}
	if c.patroni {
		r := patroniResult(resp.StatusCode, body, c.leader, time.Now())
		r.Latency = time.Since(start)
		return r
	}
	okStatus := resp.StatusCode >= 200 && resp.StatusCode < 400
	if c.spec.ExpectStatus != 0 {
		okStatus = resp.StatusCode == c.spec.ExpectStatus
	}
	if !okStatus {
		return down(start, fmt.Errorf("%w: status %d", ErrUnexpected, resp.StatusCode))
	}
	if c.spec.ExpectBody != "" && !bytes.Contains(body, []byte(c.spec.ExpectBody)) {
		return down(start, fmt.Errorf("%w: body does not contain %q", ErrUnexpected, c.spec.ExpectBody))
	}
	return Result{Up: true, LagBytes: -1, Lag: -1, Position: -1, Latency: time.Since(start)}
}

func (c *httpChecker) classify(ctx context.Context, err error) error {
	if e := netError(ctx, err, c.timeout); e != nil {
		return e
	}
	return fmt.Errorf("%w: %w", ErrProtocol, err)
}

func (c *httpChecker) Close() error {
	c.client.CloseIdleConnections()
	return nil
}
