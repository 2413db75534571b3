// Command vagentd is vagent's daemon: one OpenAI-compatible endpoint in
// front of every agent, switching agents on demand, and the control socket
// vagentctl talks to. It runs as vagentd.service (Type=notify).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/vagent-dev/vagent/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := daemon.Main(ctx, os.Args, os.Stderr)
	stop()
	os.Exit(code)
}
