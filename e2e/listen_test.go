package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestE2EPerAgentListeners: the client code of a setup with one base URL
// per agent works unchanged against vagentd's per-agent listeners (listen
// in the shipped agent files; here on free ports): whatever model it names
// and whatever key it sends (no keys file), each listener answers with its
// own agent. On the main endpoint names match in any case and a model's
// repository id routes too.
func TestE2EPerAgentListeners(t *testing.T) {
	g := newGatewayHostOn(t, newHostPorts(t, false), nil)
	ctx := t.Context()
	for _, agent := range []string{"architect", "dev", "po"} {
		// As the snippets have it: base URL, api_key="sk-not-needed",
		// model="Qwen2.5-7B-Instruct".
		client := openai.NewClient(
			option.WithBaseURL(fmt.Sprintf("http://localhost:%d/v1", g.listens[agent])),
			option.WithAPIKey("sk-not-needed"),
			option.WithMaxRetries(0),
		)
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:     "Qwen2.5-7B-Instruct",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello.")},
			MaxTokens: openai.Int(4),
		})
		if err != nil {
			t.Fatalf("%s's listener: %v", agent, err)
		}
		if resp.Model != agent || len(resp.Choices) == 0 {
			t.Errorf("%s's listener answered as %q: %+v", agent, resp.Model, resp)
		}
		if st := g.status()[agent]; !st.Healthy {
			t.Errorf("%s is not the agent running after a request on its listener: %+v", agent, g.status())
		}
	}
	main := g.sdk("")
	for model, agent := range map[string]string{"DEV": "dev", "Qwen2.5-7B-Instruct": "po", "qwen/qwen2.5-7b-instruct-awq": "po", "Qwen/Qwen2.5-14B-Instruct-AWQ": "architect"} {
		resp, err := main.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:     model,
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello.")},
			MaxTokens: openai.Int(4),
		})
		if err != nil {
			t.Fatalf("main endpoint, model %q: %v", model, err)
		}
		if resp.Model != agent {
			t.Errorf("main endpoint, model %q: answered by %q, want %s", model, resp.Model, agent)
		}
	}
	if _, err := main.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello.")},
	}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("main endpoint, a name no agent has: %v, want 404", err)
	}
}
