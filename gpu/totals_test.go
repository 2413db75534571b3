package gpu

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

// The simulator's sizes come from the configuration, as Info reports
// them, without creating its ledger.
func TestSimTotalsMatchInfoWithoutTouchingTheLedger(t *testing.T) {
	cfg := config.Defaults()
	cfg.GPU.SimCount, cfg.GPU.SimTotalMiB = 2, 24576
	cfg.GPU.SimLedger = filepath.Join(t.TempDir(), "run", "ledger.json")
	got, err := Totals(t.Context(), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(cfg.GPU.SimLedger)); !os.IsNotExist(err) {
		t.Errorf("Totals created the ledger's directory: %v", err)
	}
	info, err := NewSim(cfg.GPU).Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]uint64{}
	for _, d := range info.Devices {
		want[d.Index] = d.TotalBytes
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Totals %v, Info %v", got, want)
	}
}
