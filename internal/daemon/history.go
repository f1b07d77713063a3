package daemon

// The decision history: what the proxy decided and did, for post-mortems
// (Patroni's `patronictl history`, Sentinel's +switch-master).

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/quorumproxy/quorumproxy/config"
	"github.com/quorumproxy/quorumproxy/internal/adminapi"
	"github.com/quorumproxy/quorumproxy/internal/journal"
)

// historyMax bounds the history: enough for months of failovers, a few
// hundred KiB on disk.
const historyMax = 1000

// historyFile is the history's file in state_dir.
const historyFile = "history.jsonl"

// openHistory opens the history in state_dir (with [cluster]) or in
// memory (a proxy alone has no state_dir). A file that cannot be opened is
// logged and the history kept in memory: it is for people, not for
// decisions.
func openHistory(log *slog.Logger, cfg *config.Config) *journal.Journal {
	path := ""
	var err error
	if cfg.Cluster != nil && cfg.Cluster.StateDir != "" {
		path = filepath.Join(cfg.Cluster.StateDir, historyFile)
		// made as the cluster's store makes it, which opens after this
		err = os.MkdirAll(cfg.Cluster.StateDir, 0o700)
	}
	var j *journal.Journal
	if err == nil {
		j, err = journal.Open(path, historyMax)
	}
	if err != nil {
		log.Error("history: kept in memory only", "err", err)
		j, _ = journal.Open("", historyMax)
	}
	return j
}

// note adds an entry; a file that cannot be written is said at ERROR (the
// entry stays in memory).
func (d *Daemon) note(e journal.Entry) {
	if err := d.history.Add(e); err != nil {
		d.log.Error("history: entry not written", "err", err)
	}
}

// handleHistory is GET /api/v1/history?service=S&limit=N: the last N
// (default 100) entries, oldest first.
func (d *Daemon) handleHistory(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.FormValue("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			http.Error(w, "limit: want a number of entries (0: all)", http.StatusBadRequest)
			return
		}
		limit = n
	}
	service := r.FormValue("service")
	if service != "" && d.serviceConfig(service) == nil {
		http.Error(w, "no service named "+strconv.Quote(service), http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(adminapi.History{Entries: d.history.List(service, limit)})
}
