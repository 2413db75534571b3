// Package fsync makes a rename or a new file in a directory durable: the
// last step of every atomic write vagent does (units, model weights, the
// engine venv, the work store, pipeline run directories).
package fsync

import (
	"errors"
	"os"
	"syscall"
)

// Dir flushes the directory dir itself, so that the entries a rename or a
// create made in it survive a crash. A filesystem that cannot sync a
// directory (EINVAL: some network and FUSE filesystems) is not an error:
// there is nothing more to do on it.
func Dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
