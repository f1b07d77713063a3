// Package logattr reads the attributes that log summaries group by: the
// service a line is about.
package logattr

import "log/slog"

// Key is the attribute that names the service a log line is about.
const Key = "service"

// Service is the service r is about: its own attribute, else inherited
// (from the handler's WithAttrs); "" for none.
func Service(r slog.Record, inherited string) string {
	service := inherited
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == Key {
			service = a.Value.String()
			return false
		}
		return true
	})
	return service
}

// ServiceIn is the service attrs name, else inherited.
func ServiceIn(attrs []slog.Attr, inherited string) string {
	service := inherited
	for _, a := range attrs {
		if a.Key == Key {
			service = a.Value.String()
		}
	}
	return service
}
