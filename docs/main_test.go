package docs

import (
	"context"
	"os"
	"sort"
	"testing"

	"github.com/vagent-dev/vagent/ctl"
)

// TestMain lets the test binary stand in for vagentctl (helperEnv set): the
// socket test runs it as another user, which only a program on disk can be.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "vagentctl" {
		os.Exit(ctl.Main(context.Background(), append([]string{"vagentctl"}, os.Args[1:]...), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestShowMessages prints what every producer makes the code print, for
// whoever writes or updates a message block:
//
//	VAGENT_DOCS_SHOW=1 go test ./docs -run TestShowMessages -v
func TestShowMessages(t *testing.T) {
	if os.Getenv("VAGENT_DOCS_SHOW") == "" {
		t.Skip("set VAGENT_DOCS_SHOW=1 to print every producer's output")
	}
	var ids []string
	for id := range producers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		t.Run(id, func(t *testing.T) { t.Logf("\n%s", producers[id](t)) })
	}
}
