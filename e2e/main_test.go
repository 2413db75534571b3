package e2e

import (
	"testing"

	"github.com/vagent-dev/vagent/e2e/sandbox"
)

func TestMain(m *testing.M) { sandbox.Main(m) }
