package daemon

import (
	"fmt"
	"net/http"

	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
)

// handleUpgrade is POST /api/v1/upgrade: start the binary on disk and hand
// it the listening sockets, as SIGUSR2 does. It answers once the new
// process is started; the hand-over's outcome is in the history (kind
// "upgrade") and, once the new process serves, in /status's started.
func (d *Daemon) handleUpgrade(w http.ResponseWriter, r *http.Request) {
	if d.upgrade == nil {
		http.Error(w, "this proxy does not upgrade itself (run by quorumproxy run, it does)", http.StatusConflict)
		return
	}
	if err := d.upgrade(); err != nil {
		http.Error(w, "upgrade: "+err.Error(), http.StatusConflict)
		return
	}
	d.log.Info("upgrade requested", "remote", r.RemoteAddr)
	writeAccepted(w, adminapi.ControlAnswer{Message: fmt.Sprintf("upgrade started: a new process takes the listening sockets once ready (this one, started %s, then drains)", d.started.UTC().Format("2006-01-02T15:04:05Z"))})
}

// NoteUpgrade adds an upgrade's step or outcome to the history.
func (d *Daemon) NoteUpgrade(summary string) {
	d.note(journal.Entry{Kind: "upgrade", Summary: summary})
}
