package mediatype

import "testing"

func TestOf(t *testing.T) {
	for ct, want := range map[string]string{
		"application/json":                  "application/json",
		"Application/JSON; charset=utf-8":   "application/json",
		" text/event-stream ;charset=utf-8": "text/event-stream",
		"":                                  "",
	} {
		if got := Of(ct); got != want {
			t.Errorf("Of(%q) = %q, want %q", ct, got, want)
		}
	}
	if !IsEventStream("text/event-stream; charset=utf-8") || IsEventStream("text/event-streams") {
		t.Error("IsEventStream takes the media type whole, parameters aside")
	}
	if !IsJSON("application/json; charset=utf-8") || IsJSON("application/jsonl") {
		t.Error("IsJSON takes the media type whole, parameters aside")
	}
}
