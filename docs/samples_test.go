package docs

import (
	"path/filepath"
	"testing"
)

// TestEverySampleIsChecked: every ```text block of the docs and the README
// is a sample some test produces from the code: a message
// (vagent-message, TestDocumentedMessagesAreWhatTheCodePrints), the quick
// start's output (sim-output, e2e TestE2EQuickstart) or a real systemd's
// output (e2e-output, an e2e test by its id).
func TestEverySampleIsChecked(t *testing.T) {
	files, err := Files(".")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join("..", "README.md"))
	for _, f := range files {
		blocks, err := ReadBlocks(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			if b.Lang != "text" {
				continue
			}
			switch {
			case b.Has(MessageKind), b.Has("sim-output"):
			case b.Has(E2EKind) && b.Attrs["id"] != "":
			default:
				t.Errorf("%s: ```%s is a sample no test produces: mark it %s id=ID (and produce it in messages_test.go), or %s id=ID with an e2e test", b.Where(), b.Info, MessageKind, E2EKind)
			}
		}
	}
}

// TestE2EBlocksAreProduced lists the e2e samples and the e2e test that
// produces each, so that a new one cannot go unchecked.
func TestE2EBlocksAreProduced(t *testing.T) {
	produced := map[string]string{
		"crash-loop-journal": "e2e/crashloop_test.go TestE2ECrashLoopIsTheDocumentedSample",
	}
	files, err := Files(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		blocks, err := ReadBlocks(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			if b.Lang == "text" && b.Has(E2EKind) {
				if _, ok := produced[b.Attrs["id"]]; !ok {
					t.Errorf("%s: e2e sample %q has no e2e test that produces it", b.Where(), b.Attrs["id"])
				}
				if _, err := E2EBlock(".", b.Attrs["id"]); err != nil {
					t.Error(err)
				}
			}
		}
	}
}
