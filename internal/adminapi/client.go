package adminapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxStatus bounds a /status body read: a few KiB per backend, far below.
const maxStatus = 16 << 20

// defaultClient bounds each request when Client.HTTP is nil: the admin API
// answers at once, so a slow answer is a stuck proxy.
var defaultClient = &http.Client{Timeout: 5 * time.Second}

// Client talks to one proxy's admin API.
type Client struct {
	// Addr is the admin API's host:port, or a URL ("http://host:port").
	Addr string
	// Token is the bearer token of [admin] token_file, for the
	// state-changing endpoints. Empty: none is sent.
	Token string
	// HTTP does the requests; nil: one with a 5s timeout.
	HTTP *http.Client
}

func (c *Client) url(path string) string {
	if strings.Contains(c.Addr, "://") {
		return c.Addr + path
	}
	return "http://" + c.Addr + path
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultClient
}

// StatusJSON returns the /status document as the proxy sent it.
func (c *Client) StatusJSON(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/status"), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatus))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", c.url("/status"), err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", c.url("/status"), resp.Status)
	}
	return body, nil
}

// Status reads and decodes /status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	body, err := c.StatusJSON(ctx)
	if err != nil {
		return nil, err
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("bad /status from %s: %w", c.Addr, err)
	}
	return &st, nil
}

// Post posts form to a state-changing endpoint (path "/api/v1/fence", ...)
// and returns its answer; anything but 202 Accepted is an error that
// carries the proxy's message.
func (c *Client) Post(ctx context.Context, path string, form url.Values) (ControlAnswer, error) {
	var a ControlAnswer
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url(path), strings.NewReader(form.Encode()))
	if err != nil {
		return a, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusAccepted {
		return a, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &a); err != nil {
		return a, fmt.Errorf("answer %q: %w", body, err)
	}
	return a, nil
}

// Switchover asks for a voted switchover of service to backend to.
func (c *Client) Switchover(ctx context.Context, service, to string) (ControlAnswer, error) {
	return c.Post(ctx, "/api/v1/switchover", url.Values{"service": {service}, "to": {to}})
}

// BackendControl posts service and backend to /api/v1/VERB: fence,
// unfence, drain or undrain.
func (c *Client) BackendControl(ctx context.Context, verb, service, backend string) (ControlAnswer, error) {
	return c.Post(ctx, "/api/v1/"+verb, url.Values{"service": {service}, "backend": {backend}})
}

// Pause asks for a pause (on) or resume of a clustered service.
func (c *Client) Pause(ctx context.Context, service string, on bool) (ControlAnswer, error) {
	verb := map[bool]string{true: "pause", false: "resume"}[on]
	return c.Post(ctx, "/api/v1/"+verb, url.Values{"service": {service}})
}

// WaitOperation polls /status until the cluster operation id of service
// is done (nil) or failed, or timeout passes (an error that says where it
// stands). It prints each new state to out. An id of 0 was done at once.
func (c *Client) WaitOperation(ctx context.Context, service string, id uint64, timeout time.Duration, out io.Writer) error {
	if id == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		op, err := c.operation(ctx, service)
		switch {
		case err != nil:
			last = err.Error()
		case op == nil || op.ID != id:
			return fmt.Errorf("operation %d is no longer the last one on that proxy: another request replaced it", id)
		default:
			line := fmt.Sprintf("%s of %s: %s", op.Kind, op.Backend, op.State)
			if op.Detail != "" {
				line += ": " + op.Detail
			}
			if line != last {
				fmt.Fprintln(out, line)
				last = line
			}
			switch op.State {
			case "done":
				return nil
			case "failed":
				return fmt.Errorf("%s of %q in %q failed: %s", op.Kind, op.Backend, service, op.Detail)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no outcome within %v; last: %s (quorumproxy status shows more)", timeout, last)
		case <-tick.C:
		}
	}
}

func (c *Client) operation(ctx context.Context, service string) (*Operation, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	if st.Cluster == nil {
		return nil, fmt.Errorf("the proxy at %s runs no cluster", c.Addr)
	}
	cs := st.ClusterService(service)
	if cs == nil {
		return nil, fmt.Errorf("the cluster does not route service %q", service)
	}
	return cs.Operation, nil
}

// Health reads GET /health (service "") or GET /health/SERVICE. A 503 or
// 404 is an answer, not an error: the error is for no answer at all.
func (c *Client) Health(ctx context.Context, service string) (Readiness, int, error) {
	path := "/health"
	if service != "" {
		path += "/" + url.PathEscape(service)
	}
	var r Readiness
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path), nil)
	if err != nil {
		return r, 0, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return r, 0, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatus)).Decode(&r); err != nil {
		return r, resp.StatusCode, fmt.Errorf("GET %s: %s: %w", c.url(path), resp.Status, err)
	}
	return r, resp.StatusCode, nil
}

// History reads GET /api/v1/history: the last limit entries (0: all) about
// service ("": every service), oldest first.
func (c *Client) History(ctx context.Context, service string, limit int) (History, error) {
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if service != "" {
		q.Set("service", service)
	}
	u := c.url("/api/v1/history?" + q.Encode())
	var h History
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return h, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return h, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return h, fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStatus)).Decode(&h); err != nil {
		return h, fmt.Errorf("GET %s: %w", u, err)
	}
	return h, nil
}
