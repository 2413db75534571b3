package config

import (
	"strings"
	"testing"
	"time"
)

func TestStartBackoffSettings(t *testing.T) {
	c, err := Load(writeConfig(t, "", map[string]string{"po": goodAgent}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Supervisor.StartBackoff.Duration != 5*time.Second || c.Supervisor.StartBackoffMax.Duration != 5*time.Minute {
		t.Errorf("defaults: %s, %s", c.Supervisor.StartBackoff.Duration, c.Supervisor.StartBackoffMax.Duration)
	}
	_, err = Load(writeConfig(t, "[supervisor]\nstart_backoff = \"1m\"\nstart_backoff_max = \"10s\"\n", map[string]string{"po": goodAgent}))
	if err == nil || !strings.Contains(err.Error(), "supervisor.start_backoff_max") || !strings.Contains(err.Error(), "must be at least start_backoff (1m0s), not 10s") {
		t.Errorf("max below the first step: %v", err)
	}
	_, err = Load(writeConfig(t, "[supervisor]\nstart_backoff = \"-1s\"\n", map[string]string{"po": goodAgent}))
	if err == nil || !strings.Contains(err.Error(), "supervisor.start_backoff") {
		t.Errorf("negative: %v", err)
	}
}
