// Package mediatype reads the media type of a Content-Type header, for the
// gateway and the work executor, which both tell JSON answers from event
// streams.
package mediatype

import "strings"

// Of is the media type of the Content-Type value ct: lower case, without
// its parameters ("text/event-stream; charset=utf-8" is
// "text/event-stream").
func Of(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.ToLower(strings.TrimSpace(ct))
}

// IsJSON reports whether ct is application/json.
func IsJSON(ct string) bool { return Of(ct) == "application/json" }

// IsEventStream reports whether ct is text/event-stream.
func IsEventStream(ct string) bool { return Of(ct) == "text/event-stream" }
