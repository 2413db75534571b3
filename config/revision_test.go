package config

import (
	"strings"
	"testing"
)

func TestCheckRevision(t *testing.T) {
	for _, ok := range []string{"main", "v1.0", "release/2024-05", "refs/pr/1", strings.Repeat("0123456789", 4), "a.b-c_d"} {
		if err := CheckRevision(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "..", "../x", "a/../../b", "/abs", "x/", "a//b", ".hidden", "a/.b", "x.lock", "a b", "a\tb",
		"a\\b", "a:b", "a~1", "a^", "a?", "a*", "a[", "a@{1}", "@", "end.", strings.Repeat("a", 256)} {
		if err := CheckRevision(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
