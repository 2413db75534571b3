package ctl

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/doctor"
)

// doctorEnv is the host doctor checks; tests hand it fakes or go-nvml mocks.
var doctorEnv = doctor.HostEnv

func doctorCmd() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check this host for what vagent needs; one line per check with the fix",
		Description: "Checks the NVIDIA driver and NVML (or the simulator), compute capability (7.0, 7.5 for AWQ), nvidia_uvm, " +
			"the engine (vLLM importable at engine.vllm_version, or vllm-sim), every agent's model in the HF cache, the units " +
			"on disk against the configuration, each agent's port and the gateway's, systemd over D-Bus and vagentd, free " +
			"disk space for state_dir and hf_home, and that every agent fits its GPU (vagentctl plan). Exits 1 when a check fails.",
		Flags:        []cli.Flag{jsonFlag},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, err := configNoArgs(cmd)
			if err != nil {
				return err
			}
			r := doctor.New(cfg, doctorEnv(cfg)).Run(ctx)
			out := cmd.Root().Writer
			if cmd.Bool("json") {
				err = r.WriteJSON(out)
			} else {
				err = r.Write(out)
			}
			if err != nil {
				return err
			}
			if !r.OK() {
				return fmt.Errorf("doctor: %d of %d checks failed", r.Failed, len(r.Results))
			}
			return nil
		},
	}
}
