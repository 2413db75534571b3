package supervisor

// Messages of docs/troubleshooting.md that need this package's unexported
// parts: how a D-Bus refusal by polkit reads. docs/messages_test.go checks
// every other message and that this id is in the documents.

import (
	"context"
	"os"
	"testing"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/vagent-dev/vagent/docs"
)

func TestDocumentedMessagesOfTheSupervisor(t *testing.T) {
	msgs, err := docs.Messages("../docs")
	if err != nil {
		t.Fatal(err)
	}
	// A start job refused by polkit: the D-Bus call fails with AccessDenied,
	// as it does for a user whom no polkit rule allows to manage the unit.
	d := &DBus{timeout: time.Second}
	refused := func(context.Context, string, string, chan<- string) (int, error) {
		return 0, godbus.Error{Name: "org.freedesktop.DBus.Error.AccessDenied",
			Body: []any{"Access denied"}}
	}
	got := d.job(t.Context(), "start", "vagent@dev.service", refused).Error() + "\n"
	if os.Getenv("VAGENT_DOCS_SHOW") != "" {
		t.Logf("produced:\n%s", got)
	}
	b, ok := msgs["polkit-refused"]
	if !ok {
		t.Fatal("no ```text vagent-message id=polkit-refused block in docs/*.md")
	}
	if err := docs.Match(b.Text, got); err != nil {
		t.Errorf("%s: %v\nthe supervisor said:\n%s", b.Where(), err, got)
	}
}
