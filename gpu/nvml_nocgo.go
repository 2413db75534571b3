//go:build !cgo

package gpu

import "errors"

// openNVML fails in a build without cgo: go-nvml loads the driver library
// through cgo, so such a build can only use the simulator.
func openNVML() (Backend, error) {
	return nil, errors.New("gpu: this vagent was built without cgo and cannot use NVML (rebuild with CGO_ENABLED=1, or set [gpu] backend = \"sim\" to use the simulator)")
}
