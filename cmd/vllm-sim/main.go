// Command vllm-sim stands in for `vllm serve` where there is no GPU: same
// command line, endpoints, logs and errors, with GPU memory kept in a ledger
// shared by every simulator on the host. See internal/vllmsim.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/vagent-dev/vagent/internal/vllmsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := vllmsim.Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
