// Command vagentctl manages vagent's agents: units, switches, status, logs.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/vagent-dev/vagent/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Main(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
